"""A small tokenizer written in Qwen2.5's exact format, for the generated checkpoints.

What makes it faithful to the VITA-1.5 release (and so able to embarrass code that is kinder than Qwen):

* byte-level BPE with Qwen's pre-tokenizer; ``vocab.json`` + ``merges.txt`` + ``tokenizer.json`` +
  ``tokenizer_config.json`` (+ the ``special_tokens_map.json`` / ``added_tokens.json`` that
  ``save_pretrained`` writes), ``Qwen2Tokenizer`` class, no BOS, ``<|im_end|>`` as EOS;
* the 22 Qwen special tokens are *added* tokens placed right after the BPE range (as 151643…151664);
* the state tokens ☞ ☟ ☜ are ordinary BPE entries reached by merges, stored under their byte-level
  spelling (``âĺŀ``), exactly as in Qwen's vocabulary (ids 144766, 146164, 145789 there), so
  ``convert_tokens_to_ids("☞")`` finds nothing and only encoding finds them. ``state_tokens="split"``
  leaves out their last merge: each is then two tokens sharing a prefix, the multi-token form;
* ``<image>``/``<audio>`` are *not* tokens: the placeholders are the ordinary BPE ids 51000/51001, so
  the BPE range is made large enough to hold them (filled with merges of made-up syllables).

Deterministic: the same bytes on every call. Nothing is downloaded.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)
NOT_SPECIAL = ("<tool_call>", "</tool_call>")
"""Qwen2.5 marks these two added tokens ``special: false``: ``skip_special_tokens`` keeps them."""
STATE_TOKENS = ("☞", "☟", "☜")
StateForm = Literal["single", "split"]

_CORPUS = (
    "You are an AI robot and your name is Vita. Hello, how are you today? I am fine, thank you. "
    "What do you see in the picture? The quick brown fox jumps over the lazy dog. 你好，今天天气很好。 "
    "Please describe the image. Answer the question in the audio. system user assistant 0123456789 "
    "Can you hear me? What colour is the sky? Tell me a story about a cat. 我们一起去公园吧。 "
)
_TRAINED_SIZE = 700
"""Merges learnt from the natural corpus first (highest priority), so ordinary text tokenizes compactly."""
_ONSETS = ("", "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "ch", "sh", "tr", "st")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ea")
_CODAS = ("", "", "n", "r", "s", "t", "l", "m")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/Qwen's byte → printable character table used by byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_TO_CHAR = _bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def byte_level(text: str) -> str:
    """``text``'s spelling in a byte-level vocabulary (``"☞"`` → ``"âĺŀ"``)."""
    return "".join(BYTE_TO_CHAR[b] for b in text.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class TokenizerFacts:
    """Ids the rest of the generator needs."""

    bpe_size: int
    special_ids: dict[str, int]
    state_ids: dict[str, tuple[int, ...]]

    @property
    def total(self) -> int:
        """Entries including the added tokens (151665 in Qwen2.5)."""
        return self.bpe_size + len(QWEN_SPECIAL_TOKENS)


class _Bpe:
    """A vocabulary and its ordered merges, grown merge by merge."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
        self.vocab = dict(vocab)
        self.merges = list(merges)

    def merge(self, left: str, right: str) -> str:
        token = left + right
        if token not in self.vocab:
            self.vocab[token] = len(self.vocab)
            self.merges.append((left, right))
        return token

    def spell(self, word: str) -> str:
        """Add left-to-right merges that build ``word`` (byte-level spelling) from its characters."""
        token = word[0]
        for ch in word[1:]:
            token = self.merge(token, ch)
        return token


def _trained_bpe() -> _Bpe:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=_TRAINED_SIZE, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([_CORPUS] * 20, trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return _Bpe(state["vocab"], merges)  # type: ignore[arg-type]


def _fill(bpe: _Bpe, target: int, rng: random.Random) -> None:
    """Grow the BPE range to ``target`` entries with made-up words (space-prefixed, as Qwen's ``Ġword``)."""
    while len(bpe.vocab) < target:
        syllables = rng.randint(1, 4)
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables))
        if rng.random() < 0.7:
            word = " " + word
        spelled = byte_level(word)
        # Grow one merge at a time so the range ends exactly at ``target``.
        token = spelled[0]
        for ch in spelled[1:]:
            if len(bpe.vocab) >= target:
                return
            token = bpe.merge(token, ch)


