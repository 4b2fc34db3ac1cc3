"""A cell against its baseline: the speedup, its interval and one of four verdicts.

Two ways to a speedup, chosen per comparison:

- **In-run** (`_in_run`), where every usable run of the cell timed the optimized model against an eager fp32 copy
  of the baseline in the same process (worker/engine/measure.py, `time_against_reference`): the run's
  `reference_ratio` is the unit. A fresh process lands in one of the VM's speed modes (15-40% apart), but both
  models of one run share it, so it cancels in their ratio. The estimate is the geometric mean of the runs'
  ratios; its t-interval takes the variance of the per-run log ratio pooled within a stratum (`_strata`).
- **Between processes** (`_between_processes`), for the rest (the baseline's own cell, a step that changes
  process-wide settings, slow calls, CSVs from before the reference): the cell's and the baseline's runs of the
  same round paired, a Student t-interval on the mean log ratio of their throughputs (`ratio_interval`); Welch's t
  where fewer than two rounds pair. The rounds are blocks: drift shared by a round cancels.

A verdict reads the interval against the band `[1 - min_effect, 1 + min_effect]`: `faster` when the whole interval
lies above it, `slower` below, `equivalent` inside (a positive finding of no practical difference, as in an
equivalence test), else `inconclusive`. The interval's confidence (`verdict_confidence`) is the sweep's, shared by
its verdicts (Bonferroni) and spent over the looks of `--repeats auto` (`results/sequential.py`).
docs/statistics.md has the figures behind each choice.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from enum import Enum

import numpy as np
import pandas as pd
from scipy import special  # Student t and F: scipy.special loads in a third of the time scipy.stats takes

from results.runs import BASELINE, COUNTERPART_KEYS, Cells, numeric, rounds
from results.sequential import Looks, interval_confidence, rounds_to_decide
from shared.config import DEFAULT_MIN_EFFECT

REFERENCE_MEASURED = "measured"  # a run's `reference_status` when it timed the in-run reference
# A stratum pools its cells' variances unless one disagrees with the others at this level (Bonferroni over them).
HOMOGENEITY_ALPHA = 0.05


class Verdict(str, Enum):
    """A cell against its counterpart (ratio > 1 is better), read off the interval and the band."""

    FASTER = "faster"
    SLOWER = "slower"
    EQUIVALENT = "equivalent"
    INCONCLUSIVE = "inconclusive"

    def __str__(self) -> str:
        return self.value


# Written by optbench before the four verdicts: an interval not beyond the band, equivalent or inconclusive.
LEGACY_NO_DIFFERENCE = "no_difference"


@dataclass(frozen=True)
class Ratio:
    """A ratio of two run populations: geometric-mean estimate and its interval.

    `n` is the number of rounds paired (paired_t_log), or the smaller side's run count otherwise.
    """

    estimate: float
    low: float
    high: float
    n: int
    method: str  # paired_t_log | welch_t_log | insufficient_runs
    sd_log: float = math.nan  # run-to-run spread: SD of the per-round log ratios (paired) or pooled (Welch)


def _logs(values: pd.Series) -> dict[object, float]:
    """Natural logs of the positive finite values by index label (a repeated label: the mean of its logs)."""
    if not pd.api.types.is_numeric_dtype(values):
        values = pd.to_numeric(values, errors="coerce")
    array = values.to_numpy(dtype=float, na_value=np.nan)
    keep = np.isfinite(array) & (array > 0)
    labels, logs = values.index[keep], np.log(array[keep])
    if not labels.has_duplicates:
        return dict(zip(labels, logs.tolist(), strict=True))
    return pd.Series(logs, index=labels).groupby(level=0, sort=False).mean().to_dict()


@functools.lru_cache(maxsize=1024)
def _t_quantile(probability: float, df: float) -> float:
    return float(special.stdtrit(df, probability))


def _t_interval(mean: float, se: float, df: float, confidence: float) -> tuple[float, float]:
    """exp(mean ± t·se); a zero standard error gives a zero-width interval."""
    if se == 0:
        return math.exp(mean), math.exp(mean)
    half = _t_quantile((1 + confidence) / 2, df) * se
    with np.errstate(over="ignore"):  # a t-interval on 1-2 degrees of freedom can reach past float range: inf
        return float(np.exp(mean - half)), float(np.exp(mean + half))


def ratio_interval(
    numerator: pd.Series, denominator: pd.Series, confidence: float = 0.95, paired: bool = True
) -> Ratio:
    """Geometric-mean ratio numerator/denominator with a t-interval on the log scale.

    Both Series hold one value per usable run, indexed by its round (`rounds`). Paired by round when at least two
    rounds are common to both sides (and `paired`), else Welch's t when each side has two values or
    more, else insufficient (the point estimate is still given when both sides have a value).
    """
    top, bottom = _logs(numerator), _logs(denominator)
    common = [label for label in top if label in bottom]
    if paired and len(common) >= 2:
        diffs = np.array([top[label] - bottom[label] for label in common])
        n = len(diffs)
        mean = float(diffs.mean())
        sd = float(diffs.std(ddof=1))
        low, high = _t_interval(mean, sd / math.sqrt(n), n - 1, confidence)
        return Ratio(math.exp(mean), low, high, n, "paired_t_log", sd)
    top_logs, bottom_logs = np.array(list(top.values())), np.array(list(bottom.values()))
    n_top, n_bottom = len(top_logs), len(bottom_logs)
    if n_top >= 2 and n_bottom >= 2:
        mean = float(top_logs.mean() - bottom_logs.mean())
        var_top, var_bottom = top_logs.var(ddof=1) / n_top, bottom_logs.var(ddof=1) / n_bottom
        se = math.sqrt(var_top + var_bottom)
        df = (var_top + var_bottom) ** 2 / (var_top**2 / (n_top - 1) + var_bottom**2 / (n_bottom - 1)) if se else 1.0
        low, high = _t_interval(mean, se, float(df), confidence)
        n = min(n_top, n_bottom)
        return Ratio(math.exp(mean), low, high, n, "welch_t_log", se * math.sqrt(n))
    estimate = math.exp(float(top_logs.mean() - bottom_logs.mean())) if n_top and n_bottom else math.nan
    return Ratio(estimate, math.nan, math.nan, min(n_top, n_bottom), "insufficient_runs")


def verdict_of(low: float, high: float, min_effect: float = DEFAULT_MIN_EFFECT) -> Verdict:
    """The interval [low, high] (ratio > 1 is better) against the band [1 - min_effect, 1 + min_effect]:
    wholly above it faster, wholly below slower, wholly inside equivalent, else (or no interval) inconclusive."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return Verdict.INCONCLUSIVE
    if low > 1 + min_effect:
        return Verdict.FASTER
    if high < 1 - min_effect:
        return Verdict.SLOWER
    if low >= 1 - min_effect and high <= 1 + min_effect:
        return Verdict.EQUIVALENT
    return Verdict.INCONCLUSIVE


