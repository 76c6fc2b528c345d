"""The README's table of figures is the one the committed benchmark JSON makes (``make bench`` writes both)."""

from __future__ import annotations

import shutil

from bench import readme_table
from bench.bench_endpoint import measure


def test_readme_table_matches_the_committed_bench_json() -> None:
    text = readme_table.README.read_text()
    block = text[text.index(readme_table.START) : text.index(readme_table.END) + len(readme_table.END)]
    assert block == readme_table.table(), "README's figures are stale: run `python -m bench.readme_table`"


def test_missing_json_is_shown_as_not_run(tmp_path) -> None:
    shutil.copy(readme_table.BENCH_DIR / "bench_endpoint.json", tmp_path)
    out = readme_table.table(tmp_path)
    assert "| `bench_duplex` | | not run |" in out and "median" in out
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{readme_table.START}\nold\n{readme_table.END}\noutro\n")
    assert readme_table.rewrite(readme, tmp_path) and not readme_table.rewrite(readme, tmp_path)
    assert readme.read_text().startswith("intro\n") and readme.read_text().endswith("\noutro\n")


def test_endpoint_bench_measures_every_turn_of_the_speech_fixtures() -> None:
    per = measure()
    delays = [d for ds in per.values() for d in ds]
    assert len(delays) == 7 and all(0 <= d <= 40 for d in delays), per
