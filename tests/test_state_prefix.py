"""The state-prefix logits processor on its own: which tokens it allows, how it tracks the batch."""

from __future__ import annotations

import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate

from engine.llm.engine import STATE_PREFIX_ARG, STATE_PREFIX_PROCESSOR
from vllm_patches import state_prefix
from vllm_patches.state_prefix import StatePrefixProcessor, allowed_next, parse_choices


def test_the_engine_names_the_processor_and_its_argument_as_the_plugin_does() -> None:
    module, name = STATE_PREFIX_PROCESSOR.split(":")
    assert module == state_prefix.__name__ and getattr(state_prefix, name) is StatePrefixProcessor
    assert STATE_PREFIX_ARG == state_prefix.STATE_PREFIX_ARG


def test_allowed_next_walks_the_choices_and_frees_the_output_after_one() -> None:
    choices = [(5, 6), (5, 7), (9,)]
    assert allowed_next(choices, []) == [5, 9]
    assert allowed_next(choices, [5]) == [6, 7]
    assert allowed_next(choices, [5, 7]) is None  # a whole choice: free from here
    assert allowed_next(choices, [9, 1, 2]) is None
    assert allowed_next(choices, [4]) is None  # off every choice (the mask prevents it): never stuck


@pytest.mark.parametrize("bad", [[], [[]], "ab", [[1, -2]], [[True]], [[1.5]], [[1]] * 9, [list(range(9))]])
def test_malformed_arguments_are_refused(bad) -> None:
    with pytest.raises(ValueError):
        parse_choices(bad)
    with pytest.raises(ValueError):
        StatePrefixProcessor.validate_params(SamplingParams(extra_args={STATE_PREFIX_ARG: bad}))


def test_only_opted_in_rows_are_masked_until_their_prefix_is_out() -> None:
    proc = StatePrefixProcessor(None, torch.device("cpu"), False)  # type: ignore[arg-type]
    held, free = [], []
    opted = SamplingParams(extra_args={STATE_PREFIX_ARG: [[3, 4], [6]]})
    proc.update_state(BatchUpdate(2, removed=[], added=[(0, SamplingParams(), None, free), (1, opted, None, held)],
                                  moved=[]))
    logits = torch.zeros(2, 10)
    out = proc.apply(logits.clone())
    assert torch.isfinite(out[0]).all()
    assert torch.isfinite(out[1]).nonzero().flatten().tolist() == [3, 6]
    held.append(3)  # vLLM appends sampled tokens to the live list
    proc.update_state(None)
    assert torch.isfinite(proc.apply(logits.clone())[1]).nonzero().flatten().tolist() == [4]
    held.append(4)
    proc.update_state(None)
    assert torch.isfinite(proc.apply(logits.clone())).all()  # prefix out: the row runs free
    # a moved request keeps its constraint at its new index
    again: list[int] = []
    proc.update_state(BatchUpdate(2, removed=[], added=[(1, opted, None, again)], moved=[]))
    from vllm.v1.sample.logits_processor.interface import MoveDirectionality
    proc.update_state(BatchUpdate(2, removed=[], added=[], moved=[(1, 0, MoveDirectionality.SWAP)]))
    out = proc.apply(logits.clone())
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == [3, 6] and torch.isfinite(out[1]).all()
