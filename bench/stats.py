"""Small figures shared by the bench modules: percentiles and the machine's load."""

from __future__ import annotations

import os


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    data = sorted(values)
    k = (len(data) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages, recorded next to every figure (the machine is shared)."""
    return [round(x, 2) for x in os.getloadavg()]