def verdict(ratio: Ratio, min_effect: float = DEFAULT_MIN_EFFECT) -> Verdict:
    """The verdict of a ratio oriented so that > 1 is better; no interval (insufficient runs) is inconclusive."""
    return verdict_of(ratio.low, ratio.high, min_effect)


def legacy_verdict(text: object, low: float, high: float, min_effect: float = DEFAULT_MIN_EFFECT) -> object:
    """A verdict as a CSV holds it: `no_difference` (optbench before the four verdicts) becomes `equivalent` or
    `inconclusive` from its interval; anything else is kept."""
    if text != LEGACY_NO_DIFFERENCE:
        return text
    return str(verdict_of(float(low), float(high), min_effect))


def _t_quantiles(probability: np.ndarray, df: np.ndarray) -> np.ndarray:
    return special.stdtrit(df, probability)


def speedups(
    runs: pd.DataFrame,
    cells: Cells,
    used: np.ndarray,
    table: pd.DataFrame,
    min_effect: float,
    confidence: float,
    looks: Looks,
) -> None:
    """Speedup of each optimization cell over the baseline cell on the same model, shape and device, with the
    verdict its interval gives at the sweep's confidence shared among all these comparisons and spent over
    `looks` (`results/sequential.py`); written into `table`. From the in-run reference where every usable run of
    the cell has one (`_in_run`), else from the two cells' runs paired by round (`_between_processes`).

    Only the runs on the cell's own device name count, so a run that landed on another GPU model of a mixed
    cluster never enters a ratio.
    """
    keys = [[None if pd.isna(v) else v for v in table[k]] if k in table.columns else [None] * cells.count
            for k in COUNTERPART_KEYS]  # fmt: skip
    keys = list(zip(*keys, strict=True))
    optimizations = table["optimization"].tolist() if "optimization" in table.columns else [None] * cells.count
    baselines = {keys[i]: i for i in range(cells.count) if optimizations[i] == BASELINE}
    pairs = pd.DataFrame(
        [(i, baselines[keys[i]]) for i in range(cells.count) if optimizations[i] != BASELINE and keys[i] in baselines],
        columns=["cell", "base"],
    )
    if pairs.empty:
        return
    # The runs each side uses: usable, on the cell's own device name.
    chosen = used.copy()
    if "device_name" in runs.columns:
        device = table["device_name"].to_numpy(dtype=object)[cells.code]
        chosen &= pd.isna(device) | (runs["device_name"].to_numpy(dtype=object) == device)
    rates = _Rates(alpha=1 - confidence, comparisons=len(pairs), looks=looks, min_effect=min_effect)
    _between_processes(runs, cells, chosen, pairs, table, rates)
    table["speedup_between_processes"] = table["speedup"]
    _in_run(runs, cells, chosen, pairs, [keys[i] for i in range(cells.count)], table, rates)


