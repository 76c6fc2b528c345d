"""VITA-1.5 served by vLLM's ``AsyncLLM``: stream text deltas, abort by request id, one or two engines.

* :class:`LlmEngine` wraps one ``AsyncLLM``: :meth:`LlmEngine.stream` yields :class:`TextChunk` deltas
  and one final :class:`Finished` (reason ``stop``/``length``/``abort``, time to first token, decode
  tokens/s); :meth:`LlmEngine.abort` stops a request from any task.
* An engine whose core process dies is reported as :class:`EngineDeadError` to the streaming caller,
  and every later request fails at once with the same error until the engine is restarted:
  :meth:`LlmEngine.build_llm` makes a fresh ``AsyncLLM`` on the same served config (off the loop thread)
  and :meth:`LlmEngine.attach` puts it in service (``engine.llm.supervisor`` does both, with backoff).
* :class:`LlmPool` starts one or two engines (both on the default device unless told otherwise) and
  routes each request to the less busy one; aborts go to the engine that owns the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.llm.checkpoint import ResolvedCheckpoint, resolve_checkpoint
from engine.llm.errors import EngineDeadError, InputError, LlmError
from engine.llm.options import LlmOptions
from engine.llm.prompt import BuiltPrompt, PromptBuilder, PromptIds

STATE_PREFIX_PROCESSOR = "vllm_patches.state_prefix:StatePrefixProcessor"
"""vLLM logits processor (by name: imported in the engine core, not here) behind ``state_prefixes``."""
STATE_PREFIX_ARG = "vita_state_prefixes"
"""Its per-request argument (``vllm_patches.state_prefix.STATE_PREFIX_ARG``; kept equal by a test)."""
WATCH_S = 0.5
"""How often a request waiting for output checks that its engine-core process still runs."""

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TextChunk:
    """Newly generated text (raw: the state token is still in it) and its token ids."""

    request_id: str
    text: str
    token_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Finished:
    """The request is over; no further chunk follows. Timings in seconds from submission."""

    request_id: str
    reason: str
    """``stop`` (end of answer), ``length`` (max tokens), ``abort`` (cancelled)."""
    prompt_tokens: int
    generated_tokens: int
    time_to_first_token: float | None
    decode_tokens_per_s: float | None


StreamEvent = TextChunk | Finished


@dataclass
class _Clock:
    """Per-request timing: first token, last token, count."""

    submitted: float = field(default_factory=time.perf_counter)
    first: float | None = None
    last: float | None = None
    tokens: int = 0

    def tick(self, n: int) -> None:
        now = time.perf_counter()
        if n and self.first is None:
            self.first = now
        if n:
            self.last, self.tokens = now, self.tokens + n

    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.submitted

    def rate(self) -> float | None:
        if self.first is None or self.last is None or self.tokens < 2 or self.last <= self.first:
            return None
        return (self.tokens - 1) / (self.last - self.first)


def _visible_entries(visible: str) -> list[str]:
    """The devices a ``CUDA_VISIBLE_DEVICES`` value exposes, in order. As in CUDA, the list ends at the
    first entry that is neither an index nor a ``GPU-``/``MIG-`` UUID (``0,-1,1`` exposes GPU 0 only)."""
    entries = []
    for raw in visible.split(","):
        e = raw.strip()
        if not ((e.isascii() and e.isdigit()) or (e.startswith(("GPU-", "MIG-")) and len(e) > 4)):
            break
        entries.append(e)
    return entries


def cuda_visible_devices_for(device: str | None, visible: str | None) -> str | None:
    """The ``CUDA_VISIBLE_DEVICES`` value that pins a spawned engine to ``device``; ``None``: no pin.

    ``device`` is ``cuda:N`` (N counts the GPUs this process sees, as torch does) or ``cuda:<UUID>``
    (``GPU-…``/``MIG-…``); anything else (``None``, ``cpu``, plain ``cuda``) is not pinned. ``visible``
    is the operator's ``CUDA_VISIBLE_DEVICES`` (``None`` when unset): with ``2,3``, ``cuda:0`` is
    physical GPU 2 and ``cuda:1`` GPU 3, so the engine gets ``2`` or ``3``, never a GPU outside the list.
    Raises ``ValueError`` for a malformed device or an index beyond the visible list.
    """
    if not device or not device.startswith("cuda:"):
        return None
    entry = device.split(":", 1)[1].strip()
    entries = None if visible is None else _visible_entries(visible)
    if entry.startswith(("GPU-", "MIG-")):
        # CUDA accepts a unique prefix of a UUID, so either spelling may be the shorter one.
        if entries is not None and not any(e.startswith(entry) or entry.startswith(e) for e in entries):
            raise ValueError(f"device {device}: {entry} is not in CUDA_VISIBLE_DEVICES={visible!r}")
        return entry
    if not (entry.isascii() and entry.isdigit()):
        raise ValueError(f"device {device!r}: expected cuda:N (N = 0, 1, …) or cuda:GPU-<uuid> / cuda:MIG-<uuid>")
    index = int(entry)
    if entries is None:
        return str(index)
    if index >= len(entries):
        seen = f"cuda:0…cuda:{len(entries) - 1}" if entries else "no GPU"
        raise ValueError(f"device {device}: CUDA_VISIBLE_DEVICES={visible!r} makes {len(entries)} GPU(s) "
                         f"visible ({seen}); cuda:N counts within that list")
    return entries[index]


def visible_devices_for_group(group: str | None, visible: str | None) -> str | None:
    """``CUDA_VISIBLE_DEVICES`` for an engine on a device group ``cuda:0+cuda:1`` (tensor parallelism: vLLM's
    workers take the visible GPUs in order); one device is a group of one. ``None``: no pin."""
    if not group:
        return None
    pinned = [cuda_visible_devices_for(d.strip(), visible) for d in group.split("+")]
    if all(p is None for p in pinned):
        return None
    if any(p is None for p in pinned):
        raise ValueError(f"device group {group!r}: pin every member to a CUDA device, or none")
    if len(set(pinned)) != len(pinned):
        raise ValueError(f"device group {group!r} names a GPU twice")
    return ",".join(p for p in pinned if p is not None)


_ENV_LOCK = threading.Lock()
"""Held while the environment is pinned for a spawn: two engines (re)starting at once on two threads must
not see each other's ``CUDA_VISIBLE_DEVICES``. (``--devices`` pins every engine or none.)"""


