"""One session's full-duplex conversation: judge each utterance, swap roles, stream the answer.

Every coroutine here runs on the engine's single loop thread (see :mod:`engine.duplex.loop`); the
public methods only hand work over to it, so they return at once whatever thread calls them. The
conversation's history, roles and turns belong to it alone (nothing per user is global).

Roles: of the two vLLM engines one is this conversation's *generator* (speaking the current answer)
and the other its *monitor* (judging the next utterance). A spoken turn is judged on the monitor by the
first tokens of the answer request itself, held to the state tokens' spellings (☞ addressed, ☟ not;
``vllm_patches.state_prefix``). On ☟ that request is aborted. On ☞ the monitor takes over: older replies
are stopped (request aborted, speech cancelled), the interrupted answer enters the history only as far as
the client had heard it when the prompt was built, and the same request goes on as the answer (no second
prefill), so the monitor's engine becomes the generator.

A provisional turn (answered ahead of the end-of-turn decision, :attr:`TurnRequest.provisional`) runs the
same way except for the take-over, which waits for :meth:`DuplexConversation.confirm_turn`: until then it
changes neither the history nor the roles, and a withdrawn one leaves no trace.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from engine.duplex.frames import pick_frames, square_frame
from engine.duplex.heard import SpokenLog
from engine.interface import (
    AudioChunk,
    Conversation,
    EngineError,
    EventSink,
    Judgement,
    ReplyEnd,
    ReplyEvent,
    TextDelta,
    TurnRequest,
)
from engine.llm.engine import Finished, LlmEngine, StreamEvent, TextChunk
from engine.llm.errors import EngineDeadError, LlmError
from engine.llm.prompt import SPOKEN, TYPED, BuiltPrompt, ConversationHistory, UserTurn
from engine.llm.reply_text import ReplyTextDecoder
from engine.speech.errors import SpeechCheckpointError, SpeechInputError
from engine.speech.head import ReplySynthesizer

if TYPE_CHECKING:
    from engine.duplex.engine import VitaEngine

log = logging.getLogger(__name__)


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 1)


@dataclass(eq=False)
class _Turn:
    """One user turn and the reply to it (the loop thread owns it; ``stop`` may come from anywhere)."""

    request: TurnRequest
    t0: float = field(default_factory=time.perf_counter)
    user: UserTurn | None = None
    stopped: threading.Event = field(default_factory=threading.Event)
    inflight: dict[str, LlmEngine] = field(default_factory=dict)
    judge_engine: int | None = None
    prompt_last: _Turn | None = None
    """The earlier answer the judged prompt included, and how much of it was heard then (committed to the
    history as such when this turn takes over)."""
    prompt_heard: str = ""
    synth: ReplySynthesizer | None = None
    text: list[str] = field(default_factory=list)
    spoken: SpokenLog = field(default_factory=SpokenLog)
    played: int | None = None
    generated_all: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    confirmed: bool = False
    """A provisional turn was confirmed (set on the loop, with ``decided``)."""
    decided: asyncio.Event = field(default_factory=asyncio.Event)
    """Set on the loop once a provisional turn is confirmed, withdrawn or stopped."""

    @property
    def reply_id(self) -> str:
        return self.request.reply_id

    @property
    def epoch(self) -> int:
        return self.request.epoch

    def heard_text(self) -> str:
        """The reply as the user heard it: all of it when every sample was played (or the client never
        reported playback), else the clauses and words covered by the played samples."""
        full = "".join(self.text).strip()
        if self.played is None:
            return full if self.generated_all or not self.stopped.is_set() else self.spoken.heard(1 << 62)
        if self.generated_all and self.played >= self.spoken.total_samples:
            return full
        return self.spoken.heard(self.played)


class _JudgedAnswer:
    """One request's events: first the monitor's verdict (a state token's spelling), then the answer."""

    def __init__(self, events: AsyncIterator[StreamEvent], engine: int) -> None:
        self._events = events
        self.engine = engine
        self._held: list[StreamEvent] = []

    async def verdict(self, spellings: dict[str, tuple[int, ...]]) -> str | None:
        """The state whose spelling the output starts with (``None``: the request ended before one)."""
        got: list[int] = []
        async for event in self._events:
            if isinstance(event, Finished):
                self._held.append(event)
                return None
            got.extend(event.token_ids)
            for state, ids in spellings.items():
                if tuple(got[: len(ids)]) == ids:
                    if len(got) > len(ids):  # the answer's first tokens came in the same delta
                        self._held.append(TextChunk(event.request_id, "", tuple(got[len(ids):])))
                    return state
        return None

    async def __aiter__(self) -> AsyncIterator[StreamEvent]:
        for event in self._held:
            yield event
        self._held = []
        async for event in self._events:
            yield event

    async def close(self) -> None:
        """Leave the request (vLLM aborts it) if it is still running."""
        await self._events.aclose()  # type: ignore[attr-defined]


class DuplexConversation(Conversation):
    """One session's conversation over the shared :class:`~engine.duplex.engine.VitaEngine`."""

    answers_ahead = True

    def __init__(self, engine: VitaEngine, sink: EventSink) -> None:
        self._engine = engine
        self._sink = sink
        self._options = engine.options
        self._history = ConversationHistory(max_turns=engine.llm_options.history_turns)
        self._turns: dict[str, _Turn] = {}  # running turns by reply id (loop thread writes)
        self._last: _Turn | None = None  # the latest answered turn, not yet in the history
        self._generator = 0  # index of this conversation's generator engine
        self._closed = False
        self._lock = threading.Lock()  # guards _turns / _last against the server's threads
        self._tts_threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ public (any thread)

    def start_turn(self, request: TurnRequest) -> None:
        """Judge and (if addressed) answer ``request``; events go to the sink. Returns at once."""
        turn = _Turn(request)
        with self._lock:
            if self._closed:
                return
            self._turns[request.reply_id] = turn
        self._engine.loop.submit(self._run(turn))

    def cancel(self, epoch: int) -> None:
        """Stop every turn whose epoch is ``<= epoch`` (abort its requests, cancel its speech)."""
        with self._lock:
            turns = [t for t in self._turns.values() if t.epoch <= epoch]
            last = self._last
        if last is not None and last.epoch <= epoch:
            turns.append(last)
        for turn in turns:
            self._stop(turn)

    def confirm_turn(self, reply_id: str) -> None:
        """The provisional turn ``reply_id`` is real: it takes the conversation over (on the loop)."""
        self._engine.loop.call(self._decide, reply_id, True)

    def withdraw_turn(self, reply_id: str) -> None:
        """The provisional turn ``reply_id`` never happened: stop it; it never enters the history."""
        with self._lock:
            turn = self._turns.get(reply_id)
        if turn is not None:
            self._stop(turn)

    def _decide(self, reply_id: str, confirmed: bool) -> None:
        with self._lock:
            turn = self._turns.get(reply_id)
        if turn is not None and not turn.decided.is_set():
            turn.confirmed = confirmed and not turn.stopped.is_set()
            turn.decided.set()

    def playback_report(self, reply_id: str, samples_played: int) -> None:
        """Remember how much of ``reply_id`` the client played (for the history after an interruption).

        Applied on the loop thread, where the history is built, so a report never races a prompt."""
        self._engine.loop.call(self._record_playback, reply_id, int(samples_played))

    def _record_playback(self, reply_id: str, samples_played: int) -> None:
        with self._lock:
            turn = self._turns.get(reply_id) or (self._last if self._last and self._last.reply_id == reply_id else None)
        if turn is not None:
            turn.played = max(turn.played or 0, samples_played)

    def reset(self) -> None:
        """Forget the history (on the loop, so it never races a prompt being built)."""
        self._engine.loop.call(self._forget)

    def close(self) -> None:
        """Stop everything; speech workers end at their next step."""
        with self._lock:
            self._closed = True
            turns = list(self._turns.values()) + ([self._last] if self._last else [])
        for turn in turns:
            self._stop(turn)
        for th in list(self._tts_threads):
            th.join(timeout=5)
        self._engine.loop.call(self._forget)

    # ------------------------------------------------------------------ internals (loop thread)

    def _forget(self) -> None:
        self._history.clear()
        self._last = None

    def _emit(self, event: ReplyEvent) -> None:
        if not self._closed:
            self._sink(event)

    def _stop(self, turn: _Turn) -> None:
        turn.stopped.set()
        self._engine.loop.call(self._decide, turn.reply_id, False)  # an unconfirmed turn is withdrawn
        if turn.synth is not None:
            turn.synth.cancel()
        for rid, llm in list(turn.inflight.items()):
            self._engine.loop.submit(llm.abort(rid))

    async def _run(self, turn: _Turn) -> None:
        req = turn.request
        judged: _JudgedAnswer | None = None
        try:
            turn.user = self._user_turn(req)
            log.debug("turn %s: judging (%d images)", req.reply_id, len(turn.user.images))
            verdict = self._policy(turn)
            if verdict is None:
                judged, verdict = await self._judge(turn)
            addressed, why, state = verdict
            log.debug("turn %s: addressed=%s (%s)", req.reply_id, addressed, why)
            if turn.stopped.is_set():
                self._emit(ReplyEnd(req.reply_id, req.epoch, "cancelled", dict(turn.timings)))
                return
            self._emit(Judgement(req.reply_id, req.epoch, addressed, why, dict(turn.timings)))
            if not addressed:
                self._emit(ReplyEnd(req.reply_id, req.epoch, "not_addressed", dict(turn.timings)))
                return
            # Built before the take-over either way, with the last answer as heard so far (the take-over
            # commits exactly that), so a provisional answer needs nothing the confirmation changes.
            prompt = None if judged is not None else self._prompt(turn)
            if not req.provisional:
                self._take_over(turn)
                await self._answer(turn, state, judged, prompt)
                return
            answer = asyncio.ensure_future(self._answer(turn, state, judged, prompt))
            try:
                await turn.decided.wait()
            except asyncio.CancelledError:
                answer.cancel()
                raise
            if turn.confirmed:
                self._take_over(turn)
            await answer
        except (LlmError, SpeechInputError, SpeechCheckpointError) as exc:
            # A dead engine is fatal to the session only when no engine is left to serve its next turn;
            # otherwise this reply fails and the conversation (and its history) goes on with another one.
            fatal = isinstance(exc, EngineDeadError) and not self._engine.serving()
            self._fail(turn, str(exc), fatal=fatal)
        except asyncio.CancelledError:
            self._stop(turn)
            raise
        except Exception as exc:  # a bug must reach the client as an error, not a silent hang
            log.exception("turn %s failed", req.reply_id)
            self._fail(turn, f"the engine failed on this turn: {type(exc).__name__}", fatal=False)
        finally:
            if judged is not None:
                await judged.close()
            with self._lock:
                self._turns.pop(req.reply_id, None)

    def _fail(self, turn: _Turn, message: str, fatal: bool) -> None:
        self._stop(turn)
        self._emit(EngineError(turn.reply_id, turn.epoch, message, fatal))
        self._emit(ReplyEnd(turn.reply_id, turn.epoch, "error", dict(turn.timings)))

    def _user_turn(self, req: TurnRequest) -> UserTurn:
        opts = self._options
        frames = pick_frames(req.frames, req.start_sample, req.end_sample or req.start_sample, opts.max_frames)
        images = tuple(square_frame(f.jpeg, opts.frame_max_side) for f in frames)
        audio = req.audio if req.audio.size else None
        return UserTurn(audio=audio, images=images, text=req.text)

    async def _stream(self, turn: _Turn, index: int, prompt, rid: str, **kw: object) -> AsyncIterator[StreamEvent]:
        pool = self._engine.pool
        if pool is None:
            raise EngineDeadError("the engine is closed")
        llm = pool.engines[index]
        if turn.stopped.is_set():
            return
        turn.inflight[rid] = llm
        try:
            async for event in llm.stream(prompt, rid, **kw):  # type: ignore[arg-type]
                yield event
                if turn.stopped.is_set():
                    await llm.abort(rid)
        finally:
            turn.inflight.pop(rid, None)

    def _policy(self, turn: _Turn) -> tuple[bool, str, str] | None:
        """(addressed, why, state token of the answer) where no model verdict is needed, else ``None``."""
        req, opts = turn.request, self._options
        if req.text:
            return True, "typed", TYPED
        if req.speech_ms() < opts.min_utterance_ms:  # the speech, not its pre-roll and post-roll
            return False, "too_short", SPOKEN
        if opts.awakening == "always":
            return True, "policy", SPOKEN
        return None

    async def _judge(self, turn: _Turn) -> tuple[_JudgedAnswer, tuple[bool, str, str]]:
        """The monitor's verdict: the first tokens of the answer request, held to the states' spellings."""
        eng = self._engine
        index = eng.live_index(prefer_not=self._generator)
        prompt = self._prompt(turn)
        spellings = {state: eng.states.ids[state] for state in eng.judge.choices.values()}
        events = self._stream(turn, index, prompt, turn.request.reply_id, state_prefixes=list(spellings.values()))
        judged = _JudgedAnswer(events, index)
        state = await judged.verdict(spellings)
        turn.timings["judge"] = _ms(turn.t0)
        turn.judge_engine = index
        return judged, (state == SPOKEN, "state_token", SPOKEN)

    def _prompt(self, turn: _Turn) -> BuiltPrompt:
        """``turn``'s prompt; the latest answer (not yet in the history) counts as heard so far."""
        assert turn.user is not None  # set by _run first
        history, last = self._history, self._last
        if last is not None and last.user is not None:
            turn.prompt_last, turn.prompt_heard = last, last.heard_text()
            history = history.plus(last.user, turn.prompt_heard)
        return self._engine.builder.build(turn.user, history)

    def _take_over(self, turn: _Turn) -> None:
        """The turn is addressed: commit the last answer as heard, swap roles.

        Older replies are not stopped here: the session's turn machine owns a reply's lifecycle and
        cancels them (:meth:`cancel`) when it acts on this verdict."""
        with self._lock:
            last, self._last = self._last, turn
        if last is not None and last.user is not None:
            # What the judged prompt said was heard, so the history and the running request agree.
            self._history.add(last.user, turn.prompt_heard if last is turn.prompt_last else last.heard_text())
        if turn.judge_engine is not None:
            self._generator = turn.judge_engine

    async def _answer(self, turn: _Turn, state: str, judged: _JudgedAnswer | None,
                      prompt: BuiltPrompt | None) -> None:
        req, opts, eng = turn.request, self._options, self._engine
        events: AsyncIterator[StreamEvent]
        if judged is not None:  # the verdict's request goes on as the answer
            self._generator, events = judged.engine, aiter(judged)
        else:
            self._generator = index = eng.live_index(prefer=self._generator)
            assert prompt is not None
            # The state token starts the answer (typed: ☜, spoken: ☞), as the model was trained.
            prompt = dataclasses.replace(prompt, token_ids=[*prompt.token_ids, *eng.states.ids[state]])
            events = self._stream(turn, index, prompt, req.reply_id)
        synth = eng.head.new_reply(req.reply_id, req.epoch, eng.tts_tokenizer, opts.tts_seed)
        turn.synth = synth
        if turn.stopped.is_set():
            synth.cancel()
        spoken = asyncio.get_running_loop().create_future()
        worker = threading.Thread(target=self._speak, args=(turn, synth, spoken), name=f"tts-{req.reply_id}",
                                  daemon=True)
        self._tts_threads = [t for t in self._tts_threads if t.is_alive()] + [worker]
        worker.start()
        visible = ReplyTextDecoder(eng.token_bytes)
        try:
            async for event in events:
                if isinstance(event, TextChunk):
                    turn.timings.setdefault("answer_first_token", _ms(turn.t0))
                    self._show(turn, synth, visible.feed(event.token_ids))
                else:
                    turn.timings["llm_tokens"] = float(event.generated_tokens)
                    self._show(turn, synth, visible.flush())
        finally:
            if not opts.streaming and not turn.stopped.is_set():
                synth.push_text("".join(turn.text))
            turn.timings.setdefault("first_clause", _ms(turn.t0))
            synth.end_text()
        turn.generated_all = not turn.stopped.is_set()
        error = await spoken
        if error is not None:
            raise error
        turn.timings["total"] = _ms(turn.t0)
        reason: Literal["cancelled", "done"] = "cancelled" if turn.stopped.is_set() else "done"
        self._emit(ReplyEnd(req.reply_id, req.epoch, reason, dict(turn.timings)))

    def _show(self, turn: _Turn, synth: ReplySynthesizer, text: str) -> None:
        """Send visible reply text to the client and, when streaming, to the speech head."""
        if not text:
            return
        req = turn.request
        turn.timings.setdefault("first_token", _ms(turn.t0))
        turn.text.append(text)
        self._emit(TextDelta(req.reply_id, req.epoch, text))
        if self._options.streaming and synth.push_text(text):  # the speech head's splitter: a clause is complete
            turn.timings.setdefault("first_clause", _ms(turn.t0))

    def _speak(self, turn: _Turn, synth: ReplySynthesizer, done: asyncio.Future) -> None:
        """Speech worker thread: synthesise the reply's clauses and send the chunks as they come."""
        error: Exception | None = None
        total = 0
        try:
            for chunk in synth.chunks():
                if turn.stopped.is_set():
                    break
                total += chunk.num_samples
                turn.spoken.add_chunk(synth.spoken_text, total)
                if "first_audio" not in turn.timings and synth.first_code_at is not None:
                    turn.timings["first_code"] = round((synth.first_code_at - turn.t0) * 1000, 1)
                turn.timings.setdefault("first_audio", _ms(turn.t0))
                self._emit(AudioChunk(chunk.reply_id, chunk.epoch, chunk.seq, chunk.pcm))
        except Exception as exc:  # reported on the loop as the turn's error
            log.exception("speech of %s failed", turn.reply_id)
            error = exc if isinstance(exc, SpeechInputError) else SpeechInputError(f"speech synthesis failed: {exc}")
        finally:
            self._engine.loop.call(_settle, done, error)


def _settle(future: asyncio.Future, error: Exception | None) -> None:
    if not future.done():
        future.set_result(error)
