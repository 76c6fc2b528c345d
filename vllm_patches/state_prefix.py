"""A vLLM logits processor that makes a reply start with one of a few given token sequences.

The duplex monitor's verdict is the reply's first state token (☞ answer, ☟ not addressed, ...). Sampling it
in the same request as the answer saves the answer a second prefill of the whole multimodal prompt: the
request's first tokens are confined to the spellings of the allowed states, then it runs free. A request
opts in with ``SamplingParams(extra_args={STATE_PREFIX_ARG: [[ids of ☞], [ids of ☟]]})``; requests without
the argument pass through untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig

STATE_PREFIX_ARG = "vita_state_prefixes"
MAX_CHOICES = 8
MAX_CHOICE_TOKENS = 8


def allowed_next(choices: Sequence[Sequence[int]], output: Sequence[int]) -> list[int] | None:
    """Token ids the next output token may take (``None``: no constraint any more).

    Free once the output holds a whole choice, or once it left every choice (which the mask prevents).
    """
    k = len(output)
    if any(len(c) <= k and list(output[: len(c)]) == list(c) for c in choices):
        return None
    nxt = sorted({c[k] for c in choices if len(c) > k and list(output[:k]) == list(c[:k])})
    return nxt or None


def parse_choices(value: Any) -> list[tuple[int, ...]]:
    """The argument as a list of non-empty token-id tuples; ``ValueError`` when malformed."""
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_CHOICES:
        raise ValueError(f"{STATE_PREFIX_ARG} must be a list of 1..{MAX_CHOICES} token-id lists")
    out = []
    for choice in value:
        if (not isinstance(choice, (list, tuple)) or not 1 <= len(choice) <= MAX_CHOICE_TOKENS
                or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in choice)):
            raise ValueError(f"{STATE_PREFIX_ARG}: each choice is 1..{MAX_CHOICE_TOKENS} non-negative token ids")
        out.append(tuple(choice))
    return out


class StatePrefixProcessor(LogitsProcessor):
    """Confines the first output tokens of opted-in requests to one of their given sequences."""

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        # batch index -> (choices, the request's live output-token list)
        self._requests: dict[int, tuple[list[tuple[int, ...]], list[int]]] = {}

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Refuse a malformed argument at submission, not inside a batch."""
        args = sampling_params.extra_args or {}
        if STATE_PREFIX_ARG in args:
            parse_choices(args[STATE_PREFIX_ARG])

    def is_argmax_invariant(self) -> bool:
        """Masking changes the argmax, so greedy requests need it too."""
        return False

    @staticmethod
    def _new(params: SamplingParams, _prompt: list[int] | None,
             output: list[int]) -> tuple[list[tuple[int, ...]], list[int]] | None:
        value = (params.extra_args or {}).get(STATE_PREFIX_ARG)
        if value is None:
            return None
        choices = parse_choices(value)
        return (choices, output) if allowed_next(choices, output) is not None else None

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        """Track opted-in requests; drop those whose output already holds a whole choice."""
        process_dict_updates(self._requests, batch_update, self._new)
        for index in [i for i, (c, out) in self._requests.items() if allowed_next(c, out) is None]:
            del self._requests[index]

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Set every logit but the allowed next tokens' to -inf, row by row (few rows, few tokens)."""
        for index, (choices, output) in self._requests.items():
            allowed = allowed_next(choices, output)
            if allowed is None:
                continue
            row = logits[index]
            ids = torch.tensor(allowed, dtype=torch.long, device=row.device)
            keep = row.index_select(0, ids)
            row.fill_(float("-inf"))
            row.index_copy_(0, ids, keep)
        return logits
