"""State tokens spelled as Qwen2.5 spells them (and as two tokens), the judge's plan, clean reply text."""

from __future__ import annotations

import pytest

from engine.llm.errors import CheckpointError
from engine.llm.prompt import NOT_ADDRESSED, SPOKEN, TYPED
from engine.llm.reply_text import ReplyTextDecoder, TokenBytes
from engine.llm.state_tokens import StateTokens
from engine.tiny_tokenizer import QWEN_SPECIAL_TOKENS, byte_level, write_qwen_tokenizer

BPE = 51643


@pytest.fixture(scope="module", params=["single", "split"])
def tokenizer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp(f"tok-{request.param}")
    write_qwen_tokenizer(folder, bpe_size=BPE, state_tokens=request.param)
    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.form = request.param
    return tok


def test_state_tokens_are_bpe_entries_not_added_tokens(tokenizer) -> None:
    # What broke the real release at start: the lookup by token string finds nothing.
    assert tokenizer.convert_tokens_to_ids("☞") is None
    states = StateTokens.from_tokenizer(tokenizer)
    for state, ids in states.ids.items():
        assert tokenizer.decode(list(ids)) == state
        assert all(i < BPE for i in ids)  # ordinary BPE ids, below the added tokens
        assert len(ids) == (1 if tokenizer.form == "single" else 2)
    if tokenizer.form == "single":
        assert tokenizer.convert_ids_to_tokens(list(states.ids[SPOKEN])) == [byte_level("☞")]


def test_judge_plan_picks_between_spoken_and_not_addressed(tokenizer) -> None:
    states = StateTokens.from_tokenizer(tokenizer)
    plan = states.judge_plan([SPOKEN, NOT_ADDRESSED])
    spoken, ignored = states.ids[SPOKEN], states.ids[NOT_ADDRESSED]
    assert plan.prefix == spoken[: len(plan.prefix)] == ignored[: len(plan.prefix)]
    assert len(plan.prefix) == (0 if tokenizer.form == "single" else 1)
    assert plan.state_of(spoken[len(plan.prefix)]) == SPOKEN
    assert plan.state_of(ignored[len(plan.prefix)]) == NOT_ADDRESSED
    assert plan.state_of(states.ids[TYPED][-1]) is None and plan.state_of(None) is None
    assert len(plan.allowed_token_ids) == 2
    forced = states.judge_plan([NOT_ADDRESSED])
    assert (*forced.prefix, *forced.allowed_token_ids) == ignored


class _NoStateTokenizer:
    """A word-level tokenizer without the state tokens (a fake: such checkpoints must be refused)."""

    def encode(self, text: str, add_special_tokens: bool = False, **_: object) -> list[int]:
        return [0]

    def decode(self, ids: list[int], **_: object) -> str:
        return "<unk>"


def test_a_tokenizer_without_state_tokens_is_refused_with_the_reason() -> None:
    with pytest.raises(CheckpointError, match=r"cannot represent the state token '☞' \(U\+261E\)"):
        StateTokens.from_tokenizer(_NoStateTokenizer())


def test_indistinguishable_spellings_are_refused() -> None:
    states = StateTokens({SPOKEN: (5, 6), NOT_ADDRESSED: (5,), TYPED: (7,)})
    with pytest.raises(CheckpointError, match="cannot be told apart"):
        states.judge_plan([SPOKEN, NOT_ADDRESSED])


def _decode_all(decoder: ReplyTextDecoder, ids: list[int], step: int = 1) -> str:
    parts = [decoder.feed(ids[i : i + step]) for i in range(0, len(ids), step)]
    return "".join(parts) + decoder.flush()


def test_reply_text_holds_split_characters_and_drops_what_is_not_text(tokenizer) -> None:
    table = TokenBytes.from_tokenizer(tokenizer)
    text = "Hello 你好, how are you?"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert _decode_all(ReplyTextDecoder(table), ids) == text
    single_bytes = [tokenizer.convert_tokens_to_ids(ch) for ch in byte_level("你好")]
    assert len(single_bytes) == 6 and None not in single_bytes
    decoder = ReplyTextDecoder(table)
    assert decoder.feed(single_bytes[:2]) == ""  # an unfinished character is held, not shown as U+FFFD
    assert decoder.feed(single_bytes[2:]) == "你好"
    specials = [tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS]
    state = StateTokens.from_tokenizer(tokenizer).ids
    control = tokenizer.convert_tokens_to_ids(byte_level("\x07"))
    lone = tokenizer.convert_tokens_to_ids(byte_level("你")[0])  # a lead byte with nothing after it
    padding_row = len(tokenizer) + 5  # the embedding has rows past the tokenizer; a random model samples them
    messy = [*state[SPOKEN], *tokenizer.encode(" Hi", add_special_tokens=False), *specials, control, lone,
             padding_row, *state[NOT_ADDRESSED], *tokenizer.encode(" there", add_special_tokens=False)]
    assert _decode_all(ReplyTextDecoder(table), messy) == "Hi there"
    assert _decode_all(ReplyTextDecoder(table), [*ids[:1], lone]) == tokenizer.decode(ids[:1])


def test_token_bytes_cover_the_vocabulary(tokenizer) -> None:
    table = TokenBytes.from_tokenizer(tokenizer)
    assert len(table.table) == len(tokenizer)
    assert sum(b is None for b in table.table) == len(QWEN_SPECIAL_TOKENS)
    assert table.bytes_of(len(tokenizer) + 100) == b"" and table.bytes_of(-1) == b""
