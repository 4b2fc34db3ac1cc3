"""Which cell is best for each metric at a batch size, or which cells tie for best.

The cells are ordered by their representative value of the metric; the top one is then compared with
every other cell run by run (`results.stats.ratio_interval` on their usable runs, oriented so that a
ratio above 1 favours the top cell). The top cell wins alone only when its interval against each other
cell lies wholly beyond the minimum effect; the cells it does not beat so share a tie with it. A top cell
with fewer than two ok runs has no interval, so it beats nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from results import stats
from results.stats import numeric


@dataclass(frozen=True)
class Metric:
    column: str
    name: str
    unit: str
    higher_is_better: bool


METRICS = (
    Metric("throughput_sps", "throughput", "samples/s", True),
    Metric("latency_ms_p50", "p50 latency", "ms", False),
    Metric("latency_ms_p99", "p99 latency", "ms", False),
    Metric("memory_mb", "peak memory", "MiB", False),
)
METRIC_BY_NAME = {m.name: m for m in METRICS}


@dataclass(frozen=True)
class Edge:
    other: str
    ratio: stats.Ratio  # the top cell over `other`, > 1 favours the top cell
    verdict: str


@dataclass(frozen=True)
class Ranking:
    metric: Metric
    batch_size: int
    top: str
    edges: tuple[Edge, ...]  # the top cell against every other cell, runner-up first

    @property
    def tied(self) -> tuple[Edge, ...]:
        """The cells the top cell can't be told from: not beaten beyond the minimum effect."""
        return tuple(e for e in self.edges if e.verdict != "faster")

    @property
    def has_winner(self) -> bool:
        return bool(self.edges) and not self.tied


def run_values(runs: pd.DataFrame, cells: pd.DataFrame, cell_id: str, column: str) -> pd.Series:
    """A cell's usable runs' values of `column` on the cell's device name, indexed by round."""
    return stats.run_series(runs[runs["cell_id"] == cell_id], column, cells.loc[cell_id, "device_name"])


def oriented_ratio(better: pd.Series, worse: pd.Series, higher_is_better: bool, confidence: float) -> stats.Ratio:
    """`better` over `worse`, oriented so that a ratio > 1 favours `better`."""
    if higher_is_better:
        return stats.ratio_interval(better, worse, confidence)
    return stats.ratio_interval(worse, better, confidence)


def rank(
    candidates: pd.DataFrame, runs: pd.DataFrame, metric: Metric, min_effect: float, confidence: float
) -> Ranking | None:
    """The top cell of `candidates` (one batch size, one device) for `metric`, against every other one."""
    values = numeric(candidates, metric.column).dropna()
    if values.empty:
        return None
    order = values.sort_values(ascending=not metric.higher_is_better, kind="stable").index
    top, edges = str(order[0]), []
    top_runs = run_values(runs, candidates, top, metric.column)
    for other in order[1:]:
        ratio = oriented_ratio(
            top_runs, run_values(runs, candidates, other, metric.column), metric.higher_is_better, confidence
        )
        enough = int(candidates.loc[top, "repeats_ok"]) >= 2
        verdict = str(stats.verdict(ratio, min_effect) if enough else stats.Verdict.INCONCLUSIVE)
        edges.append(Edge(str(other), ratio, verdict))
    return Ranking(metric, int(candidates.loc[top, "batch_size"]), top, tuple(edges))


def rank_all(on_device: pd.DataFrame, runs: pd.DataFrame, min_effect: float, confidence: float) -> list[Ranking]:
    """A ranking per batch size and metric (batch sizes ascending, metrics in `METRICS` order)."""
    rankings = []
    for batch_size in sorted(on_device["batch_size"].unique()):
        at_batch = on_device[on_device["batch_size"] == batch_size]
        rankings += [r for m in METRICS if (r := rank(at_batch, runs, m, min_effect, confidence)) is not None]
    return rankings
