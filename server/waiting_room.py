"""The waiting room: when every session slot (``--max_users``) is taken, clients wait in a bounded FIFO
queue instead of being refused, and the first one is admitted as soon as a slot frees.

Pure and single-threaded on an injected clock: no sockets, threads or wall clock (``server/app.py`` calls
it under the server's lock and does the I/O), so admission order, timeouts and the wait estimate are tested
on virtual time (``tests/test_waiting_room.py``).

The estimated wait is honest about what it knows: ``None`` until a session has ended here (nothing to base
it on). After that, each running session is expected to last the mean length of the last
:attr:`WaitingRoom.history` sessions (at least a tenth of that mean is taken to remain, however old it
already is), and every admitted client is expected to stay that long too; the estimate for position *n* is
when the *n*-th slot frees under those assumptions.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

Clock = Callable[[], float]

MIN_REMAINING_SHARE = 0.1
"""A running session older than the mean is still expected to last this share of the mean (it is not over)."""


@dataclass(frozen=True, slots=True)
class Place:
    """Where one waiting client stands."""

    key: Hashable
    position: int
    """1 = admitted next."""
    waiting: int
    """How many clients wait in all."""
    estimated_wait_s: float | None
    """Seconds until admission by the estimate in the module docstring; ``None`` while unknown."""
    waited_s: float
    """Seconds since this client joined."""


class WaitingRoom:
    """A bounded FIFO of clients waiting for one of ``slots`` session slots.

    Keys are opaque (the Socket.IO sid in the server). The caller says when sessions start and end
    (:meth:`session_started`, :meth:`session_ended`), so the room knows the ages of running sessions and the
    lengths of finished ones; it never decides by itself that a slot is free: the caller checks its own
    session count and calls :meth:`admit`.
    """

    def __init__(self, capacity: int, timeout_s: float, slots: int, clock: Clock = time.monotonic,
                 history: int = 20) -> None:
        if capacity < 0 or timeout_s <= 0 or slots < 1:
            raise ValueError("capacity must be >= 0, timeout_s > 0 and slots >= 1")
        self.capacity = capacity
        self.timeout_s = timeout_s
        self.slots = slots
        self.history = history
        self._clock = clock
        self._queue: OrderedDict[Hashable, float] = OrderedDict()  # key -> joined at, in arrival order
        self._running: dict[Hashable, float] = {}  # session key -> started at
        self._lengths: deque[float] = deque(maxlen=history)

    def now(self) -> float:
        """The room's clock (deadlines from :meth:`next_deadline` are on it)."""
        return self._clock()

    def __len__(self) -> int:
        return len(self._queue)

    def __contains__(self, key: object) -> bool:
        return key in self._queue

    # ------------------------------------------------------------------ the queue

    def join(self, key: Hashable) -> Place | None:
        """Put ``key`` at the end of the queue; ``None`` when the queue is full (the caller refuses it)."""
        if key in self._queue:
            return self.place(key)
        if len(self._queue) >= self.capacity:
            return None
        self._queue[key] = self._clock()
        return self.place(key)

    def leave(self, key: Hashable) -> bool:
        """Take ``key`` out of the queue (it disconnected); False if it was not waiting."""
        return self._queue.pop(key, None) is not None

    def admit(self) -> Hashable | None:
        """Take the first waiting key out of the queue (the caller opens its session); ``None`` when empty."""
        if not self._queue:
            return None
        key, _joined = self._queue.popitem(last=False)
        return key

    def expired(self) -> list[Hashable]:
        """Take out and return every key that has waited ``timeout_s`` or longer (the caller tells them)."""
        cutoff = self._clock() - self.timeout_s
        gone = [k for k, joined in self._queue.items() if joined <= cutoff]
        for k in gone:
            del self._queue[k]
        return gone

    def clear(self) -> list[Hashable]:
        """Empty the queue (the server shuts down); returns who was waiting."""
        keys = list(self._queue)
        self._queue.clear()
        return keys

    def next_deadline(self) -> float | None:
        """Clock time at which the first waiter times out; ``None`` when nobody waits."""
        if not self._queue:
            return None
        return next(iter(self._queue.values())) + self.timeout_s

    # ------------------------------------------------------------------ where everyone stands

    def place(self, key: Hashable) -> Place | None:
        """Where ``key`` stands, or ``None`` if it is not waiting."""
        for p in self.places():
            if p.key == key:
                return p
        return None

    def places(self) -> list[Place]:
        """Every waiting client's place, first in line first."""
        now = self._clock()
        waits = self._estimates(len(self._queue), now)
        n = len(self._queue)
        return [Place(key, i + 1, n, waits[i], round(now - joined, 3))
                for i, (key, joined) in enumerate(self._queue.items())]

    # ------------------------------------------------------------------ what the estimate learns from

    def session_started(self, key: Hashable) -> None:
        """A session opened (from the queue or directly)."""
        self._running[key] = self._clock()

    def session_ended(self, key: Hashable) -> None:
        """A session closed: its length feeds the estimate."""
        started = self._running.pop(key, None)
        if started is not None:
            self._lengths.append(max(0.0, self._clock() - started))

    def mean_session_s(self) -> float | None:
        """Mean length of the last :attr:`history` sessions; ``None`` before the first one ended."""
        return sum(self._lengths) / len(self._lengths) if self._lengths else None

    def _estimates(self, n: int, now: float) -> list[float | None]:
        """Estimated seconds until each of the first ``n`` waiters is admitted (see the module docstring)."""
        mean = self.mean_session_s()
        if mean is None or n == 0:
            return [None] * n
        # When each slot frees: running sessions first (expected remaining time), then idle slots at once.
        frees = [max(mean - (now - started), MIN_REMAINING_SHARE * mean) for started in self._running.values()]
        frees = sorted(frees)[: self.slots] + [0.0] * max(0, self.slots - len(frees))
        heapq.heapify(frees)
        out: list[float | None] = []
        for _ in range(n):
            t = heapq.heappop(frees)
            out.append(round(t, 1))
            heapq.heappush(frees, t + mean)  # the admitted client then holds that slot for a mean session
        return out
