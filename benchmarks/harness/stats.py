"""Summaries of repeated measurements: median and spread."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

Summary = dict[str, float]


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile: p99 of 100 values is the 99th smallest."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarize(values: Iterable[float]) -> Summary:
    """Median, p10/p90/p99, min, max and count; empty when nothing was measured."""
    items = [float(v) for v in values]
    if not items:
        return {}
    return {
        "n": len(items),
        "median": statistics.median(items),
        "min": min(items),
        "max": max(items),
        "p10": percentile(items, 0.10),
        "p90": percentile(items, 0.90),
        "p99": percentile(items, 0.99),
    }


def ms(seconds: float | None) -> str:
    """A duration for people: milliseconds below 10 s, seconds above."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "n/a"
    if seconds < 10:
        return f"{seconds * 1000:,.0f} ms"
    return f"{seconds:,.1f} s"


def spread(summary: dict[str, Any]) -> str:
    """``median (min - max)`` of a summary of seconds."""
    if not summary:
        return "n/a"
    return f"{ms(summary['median'])} ({ms(summary['min'])} - {ms(summary['max'])})"
