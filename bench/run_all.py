"""Run every benchmark in ``bench/`` in turn (``make bench``); each writes JSON + PNG into ``docs/bench/``."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Run the ``bench_*`` modules named in ``argv`` (all of them when empty); return the failure count."""
    wanted = set(argv if argv is not None else sys.argv[1:])
    here = Path(__file__).parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    failures = 0
    for name in names:
        if wanted and name not in wanted:
            continue
        print(f"== {name}", flush=True)
        module = importlib.import_module(f"bench.{name}")
        try:
            module.main([])
        except Exception as exc:  # one broken benchmark must not hide the others' numbers
            failures += 1
            print(f"!! {name} failed: {exc!r}", flush=True)
    from bench.readme_table import rewrite

    rewrite()  # the README's table of figures, from the JSON just written (and the older JSON of the rest)
    return failures


if __name__ == "__main__":
    raise SystemExit(main())
