"""A blocking Socket.IO client for ``wss://`` tests, driven by ``socketio.AsyncClient`` on its own loop thread.

python-socketio's threaded ``Client`` reads and writes one ``ssl.SSLSocket`` from two threads at once
(python-engineio's read loop and write loop, over websocket-client). OpenSSL objects are not safe for that:
now and then the connection dies within milliseconds of the upgrade, or mid-stream, without a close frame
(python-engineio issue 461, python-socketio issue 1568; CI saw ``Unexpected connection error`` this way on a
loaded machine). Browsers don't do this, so it is no server bug to chase; the async client (aiohttp, one
thread) doesn't do it either. This class gives tests the blocking API they use, on top of the async client.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import socketio

_numbers = itertools.count()

THREAD_PREFIX = "test-client-loop-"
"""Name prefix of the loop threads (the suite's leaked-thread check knows it)."""


class LoopClient:
    """The subset of ``socketio.Client`` the tests use (``on``, ``connect``, ``emit``, ``call``,
    ``connected``, ``disconnect``), carried out by an ``AsyncClient`` on a private event loop thread.

    Handlers registered with :meth:`on` run on that thread, as the threaded client runs them on its reader.
    :meth:`disconnect` also ends the thread; call it (or ``RecordingClient.close``) when done.
    """

    eio = None  # no websocket-client transport to tune on close

    def __init__(self, **client_kw: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"{THREAD_PREFIX}{next(_numbers)}",
                                        daemon=True)
        self._thread.start()
        self._client = socketio.AsyncClient(**client_kw)

    def _run(self, coro: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        if not self._thread.is_alive():
            coro.close()
            raise socketio.exceptions.DisconnectedError("the client was closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def on(self, event: str, handler: Callable[..., Any]) -> None:
        """Register ``handler`` (a plain function) for ``event``; ``'*'`` catches every event."""
        self._client.on(event, handler)

    def connect(self, url: str, **kw: Any) -> None:
        """Connect and wait for the namespace, like ``socketio.Client.connect``."""
        try:
            self._run(self._client.connect(url, **kw))
        except BaseException:
            self._stop()  # a refused client is done: no thread left behind
            raise

    @property
    def connected(self) -> bool:
        return bool(self._client.connected)

    def emit(self, event: str, data: Any = None) -> None:
        """Queue ``event`` for sending (returns once it is handed to the transport)."""
        self._run(self._client.emit(event, data))

    def call(self, event: str, data: Any = None, timeout: float = 60) -> Any:
        """Send ``event`` and wait for its acknowledgement."""
        return self._run(self._client.call(event, data, timeout=timeout))

    def disconnect(self) -> None:
        """Disconnect and end the loop thread (idempotent)."""
        if self._thread.is_alive():
            try:
                self._run(self._client.disconnect(), timeout=10)
            finally:
                self._stop()

    def _stop(self) -> None:
        async def drain() -> None:  # let aiohttp finish closing its sessions before the loop stops
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(drain(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._loop.is_running() and not self._loop.is_closed():
            self._loop.close()
