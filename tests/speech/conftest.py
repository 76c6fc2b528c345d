"""Fixtures of the speech-head tests: a tiny ``vita_tts_ckpt`` and a tiny LLM embedding table."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.speech import SpeechHead, SpeechOptions, write_tts_checkpoint

EMBED_VOCAB = 2048
EMBED_WIDTH = 64


class CharTokenizer:
    """Test stand-in for the LLM tokenizer: one id per character (the real one is a transformers BPE)."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        assert add_special_tokens is False
        return [(ord(ch) * 7919) % EMBED_VOCAB for ch in text]


@pytest.fixture(scope="package")
def tts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint written by the project's own generator (seed 0, LLM width 64)."""
    folder = tmp_path_factory.mktemp("ckpt") / "vita_tts_ckpt"
    write_tts_checkpoint(folder, seed=0, llm_hidden_size=EMBED_WIDTH)
    return folder


@pytest.fixture(scope="package")
def llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with only ``model.safetensors`` holding a bf16 ``model.embed_tokens.weight``."""
    folder = tmp_path_factory.mktemp("llm")
    table = (0.5 * torch.randn(EMBED_VOCAB, EMBED_WIDTH, generator=torch.Generator().manual_seed(5))).bfloat16()
    save_file({"model.embed_tokens.weight": table, "model.norm.weight": torch.ones(EMBED_WIDTH)}, folder / "model.safetensors")
    return folder


@pytest.fixture(scope="package")
def head(tts_dir: Path, llm_dir: Path) -> SpeechHead:
    """The speech head on CPU with default options."""
    return SpeechHead.from_checkpoint(tts_dir, llm_dir, device="cpu", options=SpeechOptions())


@pytest.fixture
def tokenizer() -> CharTokenizer:
    """Character-level stand-in tokenizer."""
    return CharTokenizer()


@pytest.fixture(scope="package", autouse=True)
def _single_torch_thread():
    """The tiny models' ops are too small to gain from intra-op threads, and on a shared CI box those
    threads stall; restore the process setting for the other test packages afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
