"""How a ratio and its interval read, in the report, `compare`, `recommend` and the status table alike."""

from __future__ import annotations

import math

NO_INTERVAL = "too few runs to tell"
NO_RUNS = "no usable runs to compare"


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def ratio_text(estimate: float | None, low: float | None, high: float | None) -> str:
    """`1.31x [1.22x, 1.40x]`; the estimate alone when there is no interval; a note when there is no estimate."""
    if not _finite(estimate):
        return f"({NO_RUNS}, {NO_INTERVAL})"
    if not (_finite(low) and _finite(high)):
        return f"{estimate:.2f}x ({NO_INTERVAL})"
    return f"{estimate:.2f}x [{low:.2f}x, {high:.2f}x]"
