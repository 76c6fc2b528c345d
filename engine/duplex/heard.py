"""What of a reply the user actually heard: spoken clauses mapped onto the audio samples sent."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class SpokenLog:
    """Clause boundaries on the reply's 24 kHz sample clock, filled by the speech worker as it speaks."""

    _clauses: list[str] = field(default_factory=list)
    _ends: list[int] = field(default_factory=list)
    """Sample offset at which each clause's audio ends so far."""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add_chunk(self, clauses_started: list[str], total_samples: int) -> None:
        """A chunk of the latest started clause was produced; ``total_samples`` is the reply's length now."""
        with self._lock:
            while len(self._clauses) < len(clauses_started):
                self._clauses.append(clauses_started[len(self._clauses)])
                self._ends.append(self._ends[-1] if self._ends else 0)
            if self._ends:
                self._ends[-1] = total_samples

    @property
    def total_samples(self) -> int:
        """Samples of audio produced so far."""
        with self._lock:
            return self._ends[-1] if self._ends else 0

    def heard(self, samples_played: int) -> str:
        """Text covered by the first ``samples_played`` samples: whole clauses, then the share of the
        words of the clause that was cut, in proportion to how much of its audio played."""
        with self._lock:
            clauses, ends = list(self._clauses), list(self._ends)
        out: list[str] = []
        start = 0
        for clause, end in zip(clauses, ends, strict=True):
            if samples_played >= end:
                out.append(clause)
            else:
                if samples_played > start and end > start:
                    words = clause.split()
                    keep = int(len(words) * (samples_played - start) / (end - start))
                    if keep:
                        out.append(" ".join(words[:keep]))
                break
            start = end
        return " ".join(out)
