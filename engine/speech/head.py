"""The streaming speech head: text (or token ids) in, tagged 24 kHz PCM16 :class:`AudioChunk` s out.

One :class:`SpeechHead` per server holds the read-only weights; one :class:`ReplySynthesizer` per reply
holds everything mutable (clause queue, KV cache, sampler, chunk counter), so sessions share no state
and decode concurrently without a lock (see ``docs/bench/bench_speech.json`` for the measurement).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.interface import REPLY_SAMPLE_RATE, AudioChunk
from engine.speech.batching import StepBatcher
from engine.speech.checkpoint import LoadReport
from engine.speech.codec import Codec
from engine.speech.conditioning import EmbeddingTable, TextTokenizer, token_ids_for
from engine.speech.decoder import SpeechDecoder
from engine.speech.errors import SpeechCheckpointError, SpeechInputError
from engine.speech.options import ReferenceStreamOptions, SpeechOptions
from engine.speech.pcm import to_pcm16
from engine.speech.sampler import CodeSampler, undecodable_mask
from engine.speech.streaming import ReferenceChunker, StreamingVocoder
from engine.speech.text_front import ClauseSplitter, normalize_for_speech

log = logging.getLogger(__name__)

CODES_PER_SECOND = 40


@dataclass(frozen=True, slots=True)
class SpeechHeadReport:
    """What loading found: per-file key accounting and the device used."""

    decoder: LoadReport
    codec: LoadReport
    device: str


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class SpeechHead:
    """Shared, read-only speech decoder + codec + embedding table; makes per-reply synthesisers."""

    def __init__(
        self,
        decoder: SpeechDecoder,
        codec: Codec,
        table: EmbeddingTable | None,
        options: SpeechOptions | None = None,
        report: SpeechHeadReport | None = None,
        reference: ReferenceStreamOptions | None = None,
    ) -> None:
        """``reference``: stream with the public demo's chunker instead of the project's (tests and parity
        checks; not a production option)."""
        if codec.cfg.n_codes != decoder.cfg.odim:
            raise SpeechCheckpointError(
                f"codec has {codec.cfg.n_codes} codes but the decoder emits {decoder.cfg.odim}"
            )
        if table is not None and table.hidden_size != 4 * decoder.cfg.idim:
            raise SpeechCheckpointError(
                f"LLM embedding width {table.hidden_size} is not 4 × decoder idim {decoder.cfg.idim}"
            )
        self.decoder, self.codec, self.table = decoder, codec, table
        self.options = options or SpeechOptions()
        self.reference = reference
        self.report = report
        self.mask = undecodable_mask(decoder.cfg, codec.cfg.n_codes)
        self.batcher = StepBatcher(decoder)

    @classmethod
    def from_checkpoint(
        cls,
        tts_folder: Path,
        llm_folder: Path | None = None,
        device: str | torch.device | None = None,
        options: SpeechOptions | None = None,
        reference: ReferenceStreamOptions | None = None,
    ) -> SpeechHead:
        """Load ``tts_folder/{decoder,codec}`` and (optionally) the LLM embedding table of ``llm_folder``.

        The decoder runs in bf16 on CUDA (as released) and fp32 on CPU; the codec always in fp32.
        """
        dev = torch.device(device) if device is not None else default_device()
        tts_folder = Path(tts_folder)
        trust = (options or SpeechOptions()).trust_checkpoint_pickles
        decoder, dec_report = SpeechDecoder.from_files(tts_folder / "decoder", trust)
        codec, codec_report = Codec.from_files(tts_folder / "codec", trust)
        decoder.to(dev, torch.bfloat16 if dev.type == "cuda" else torch.float32)
        codec.to(dev)
        table = EmbeddingTable.from_checkpoint(Path(llm_folder)) if llm_folder is not None else None
        report = SpeechHeadReport(dec_report, codec_report, str(dev))
        for name, rep in (("decoder", dec_report), ("codec", codec_report)):
            if rep.unexpected:
                log.warning("speech %s checkpoint has %d unused keys, e.g. %s", name, len(rep.unexpected), rep.unexpected[:3])
        return cls(decoder, codec, table, options, report, reference)

    def code_cap(self, num_tokens: int) -> int:
        """Most codes one clause of ``num_tokens`` tokens may produce."""
        per_token = CODES_PER_SECOND * self.options.max_seconds_per_token
        return min(self.options.max_codes, math.ceil(per_token * num_tokens) + CODES_PER_SECOND)

    def generate_codes(
        self,
        conditioning: torch.Tensor,
        sampler: CodeSampler,
        max_codes: int,
        cancelled: threading.Event | None = None,
    ) -> Iterator[int]:
        """Codes for one clause: stops at EOS (not yielded), at ``max_codes``, or before the next AR step
        once ``cancelled`` is set."""
        cfg = self.decoder.cfg
        state = self.decoder.start(conditioning, max_codes)
        step = self.batcher.step if self.options.batch_sessions else self.decoder.step
        token = cfg.sos
        for _ in range(max_codes):
            if cancelled is not None and cancelled.is_set():
                return
            token = sampler.sample(step(state, token))
            if token == cfg.eos:
                return
            yield token

    def new_reply(
        self,
        reply_id: str,
        epoch: int,
        tokenizer: TextTokenizer | None = None,
        seed: int | None = None,
    ) -> ReplySynthesizer:
        """A synthesiser for one reply (one per reply; not shared between sessions)."""
        return ReplySynthesizer(self, reply_id, epoch, tokenizer, seed)


class ReplySynthesizer:
    """Speaks one reply: text is pushed as it streams in; :meth:`chunks` yields tagged PCM16 audio.

    ``push_text`` / ``end_text`` / ``cancel`` may be called from any thread; ``chunks`` is consumed by
    one worker thread and blocks (on a condition, no polling) until text or the end arrives.
    """

    def __init__(
        self,
        head: SpeechHead,
        reply_id: str,
        epoch: int,
        tokenizer: TextTokenizer | None,
        seed: int | None,
    ) -> None:
        self.head, self.reply_id, self.epoch = head, reply_id, epoch
        self._tokenizer = tokenizer
        self._sampler = CodeSampler(head.options.top_k, head.mask, seed)
        self._splitter = ClauseSplitter(head.options.clauses)
        self._pending: deque[str | list[int]] = deque()
        self._cond = threading.Condition()
        self._ended = False
        self._cancelled = threading.Event()
        self._seq = 0
        self._clauses_spoken = 0
        self.codes_before_first_audio: int | None = None
        self.first_code_at: float | None = None
        """``time.perf_counter()`` when the reply's first code was drawn (latency breakdowns)."""
        self.spoken_text: list[str] = []
        """Normalised clauses in the order they were spoken."""
        self.spoken_codes: list[list[int]] = []
        """Codec codes of each clause (kept in memory with the reply, for diagnostics and tests)."""

    # --- producer side (any thread) ---

    def push_text(self, delta: str) -> int:
        """Add streamed reply text; complete clauses are queued for synthesis. Returns how many."""
        with self._cond:
            if self._ended:
                raise SpeechInputError("push_text after end_text")
            clauses = self._splitter.push(delta)
            self._pending.extend(clauses)
            self._cond.notify_all()
            return len(clauses)

    def push_token_ids(self, token_ids: Sequence[int]) -> None:
        """Queue one clause given directly as LLM token ids (no tokenizer, no normalisation)."""
        with self._cond:
            self._pending.append([int(t) for t in token_ids])
            self._cond.notify_all()

    def end_text(self) -> None:
        """No more text: the remainder (even without final punctuation) is spoken, then chunks() ends."""
        with self._cond:
            if not self._ended:
                self._pending.extend(self._splitter.flush())
                self._ended = True
            self._cond.notify_all()

    def cancel(self) -> None:
        """Stop: decoding ends before its next AR step and no further chunk is yielded."""
        self._cancelled.set()
        with self._cond:
            self._cond.notify_all()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancelled.is_set()

    # --- consumer side (one worker thread) ---

    def chunks(self) -> Iterator[AudioChunk]:
        """Audio of every queued clause, in order, until the text ends (or the reply is cancelled)."""
        while (item := self._next_item()) is not None:
            for wave in self._speak(item):
                if self._cancelled.is_set():
                    return
                if wave.size:
                    yield self._tag(wave)

    def _next_item(self) -> str | list[int] | None:
        with self._cond:
            while not self._pending and not self._ended and not self._cancelled.is_set():
                self._cond.wait()
            if self._cancelled.is_set() or not self._pending:
                return None
            return self._pending.popleft()

    def _tag(self, wave: np.ndarray) -> AudioChunk:
        chunk = AudioChunk(self.reply_id, self.epoch, self._seq, to_pcm16(wave))
        self._seq += 1
        return chunk

    def _speak(self, item: str | list[int]) -> Iterator[np.ndarray]:
        if isinstance(item, str):
            text = normalize_for_speech(item)
            if not text:
                return  # emoji / punctuation only: documented as silent
            if self._tokenizer is None:
                raise SpeechInputError("text was pushed but the synthesiser has no tokenizer")
            ids = token_ids_for(text, self._tokenizer)
            self.spoken_text.append(text)
        else:
            ids = item
        if not ids:
            return
        yield from self.speak_ids(ids)

    def speak_ids(self, token_ids: Sequence[int]) -> Iterator[np.ndarray]:
        """Float waveform segments of one clause, streamed as its codes are generated."""
        head = self.head
        if head.table is None:
            raise SpeechInputError("this speech head was loaded without the LLM embedding table")
        conditioning = head.table.conditioning(token_ids)
        first = self._clauses_spoken == 0
        self._clauses_spoken += 1
        chunker = self._chunker(first)
        codes = head.generate_codes(conditioning, self._sampler, head.code_cap(len(token_ids)), self._cancelled)
        self.spoken_codes.append([])
        for code in codes:
            if self.first_code_at is None:
                self.first_code_at = time.perf_counter()
            self.spoken_codes[-1].append(code)
            yield from self._post(chunker.push(code), first)
        if not self._cancelled.is_set():
            yield from self._post(chunker.finish(), first)
        if self.codes_before_first_audio is None and chunker.codes_before_first_audio is not None:
            self.codes_before_first_audio = chunker.codes_before_first_audio

    def _chunker(self, first: bool) -> StreamingVocoder | ReferenceChunker:
        codec, ref = self.head.codec, self.head.reference
        if ref is None:
            return StreamingVocoder(codec.decode, codec.samples_per_code, self.head.options.streaming)
        return ReferenceChunker(
            codec.decode,
            codec.samples_per_code,
            ref.first_chunk_codes if first else ref.later_chunk_codes,
            ref.padding_codes,
            ref.first_threshold if first else ref.later_threshold,
            ref.window,
        )

    def _post(self, segments: list[np.ndarray], first: bool) -> Iterator[np.ndarray]:
        ref = self.head.reference
        trim = ref.trim_first_below if ref is not None else None
        for seg in segments:
            if first and trim is not None:
                loud = np.flatnonzero(np.abs(seg) > trim)
                seg = seg[loud[0] :] if loud.size else seg[:0]
            yield seg


def synthesize_text(
    head: SpeechHead,
    text: str,
    tokenizer: TextTokenizer,
    reply_id: str = "tts",
    epoch: int = 0,
    seed: int | None = None,
) -> list[AudioChunk]:
    """Convenience: speak a whole text at once (tests, benchmarks, offline use)."""
    synth = head.new_reply(reply_id, epoch, tokenizer, seed)
    synth.push_text(text)
    synth.end_text()
    return list(synth.chunks())


def seconds_of(chunks: Sequence[AudioChunk]) -> float:
    """Total duration of PCM16 chunks at 24 kHz."""
    return sum(c.num_samples for c in chunks) / REPLY_SAMPLE_RATE