@dataclass(frozen=True)
class _Rates:
    """What every comparison of a sweep shares: the error rate, how many comparisons share it, the looks, the band."""

    alpha: float
    comparisons: int
    looks: Looks
    min_effect: float

    def level(self, rounds: int) -> float:
        return interval_confidence(self.alpha, self.comparisons, self.looks, max(int(rounds), 2))


def _between_processes(
    runs: pd.DataFrame, cells: Cells, chosen: np.ndarray, pairs: pd.DataFrame, table: pd.DataFrame, rates: _Rates
) -> None:
    """Each comparison as `ratio_interval` on the two cells' `run_series`: the runs' throughputs paired by round
    (Welch's t where fewer than two rounds pair), all pairs at once."""
    picked = runs[chosen]
    throughput = numeric(picked, "throughput_sps").to_numpy(dtype=float, na_value=np.nan)
    positive = np.isfinite(throughput) & (throughput > 0)
    sides = pd.DataFrame({"cell": cells.code[chosen], "round": rounds(picked), "log": np.nan})
    sides.loc[positive, "log"] = np.log(throughput[positive])
    labels = sides[["cell", "round"]].drop_duplicates()
    logs = sides[positive].groupby(["cell", "round"], sort=False)["log"].mean().reset_index()

    def both_sides(frame: pd.DataFrame) -> pd.DataFrame:
        mine = pairs.merge(frame, on="cell")
        return mine.merge(frame.rename(columns={"cell": "base"}), on=["base", "round"], suffixes=("", "_base"))

    shared_labels = both_sides(labels).groupby("cell").size()
    paired = both_sides(logs).assign(diff=lambda f: f["log"] - f["log_base"]).groupby("cell")["diff"]
    paired = paired.agg(["count", "mean", "std"])
    side = logs.groupby("cell")["log"].agg(["count", "mean", "var"])

    def per_pair(stats: pd.DataFrame | pd.Series, column: str | None, by: str) -> np.ndarray:
        series = stats if column is None else stats[column]
        return series.reindex(pairs[by]).to_numpy(dtype=float)

    n_paired, mean_paired, sd_paired = (per_pair(paired, c, "cell") for c in ("count", "mean", "std"))
    n_top, mean_top, var_top = (per_pair(side, c, "cell") for c in ("count", "mean", "var"))
    n_bottom, mean_bottom, var_bottom = (per_pair(side, c, "base") for c in ("count", "mean", "var"))
    n_paired, n_top, n_bottom = (np.nan_to_num(a) for a in (n_paired, n_top, n_bottom))
    n_shared = np.nan_to_num(per_pair(shared_labels, None, "cell"))
    shared = np.maximum(n_shared, 2).astype(int)
    levels = {n: rates.level(n) for n in np.unique(shared)}
    level = np.array([levels[n] for n in shared])

    is_paired = n_paired >= 2
    is_welch = ~is_paired & (n_top >= 2) & (n_bottom >= 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        welch_var = var_top / n_top + var_bottom / n_bottom
        welch_se = np.sqrt(welch_var)
        welch_df = np.where(
            welch_se > 0,
            welch_var**2 / ((var_top / n_top) ** 2 / (n_top - 1) + (var_bottom / n_bottom) ** 2 / (n_bottom - 1)),
            1.0,
        )
        mean = np.where(is_paired, mean_paired, mean_top - mean_bottom)
        se = np.where(is_paired, sd_paired / np.sqrt(n_paired), welch_se)
        df = np.where(is_paired, n_paired - 1, welch_df)
        sd_log = np.where(
            is_paired, sd_paired, np.where(is_welch, welch_se * np.sqrt(np.minimum(n_top, n_bottom)), np.nan)
        )
    has_interval = is_paired | is_welch
    half = np.zeros(len(pairs))
    spread = has_interval & (se > 0)
    half[spread] = _t_quantiles((1 + level[spread]) / 2, df[spread]) * se[spread]
    with np.errstate(over="ignore"):  # as in `_t_interval`
        estimate = np.where(has_interval | ((n_top > 0) & (n_bottom > 0)), np.exp(mean), np.nan)
        low = np.where(has_interval, np.exp(mean - half), np.nan)
        high = np.where(has_interval, np.exp(mean + half), np.nan)
    verdicts, needed = [], []
    for i in range(len(pairs)):
        called = verdict_of(low[i], high[i], rates.min_effect)
        verdicts.append(str(called))
        estimate_log = math.log(estimate[i]) if estimate[i] > 0 else math.nan
        rounds_needed = (
            rounds_to_decide(estimate_log, sd_log[i], rates.min_effect, level[i])
            if called is Verdict.INCONCLUSIVE
            else None
        )
        needed.append(math.nan if rounds_needed is None else rounds_needed)
    methods = np.where(is_paired, "paired_t_log", np.where(is_welch, "welch_t_log", "insufficient_runs"))
    at = pairs["cell"].to_numpy()
    table.loc[at, "speedup_df"] = np.where(has_interval, df, np.nan)
    table.loc[at, "speedup"] = estimate
    table.loc[at, "speedup_ci_low"] = low
    table.loc[at, "speedup_ci_high"] = high
    table.loc[at, "speedup_method"] = methods
    table.loc[at, "verdict"] = verdicts
    table.loc[at, "verdict_confidence"] = level
    table.loc[at, "comparisons"] = rates.comparisons
    table.loc[at, "rounds_to_decide"] = needed


def _in_run(
    runs: pd.DataFrame,
    cells: Cells,
    chosen: np.ndarray,
    pairs: pd.DataFrame,
    keys: list[tuple],
    table: pd.DataFrame,
    rates: _Rates,
) -> None:
    """Each comparison whose chosen runs all carry an in-run reference ratio, from those ratios alone: the mean log
    ratio over its runs with a t-interval whose variance is pooled over the cells of its stratum (`_strata`), or
    the cell's own where the stratum's cells disagree; written over the between-process figures."""
    if "reference_ratio" not in runs.columns or "reference_status" not in runs.columns:
        return
    ratio = numeric(runs, "reference_ratio").to_numpy(dtype=float, na_value=np.nan)
    measured = (runs["reference_status"] == REFERENCE_MEASURED).to_numpy() & np.isfinite(ratio) & (ratio > 0)
    with_ratio = chosen & measured
    n_chosen, n = cells.runs_per_cell(chosen), cells.runs_per_cell(with_ratio)
    compared = pairs["cell"].to_numpy()
    eligible = compared[(n[compared] == n_chosen[compared]) & (n[compared] >= 2)]
    if not len(eligible):
        return
    logs = pd.Series(np.log(np.where(with_ratio, ratio, 1.0)))[with_ratio]
    stats = logs.groupby(cells.code[with_ratio]).agg(["mean", "var"]).reindex(range(cells.count))
    mean = stats["mean"].to_numpy(dtype=float)
    squares = stats["var"].to_numpy(dtype=float) * (n - 1)  # sum of squared deviations from the cell's mean
    slow = _text_column(table, "reduced_counts") != ""
    variance, df, pooled = _strata(eligible, [(*keys[i], bool(slow[i])) for i in eligible], n, squares)
    for i, var, dof, shared in zip(eligible, variance, df, pooled, strict=True):
        level = rates.level(n[i])
        if not var > 0:  # runs that agree exactly say nothing of the noise: no interval
            table.loc[i, ["speedup", "speedup_method", "verdict"]] = [math.exp(mean[i]), "in_run_t_log", "inconclusive"]
            continue
        half = _t_quantile((1 + level) / 2, dof) * math.sqrt(var / n[i])
        with np.errstate(over="ignore"):  # as in `_t_interval`
            low, high = float(np.exp(mean[i] - half)), float(np.exp(mean[i] + half))
        called = verdict_of(low, high, rates.min_effect)
        open_ = called is Verdict.INCONCLUSIVE
        needed = rounds_to_decide(mean[i], math.sqrt(var), rates.min_effect, level) if open_ else None
        table.loc[i, ["speedup", "speedup_ci_low", "speedup_ci_high"]] = [math.exp(mean[i]), low, high]
        table.loc[i, "speedup_df"] = dof
        table.loc[i, "speedup_method"] = "in_run_pooled_t_log" if shared else "in_run_t_log"
        table.loc[i, "verdict"] = str(called)
        table.loc[i, "verdict_confidence"] = level
        table.loc[i, "rounds_to_decide"] = math.nan if needed is None else needed


def _text_column(table: pd.DataFrame, name: str) -> np.ndarray:
    if name not in table.columns:
        return np.full(len(table), "", dtype=object)
    return table[name].fillna("").astype(str).to_numpy(dtype=object)


def _strata(
    cells: np.ndarray, strata: list[tuple], n: np.ndarray, squares: np.ndarray
) -> tuple[list[float], list[float], list[bool]]:
    """Per cell, the variance of its per-run log ratio, its degrees of freedom, and whether it is pooled.

    A stratum (same model, shape, batch size, device, and slow-call regime: declared by the sweep, not by the
    data) pools its cells' residual variance (`sum of squares / sum of (n - 1)`) when every cell's own variance
    agrees with the others' (a two-sided F test at HOMOGENEITY_ALPHA, Bonferroni over the stratum's cells); where
    one disagrees, each cell of the stratum keeps its own variance and n - 1 degrees of freedom.
    """
    members: dict[tuple, list[int]] = {}
    for position, stratum in enumerate(strata):
        members.setdefault(stratum, []).append(position)
    variance, df, pooled = [0.0] * len(cells), [0.0] * len(cells), [False] * len(cells)
    for positions in members.values():
        own_df = np.array([n[cells[p]] - 1 for p in positions], dtype=float)
        own_ss = np.array([squares[cells[p]] for p in positions], dtype=float)
        agree = len(positions) >= 2 and _homogeneous(own_ss, own_df)
        for p, ss, dof in zip(positions, own_ss, own_df, strict=True):
            if agree:
                variance[p], df[p], pooled[p] = own_ss.sum() / own_df.sum(), own_df.sum(), True
            else:
                variance[p], df[p] = ss / dof, dof
    return variance, df, pooled


def _homogeneous(squares: np.ndarray, df: np.ndarray) -> bool:
    """Does each cell's variance agree with the pooled variance of the others (two-sided F, Bonferroni)?"""
    level = HOMOGENEITY_ALPHA / len(df)
    for ss, dof in zip(squares, df, strict=True):
        other_df, other_ss = df.sum() - dof, squares.sum() - ss
        if other_ss <= 0 or ss <= 0:
            if ss != other_ss:  # one side without spread, the other with: no common variance
                return False
            continue
        below = special.fdtr(dof, other_df, (ss / dof) / (other_ss / other_df))
        if 2 * min(below, 1 - below) < level:
            return False
    return True
