"""95% confidence intervals of the studies' figures: Wilson for a share, percentile bootstrap for a mean."""

from __future__ import annotations

import math
import random

Z95 = 1.959964


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (exact match): sound at 0, 1 and small n."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # min/max with p: at 0 and 1 the bounds round to a hair inside the point (1.7e-18 at 0 of 150)
    return (max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))


def bootstrap_mean(values: list[float], resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-question scores (F1), seeded: same data, same interval."""
    n = len(values)
    if n == 0:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    return (means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1])


def error_bars(points: list[float], intervals: list[tuple[float, float]]) -> list[list[float]]:
    """matplotlib's `yerr` (distances below and above each point) of points with their intervals; a
    percentile bootstrap interval need not contain its mean, so a distance is never negative."""
    return [[max(0.0, y - lo) for y, (lo, _) in zip(points, intervals, strict=True)],
            [max(0.0, hi - y) for y, (_, hi) in zip(points, intervals, strict=True)]]  # fmt: skip