@contextlib.contextmanager
def _visible_device(device: str | None) -> Iterator[None]:
    """Pin the engine's spawned processes to one CUDA device (they inherit the environment at spawn).

    ``cuda:N`` is mapped through an existing ``CUDA_VISIBLE_DEVICES`` (see :func:`cuda_visible_devices_for`);
    the operator's value is restored afterwards.
    """
    if visible_devices_for_group(device, os.environ.get("CUDA_VISIBLE_DEVICES")) is None:
        yield  # nothing to pin: unpinned engines (the usual case) start in parallel
        return
    with _ENV_LOCK:
        old = os.environ.get("CUDA_VISIBLE_DEVICES")
        os.environ["CUDA_VISIBLE_DEVICES"] = visible_devices_for_group(device, old) or ""
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = old


def _core_processes_alive(llm: Any) -> bool:
    """Whether every engine-core process of ``llm`` still runs, asked of the OS now.

    ``AsyncLLM.errored`` turns true only once vLLM's output handler has noticed the dead core, some
    time after the process died; a health probe in between would report a dead engine as serving.
    """
    try:
        processes = llm.engine_core.resources.engine_manager.processes
    except AttributeError:  # another vLLM layout (e.g. in-process core): rely on ``errored`` alone
        return True
    return all(p.is_alive() for p in processes)


def shutdown_llm(llm: Any) -> None:
    """Shut an ``AsyncLLM`` down and drop it (a dead core may fail its own shutdown; we are done with it)."""
    with contextlib.suppress(Exception):
        llm.shutdown()
    # Drop the last reference now: AsyncLLM.__del__ would otherwise run at interpreter exit and fail.
    del llm
    gc.collect()


