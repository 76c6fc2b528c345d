"""The page people use, in real headless Chromium (fake mic from a looping WAV, fake camera) against the
server with the fake engine: reconnects, waiting room, assistant states, controls, transcript, presenter
mode, phone layout and WCAG contrast in both themes.

Screenshots of the main states go to a temporary folder; ``VITA_UPDATE_SCREENSHOTS=1`` writes them into
docs/screenshots/ instead (small palette PNGs, shown in the README).
"""

from __future__ import annotations

import io
import os
import re
import socket
import time
from pathlib import Path

import pytest

from engine.interface import Judgement
from server.options import ServerOptions
from server.tls import make_self_signed, server_context
from tests.fakes.fake_engine import FakeConversation, FakeEngine, Script
from tests.fakes.harness import SPEECH_DIR, RunningServer, wait_until
from tests.test_browser import BASE_ARGS, CHROMIUM, open_page, playwright  # noqa: F401

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
NOTICE = "Demo mode: this server runs random weights, so the assistant's replies are noise."
DESKTOP = {"width": 1280, "height": 720}
PHONE = {"width": 390, "height": 844}
TEXT = ("Hello there, ", "I can see you and hear you. ", "This is what a longer reply looks like.")


class NoticeEngine(FakeEngine):
    """The fake engine, saying what the demo run says."""

    def notice(self) -> str | None:
        return NOTICE


class JudgingConversation(FakeConversation):
    """Judges every spoken turn like VITA's monitor: the first one is not addressed to the assistant."""

    def _produce(self, req, stop) -> None:
        if req.text is None:
            spoken = [r for r in self.requests if r.text is None]
            addressed = req is not spoken[0]
            self.sink(Judgement(req.reply_id, req.epoch, addressed, "state_token", {"judge": 4.0}))
            if not addressed:
                return
        super()._produce(req, stop)


class JudgingEngine(NoticeEngine):
    def open_conversation(self, sink):
        conv = JudgingConversation(sink, self.script)
        self.conversations.append(conv)
        return conv


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    """A self-signed certificate: the page runs on HTTPS, as in production (secure context)."""
    return server_context(*make_self_signed(tmp_path_factory.mktemp("tls"), ["localhost", "127.0.0.1"]))


@pytest.fixture(scope="module")
def browser(playwright):  # noqa: F811 - the shared fixture
    """One Chromium for the module; its fake mic loops two_turns.wav (a question every ~4 s)."""
    b = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
        *BASE_ARGS, f"--use-file-for-fake-audio-capture={SPEECH_DIR / 'two_turns.wav'}"])
    yield b
    b.close()


def new_page(browser, url: str, scheme: str = "dark", viewport: dict | None = None, init: str | None = None):
    """A page in its own context (own storage), reporting CSP violations and errors into ``problems``."""
    return open_page(browser, url, init, color_scheme=scheme, viewport=viewport or DESKTOP)


