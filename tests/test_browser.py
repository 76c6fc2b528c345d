"""Real headless Chromium against the real server: fake mic from a fixture WAV, fake camera.

Debian's /usr/bin/chromium is driven by Playwright's Python driver (no browser download).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from server.options import ServerOptions
from server.tls import make_self_signed, server_context
from tests.fakes.fake_engine import FakeEngine, Script
from tests.fakes.harness import SPEECH_DIR, RunningServer

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BASE_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
    "--use-fake-ui-for-media-stream",  # grant getUserMedia without a prompt
    "--use-fake-device-for-media-stream",  # fake camera (test pattern) and mic (replaced below)
    "--autoplay-policy=no-user-gesture-required",
]
REPLY_S = 6.0


@pytest.fixture(scope="module")
def playwright():
    if not Path(CHROMIUM).exists():
        msg = "Debian chromium is not installed (make test-deps installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)  # CI must not pass by skipping the browser
        pytest.skip(msg)
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return server_context(*make_self_signed(tmp_path_factory.mktemp("tls"), ["localhost", "127.0.0.1"]))


def launch(playwright, wav: str):
    return playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True,
        args=[*BASE_ARGS, f"--use-file-for-fake-audio-capture={SPEECH_DIR / wav}%noloop"],
    )


def open_page(browser, url: str):
    page = browser.new_context(ignore_https_errors=True).new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    page.on("console", lambda m: problems.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.goto(url)
    return page, problems


def _talk_and_interrupt(playwright, url: str) -> tuple[dict, list[str]]:
    """Press Start with two_turns.wav as the mic; wait until reply 1 was flushed and reply 2 plays."""
    browser = launch(playwright, "two_turns.wav")
    try:
        page, problems = open_page(browser, url + "/")
        page.wait_for_function("vita.stats.connected && vita.hello", timeout=10_000)
        page.click("#start")
        # turn 1 (0.6-2.3 s) gets a 6 s reply; turn 2 (4.3 s) interrupts it; reply 2 then plays out
        page.wait_for_function(
            "vita.stats.replies.length >= 2 && vita.stats.flushed.length >= 1"
            " && vita.stats.played[vita.stats.replies[1].reply_id] > 0",
            timeout=30_000,
        )
        return page.evaluate("vita.stats"), problems
    finally:
        browser.close()


def test_page_streams_mic_and_camera_plays_reply_and_flushes_on_interrupt(playwright, tls):
    engine = FakeEngine(Script(reply_seconds=REPLY_S))
    with RunningServer(ServerOptions(), engine, ssl_context=tls) as srv:
        st, problems = _talk_and_interrupt(playwright, srv.url)

    assert problems == [] and st["errors"] == []
    assert st["secure"] and st["transport"] == "websocket"
    # mic audio reached the server at 16 kHz and the server's VAD found the speech
    assert st["samplesSent"] >= 16000 * 4
    assert [v["type"] for v in st["vad"]][:3] == ["speech_start", "speech_end", "speech_start"]
    conv = engine.conversations[0]
    assert len(conv.requests) >= 2 and conv.requests[0].audio.size > 16000
    # camera frames arrived and were attached to the turn
    assert st["framesSent"] >= 2
    assert conv.requests[1].frames and conv.requests[1].frames[0].jpeg[:3] == b"\xff\xd8\xff"
    # reply 1 played, then the interrupt flushed it part-way
    first, second = st["replies"][0]["reply_id"], st["replies"][1]["reply_id"]
    assert st["interrupts"][0]["reason"] == "barge_in" and st["interrupts"][0]["reply_id"] == first
    flushed = st["flushed"][0]
    assert flushed["replyId"] == first
    assert 0 < st["played"][first] < REPLY_S * 24000
    assert st["played"][second] > 0
    # what was actually heard went back to the engine
    reported = dict(conv.playback)
    assert 0 < reported.get(first, 0) <= st["played"][first]


def test_page_shows_why_it_was_refused(playwright, tls):
    with RunningServer(ServerOptions(max_users=1), FakeEngine(), ssl_context=tls) as srv:
        browser = launch(playwright, "question_en.wav")
        try:
            first, _ = open_page(browser, srv.url + "/")
            first.wait_for_function("vita.stats.connected", timeout=10_000)
            second, _ = open_page(browser, srv.url + "/")
            second.wait_for_function("vita.stats.refused !== null", timeout=10_000)
            assert "server full" in second.evaluate("vita.stats.refused")
            assert "server full" in second.inner_text("#banner")
            assert first.evaluate("vita.stats.connected")
        finally:
            browser.close()
