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
