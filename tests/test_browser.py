"""Real headless Chromium against the real server: fake mic from a fixture WAV, fake camera.

Debian's /usr/bin/chromium is driven by Playwright's Python driver (no browser download).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from server.options import SecurityOptions, ServerOptions
from server.tls import make_self_signed, server_context
from tests.fakes.fake_engine import FakeEngine, Script
from tests.fakes.harness import SPEECH_DIR, RunningServer, wait_until

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
REPLY_SAMPLES = round(REPLY_S * 24000)


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


# Every page reports Content-Security-Policy violations as console errors, which the tests count as problems:
# the page must work under the server's CSP (no inline script or style, no eval).
REPORT_CSP = ("document.addEventListener('securitypolicyviolation', (e) =>"
              " console.error('CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI));")


FUNCTION_SOURCE = re.compile(r"\s*(async\s+)?(function\b|\([^)]*\)\s*=>|[\w$]+\s*=>)")


def _predicates_without_eval(page) -> None:
    """Playwright runs a string predicate of ``wait_for_function`` through ``eval``, which the page's CSP
    (no 'unsafe-eval') forbids; wrapped as a function it is compiled by the debugger protocol instead."""
    wait = page.wait_for_function

    def wait_for_function(expression: str, **kw):
        if not FUNCTION_SOURCE.match(expression):
            expression = f"() => ({expression})"
        return wait(expression, **kw)

    page.wait_for_function = wait_for_function


def open_page(browser, url: str, init: str | None = None, **context):
    """A page in its own browser context (``context``: Playwright's options for it), reporting CSP
    violations, page errors and console errors into the returned ``problems``."""
    page = browser.new_context(ignore_https_errors=True, **context).new_page()
    page.add_init_script(REPORT_CSP)
    if init:
        page.add_init_script(init)
    _predicates_without_eval(page)
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    page.on("console", lambda m: problems.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.goto(url)
    return page, problems


def _talk_and_interrupt(playwright, url: str) -> tuple[dict, list[str]]:
    """Press Start with two_turns.wav as the mic; wait until reply 1 was flushed and reply 2 played out."""
    browser = launch(playwright, "two_turns.wav")
    try:
        page, problems = open_page(browser, url + "/")
        page.wait_for_function("vita.stats.connected && vita.hello", timeout=10_000)
        page.click("#start")
        # turn 1 (0.6-2.3 s) gets a 6 s reply; turn 2 (4.3 s) interrupts it; reply 2 then plays out: every
        # sample it sent was heard (the flush for reply 1 must not take the start of reply 2 with it)
        try:
            page.wait_for_function(
                f"vita.stats.replies.length >= 2 && vita.stats.flushed.length >= 1"
                f" && vita.stats.replies[1].samples === {REPLY_SAMPLES}"
                f" && vita.stats.played[vita.stats.replies[1].reply_id] === {REPLY_SAMPLES}",
                timeout=40_000,
            )
        except Exception:
            seen = page.evaluate("({replies: vita.stats.replies, played: vita.stats.played,"
                                 " flushed: vita.stats.flushed, interrupts: vita.stats.interrupts})")
            pytest.fail(f"reply 2 was not heard in full after the interruption: {seen} {problems}")
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
    assert [f["replyId"] for f in st["flushed"]] == [first]
    assert 0 < st["played"][first] < REPLY_SAMPLES
    assert st["played"][second] == st["replies"][1]["samples"] == REPLY_SAMPLES  # heard from its first sample
    # what was actually heard went back to the engine
    reported = dict(conv.playback)
    assert 0 < reported.get(first, 0) <= st["played"][first]


def test_page_shows_why_it_was_refused(playwright, tls):
    # queue_size=0: no waiting room, so the second page is refused (tests/test_page.py covers the queue)
    with RunningServer(ServerOptions(max_users=1, queue_size=0), FakeEngine(), ssl_context=tls) as srv:
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


def test_page_works_under_csp_and_takes_the_access_token(playwright, tls):
    token = "browser-token-0123456789abcdef"
    options = ServerOptions(max_users=4, security=SecurityOptions(access_token=token))
    with RunningServer(options, FakeEngine(), ssl_context=tls) as srv:
        browser = launch(playwright, "question_en.wav")
        try:
            # from the URL fragment: used, kept for this tab (a reload reconnects), dropped from the address bar
            page, problems = open_page(browser, srv.url + "/#token=" + token)
            page.wait_for_function("vita.stats.connected && vita.hello", timeout=10_000)
            assert page.evaluate("location.hash") == ""
            assert page.evaluate("sessionStorage.getItem('vita-access-token')") == token
            page.reload()
            page.wait_for_function("vita.stats.connected && vita.hello", timeout=10_000)
            assert problems == []
            # the CSP is enforced and violations are seen: an injected inline script does not run
            page.evaluate("() => { const s = document.createElement('script');"
                          " s.textContent = 'window.injected = 1'; document.body.appendChild(s); }")
            assert page.evaluate("window.injected") is None
            assert wait_until(lambda: any("CSP violation: script-src" in p for p in problems), timeout=5)
            # without a token: refused with the reason, then the page asks for it and connects
            asked, problems2 = [], []
            fresh = browser.new_context(ignore_https_errors=True).new_page()
            _predicates_without_eval(fresh)
            fresh.on("console", lambda m: problems2.append(m.text) if m.type == "error" else None)
            fresh.on("dialog", lambda d: (asked.append(d.message), d.accept(token)))
            fresh.goto(srv.url + "/")
            fresh.wait_for_function("vita.stats.connected && vita.hello", timeout=10_000)
            assert asked and "access token" in asked[0]
            assert fresh.evaluate("vita.stats.refused") == "access token missing or wrong"
            assert problems2 == []
        finally:
            browser.close()
        assert wait_until(lambda: not srv.state.sessions)
