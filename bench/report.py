"""Where benchmarks put their results, and the one way they write them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "docs" / "bench"


def write_report(name: str, result: dict, plot: Callable[[dict, Path], None], out: Path = OUT) -> None:
    """Write ``out/<name>.json`` and ``out/<name>.png`` and print the result (machine details left out)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    plot(result, out / f"{name}.png")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
