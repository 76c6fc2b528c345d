"""Real headless Chromium, real VITA engine (tiny random checkpoint), real VAD: a spoken conversation
with an interruption, through the page's fake microphone (two_turns.wav) and fake camera."""

from __future__ import annotations

import gc

import pytest

from engine.duplex.engine import VitaEngine
from engine.duplex.options import DuplexOptions
from engine.llm.options import LlmOptions
from engine.llm.prompt import SPOKEN
from engine.speech.options import SpeechOptions
from server.options import ServerOptions
from tests.fakes.harness import SPEECH_DIR, RunningServer, wait_until
from tests.test_browser import BASE_ARGS, CHROMIUM, open_page, playwright, tls  # noqa: F401 - shared fixtures

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


@pytest.fixture(scope="module")
def vita(tiny_checkpoint):
    # One engine answers and judges: two engines are the duplex and supervision tests' business.
    llm = LlmOptions(model_path=tiny_checkpoint, num_engines=1, dtype="float32", enforce_eager=True,
                     max_model_len=2048, kv_cache_mb=64, max_new_tokens=64)
    # every utterance is judged addressed (forced through the monitor's allowed tokens)
    # Random weights answer camera frames with unspeakable text ('#'), so this engine answers from speech
    # only (frames still flow from the page); the default clause length cap keeps answers long enough
    # to be talked over.
    engine = VitaEngine(llm, DuplexOptions(max_frames=0, speech=SpeechOptions()), judge_states=(SPOKEN,))
    engine.notice_text = "Replies are noise: the weights are random."
    yield engine
    engine.close()
    del engine
    gc.collect()


def test_page_holds_a_spoken_conversation_with_an_interruption(playwright, tls, vita):  # noqa: F811
    with RunningServer(ServerOptions(), vita, ssl_context=tls) as srv:
        # the mic loops two_turns.wav: questions 2 s apart, so some answer is talked over
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            *BASE_ARGS, f"--use-file-for-fake-audio-capture={SPEECH_DIR / 'two_turns.wav'}"])
        try:
            page, problems = open_page(browser, srv.url + "/")
            page.wait_for_function("vita.stats.connected && vita.hello", timeout=10_000)
            assert page.is_visible("#notice") and "random" in page.inner_text("#notice")
            page.click("#start")
            # turn 1 is answered; turn 2 starts while that answer plays: pause, verdict, interrupt,
            # and the second answer plays
            try:
                page.wait_for_function(
                    "vita.stats.interrupts.length >= 1 && vita.stats.replies.some((r) =>"
                    " r.epoch === vita.stats.interrupts[0].epoch && vita.stats.played[r.reply_id] > 0)",
                    timeout=60_000,
                )
            except Exception:
                pytest.fail(f"the conversation did not happen: {page.evaluate('vita.stats')} {problems}")
            st = page.evaluate("vita.stats")
            session = next(iter(srv.state.sessions.values()))
            history = session.conversation._history
            cut = st["interrupts"][0]
            assert wait_until(lambda: len(history) >= 1, timeout=10)
            heard = history.exchanges[-1].reply  # the interrupted answer, as heard
            cut_text = page.evaluate(
                f"document.querySelector('#transcript li.bot[data-reply=\"{cut['reply_id']}\"] .text').textContent")
            # A timeline row needs a reply that ends; the looping mic interrupts each one after ~4 s, which
            # a slow machine's replies may all outlast: stop talking (mute) so the reply in flight can end.
            page.click("#mute")
            try:
                page.wait_for_function("vita.stats.timelines.length >= 1", timeout=60_000)
            except Exception:
                seen = page.evaluate("({replies: vita.stats.replies, interrupts: vita.stats.interrupts, "
                                     "errors: vita.stats.errors})")
                pytest.fail(f"no reply ended: {seen}")
            timeline = page.evaluate("vita.stats.timelines")
            row = f"#timeline-rows tr[data-reply='{timeline[0]['reply_id']}']"  # one row per reply, keyed by its id
            cells = [page.text_content(f"{row} td[data-stage='{k}']") for k in ("vad", "judge", "clause", "sent")]
        finally:
            browser.close()

    assert problems == [] and st["errors"] == []
    first = cut["reply_id"]
    second = next(r["reply_id"] for r in st["replies"] if r["epoch"] == cut["epoch"])
    assert first in [p["reply_id"] for p in st["pauses"]]  # paused at speech onset, before the verdict
    assert cut["reason"] == "barge_in"
    # The interrupt flushed the player: what was queued of the first answer, or nothing when a loaded box
    # had let its queue run dry before the cut (the player then reports no reply and 0 samples dropped).
    flushed = st["flushed"]
    assert flushed and all(f["replyId"] in (first, None) for f in flushed), flushed
    assert all(f["dropped"] == 0 for f in flushed if f["replyId"] is None), flushed
    assert st["played"][first] > 0 and st["played"][second] > 0
    # the history holds the interrupted answer only as far as the page played it
    assert len(heard.split()) < len(cut_text.split())
    assert timeline and all(c != "–" for c in cells)
