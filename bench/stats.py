"""Small statistics: medians, percentiles and the peer ratios printed in the table."""

from __future__ import annotations

import math
from collections.abc import Sequence


def median(values: Sequence[float]) -> float | None:
    """The median, or None for no values (a broker that produced no result)."""
    return percentile(values, 50.0)


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Linear-interpolated percentile (the same definition as numpy's default); None for no values."""
    if not 0.0 <= pct <= 100.0:
        raise ValueError(f"percentile must be within 0..100, got {pct}")
    data = sorted(v for v in values if v is not None and not math.isnan(v))
    if not data:
        return None
    rank = (len(data) - 1) * pct / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return float(data[low])
    return data[low] + (data[high] - data[low]) * (rank - low)


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """ours / theirs, or None when either side is missing or the peer's value is zero."""
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


def format_value(value: float | None, unit: str = "", integer: bool = False) -> str:
    """A value with a sensible number of digits for its size (whole numbers for counts); '—' when missing."""
    if value is None:
        return "—"
    if integer:
        return f"{value:,.0f} {unit}".rstrip()
    magnitude = abs(value)
    if magnitude >= 100:
        text = f"{value:,.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".rstrip()


def format_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"