def engine_args(options: LlmOptions, resolved: ResolvedCheckpoint, config_dir: Path,
                on_cpu: bool | None = None) -> Any:
    """vLLM's ``AsyncEngineArgs`` for one engine of ``options`` serving ``resolved`` (its served config in
    ``config_dir``). ``on_cpu``: whether no CUDA device is present (asked of torch when ``None``)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    if on_cpu is None:
        import torch

        on_cpu = not torch.cuda.is_available()
    return AsyncEngineArgs(
        model=str(resolved.folder), hf_config_path=str(config_dir),
        tokenizer=str(config_dir) if resolved.has_tokenizer else None,
        skip_tokenizer_init=not resolved.has_tokenizer, dtype=options.dtype,  # type: ignore[arg-type]
        enforce_eager=options.enforce_eager, max_model_len=options.max_model_len,
        tensor_parallel_size=options.tensor_parallel_size,
        gpu_memory_utilization=options.gpu_memory_share, kv_cache_memory_bytes=options.kv_cache_bytes(on_cpu),
        generation_config="vllm",  # the release's generation config is not the demo's; we set sampling
        limit_mm_per_prompt={"image": options.max_images, "audio": options.history_turns + 1},
        # The monitor's verdict and the answer are one request: its first tokens are held to the state
        # tokens' spellings (``state_prefixes`` of :meth:`LlmEngine.stream`).
        logits_processors=[STATE_PREFIX_PROCESSOR],
    )


class LlmEngine:
    """One vLLM ``AsyncLLM`` serving a resolved VITA-1.5 checkpoint; rebuilt in place after its core dies."""

    def __init__(self, resolved: ResolvedCheckpoint, options: LlmOptions, *, name: str = "llm0",
                 device: str | None = None) -> None:
        self.name = name
        self.options = options
        self.resolved = resolved
        self.device = device
        self._llm: Any = None
        self._dead: str | None = None
        self._active: set[str] = set()
        self._closed = False
        self._config_dir = Path(tempfile.mkdtemp(prefix="vita-served-config-"))
        try:
            resolved.write_served_config(self._config_dir)
            started = time.perf_counter()
            self._llm = self.build_llm()
        except BaseException:
            shutil.rmtree(self._config_dir, ignore_errors=True)
            raise
        self.start_seconds = time.perf_counter() - started
        # Kept from the first AsyncLLM: a restart builds the same tokenizer, and the prompt builder and the
        # speech head hold this one.
        self._tokenizer = self._llm.get_tokenizer() if resolved.has_tokenizer else None
        # Replies end at <|im_end|> (ChatML), whatever the checkpoint's generation config says.
        tokenizer = self._tokenizer
        self._stop_ids = [int(tokenizer.convert_tokens_to_ids("<|im_end|>"))] if tokenizer is not None else []
        log.info("engine %s up in %.1f s", name, self.start_seconds)

    def build_llm(self) -> Any:
        """A new ``AsyncLLM`` on this engine's served config and device; blocks for the whole start.

        Safe on a thread without a running event loop: vLLM then binds its output handler to the loop
        of the first request, so a restart can run beside a loop that keeps serving the other engine.
        """
        from vllm.v1.engine.async_llm import AsyncLLM

        args = engine_args(self.options, self.resolved, self._config_dir)
        with _visible_device(self.device):
            return AsyncLLM.from_engine_args(args)

    def attach(self, llm: Any, start_seconds: float) -> None:
        """Serve from ``llm`` (made by :meth:`build_llm`) from now on; on the loop thread.

        The engine must be dead and released (:meth:`release`); a closed engine shuts ``llm`` down instead."""
        if self._closed:
            shutdown_llm(llm)
            return
        if self._llm is not None:
            raise RuntimeError(f"engine {self.name} still holds its old AsyncLLM; release it first")
        self._llm, self._dead, self.start_seconds = llm, None, start_seconds
        log.info("engine %s restarted in %.1f s", self.name, start_seconds)

    def release(self) -> None:
        """Shut down the ``AsyncLLM`` of a dead engine (sockets, output task, processes); on the loop thread.

        Requests on it have already failed or fail within ``WATCH_S``; new ones fail until :meth:`attach`."""
        llm, self._llm = self._llm, None
        if self._dead is None:
            self._dead = "released"
        if llm is not None:
            shutdown_llm(llm)

    @property
    def tokenizer(self):
        """The checkpoint's tokenizer (``None`` when the folder has none)."""
        return self._tokenizer

    @property
    def async_llm(self):
        """The underlying vLLM ``AsyncLLM`` (for diagnostics and parity checks, e.g. prompt logprobs)."""
        self._check_alive()
        return self._llm

    @property
    def load(self) -> int:
        """Requests in flight."""
        return len(self._active)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def dead_reason(self) -> str | None:
        """Why the engine cannot serve (dead core, released, closed), or ``None`` while it can.

        Asks the OS about the core processes, so a core killed a moment ago already counts as dead."""
        if self._closed:
            return "closed"
        llm = self._llm
        if self._dead is None and (llm is None or llm.errored or not _core_processes_alive(llm)):
            self._dead = "the vLLM engine core stopped"
        return self._dead

    def _check_alive(self) -> None:
        if self._closed:
            raise EngineDeadError(f"engine {self.name} is closed")
        if self.dead_reason() is not None:
            raise EngineDeadError(f"engine {self.name} is dead ({self._dead}); restart it")

    def _sampling(self, max_new_tokens: int | None, ignore_eos: bool, allowed_token_ids: list[int] | None = None,
                  state_prefixes: Sequence[Sequence[int]] | None = None):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        extra = {STATE_PREFIX_ARG: [list(p) for p in state_prefixes]} if state_prefixes else None
        return SamplingParams(
            max_tokens=max_new_tokens or self.options.max_new_tokens, temperature=self.options.temperature,
            output_kind=RequestOutputKind.DELTA, ignore_eos=ignore_eos, stop_token_ids=self._stop_ids,
            detokenize=self.resolved.has_tokenizer, skip_special_tokens=True, allowed_token_ids=allowed_token_ids,
            extra_args=extra)

    async def stream(self, prompt: BuiltPrompt, request_id: str, *, max_new_tokens: int | None = None,
                     ignore_eos: bool = False, allowed_token_ids: list[int] | None = None,
                     state_prefixes: Sequence[Sequence[int]] | None = None,
                     ) -> AsyncIterator[StreamEvent]:
        """Generate for ``prompt``: text deltas as they come, then one :class:`Finished`.

        ``allowed_token_ids`` restricts every sampled token to those ids; ``state_prefixes`` makes the output
        start with one of these token sequences, then lets it run free (the monitor's verdict, then the answer).
        """
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError as VllmEngineDead
        from vllm.v1.engine.exceptions import EngineGenerateError

        self._check_alive()
        llm = self._llm  # this request's AsyncLLM, even if a restart replaces the engine's meanwhile
        request: dict[str, object] = {"prompt_token_ids": prompt.token_ids}
        media: dict[str, object] = {}
        if prompt.images:
            media["image"] = prompt.images
        if prompt.audios:
            media["audio"] = prompt.audios
        if media:
            request["multi_modal_data"] = media
        clock, reason, prompt_len = _Clock(), "abort", len(prompt.token_ids)
        self._active.add(request_id)
        try:
            params = self._sampling(max_new_tokens, ignore_eos, allowed_token_ids, state_prefixes)
            async for out in self._watched(llm, request, params, request_id):
                if out.prompt_token_ids is not None:
                    prompt_len = len(out.prompt_token_ids)
                completion = out.outputs[0]
                clock.tick(len(completion.token_ids))
                if completion.token_ids or completion.text:
                    yield TextChunk(request_id, completion.text, tuple(completion.token_ids))
                if out.finished:
                    reason = completion.finish_reason or "stop"
        except VllmEngineDead as exc:
            if self._llm is llm:
                self._dead = "the vLLM engine core stopped"
            raise EngineDeadError(f"engine {self.name} died while answering {request_id}") from exc
        except (ValueError, EngineGenerateError) as exc:
            if llm.errored:
                if self._llm is llm:
                    self._dead = "the vLLM engine core stopped"
                raise EngineDeadError(f"engine {self.name} died while answering {request_id}") from exc
            if isinstance(exc, LlmError):
                raise
            raise InputError(f"request {request_id} rejected: {exc}") from exc
        except VLLMClientError as exc:  # vLLM refused the request itself (validation), the engine is fine
            raise InputError(f"request {request_id} rejected: {exc}") from exc
        except Exception as exc:
            # The supervisor may shut a dead engine's AsyncLLM down while this request still waits on it;
            # whatever that raises here (a closed socket, ...) is the death, not a bug of this request.
            if not llm.errored and _core_processes_alive(llm):
                raise
            if self._llm is llm:
                self._dead = "the vLLM engine core stopped"
            raise EngineDeadError(f"engine {self.name} died while answering {request_id}") from exc
        finally:
            self._active.discard(request_id)
        yield Finished(request_id, reason, prompt_len, clock.tokens, clock.ttft(), clock.rate())

    async def abort(self, request_id: str) -> None:
        """Stop ``request_id``; its stream ends with ``Finished(reason="abort")``. Unknown ids are ignored."""
        llm = self._llm
        if self._dead is None and not self._closed and llm is not None and request_id in self._active:
            await llm.abort(request_id)

    async def _watched(self, llm: Any, request: dict[str, object], params: Any,
                       request_id: str) -> AsyncIterator[Any]:
        """``AsyncLLM.generate`` outputs, with the core process watched meanwhile.

        A core killed before vLLM's output handler has anything to wait for is noticed by vLLM late or
        never, and the request would wait forever: here a dead core ends the wait within ``WATCH_S``.
        Leaving early (abort, error) cancels the generation, which makes vLLM abort the request.
        """
        from vllm.v1.engine.exceptions import EngineDeadError as VllmEngineDead

        outputs: asyncio.Queue[Any] = asyncio.Queue()
        end = object()

        async def pump() -> None:
            try:
                async for out in llm.generate(request, params, request_id=request_id):
                    outputs.put_nowait(out)
                outputs.put_nowait(end)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # handed to the consumer, raised there
                outputs.put_nowait(exc)

        task = asyncio.create_task(pump(), name=f"vllm-{request_id}")
        try:
            while True:
                try:
                    item = await asyncio.wait_for(outputs.get(), WATCH_S)
                except TimeoutError:
                    if not _core_processes_alive(llm):
                        raise VllmEngineDead("the engine core process exited") from None
                    continue
                if item is end:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            task.cancel()

    def health(self) -> dict[str, object]:
        """``ok``, in-flight requests, start time, and why the engine is dead if it is."""
        dead = self.dead_reason()
        return {"ok": dead is None, "name": self.name, "active": self.load,
                "start_seconds": round(self.start_seconds, 2), "dead": dead}

    def close(self) -> None:
        """Shut the engine down (idempotent) and remove our served-config folder."""
        if self._closed:
            return
        self._closed = True
        llm, self._llm = self._llm, None
        if llm is not None:
            shutdown_llm(llm)
        shutil.rmtree(self._config_dir, ignore_errors=True)


