"""Wire-protocol validation, rate limits and the command line, without a running server."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from server import protocol as P
from server.options import LimitOptions, ServerOptions, build_parser, parse_options
from server.ratelimit import TokenBucket


def make_jpeg(width: int = 64, height: int = 48, progressive: bool = False) -> bytes:
    """A real JPEG from Pillow."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, "JPEG", quality=70, progressive=progressive)
    return buf.getvalue()


def test_audio_packets_are_validated() -> None:
    pcm = np.arange(-160, 160, dtype=np.int16)
    assert np.array_equal(P.parse_audio(pcm.tobytes(), 3200), pcm)
    assert P.parse_audio(bytearray(pcm.tobytes()), 3200).dtype == np.int16
    cases = [("not bytes", "bad_type"), ([1, 2, 3], "bad_type"), (b"", "bad_audio"), (b"\x00" * 641, "bad_audio"),
             (b"\x00" * 3202, "bad_audio")]
    for data, code in cases:
        with pytest.raises(P.ProtocolError) as err:
            P.parse_audio(data, 3200)
        assert err.value.code == code and err.value.message


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_frames_are_checked_cheaply(progressive: bool) -> None:
    jpeg = make_jpeg(640, 480, progressive)
    assert P.parse_frame(jpeg, 1_000_000) == (jpeg, 640, 480)


@pytest.mark.parametrize(
    ("data", "code", "needle"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "bad_frame", "not a JPEG"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "bad_frame", "truncated"),
        (b"\xff\xd8\xff" + b"\x00" * 64, "bad_frame", "corrupt"),
        (b"\xff\xd8\xffx" + b"\x00" * 64, "bad_frame", "corrupt"),
        ("data:image/jpeg;base64,AAAA", "bad_type", "binary"),
    ],
)
def test_bad_frames_are_rejected(data: object, code: str, needle: str) -> None:
    with pytest.raises(P.ProtocolError) as err:
        P.parse_frame(data, 1_000_000)
    assert err.value.code == code and needle in err.value.message


def test_oversize_frame_is_rejected() -> None:
    with pytest.raises(P.ProtocolError, match="exceeds"):
        P.parse_frame(make_jpeg(), 100)


def test_control_events_become_dataclasses() -> None:
    assert P.parse_control({"type": "start"}, 10) == P.SimpleControl("start")
    assert P.parse_control({"type": "text", "text": "  hi  "}, 10) == P.TextControl("hi")
    assert P.parse_control({"type": "playback", "reply_id": "a-1", "samples": 480}, 10) == P.PlaybackControl("a-1", 480)
    assert P.parse_control({"type": "ping"}, 10).type == "ping"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ("start", "bad_type"),
        ([{"type": "start"}], "bad_type"),
        ({"type": "dance"}, "bad_control"),
        ({}, "bad_control"),
        ({"type": "text", "text": ""}, "bad_control"),
        ({"type": "text", "text": 5}, "bad_control"),
        ({"type": "text", "text": "x" * 11}, "bad_control"),
        ({"type": "playback", "reply_id": "r", "samples": -1}, "bad_control"),
        ({"type": "playback", "reply_id": "r", "samples": True}, "bad_control"),
        ({"type": "playback", "samples": 3}, "bad_control"),
    ],
)
def test_bad_control_events_are_rejected(data: object, code: str) -> None:
    with pytest.raises(P.ProtocolError) as err:
        P.parse_control(data, 10)
    assert err.value.code == code


def test_outbound_messages_are_plain_json() -> None:
    msg = P.InterruptMsg(epoch=3, reply_id="a-1", reason="barge_in").to_wire()
    assert msg == {"epoch": 3, "reply_id": "a-1", "reason": "barge_in"}
    assert repr(P.TextControl("secret words")) == "TextControl(12 chars)"  # no payload in logs


def test_token_bucket_allows_rate_and_burst() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=10, capacity=5, clock=lambda: now[0])
    assert all(bucket.take() for _ in range(5))
    assert not bucket.take()
    now[0] += 0.35  # 3.5 tokens back
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 100
    assert sum(bucket.take() for _ in range(10)) == 5  # never more than the capacity
    with pytest.raises(ValueError):
        TokenBucket(0, 1)


def test_command_line_keeps_reference_names_and_documents_defaults() -> None:
    o = parse_options(["--model_path", "/ckpt", "--ip", "0.0.0.0", "--port", "9000", "--max_users", "3",
                       "--timeout", "30", "--no-tls", "--vad_end_silence_ms", "700", "--camera-fps", "1"])
    assert (o.model_path, o.ip, o.port, o.max_users, o.timeout, o.no_tls) == ("/ckpt", "0.0.0.0", 9000, 3, 30, True)
    assert o.vad.end_silence_ms == 700 and o.camera_fps == 1
    assert o.limits == LimitOptions()
    text = build_parser().format_help()
    for flag in ("--model_path", "--ip", "--port", "--max_users", "--timeout", "--cert", "--key", "--no-tls",
                 "--vad_threshold", "--vad_end_silence_ms", "--vad_preroll_ms", "--max_frame_bytes", "--camera_fps"):
        assert flag in text
    assert text.count("(default:") == len(build_parser()._actions) - 1  # every option but --help


def test_contradictory_options_are_refused() -> None:
    with pytest.raises(ValueError, match="together"):
        ServerOptions(cert="c.pem")
    with pytest.raises(SystemExit):
        parse_options(["--port", "70000"])
    with pytest.raises(SystemExit):
        parse_options(["--vad_threshold", "2"])


def test_launch_refuses_a_missing_checkpoint_clearly() -> None:
    out = subprocess.run([sys.executable, "launch.py", "--model_path", "/nowhere"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    assert "cannot start" in out.stderr and "/nowhere is not a folder" in out.stderr
    helped = subprocess.run([sys.executable, "launch.py", "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "--max_users" in helped.stdout
