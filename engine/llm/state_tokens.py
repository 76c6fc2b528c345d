"""The state tokens ☞ ☜ ☟ as the checkpoint's tokenizer spells them, and the judge's choice among them.

In Qwen2.5's byte-level vocabulary the state tokens are ordinary BPE entries stored under their byte
spelling (``âĺŀ`` for ☞), so ``convert_tokens_to_ids("☞")`` finds nothing; only encoding finds them
(docs/model.md, "State tokens"). Another tokenizer may spell one as several tokens. Both work here:
each state is a token sequence; the judge appends the states' common prefix to the prompt and then lets
the model pick among the first token where they differ. A tokenizer that cannot spell a state token, or
whose spellings cannot be told apart that way, is refused when the engine starts, with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from engine.llm.errors import CheckpointError
from engine.llm.prompt import STATE_TOKENS


class _Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ..., **kwargs: object) -> list[int]: ...

    def decode(self, ids: list[int], **kwargs: object) -> str: ...


@dataclass(frozen=True, slots=True)
class JudgePlan:
    """How the monitor judges: append ``prefix`` to the prompt, then sample one of ``choices``."""

    prefix: tuple[int, ...]
    choices: dict[int, str]
    """Distinguishing token id → the state it starts."""

    @property
    def allowed_token_ids(self) -> list[int]:
        """The ids sampling is restricted to."""
        return sorted(self.choices)

    def state_of(self, token_id: int | None) -> str | None:
        """The state a sampled distinguishing token stands for (``None``: not one of them)."""
        return None if token_id is None else self.choices.get(token_id)


@dataclass(frozen=True, slots=True)
class StateTokens:
    """Each state token's id sequence in the served tokenizer."""

    ids: dict[str, tuple[int, ...]]

    @classmethod
    def from_tokenizer(cls, tokenizer: _Tokenizer, states: Iterable[str] = STATE_TOKENS) -> StateTokens:
        """Spell every state token; :class:`CheckpointError` when one cannot be represented."""
        found: dict[str, tuple[int, ...]] = {}
        for state in states:
            ids = tuple(int(i) for i in tokenizer.encode(state, add_special_tokens=False))
            back = tokenizer.decode(list(ids)) if ids else ""
            if not ids or back != state:
                raise CheckpointError(
                    f"the checkpoint's tokenizer cannot represent the state token {state!r} "
                    f"(U+{ord(state):04X}): it encodes to {list(ids)} which decodes to {back!r}. VITA-1.5 "
                    "replies start with one of ☞ ☜ ☟; use the tokenizer files of the VITA-1.5 release")
            found[state] = ids
        return cls(found)

    def judge_plan(self, states: Iterable[str]) -> JudgePlan:
        """The monitor's choice among ``states``: their common prefix, then one distinguishing token each."""
        seqs = {s: self.ids[s] for s in states}
        if len(seqs) == 1:  # a forced verdict: the whole spelling but its last token is the prefix
            (state, ids), = seqs.items()
            return JudgePlan(ids[:-1], {ids[-1]: state})
        shared = 0
        while all(len(ids) > shared for ids in seqs.values()) and len({ids[shared] for ids in seqs.values()}) == 1:
            shared += 1
        firsts = {s: ids[shared] if len(ids) > shared else None for s, ids in seqs.items()}
        if None in firsts.values() or len(set(firsts.values())) != len(firsts):
            raise CheckpointError(
                "the tokenizer's spellings of the state tokens cannot be told apart by one token after a "
                f"shared prefix: {seqs}")
        prefix = next(iter(seqs.values()))[:shared]
        return JudgePlan(prefix, {int(tok): s for s, tok in firsts.items() if tok is not None})
