"""``final.pt`` files holding more than weights: the allow-list, the refusal and the trusted opt-in."""

from __future__ import annotations

import argparse
import io
import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.speech import SpeechCheckpointError, SpeechHead, SpeechOptions
from engine.speech.checkpoint import read_torch_file
from engine.speech.codec import Codec
from engine.speech.decoder import SpeechDecoder


class TrainerState:
    """Stands for a training script's own class pickled into a checkpoint (not on any allow-list)."""

    def __init__(self, step: int) -> None:
        self.step = step


def weights(tts_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(tts_dir / "decoder" / "final.pt", weights_only=True)["model"]


def optimizer_state(sd: dict[str, torch.Tensor]) -> dict[str, object]:
    """What ``torch.optim.Adam.state_dict()`` holds: plain dicts, lists, floats, bools and tensors."""
    params = [torch.nn.Parameter(t.clone()) for t in list(sd.values())[:2]]
    opt = torch.optim.Adam(params, lr=1e-3)
    sum(p.sum() for p in params).backward()
    opt.step()
    return opt.state_dict()


@pytest.fixture
def copy_dir(tts_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "vita_tts_ckpt"
    shutil.copytree(tts_dir, folder)
    return folder


def renamed_globals(path: Path, old: bytes, new: bytes) -> None:
    """Rewrite the pickle inside a torch zip file with a module renamed (protocol-2 GLOBALs are text)."""
    with zipfile.ZipFile(path) as src:
        entries = [(info, src.read(info)) for info in src.infolist()]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as dst:
        for info, data in entries:
            dst.writestr(info, data.replace(old, new) if info.filename.endswith("data.pkl") else data)
    path.write_bytes(buf.getvalue())


def test_plain_file_loads_tensors_only(copy_dir: Path) -> None:
    path = copy_dir / "decoder" / "final.pt"
    raw = read_torch_file(path)
    assert set(raw) == {"model"} and all(isinstance(v, torch.Tensor) for v in raw["model"].values())
    SpeechDecoder.from_files(copy_dir / "decoder")


def test_training_bookkeeping_loads_through_the_allow_list(copy_dir: Path, caplog) -> None:
    sd = weights(copy_dir)
    path = copy_dir / "decoder" / "final.pt"
    torch.save({"model": sd, "epoch": np.int64(3), "best_loss": np.float64(0.25), "lr": np.float32(1e-4),
                "args": argparse.Namespace(lr=1, accum_grad=4, cmvn=None), "optimizer": optimizer_state(sd),
                "step": 1200}, path)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, weights_only=True)  # what the loader used to do: start-up aborted here
    with caplog.at_level(logging.WARNING):
        raw = read_torch_file(path)
        decoder, report = SpeechDecoder.from_files(copy_dir / "decoder")
    assert not caplog.records  # no full unpickling, nothing to warn about
    assert raw["epoch"] == 3 and isinstance(raw["epoch"], np.int64) and raw["args"].accum_grad == 4
    assert torch.equal(decoder.embedding.weight, sd["embedding.weight"]) and report.unexpected == ()


def test_numpy_1_pickles_load_under_numpy_2(copy_dir: Path) -> None:
    """The release files predate numpy 2: their scalars name ``numpy.core.multiarray.scalar``."""
    path = copy_dir / "codec" / "final.pt"
    raw = torch.load(path, weights_only=True)
    torch.save(dict(raw, steps=np.int64(480000), epoch=np.int32(12)), path)
    renamed_globals(path, b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert "numpy.core.multiarray.scalar" in torch.serialization.get_unsafe_globals_in_checkpoint(path)
    loaded = read_torch_file(path)
    assert loaded["steps"] == 480000 and loaded["epoch"] == 12
    Codec.from_files(copy_dir / "codec")


def test_unknown_class_is_refused_naming_file_global_and_option(copy_dir: Path) -> None:
    path = copy_dir / "decoder" / "final.pt"
    torch.save({"model": weights(copy_dir), "trainer": TrainerState(7), "epoch": np.int64(1)}, path)
    with pytest.raises(SpeechCheckpointError) as info:
        SpeechDecoder.from_files(copy_dir / "decoder")
    msg = str(info.value)
    assert str(path) in msg and f"{__name__}.TrainerState" in msg and "--trust_checkpoint_pickles" in msg
    assert "numpy" not in msg.split("global(s):")[1]  # the allow-listed scalar is not among the refused
    with pytest.raises(SpeechCheckpointError, match="--trust_checkpoint_pickles"):
        SpeechHead.from_checkpoint(copy_dir, None, device="cpu", options=SpeechOptions())


def test_trusted_unknown_class_loads_with_a_warning_naming_the_file(copy_dir: Path, caplog) -> None:
    sd = weights(copy_dir)
    dec_path, codec_path = copy_dir / "decoder" / "final.pt", copy_dir / "codec" / "final.pt"
    torch.save({"model": sd, "trainer": TrainerState(7)}, dec_path)
    torch.save(dict(torch.load(codec_path, weights_only=True), trainer=TrainerState(8)), codec_path)
    with caplog.at_level(logging.WARNING, logger="engine.speech.checkpoint"):
        head = SpeechHead.from_checkpoint(copy_dir, None, device="cpu",
                                          options=SpeechOptions(trust_checkpoint_pickles=True))
    warned = [r.getMessage() for r in caplog.records if r.name == "engine.speech.checkpoint"]
    assert len(warned) == 2
    assert str(dec_path) in warned[0] and str(codec_path) in warned[1]
    assert all(f"{__name__}.TrainerState" in w for w in warned)
    assert torch.equal(head.decoder.embedding.weight, sd["embedding.weight"])
    assert read_torch_file(dec_path, trust_pickles=True)["trainer"].step == 7


def test_trusted_file_whose_class_cannot_be_imported_is_a_checkpoint_error(copy_dir: Path) -> None:
    path = copy_dir / "decoder" / "final.pt"
    torch.save({"model": weights(copy_dir), "trainer": TrainerState(7)}, path)
    renamed_globals(path, __name__.encode(), b"wenet.utils.train_utils")
    with pytest.raises(SpeechCheckpointError, match="full unpickling failed"):
        read_torch_file(path, trust_pickles=True)


def test_corrupt_file_is_unreadable_not_a_pickle_matter(tmp_path: Path) -> None:
    path = tmp_path / "final.pt"
    path.write_bytes(b"not a checkpoint at all")
    for trust in (False, True):
        with pytest.raises(SpeechCheckpointError, match="not a readable torch checkpoint"):
            read_torch_file(path, trust_pickles=trust)


def test_server_flag_reaches_the_speech_options(tmp_path: Path) -> None:
    from server.cli import llm_and_duplex_options
    from server.options import parse_options

    assert parse_options([], {}).duplex.speech.trust_checkpoint_pickles is False
    options = parse_options(["--trust_checkpoint_pickles"], {})
    assert options.duplex.speech.trust_checkpoint_pickles is True
    assert parse_options(["--trust-checkpoint-pickles"], {}).duplex.speech.trust_checkpoint_pickles is True
    _, duplex = llm_and_duplex_options(options, tmp_path, tiny=False, on_cpu=True)
    assert duplex.speech.trust_checkpoint_pickles is True