class LlmPool:
    """One or two :class:`LlmEngine` on one resolved checkpoint, with prompt building and routing."""

    def __init__(self, options: LlmOptions) -> None:
        if options.model_path is None:
            raise ValueError("LlmOptions.model_path is required to start engines")
        self.options = options
        self.resolved = resolve_checkpoint(options.model_path, max_dynamic_patch=options.max_dynamic_patch)
        for pinned in options.devices:  # a bad --devices fails before the first engine spends minutes starting
            visible_devices_for_group(pinned, os.environ.get("CUDA_VISIBLE_DEVICES"))
        self.engines: list[LlmEngine] = []
        try:
            self._start_engines()
        except BaseException:
            self.close()
            raise
        self._owner: dict[str, LlmEngine] = {}

    def _start_engines(self) -> None:
        """Start every engine; on CPU all at once (each start is mostly single-threaded process spawning and
        imports, so two take little longer than one). On a GPU one after another: vLLM sizes an engine's KV
        cache from the device memory it sees free, which another engine starting beside it would skew."""
        import torch

        options = self.options
        names = [f"llm{i}" for i in range(options.num_engines)]
        devices: list[str | None] = list(options.devices) if options.devices else [None] * len(names)
        if len(names) == 1 or torch.cuda.is_available():
            for name, device in zip(names, devices, strict=True):
                self.engines.append(LlmEngine(self.resolved, options, name=name, device=device))
            return
        # vLLM marks its plugins loaded before it runs them: a second engine starting beside the first would
        # read our served config before the plugin has taught transformers its model type (an ERROR, a 2 s
        # retry). Loading them here, before either start, finishes the registration first.
        from vllm.plugins import load_general_plugins

        load_general_plugins()
        built: list[LlmEngine | BaseException | None] = [None] * len(names)

        def build(i: int) -> None:
            try:
                built[i] = LlmEngine(self.resolved, options, name=names[i], device=devices[i])
            except BaseException as exc:  # reported below, after every start has ended
                built[i] = exc

        threads = [threading.Thread(target=build, args=(i,), name=f"start-{name}", daemon=True)
                   for i, name in enumerate(names)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.engines = [e for e in built if e is not None and not isinstance(e, BaseException)]
        for outcome in built:
            if isinstance(outcome, BaseException):
                raise outcome

    def prompt_builder(self, state_ids: dict[str, tuple[int, ...]] | None = None) -> PromptBuilder:
        """A builder for this checkpoint (needs its tokenizer); ``state_ids`` spell the state tokens."""
        tokenizer = self.engines[0].tokenizer
        if tokenizer is None:
            raise InputError(f"{self.resolved.folder} has no tokenizer files; only token-id prompts can be served")
        ids = PromptIds(image=int(self.resolved.config["image_token_index"]),
                        audio=int(self.resolved.config["audio_token_index"]),
                        im_end=int(tokenizer.convert_tokens_to_ids("<|im_end|>")))
        return PromptBuilder(tokenizer, ids, budget=self.options.prompt_budget, max_images=self.options.max_images,
                             max_dynamic_patch=self.options.max_dynamic_patch, state_ids=state_ids)

    def _pick(self) -> LlmEngine:
        alive = [e for e in self.engines if e.dead_reason() is None]
        if not alive:
            raise EngineDeadError("no LLM engine can serve now (every one is dead or restarting)")
        return min(alive, key=lambda e: e.load)

    async def stream(self, prompt: BuiltPrompt, request_id: str, **kwargs: object) -> AsyncIterator[StreamEvent]:
        """Stream ``prompt`` on the less busy live engine (see :meth:`LlmEngine.stream`)."""
        engine = self._pick()
        self._owner[request_id] = engine
        try:
            async for event in engine.stream(prompt, request_id, **kwargs):  # type: ignore[arg-type]
                yield event
        finally:
            self._owner.pop(request_id, None)

    async def abort(self, request_id: str) -> None:
        """Abort ``request_id`` on whichever engine runs it."""
        engine = self._owner.get(request_id)
        if engine is not None:
            await engine.abort(request_id)

    def health(self) -> dict[str, object]:
        """Pool health: ok while at least one engine lives."""
        engines = [e.health() for e in self.engines]
        return {"ok": any(e["ok"] for e in engines), "engines": engines}

    def close(self) -> None:
        """Shut every engine down."""
        for engine in self.engines:
            engine.close()
