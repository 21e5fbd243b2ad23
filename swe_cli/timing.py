"""Wall time of the steps of a stage, kept so a user can see where a run spends its time (the
workspace manifest and `swe align --json` record it)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Steps:
    """Wall seconds per step of a stage, and the steps whose result came from a cache."""

    seconds: dict[str, float] = field(default_factory=dict)
    cached: list[str] = field(default_factory=list)

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        """Adds the block's wall seconds to seconds[step] (also when the block raises)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - start

    def rounded(self) -> dict[str, float]:
        return {step: round(value, 3) for step, value in self.seconds.items()}
