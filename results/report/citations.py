"""Every number the report quotes, and the text it is printed as.

`Citations` quotes a number from the two CSVs and remembers where it came from, for `citations.json`:
a cell and column of the cells CSV, a run and column of the runs CSV, a cell's speedup over the baseline
with its interval and verdict, or a comparison of two cells' runs with its interval and the claim made
from it. The text helpers print numbers, intervals and verdicts the same way wherever they appear; those
that print settings and counts (`percent`, `span`, `plain`) print what is no finding and cite nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from results import stats
from results.formatting import NO_INTERVAL, ratio_text
from results.ranking import Metric

CONFIDENCE = 0.95  # of every interval the report quotes (the cells CSV's intervals are aggregate's default)
VERDICT_WORDS = {"faster": "faster", "slower": "slower", "equivalent": "equivalent", "inconclusive": "inconclusive"}


@dataclass(frozen=True)
class Citation:
    """One quoted number (or ratio with its interval), as printed, and where it came from."""

    text: str  # as printed in the report
    kind: str  # value (cells CSV) | run_value (runs CSV) | speedup (cells CSV) | comparison (runs CSV)
    cell_id: str  # the cell; for run_value the run id
    column: str
    value: float | None  # the value, or the ratio's estimate (None when there is none)
    digits: int = 2
    scale: float = 1.0  # printed value = value * scale (100 for a percentage)
    suffix: str = ""
    over_cell_id: str | None = None  # comparison: the other cell (the ratio > 1 favours cell_id)
    low: float | None = None
    high: float | None = None
    claim: str | None = None  # speedup: the verdict; comparison: "winner" or "tie"
    higher_is_better: bool | None = None  # comparison: the metric's orientation
    min_effect: float | None = None
    confidence: float | None = None


# ---------------------------------------------------------------------------------------------- text


def number_text(value: float, digits: int = 2, scale: float = 1.0, suffix: str = "") -> str:
    return f"{value * scale:,.{digits}f}{suffix}"


def percent(fraction: float) -> str:
    """A parameter as a percentage, `0.03` -> `3%` (printed in code: it is a setting, not a finding)."""
    return f"{fraction * 100:g}%"


interval_text = ratio_text  # `1.31x [1.22x, 1.40x]`, as everywhere


def verdict_text(estimate: float | None, low: float | None, high: float | None, verdict: str) -> str:
    """`1.31x [1.22x, 1.40x]: faster`; an interval-less ratio is never called anything."""
    interval = interval_text(estimate, low, high)
    return interval if interval.endswith(f"({NO_INTERVAL})") else f"{interval}: {VERDICT_WORDS[verdict]}"


def comparison_text(estimate: float | None, low: float | None, high: float | None, over_optimization: str) -> str:
    return f"{interval_text(estimate, low, high)} over `{over_optimization}`"


def span(values: pd.Series) -> str:
    """A range of counts, `3 to 5`, or the one count when they are all the same."""
    low, high = int(values.min()), int(values.max())
    return f"{low}" if low == high else f"{low} to {high}"


def plain(value: Any) -> str:
    """A CSV value as written: a float that holds an integer without its `.0`."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _finite_or_none(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------------------------------------- citations


class Citations:
    """Quotes numbers from the two CSVs and remembers each quote for `citations.json`."""

    def __init__(self, cells: pd.DataFrame, runs: pd.DataFrame, min_effect: float) -> None:
        self.cells, self.runs, self.min_effect = cells, runs.set_index("run_id", drop=False), min_effect
        self.items: list[Citation] = []

    def _add(self, citation: Citation) -> str:
        self.items.append(citation)
        return citation.text

    def quote(self, cell_id: str, column: str, digits: int = 2, scale: float = 1.0, suffix: str = "") -> str:
        value = float(self.cells.loc[cell_id, column])
        text = number_text(value, digits, scale, suffix)
        return self._add(Citation(text, "value", cell_id, column, value, digits, scale, suffix))

    def quote_run(self, run_id: str, column: str, digits: int = 2, scale: float = 1.0, suffix: str = "") -> str:
        value = float(self.runs.loc[run_id, column])
        text = number_text(value, digits, scale, suffix)
        return self._add(Citation(text, "run_value", run_id, column, value, digits, scale, suffix))

    def speedup(self, cell_id: str) -> str:
        """The cell's throughput over the baseline's, its interval and its verdict, from the cells CSV."""
        row = self.cells.loc[cell_id]
        estimate = _finite_or_none(row["speedup"])
        low, high = _finite_or_none(row["speedup_ci_low"]), _finite_or_none(row["speedup_ci_high"])
        claim = str(row["verdict"])
        text = verdict_text(estimate, low, high, claim)
        confidence = _finite_or_none(row.get("verdict_confidence", float("nan"))) or CONFIDENCE
        citation = Citation(
            text, "speedup", cell_id, "speedup", estimate, low=low, high=high, claim=claim,
            min_effect=self.min_effect, confidence=confidence,
        )  # fmt: skip
        return self._add(citation)

    def comparison(
        self, cell_id: str, over: str, metric: Metric, ratio: stats.Ratio, claim: str, confidence: float = CONFIDENCE
    ) -> str:
        """A ratio of two cells' runs (> 1 favours `cell_id`) at `confidence`, with the claim made from it."""
        estimate, low, high = _finite_or_none(ratio.estimate), _finite_or_none(ratio.low), _finite_or_none(ratio.high)
        text = comparison_text(estimate, low, high, str(self.cells.loc[over, "optimization"]))
        citation = Citation(
            text, "comparison", cell_id, metric.column, estimate, over_cell_id=over, low=low, high=high,
            claim=claim, higher_is_better=metric.higher_is_better, min_effect=self.min_effect, confidence=confidence,
        )  # fmt: skip
        return self._add(citation)
