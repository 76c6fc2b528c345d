"""Shared test fixtures and helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"


def parity_root() -> Path:
    """Where the large reference-parity goldens live (``VITA_PARITY_DIR`` overrides)."""
    return Path(os.environ.get("VITA_PARITY_DIR", REPO_ROOT.parent / "shared" / "fixtures" / "reference-parity"))


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """The reference-parity folder; skips where absent, but fails under CI=true."""
    root = parity_root()
    if not root.is_dir():
        msg = f"reference-parity goldens not found at {root} (set VITA_PARITY_DIR)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random VITA-1.5 checkpoint in the release layout (``engine.tiny_checkpoint``, seed 0)."""
    from engine.tiny_checkpoint import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-vita"), seed=0)


PER_TEST_THREADS = ("session-writer-", "tts-", "fake-turn-", "http-", "waiting-room", "test-client-loop-")
"""Name prefixes of the threads a session, a reply or a test server owns: none may outlive its test."""


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """After every test: the session, reply and server threads it started have ended (within 15 s).

    Function-scoped fixtures are torn down before this check (it is set up first among them); threads of
    module-scoped servers and engines, started before the test, are not counted.
    """
    import threading
    import time

    before = {t.ident for t in threading.enumerate()}
    yield

    def leaked() -> list[str]:
        return sorted(t.name for t in threading.enumerate()
                      if t.ident not in before and t.is_alive() and t.name.startswith(PER_TEST_THREADS))

    deadline = time.monotonic() + 15
    while leaked() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not leaked(), f"threads left running by this test: {leaked()}"
