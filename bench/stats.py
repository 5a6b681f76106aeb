"""Pure statistics over latency samples: percentiles, summaries, ratios."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks."""
    if not samples:
        raise ValueError("no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    n: int
    p50: float
    p95: float
    min: float
    max: float
    mean: float

    def as_dict(self) -> dict[str, float | int]:
        return {"n": self.n, "p50": round(self.p50, 6), "p95": round(self.p95, 6),
                "min": round(self.min, 6), "max": round(self.max, 6),
                "mean": round(self.mean, 6)}


def summarize(samples: Sequence[float]) -> Summary:
    return Summary(n=len(samples), p50=percentile(samples, 50), p95=percentile(samples, 95),
                   min=min(samples), max=max(samples), mean=sum(samples) / len(samples))


def ratio(value: float | None, baseline: float | None) -> float | None:
    """value / baseline, or None when either is missing or the baseline is not positive."""
    if value is None or baseline is None or baseline <= 0:
        return None
    return round(value / baseline, 3)
