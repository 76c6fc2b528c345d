"""Both VITA-1.5 folder layouts, served as a user runs them: ``launch.py`` in its own process, TLS on.

* the default run (no ``--model_path``): the generated checkpoint in the release layout (bf16 shards,
  Qwen2.5's tokenizer with the state tokens as ordinary BPE entries), two vLLM engines, default options;
* ``--model_path`` on the public demo's prepared folder.

Each takes one spoken turn (a fixture WAV streamed in real time with camera frames) and one typed turn,
and must send reply audio for both, with reply text free of special tokens, state tokens, U+FFFD and
control characters. The server's log must hold no ERROR line.
"""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import socketio
import urllib3
from PIL import Image

from engine.tiny_tokenizer import QWEN_SPECIAL_TOKENS, STATE_TOKENS
from tests.conftest import REPO_ROOT
from tests.fakes.harness import RecordingClient, load_wav

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # our own self-signed certificate

START_TIMEOUT_S = 420  # two engine starts on a loaded 2-core machine, plus writing the checkpoint


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python launch.py ARGS`` with its combined output collected in memory."""

    def __init__(self, args: list[str], home: Path) -> None:
        self.port = _free_port()
        env = {**os.environ, "XDG_CACHE_HOME": str(home / "cache"), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "launch.py", "--ip", "127.0.0.1", "--port", str(self.port),
             "--tls_dir", str(home / "tls"), *args],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, name="server-log", daemon=True)
        self._reader.start()
        self.url = f"https://127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.log[-4000:]}")
            try:
                if requests.get(self.url + "/healthz", verify=False, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(1)
        pytest.fail(f"server not healthy after {START_TIMEOUT_S} s:\n{self.log[-4000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own process group: engines and workers too
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._reader.join(10)
        return self.proc.returncode


def _jpeg() -> bytes:
    pattern = np.zeros((360, 640, 3), np.uint8)
    pattern[:, :, 0] = np.linspace(0, 255, 640, dtype=np.uint8)
    pattern[::40] = 255
    buf = io.BytesIO()
    Image.fromarray(pattern).save(buf, "JPEG", quality=80)
    return buf.getvalue()


_FORBIDDEN = re.compile("|".join(re.escape(t) for t in (*QWEN_SPECIAL_TOKENS, *STATE_TOKENS, "\ufffd")))


def _reply(client: RecordingClient, reply_id: str) -> tuple[str, np.ndarray, str]:
    text = "".join(m["text"] for (m,) in client.named("reply_text") if m["reply_id"] == reply_id)
    chunks = [np.frombuffer(pcm, "<i2") for h, pcm in client.named("reply_audio") if h["reply_id"] == reply_id]
    (end,) = [m for (m,) in client.named("reply_end") if m["reply_id"] == reply_id]
    return text, np.concatenate(chunks) if chunks else np.zeros(0, np.int16), end["reason"]


def _assert_clean(text: str) -> None:
    assert not _FORBIDDEN.search(text), f"special or state token in reply text: {text!r}"
    bad = [c for c in text if c != "\n" and unicodedata.category(c) == "Cc"]
    assert not bad, f"control characters in reply text: {bad!r}"
    text.encode("utf-8")  # no lone surrogates either


def _converse(server: ServerProcess) -> dict[str, object]:
    client = RecordingClient(server.url).connect()
    try:
        assert client.wait_for(lambda c: c.named("hello"), 10)
        frame = _jpeg()
        assert client.control(type="start")["ok"]
        speech = load_wav("question_en")
        client.stream(np.concatenate([speech, np.zeros(16000, np.int16)]), frame=frame)
        assert client.wait_for(lambda c: c.named("reply_start"), 120), client.events[-5:]
        spoken_id = client.named("reply_start")[0][0]["reply_id"]
        assert client.wait_for(lambda c: any(m["reply_id"] == spoken_id for (m,) in c.named("reply_end")), 180)
        assert client.control(type="text", text="What do you see in front of you?")["ok"]
        assert client.wait_for(lambda c: len(c.named("reply_start")) >= 2, 60)
        typed_id = client.named("reply_start")[1][0]["reply_id"]
        assert client.wait_for(lambda c: any(m["reply_id"] == typed_id for (m,) in c.named("reply_end")), 180)
        errors = client.named("error")
        assert not errors, errors
        return {"hello": client.named("hello")[0][0], "spoken": _reply(client, spoken_id),
                "typed": _reply(client, typed_id)}
    finally:
        client.close()


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engine.tiny_checkpoint import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("demo-layout"), seed=0, layout="demo")


def _serve(args: list[str], home: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(args, home)
    try:
        server.wait_ready()
        yield server
    finally:
        code = server.stop()
        assert code == 0, f"server exited with {code}:\n{server.log[-3000:]}"


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("default-run")
    yield from _serve(["--tiny_dir", str(home / "tiny")], home)


@pytest.fixture(scope="module")
def demo_layout_run(tmp_path_factory: pytest.TempPathFactory, demo_folder: Path) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("demo-run")
    # Random weights judge at random, so the policy is set: this test is about loading and answering.
    # Short answers: the default run above already speaks the default 512-token ones.
    yield from _serve(["--model_path", str(demo_folder), "--awakening", "always", "--num_engines", "1",
                       "--max_new_tokens", "96"], home)


@pytest.mark.parametrize("run", ["default_run", "demo_layout_run"])
def test_layout_starts_and_answers_speech_and_text_with_audio(run: str, request: pytest.FixtureRequest) -> None:
    server: ServerProcess = request.getfixturevalue(run)
    try:
        got = _converse(server)
    except (AssertionError, socketio.exceptions.SocketIOError) as exc:
        raise AssertionError(f"{exc!r}\n--- server log ---\n{server.log[-6000:]}") from exc
    for kind in ("spoken", "typed"):
        text, pcm, reason = got[kind]  # type: ignore[misc]
        assert reason == "done", (kind, reason)
        assert pcm.size > 24_000 // 4, f"{kind} turn: only {pcm.size} samples of reply audio"
        rms = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))
        assert rms > 100, f"{kind} turn: reply audio is near-silent (RMS {rms:.0f} of 32767)"  # audible
        assert text.strip(), f"{kind} turn: no reply text"
        _assert_clean(text)
    if run == "default_run":
        assert "random" in (got["hello"]["notice"] or "").lower()  # type: ignore[index]
    errors = [line for line in server.lines if re.search(r"\bERROR\b", line)]
    assert not errors, "\n".join(errors[:20])