def write_qwen_tokenizer(out: Path, *, bpe_size: int, state_tokens: StateForm = "single") -> TokenizerFacts:
    """Write the tokenizer files into ``out``; the BPE range has ``bpe_size`` entries (ids 0…bpe_size-1)."""
    from transformers import AddedToken
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    if state_tokens not in ("single", "split"):
        raise ValueError(f"state_tokens must be 'single' or 'split', got {state_tokens!r}")
    bpe = _trained_bpe()
    rng = random.Random(20250107)
    # The state tokens sit late in the BPE range, as in Qwen's (ids ≈ 95 % of the range there).
    _fill(bpe, int(bpe_size * 0.95), rng)
    prefix = bpe.merge(*byte_level("☞")[:2])  # "â" + "ĺ": the bytes E2 98 that ☞ ☟ ☜ share
    if state_tokens == "single":
        for tok in STATE_TOKENS:
            bpe.merge(prefix, byte_level(tok)[2])
    _fill(bpe, bpe_size, rng)
    if len(bpe.vocab) != bpe_size:
        raise ValueError(f"BPE range came out at {len(bpe.vocab)} entries, not {bpe_size}")
    vocab, merges = bpe.vocab, bpe.merges
    # Any: transformers' stubs declare str for the special tokens; None leaves them unset here.
    qwen: Any = Qwen2Tokenizer
    tokenizer = qwen(vocab=vocab, merges=merges, eos_token=None, pad_token=None, unk_token=None, bos_token=None,
                     errors="replace")
    # Added in Qwen's order first; naming EOS/PAD in the constructor would add those two ahead of the rest.
    tokenizer.add_tokens([AddedToken(t, special=t not in NOT_SPECIAL, normalized=False) for t in QWEN_SPECIAL_TOKENS],
                   special_tokens=False)
    tokenizer.eos_token, tokenizer.pad_token = "<|im_end|>", "<|endoftext|>"
    tokenizer.model_max_length = 131072
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tokenizer.save_pretrained(str(out))
    added = json.loads((out / "tokenizer.json").read_text())["added_tokens"]
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(
        tokenizer_class="Qwen2Tokenizer", add_bos_token=False, add_prefix_space=False, bos_token=None,
        eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None, errors="replace",
        clean_up_tokenization_spaces=False, split_special_tokens=False, model_max_length=131072,
        additional_special_tokens=[t for t in QWEN_SPECIAL_TOKENS[1:] if t not in NOT_SPECIAL][:13],
        added_tokens_decoder={str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in added},
        chat_template=_CHAT_TEMPLATE)
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
    (out / "added_tokens.json").write_text(json.dumps({t["content"]: t["id"] for t in added}, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
         "additional_special_tokens": cfg["additional_special_tokens"]}, indent=2))
    specials = {t["content"]: int(t["id"]) for t in added}
    if [specials[t] for t in QWEN_SPECIAL_TOKENS] != list(range(bpe_size, bpe_size + len(QWEN_SPECIAL_TOKENS))):
        raise ValueError("Qwen's special tokens must follow the BPE range in Qwen's order")
    states = {s: tuple(tokenizer.encode(s, add_special_tokens=False)) for s in STATE_TOKENS}
    return TokenizerFacts(bpe_size, specials, states)


_CHAT_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)
"""ChatML, as Qwen2.5's template renders plain messages (VITA builds its prompts by hand and never uses it)."""
