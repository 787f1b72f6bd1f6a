"""Rates with what stands behind them: the count, the number of prompts and a 95% Wilson score interval.

A refusal rate measured on 20 prompts says little without its interval: 0/20 is consistent with a true rate up to
16%. The Wilson interval (Wilson 1927; Brown, Cai & DasGupta 2001) stays inside [0, 1] and keeps its coverage at
0 and n, where the normal approximation collapses to a point.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

Z95 = 1.959963984540054  # the 97.5th percentile of the standard normal


def wilson(count: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``count`` successes in ``n`` trials ((0, 1) when n is 0)."""
    if n == 0:
        return 0.0, 1.0
    p = count / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def counted(count: int, n: int) -> dict:
    """``{"rate", "count", "n", "low", "high"}``: a rate, what it counts, and its 95% Wilson interval."""
    low, high = wilson(count, n)
    return {"rate": count / n if n else None, "count": count, "n": n, "low": low, "high": high}


def counted_flags(flags: Sequence[bool], categories: Sequence[str | None] = ()) -> dict:
    """``{"overall": counted, "by_category": {category: counted}}`` of boolean verdicts."""
    by: dict[str, list[bool]] = defaultdict(list)
    for flag, category in zip(flags, categories):
        if category is not None:
            by[category].append(flag)
    return {"overall": counted(sum(flags), len(flags)),
            "by_category": {c: counted(sum(v), len(v)) for c, v in sorted(by.items())}}


def interval_text(entry: dict | None) -> str:
    """``12.5% (4/32; 95% CI 4.3–28.1%)``, or – when there is nothing to count."""
    if not entry or entry.get("rate") is None:
        return "–"
    return (f"{100 * entry['rate']:.1f}% ({entry['count']}/{entry['n']}; "
            f"{100 * entry['low']:.1f}–{100 * entry['high']:.1f}%)")