def shot(page, name: str, tmp_path: Path, selector: str | None = None) -> Path:
    """Save a small screenshot (palette PNG) for the README, or for this run only."""
    from PIL import Image

    out = REPO / "docs" / "screenshots" if os.environ.get("VITA_UPDATE_SCREENSHOTS") == "1" else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    raw = (page.locator(selector).screenshot() if selector else page.screenshot())
    img = Image.open(io.BytesIO(raw)).convert("RGB")
    if img.width > 1000:
        img = img.resize((img.width * 3 // 4, img.height * 3 // 4), Image.LANCZOS)
    path = out / f"{name}.png"
    img.quantize(colors=96, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path


def decode_qr(png: bytes) -> str | None:
    """The text of a QR code in ``png`` (OpenCV's detector, installed with vLLM); None without OpenCV."""
    try:
        import cv2
        import numpy as np
        from PIL import Image
    except ImportError:
        return None
    img = np.array(Image.open(io.BytesIO(png)).convert("RGB"))
    return cv2.QRCodeDetector().detectAndDecode(img)[0] or "(not decodable)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def crash(srv: RunningServer) -> None:
    """Stop a server the way a crash or restart does: every connection drops at once, no goodbye."""
    srv._thread.stop()  # first no new connections (a retry must not reach the dying server)
    eio = srv.state.socketio.server.eio
    for sock in list(eio.sockets.values()):
        sock.close(wait=False, abort=True)
    srv.state.close_all()


def states(page) -> list[str]:
    return page.evaluate("vita.stats.states.map((s) => s.state)")


# ---------------------------------------------------------------------- states, transcript, timeline


def test_a_conversation_shows_every_state_both_sides_and_one_timeline_row_per_reply(browser, cert, tmp_path):
    engine = JudgingEngine(Script(text=TEXT, reply_seconds=5.0))
    with RunningServer(ServerOptions(), engine, ssl_context=cert) as srv:
        page, problems = new_page(browser, srv.url + "/")
        try:
            page.wait_for_function("vita.hello", timeout=10_000)
            assert page.inner_text("#state-text") == "Not started"
            assert page.is_enabled("#start") and page.is_enabled("#send")
            page.click("#start")
            # turn 1: judged not addressed (quiet mark); turn 2 answered; turn 3 barges in: paused, interrupted
            page.wait_for_function("vita.stats.judgements.length >= 1 && vita.stats.interrupts.length >= 1"
                                   " && vita.stats.replies.length >= 2", timeout=40_000)
            page.wait_for_function("vita.state === 'speaking'", timeout=20_000)
            shot(page, "desktop-dark-speaking", tmp_path)
            seen = states(page)
            for s in ("listening", "user", "thinking", "speaking", "paused", "interrupted"):
                assert s in seen, (s, seen)
            # "speaking" is held across the stream's gaps: it ends only with the reply (or a cut)
            assert "speaking" in seen[seen.index("thinking"):]
            st = page.evaluate("vita.stats")
            assert st["micPeak"] > 0.2 and st["vizPeak"] > 0.2  # mic meter and assistant visualiser moved
            # a typed question, while listening
            page.fill("#text", "What is on my desk?")
            page.press("#text", "Enter")
            page.wait_for_function("vita.stats.replies.some((r) => r.source === 'text')", timeout=10_000)
            page.click("#stop")  # the looping mic would go on asking; Stop cuts the reply in flight
            page.wait_for_function("[...document.querySelectorAll('#transcript li.bot')]"
                                   ".every((li) => li.classList.contains('cut') || vita.stats.timelines"
                                   ".some((t) => t.reply_id === li.dataset.reply))", timeout=20_000)
            items = page.evaluate("""[...document.querySelectorAll('#transcript li.turn')].map((li) => ({
                cls: li.className, who: li.querySelector('.who').textContent, text: li.querySelector('.text').textContent,
                mark: (li.querySelector('.mark') || {}).textContent || null, reply: li.dataset.reply || null}))""")
            announced = page.evaluate("vita.announced || []")
            rows = page.evaluate("[...document.querySelectorAll('#timeline-rows tr')].map((tr) => tr.dataset.reply)")
            details_hidden = page.is_hidden("#details")
            page.click("#details-toggle")
            latency = page.inner_text("#latency")
            transcript_live = page.get_attribute("#transcript", "aria-live")
        finally:
            page.context.close()
        assert wait_until(lambda: not srv.state.sessions)

    assert problems == [] and st["errors"] == []
    users = [i for i in items if "user" in i["cls"]]
    bots = [i for i in items if "bot" in i["cls"]]
    assert {i["who"] for i in users} == {"You"} and {i["who"] for i in bots} == {"Assistant"}
    # spoken turns are timed entries, typed ones are text
    assert re.fullmatch(r"spoke for \d+\.\d s", users[0]["text"])
    assert any(i["text"] == "What is on my desk?" for i in users)
    # the ignored utterance is a quiet mark on its own turn, never an announcement or a bubble
    assert users[0]["mark"] == "not answered: not addressed to me"
    assert transcript_live is None and not any("not addressed" in a for a in announced)
    # no empty bubble: reply text streamed in
    assert all(b["text"].strip() for b in bots)
    assert "".join(TEXT) in [b["text"] for b in bots]
    assert any(b["mark"] == "interrupted" for b in bots)
    # the timeline: behind Details, one row per reply, keyed by its id, in one wording
    assert details_hidden
    assert rows == [b["reply"] for b in bots][-8:]
    assert re.fullmatch(r"Reply \d+: \d+ ms from the end of your turn to its first sound", latency)
    rows_by_id = {t["reply_id"]: t for t in st["timelines"]}
    for t in rows_by_id.values():
        assert t["played"] is None or t["played"] >= 0


GAP = "(() => { const l = document.getElementById('transcript'); return l.scrollHeight - l.scrollTop - l.clientHeight; })()"


def test_transcript_follows_growing_replies_unless_the_reader_scrolled_up(browser, cert):
    # Long answers grow in place after their entry was added: the list must follow the words, not only
    # new entries (found by eye: after a few long replies the newest one was out of view).
    long = tuple(f"Sentence {i} of a long answer that wraps over more than one line of the transcript. "
                 for i in range(30))
    with RunningServer(ServerOptions(), NoticeEngine(Script(text=long, reply_seconds=1.0)), ssl_context=cert) as srv:
        page, problems = new_page(browser, srv.url + "/")
        try:
            page.wait_for_function("vita.hello", timeout=10_000)

            def ask(question: str, replies: int) -> None:
                page.fill("#text", question)
                page.press("#text", "Enter")
                page.wait_for_function(f"vita.stats.timelines.length >= {replies}", timeout=20_000)

            ask("Tell me a long story.", 1)
            ask("And another one?", 2)
            overflow = page.evaluate("(() => { const l = document.getElementById('transcript');"
                                     " return l.scrollHeight - l.clientHeight; })()")
            followed = page.evaluate(GAP)
            # the reader scrolls up to re-read: the next reply must not pull them down
            page.evaluate("document.getElementById('transcript').scrollTop = 0")
            page.wait_for_timeout(200)  # the scroll event is delivered on the next frame
            ask("One more?", 3)
            kept = page.evaluate("document.getElementById('transcript').scrollTop")
            # back at the bottom, it follows again
            page.evaluate("(() => { const l = document.getElementById('transcript'); l.scrollTop = l.scrollHeight; })()")
            page.wait_for_timeout(200)
            ask("The last one?", 4)
            refollowed = page.evaluate(GAP)
        finally:
            page.context.close()
        assert wait_until(lambda: not srv.state.sessions)
    assert problems == []
    assert overflow > 1000  # the replies really overflow the list
    assert followed < 5 and kept == 0 and refollowed < 5, (followed, kept, refollowed)


def test_mute_push_to_talk_camera_toggle_and_device_pickers(browser, cert, tmp_path):
    with RunningServer(ServerOptions(), NoticeEngine(Script(reply_seconds=1.0)), ssl_context=cert) as srv:
        page, problems = new_page(browser, srv.url + "/")
        try:
            page.wait_for_function("vita.hello", timeout=10_000)
            page.click("#start")
            page.wait_for_function("vita.running && vita.stats.framesSent >= 2", timeout=10_000)
            # the preview is a mirror; the frames sent are not (drawn from the video, not its CSS)
            assert page.evaluate("getComputedStyle(document.getElementById('preview')).transform").startswith("matrix(-1")
            # camera off: the track stops, no more frames
            page.click("#camera")
            assert page.get_attribute("#camera", "aria-pressed") == "false"
            sent = page.evaluate("vita.stats.framesSent")
            page.wait_for_timeout(1500)
            assert page.evaluate("vita.stats.framesSent") <= sent + 1
            assert page.evaluate("document.getElementById('preview').srcObject") is None
            page.click("#camera")
            page.wait_for_function(f"vita.stats.framesSent > {sent + 1}", timeout=10_000)
            # mute: silence goes out, so no speech is heard; the state says so
            page.click("#mute")
            assert page.get_attribute("#mute", "aria-pressed") == "true"
            page.wait_for_function("vita.state === 'muted'", timeout=10_000)  # once the reply in flight is over
            assert page.inner_text("#state-text") == "Mic muted"
            page.wait_for_timeout(300)
            n = len(page.evaluate("vita.stats.vad"))
            page.wait_for_timeout(4500)  # the looping mic says something every ~4 s
            assert len(page.evaluate("vita.stats.vad")) == n
            page.click("#mute")
            page.wait_for_function(f"vita.stats.vad.length > {n}", timeout=10_000)
            # device pickers: filled from enumerateDevices, remembered in localStorage
            page.click("#settings-open")
            page.wait_for_function("document.getElementById('set-mic').options.length >= 2", timeout=5_000)
            fps = page.evaluate("[...document.getElementById('set-fps').options].map((o) => Number(o.value))")
            hello = page.evaluate("vita.hello")
            assert fps and max(fps) == hello["camera_fps"]  # what the server allows, no more
            mic_id = page.evaluate("document.getElementById('set-mic').options[1].value")
            page.select_option("#set-mic", mic_id)
            page.check("#set-ptt")
            shot(page, "settings", tmp_path)
            page.click("#settings-close")
            assert page.evaluate("JSON.parse(localStorage.getItem('vita-mic'))") == mic_id
            # push-to-talk: the mic is live only while Space is held
            page.wait_for_function("vita.state === 'ptt' || vita.state === 'speaking' || vita.state === 'thinking'")
            assert page.is_visible("#ptt")
            page.wait_for_timeout(500)
            n = len(page.evaluate("vita.stats.vad"))
            page.wait_for_timeout(4500)
            assert len(page.evaluate("vita.stats.vad")) == n
            page.focus("#stop")  # Space on a focused button must talk, not click it
            page.keyboard.down("Space")
            page.wait_for_function(f"vita.stats.vad.length > {n}", timeout=10_000)
            assert "user" in states(page)
            page.keyboard.up("Space")
            assert page.evaluate("vita.running")
            page.reload()  # the choices survive a reload
            page.wait_for_function("vita.hello", timeout=10_000)
            page.click("#start")
            page.wait_for_function("vita.running", timeout=10_000)
            page.click("#settings-open")
            page.wait_for_function(f"document.getElementById('set-mic').value === {mic_id!r}", timeout=5_000)
            assert page.is_checked("#set-ptt")
            page.click("#settings-close")
        finally:
            page.context.close()
        assert wait_until(lambda: not srv.state.sessions)
    assert problems == []


# ---------------------------------------------------------------------- reconnects and the waiting room


def test_page_reconnects_after_a_server_restart_on_the_same_port_and_resumes(browser, cert, tmp_path):
    port = free_port()
    engine = NoticeEngine(Script(text=TEXT, reply_seconds=1.5))
    srv = RunningServer(ServerOptions(), engine, ssl_context=cert, port=port)
    try:
        page, problems = new_page(browser, srv.url + "/")
        page.wait_for_function("vita.hello", timeout=10_000)
        page.click("#start")
        page.wait_for_function("vita.stats.replies.length >= 1 && vita.stats.timelines.length >= 1", timeout=30_000)
        entries = page.evaluate("document.querySelectorAll('#transcript li.turn').length")
        crash(srv)
        page.wait_for_function("vita.conn === 'reconnecting'", timeout=10_000)
        # while down: nothing to press, the mic is closed, the transcript stays
        assert page.is_disabled("#start") and page.is_disabled("#send") and not page.evaluate("vita.running")
        assert page.inner_text("#conn") == "Reconnecting…"
        assert page.evaluate("document.querySelectorAll('#transcript li.turn').length") >= entries
        shot(page, "reconnecting", tmp_path)
        time.sleep(3.0)  # a restart takes a while: several retries fail meanwhile
        assert page.evaluate("vita.conn") == "reconnecting"
        srv = RunningServer(ServerOptions(), engine, ssl_context=cert, port=port)
        t0 = time.monotonic()
        page.wait_for_function("vita.conn === 'ready'", timeout=15_000, polling=50)
        ready_s = time.monotonic() - t0
        page.wait_for_function("vita.running", timeout=10_000, polling=50)  # it was running: resumed
        resumed_s = time.monotonic() - t0
        print(f"\nreconnect after restart: ready {ready_s:.2f} s, capturing again {resumed_s:.2f} s")
        assert page.is_enabled("#send") and page.is_disabled("#start") and page.is_enabled("#stop")
        assert page.evaluate("vita.stats.reconnects") == 1
        assert page.evaluate("document.querySelector('#transcript li.divider').textContent").startswith("Reconnected")
        assert page.evaluate("document.querySelectorAll('#transcript li.turn').length") >= entries
        # the new session really works: a new reply comes back
        before = page.evaluate("vita.stats.replies.length")
        page.wait_for_function(f"vita.stats.replies.length > {before}", timeout=30_000)
        page.context.close()
        assert ready_s < 6.0, ready_s  # backoff is capped at 5 s; Socket.IO retries forever
    finally:
        srv.stop()
    assert wait_until(lambda: not srv.state.sessions)
    assert [p for p in problems if "WebSocket" not in p] == []  # a refused socket is logged while the server is down


def test_waiting_room_shows_the_place_and_admits_when_a_slot_frees(browser, cert, tmp_path):
    with RunningServer(ServerOptions(max_users=1, queue_size=3), NoticeEngine(), ssl_context=cert) as srv:
        first, problems1 = new_page(browser, srv.url + "/")
        first.wait_for_function("vita.hello", timeout=10_000)
        second, problems2 = new_page(browser, srv.url + "/")
        try:
            second.wait_for_function("vita.conn === 'waiting'", timeout=10_000)
            assert second.is_visible("#queue") and "number 1 in line" in second.inner_text("#queue")
            assert second.inner_text("#state-text") == "Waiting in line"
            assert second.is_disabled("#start") and second.is_disabled("#send")
            shot(second, "waiting-room", tmp_path)
            first.context.close()  # a slot frees: the first in line is admitted
            second.wait_for_function("vita.conn === 'ready' && vita.hello", timeout=10_000)
            assert second.is_hidden("#queue") and second.is_enabled("#start")
            second.click("#start")
            second.wait_for_function("vita.running", timeout=10_000)
        finally:
            second.context.close()
        assert wait_until(lambda: not srv.state.sessions)
    assert problems1 == [] and problems2 == []


def test_full_server_without_a_queue_is_retried_with_a_countdown(browser, cert):
    with RunningServer(ServerOptions(max_users=1, queue_size=0), NoticeEngine(), ssl_context=cert) as srv:
        first, _ = new_page(browser, srv.url + "/")
        first.wait_for_function("vita.hello", timeout=10_000)
        second, _ = new_page(browser, srv.url + "/")
        try:
            second.wait_for_function("vita.conn === 'retrying'", timeout=10_000)
            assert "Server full: retrying in" in second.inner_text("#conn")
            assert "server full" in second.inner_text("#banner")
            assert second.is_disabled("#start") and second.is_disabled("#send")
            first.context.close()
            second.wait_for_function("vita.conn === 'ready'", timeout=15_000)  # the retry gets in
        finally:
            second.context.close()
        assert wait_until(lambda: not srv.state.sessions)


def test_an_idle_session_is_not_reconnected_by_itself_but_with_one_click(browser, cert):
    with RunningServer(ServerOptions(timeout=1.0), NoticeEngine(), ssl_context=cert) as srv:
        page, problems = new_page(browser, srv.url + "/")
        try:
            page.wait_for_function("vita.conn === 'closed'", timeout=10_000)  # idle_timeout: a forgotten tab
            assert "without activity" in page.inner_text("#banner") and page.is_disabled("#start")
            page.wait_for_timeout(1500)
            assert page.evaluate("vita.conn") == "closed"  # it stays closed: no slot held by nobody
            page.click("#banner-action")  # "Reconnect"
            page.wait_for_function("vita.stats.ready.length === 2", timeout=10_000)
        finally:
            page.context.close()
        assert wait_until(lambda: not srv.state.sessions)
    assert problems == []


# ---------------------------------------------------------------------- permissions


DENY = """(() => {{
  const real = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = (c) => (c && c.{kind})
    ? Promise.reject(new DOMException('Permission denied', 'NotAllowedError')) : real(c);
}})();"""


def test_permission_denied_says_which_device_and_how_to_fix_it(browser, cert, tmp_path):
    with RunningServer(ServerOptions(), NoticeEngine(), ssl_context=cert) as srv:
        page, _ = new_page(browser, srv.url + "/", init=DENY.format(kind="video"))
        try:
            page.wait_for_function("vita.hello", timeout=10_000)
            page.click("#start")
            page.wait_for_function("vita.running", timeout=10_000)  # the microphone alone goes on
            text = page.inner_text("#banner")
            assert "camera is blocked" in text and "Allow" in text and "microphone only" in text
            assert page.get_attribute("#banner", "role") == "alert"
        finally:
            page.context.close()
        page, _ = new_page(browser, srv.url + "/", init=DENY.format(kind="audio"))
        try:
            page.wait_for_function("vita.hello", timeout=10_000)
            page.click("#start")
            page.wait_for_function("!document.getElementById('banner').hidden", timeout=10_000)
            text = page.inner_text("#banner")
            assert "microphone is blocked" in text and "Allow" in text and "Start again" in text
            assert not page.evaluate("vita.running") and page.is_enabled("#start")
            shot(page, "permission-denied", tmp_path)
        finally:
            page.context.close()
        assert wait_until(lambda: not srv.state.sessions)


# ---------------------------------------------------------------------- presenter mode, phone layout


def test_presenter_mode_has_large_captions_state_latency_and_a_qr_code(browser, cert, tmp_path, monkeypatch):
    monkeypatch.setattr("server.lan.lan_addresses", lambda: ["192.168.1.50"])
    options = ServerOptions(ip="0.0.0.0")  # as for a LAN; the test server still binds 127.0.0.1
    with RunningServer(options, NoticeEngine(Script(text=TEXT, reply_seconds=2.0)), ssl_context=cert) as srv:
        port = srv.url.rsplit(":", 1)[1]
        page, problems = new_page(browser, srv.url + "/?present=1", viewport={"width": 1920, "height": 1080})
        try:
            page.wait_for_function("vita.hello && vita.joinUrl", timeout=10_000)
            assert page.is_visible("#presenter") and page.is_hidden("main")
            assert page.evaluate("vita.joinUrl") == f"https://192.168.1.50:{port}/"
            dark = page.evaluate("""(() => { const c = document.getElementById('p-qr');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 128) n++; return n; })()""")
            assert dark > 1000  # a QR code was drawn (locally, by the vendored library)
            decoded = decode_qr(page.locator("#p-qr").screenshot())
            assert decoded in (None, f"https://192.168.1.50:{port}/"), decoded  # None: no decoder installed
            page.click("#p-start")
            page.wait_for_function("vita.stats.latencies.length >= 1 && vita.state === 'speaking'", timeout=30_000)
            sizes = page.evaluate("""['p-reply', 'p-state', 'p-user'].map((id) =>
                parseFloat(getComputedStyle(document.getElementById(id)).fontSize))""")
            latency = page.inner_text("#p-latency")
            shot(page, "presenter", tmp_path)
            page.keyboard.press("Escape")
            assert page.is_hidden("#presenter") and page.is_visible("main")
            assert "present" not in page.evaluate("location.search")
        finally:
            page.context.close()
        assert wait_until(lambda: not srv.state.sessions)
    assert problems == []
    assert sizes[0] >= 40 and sizes[1] >= 40 and sizes[2] >= 30, sizes
    assert re.fullmatch(r"Reply \d+: \d+ ms from the end of your turn to its first sound", latency)


def test_phone_layout_keeps_controls_and_text_box_on_the_first_screen(browser, cert, tmp_path):
    with RunningServer(ServerOptions(), NoticeEngine(Script(text=TEXT, reply_seconds=2.0)), ssl_context=cert) as srv:
        page, problems = new_page(browser, srv.url + "/", viewport=PHONE)
        try:
            page.wait_for_function("vita.hello", timeout=10_000)
            assert page.is_visible("#notice") and not page.evaluate("document.getElementById('notice').open")
            assert page.evaluate("document.getElementById('notice').getBoundingClientRect().height") < 60
            page.click("#start")
            page.wait_for_function("vita.stats.replies.length >= 2 && vita.state === 'speaking'", timeout=30_000)
            shot(page, "phone", tmp_path)
            boxes = page.evaluate("""['start', 'stop', 'mute', 'camera', 'clear', 'text', 'send', 'state'].map((id) => {
                const r = document.getElementById(id).getBoundingClientRect(); return [id, r.top, r.bottom, r.width]; })""")
            scroll = page.evaluate("[document.scrollingElement.scrollHeight, window.innerHeight, window.scrollY]")
            cam_width = page.evaluate("document.getElementById('cam').getBoundingClientRect().width")
        finally:
            page.context.close()
        assert wait_until(lambda: not srv.state.sessions)
    assert problems == []
    for name, top, bottom, width in boxes:
        assert 0 <= top and bottom <= PHONE["height"] and width > 0, (name, top, bottom)
    assert scroll[0] <= scroll[1] and scroll[2] == 0  # nothing below the first screen
    assert cam_width <= 140


# ---------------------------------------------------------------------- accessibility: contrast, labels

CONTRAST = r"""(root) => {
  const parse = (c) => { const m = /rgba?\(([^)]+)\)/.exec(c); if (!m) return null;
    const p = m[1].split(/[\s,\/]+/).filter(Boolean).map(Number); return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1}; };
  const lum = (c) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b); };
  const ratio = (a, b) => { const x = lum(a), y = lum(b); return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05); };
  const over = (top, under) => ({r: top.r * top.a + under.r * (1 - top.a), g: top.g * top.a + under.g * (1 - top.a),
    b: top.b * top.a + under.b * (1 - top.a), a: 1});
  const bgOf = (el) => { // the backgrounds behind el, blended down to the first opaque one
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c.a > 0) { layers.push(c); if (c.a >= 1) break; }
    }
    let out = {r: 255, g: 255, b: 255, a: 1};
    for (const c of layers.reverse()) out = over(c, out);
    return out;
  };
  const shown = (el) => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden';
  const out = [];
  for (const el of root.querySelectorAll('*')) {
    if (!shown(el) || el.closest(':disabled') || el.closest('.sr-only')) continue;
    const cs = getComputedStyle(el);
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    const pseudo = getComputedStyle(el, '::before').content;
    if (own || (pseudo && pseudo !== 'none' && pseudo !== 'normal' && pseudo !== '""')) {
      const size = parseFloat(cs.fontSize), bold = Number(cs.fontWeight) >= 700;
      const large = size >= 24 || (bold && size >= 18.66);
      out.push({what: (el.id || el.className || el.tagName) + ': ' + (el.textContent || pseudo).trim().slice(0, 24),
        ratio: ratio(parse(cs.color), bgOf(el)), need: large ? 3 : 4.5});
    }
    if (el.tagName === 'INPUT' && el.type === 'text') {
      out.push({what: 'placeholder', ratio: ratio(parse(getComputedStyle(el, '::placeholder').color), bgOf(el)), need: 4.5});
    }
    if (['INPUT', 'SELECT', 'BUTTON'].includes(el.tagName) || el.classList.contains('meter')) { // UI components: 3:1
      const around = bgOf(el.parentElement);
      const border = cs.borderTopStyle === 'none' ? around : over(parse(cs.borderTopColor), around);
      let edge = Math.max(ratio(border, around), ratio(bgOf(el), around));
      if (el.type === 'checkbox') edge = ratio(parse(cs.accentColor), around); // drawn by the browser in it
      if (!el.classList.contains('quiet') || cs.borderTopStyle !== 'none') {
        out.push({what: 'component ' + (el.id || el.tagName), ratio: edge, need: 3});
      }
    }
  }
  return out;
}"""

STATE_CLASSES = ["idle", "listening", "user", "thinking", "speaking", "paused", "interrupted", "muted", "ptt",
                 "waiting", "offline"]
CONN_CLASSES = ["connecting", "waiting", "ready", "reconnecting", "retrying", "closed"]


def measure(page, selector: str = "body") -> list[dict]:
    return page.evaluate(f"({CONTRAST})(document.querySelector({selector!r}))")


@pytest.mark.parametrize("scheme", ["dark", "light"])
def test_contrast_meets_wcag_aa_in_both_themes_and_inputs_are_labelled(browser, cert, tmp_path, scheme):
    engine = JudgingEngine(Script(text=TEXT, reply_seconds=3.0))
    with RunningServer(ServerOptions(), engine, ssl_context=cert) as srv:
        page, problems = new_page(browser, srv.url + "/", scheme=scheme)
        results: list[dict] = []
        try:
            page.wait_for_function("vita.hello", timeout=10_000)
            assert page.evaluate("getComputedStyle(document.documentElement).colorScheme") == scheme
            page.click("#start")
            page.wait_for_function("vita.stats.judgements.length >= 1 && vita.stats.replies.length >= 1"
                                   " && vita.stats.latencies.length >= 1", timeout=40_000)
            page.click("#details-toggle")
            page.wait_for_timeout(500)
            shot(page, f"desktop-{scheme}", tmp_path)
            page.click("#stop")  # a still page to measure (the looping mic would go on talking)
            page.evaluate("convo.divider('Reconnected: the assistant starts a new conversation')")
            page.evaluate("document.getElementById('notice').open = true")
            results += measure(page)
            for kind in ("bad", "warn"):  # every banner, the waiting room box, every state and connection pill
                page.evaluate(f"banner.show('The microphone is blocked for this page.', '{kind}', {{label: 'Retry', run() {{}}}})")
                results += measure(page, "#banner")
            page.evaluate("document.getElementById('queue').hidden = false")
            results += measure(page, "#queue")
            # every state pill side by side (a copy of #state per state, so the live page cannot repaint it)
            page.evaluate("""(names) => { const sheet = document.createElement('div');
                sheet.id = 'pill-sheet';
                for (const [k, v] of Object.entries({position: 'fixed', top: '0', left: '0', 'z-index': '20',
                  display: 'flex', gap: '.5rem', padding: '.75rem', width: 'max-content', background: 'var(--bg)'}))
                  sheet.style.setProperty(k, v);
                for (const s of names) { const d = document.getElementById('state').cloneNode(true);
                  d.removeAttribute('id'); d.removeAttribute('aria-describedby'); d.className = 'state st-' + s;
                  d.lastElementChild.removeAttribute('id'); d.lastElementChild.textContent = STATES[s]; sheet.appendChild(d); }
                document.body.appendChild(sheet); }""", STATE_CLASSES)
            results += [dict(r, what="state " + r["what"]) for r in measure(page, "#pill-sheet")]
            shot(page, f"states-{scheme}", tmp_path, "#pill-sheet")
            page.evaluate("document.getElementById('pill-sheet').remove()")
            for c in CONN_CLASSES:
                page.evaluate(f"document.getElementById('conn').className = 'conn conn-{c}'")
                results += [dict(r, what=f"conn {c}: " + r["what"]) for r in measure(page, "#conn")]
            page.evaluate("banner.hide()")
            page.click("#settings-open")
            results += measure(page, "#settings")
            labels = page.evaluate("""[...document.querySelectorAll('input, select')].map((el) =>
                [el.id, el.labels.length, el.getAttribute('aria-label')])""")
            page.click("#settings-close")
            page.click("#present")
            page.wait_for_function("vita.joinUrl !== undefined")
            results += measure(page, "#presenter")
            roles = page.evaluate("""['conn', 'status', 'queue', 'banner'].map((id) =>
                document.getElementById(id).getAttribute('role'))""")
            page.click("#p-exit")
        finally:
            page.context.close()
        assert wait_until(lambda: not srv.state.sessions)
    assert problems == []
    failing = [r for r in results if r["ratio"] < r["need"]]
    text = [r for r in results if r["need"] == 4.5]
    lowest = min(text, key=lambda r: r["ratio"])
    lowest_ui = min((r for r in results if r["what"].startswith("component")), key=lambda r: r["ratio"])
    print(f"\n{scheme}: {len(results)} pairs; lowest text {lowest['ratio']:.2f} ({lowest['what']}); "
          f"lowest UI component {lowest_ui['ratio']:.2f} ({lowest_ui['what']})")
    assert failing == [], failing
    assert len(text) > 60
    assert all(n >= 1 or aria for _id, n, aria in labels), labels
    assert roles == ["status", "status", "status", "alert"]
