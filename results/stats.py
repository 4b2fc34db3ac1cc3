"""From runs to cell rows: a representative value per cell, intervals, and a verdict against the baseline.

Method. Every cell of a sweep is measured `repeats` times, each run in a fresh process, and the runs are
enqueued round by round (repeat 1 of every cell in shuffled order, then repeat 2, ...). A round is
therefore a block: slow drift (thermals, clocks, a noisy neighbour that comes and goes) lands on all
the cells of a round alike. A speedup is a ratio, so it is estimated on the log scale: for each round
present on both sides we take log(value_opt / value_baseline), and the speedup is the geometric mean of
these per-round ratios with a Student t-interval on the mean log ratio (`paired_t_log`). Pairing by
round cancels what the round shares; what is left is run-to-run noise. Where fewer than two rounds are
common to both sides (runs failed), the two sets of log values are compared with Welch's t
(`welch_t_log`), which cannot cancel the drift and so gives a wider, honest interval.

The unit of replication is the run. A run's value (its median latency, its throughput) already carries
its own within-run noise, so a t-interval over runs covers both the between-run and the within-run
variation; nothing is gained by pooling the per-call samples, which are autocorrelated and would
understate the uncertainty.

Runs measured under contention (their process waited for a CPU 10% or more of its runnable time, or
shared its GPU with another process: the per-run noise signals) measured the machine as much as the
model: a busy neighbour can make two threads on two shared cores run tens of times slower. They are
left out of every interval and verdict (`runs_used` counts the runs that remain) and listed in the
report's noise section; a cell left with fewer than two usable runs gets no interval and no verdict.
The representative medians also come from the usable runs, or from all ok runs when none is usable.

A verdict reads the interval against the band `[1 - min_effect, 1 + min_effect]` (`min_effect`, 3% by
default): `faster` when the whole interval lies above the band, `slower` when it lies below, `equivalent`
when it lies inside (a positive finding of no practical difference, as in an equivalence test), and
`inconclusive` otherwise: the interval crosses a band edge, so the data can't tell yet. An effect too
small to matter is never called faster or slower, however tight its interval; a wide interval is never
called equivalent. For an inconclusive cell, `rounds_to_decide` estimates how many rounds would clear the
band at the observed spread. The interval's confidence (`verdict_confidence`) is the sweep's, shared by its
verdicts and spent over the looks of `--repeats auto` (`results/sequential.py`), so the error rate the sweep
states holds for all its verdicts together.

Why not a bootstrap: with 3 runs there are only 10 distinct resamples (multisets of size 3 of 3), the
bootstrap distribution is coarse and too narrow, and its percentile intervals under-cover badly at
this size; the t-interval is exact for log-normal run values and robust enough near them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from enum import Enum

import numpy as np
import pandas as pd
from scipy import special  # Student t quantiles: scipy.special loads in a third of the time scipy.stats takes

from results.sequential import Looks, interval_confidence, rounds_to_decide
from shared.config import DEFAULT_CONFIDENCE, DEFAULT_MIN_EFFECT
from shared.result import Status

CONTENDED_WAIT_FRACTION = 0.10  # a run waited for a CPU this fraction of its runnable time or more
CONTENDED_STEAL_FRACTION = 0.10  # ... or its VM lost this share of the host's CPU time to the hypervisor
HIGH_CV = 0.05  # run-to-run coefficient of variation above which a cell's runs disagree notably

LEAD_COLUMNS = ("sweep_id", "cell_id", "status", "repeats", "repeats_ok", "attempts", "failed_runs")
RUN_ONLY_COLUMNS = ("run_id", "repeat")  # identify one run: no meaning in a cell row
MEDIAN_COLUMNS = (
    "latency_spread",
    "throughput_sps",
    "throughput_sequential_sps",
    "process_mem_mb",
    "energy_j_per_sample",
    "achieved_tflops",
)
MEDIAN_PREFIXES = ("latency_ms_", "peak_mem_", "noise_")
SUM_COLUMNS = ("iterations", "measure_seconds")
WORST_MIN_COLUMNS = tuple(
    f"{part}{name}" for part in ("", "quant_", "kernel_") for name in ("top1_agreement", "cosine_similarity")
)
WORST_MAX_COLUMNS = ("max_abs_error", "quant_max_abs_error", "kernel_max_abs_error")
STAT_COLUMNS = (
    "hosts",
    "throughput_ci_low",
    "throughput_ci_high",
    "latency_ms_p50_ci_low",
    "latency_ms_p50_ci_high",
    "latency_ms_p99_ci_low",
    "latency_ms_p99_ci_high",
    "peak_mem_allocated_mb_ci_low",
    "peak_mem_allocated_mb_ci_high",
    "process_mem_mb_ci_low",
    "process_mem_mb_ci_high",
    "run_to_run_cv",
    "contended_runs",
    "runs_used",
    "speedup",
    "speedup_ci_low",
    "speedup_ci_high",
    "speedup_method",
    "verdict_confidence",
    "comparisons",
    "rounds_to_decide",
    "verdict",
)
FINISHED_NOT_OK = (Status.FAILED.value, Status.UNSUPPORTED.value)
BASELINE = "baseline"
AA_CONTROL = "aa_control"  # the baseline again as its own cell: what noise alone calls on this host
# A cell's baseline counterpart shares these (device too: a CPU and a GPU run may both lack a device name).
COUNTERPART_KEYS = ("model", "batch_size", "image_size", "device", "device_name")


# The run columns a cell's verdict and intervals are computed from (`status` and the open cells of an `auto` sweep
# aggregate these alone: a frame of 50,000 runs x 20 columns, not x 170).
VERDICT_INPUTS = (
    "sweep_id", "run_id", "cell_id", "repeat", "status", "attempts", "worker", "host", "error_type", "error",
    "optimization", "model_sha256", *COUNTERPART_KEYS, "throughput_sps", "latency_ms_p50", "latency_ms_p99",
    "peak_mem_allocated_mb", "process_mem_mb",
    "noise_cpu_wait_fraction", "noise_cpu_steal_fraction", "noise_gpu_other_processes",
)  # fmt: skip


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


def value_interval(values: pd.Series, confidence: float = 0.95) -> tuple[float, float]:
    """t-interval of the geometric mean of run values; (NaN, NaN) with fewer than two values."""
    logs = np.array(list(_logs(values.reset_index(drop=True)).values()))
    if len(logs) < 2:
        return math.nan, math.nan
    return _t_interval(float(logs.mean()), float(logs.std(ddof=1)) / math.sqrt(len(logs)), len(logs) - 1, confidence)


def numeric(runs: pd.DataFrame, name: str) -> pd.Series:
    """A numeric column, all-NaN when the frame lacks it (older CSVs have no noise columns)."""
    if name not in runs.columns:
        return pd.Series(math.nan, index=runs.index, dtype=float)
    return pd.to_numeric(runs[name], errors="coerce")


def contended(runs: pd.DataFrame) -> pd.Series:
    """Per run: did it run under contention (waited for a CPU >= 10% of the time, or shared the GPU)?"""
    waited = numeric(runs, "noise_cpu_wait_fraction") >= CONTENDED_WAIT_FRACTION
    stolen = numeric(runs, "noise_cpu_steal_fraction") >= CONTENDED_STEAL_FRACTION
    shared_gpu = numeric(runs, "noise_gpu_other_processes") >= 1
    return (waited | stolen | shared_gpu).astype(bool)


def usable_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that statistics use: ok, and not measured under contention."""
    ok = runs[runs["status"] == Status.OK.value]
    return ok[~contended(ok).to_numpy()]


def _text(value: object) -> str:
    return "" if pd.api.types.is_scalar(value) and pd.isna(value) else str(value)


def _repeats(runs: pd.DataFrame) -> pd.Series:
    """The repeat of each run; the order within its cell when the column is missing."""
    if "repeat" in runs.columns:
        return runs["repeat"]
    return runs.groupby("cell_id", sort=False).cumcount() + 1


def rounds(runs: pd.DataFrame) -> list[str]:
    """Each run's round, the key runs of two cells pair on: its repeat, and its attempt.

    Runs of one round were enqueued together (interleaved), so drift cancels between them. A re-run
    (a higher attempt) was measured later, beside other runs: it pairs only with runs re-run with it.
    """
    attempts = numeric(runs, "attempts").fillna(1).astype(int)
    return [f"{repeat}/{attempt}" for repeat, attempt in zip(_repeats(runs), attempts, strict=True)]


def run_series(runs: pd.DataFrame, column: str, device_name: object = None) -> pd.Series:
    """`column` of the usable runs (on `device_name`, when given), indexed by round (`rounds`)."""
    used = usable_runs(runs)
    if device_name is not None and not pd.isna(device_name) and "device_name" in used.columns:
        used = used[used["device_name"] == device_name]
    return pd.Series(numeric(used, column).to_numpy(), index=rounds(used))


# --- from runs to cell rows, all cells at once ---------------------------------------------------------
# `aggregate` works column by column over every run (pandas group-bys keyed by each run's cell), never cell by
# cell: a sweep of 50,000 runs aggregates in seconds. `tests/unit/test_stats.py` holds it to the per-cell rules
# (`ratio_interval`, `value_interval`) on random sweeps.


@dataclass(frozen=True)
class _Cells:
    """Which cell each run belongs to (`code`: 0..count-1, in order of first appearance)."""

    code: np.ndarray
    count: int

    def runs_per_cell(self, mask: np.ndarray) -> np.ndarray:
        return np.bincount(self.code[mask], minlength=self.count)

    def reduce(self, values: pd.DataFrame | pd.Series, mask: np.ndarray, how: str, **options) -> pd.DataFrame:
        """A pandas group-by method (`median`, `sum`, `min`, `max`, or `agg` with `func=[...]`) of the masked runs'
        values per cell, NaN for a cell with none."""
        grouped = values[mask].groupby(self.code[mask], sort=True)
        return getattr(grouped, how)(**options).reindex(range(self.count))

    def first_position(self, mask: np.ndarray) -> pd.Series:
        """The position of each cell's first masked run (cells without one are left out)."""
        positions = pd.Series(np.flatnonzero(mask))
        return positions.groupby(self.code[mask], sort=True).first()


def _kind(column: str) -> str:
    """How a per-run column becomes a cell's value: `median`, `sum`, `min`, `max` (the worst) or `first`."""
    if column in MEDIAN_COLUMNS or column.startswith(MEDIAN_PREFIXES):
        return "median"
    if column in SUM_COLUMNS:
        return "sum"
    if column in WORST_MIN_COLUMNS:
        return "min"
    if column in WORST_MAX_COLUMNS:
        return "max"
    return "first"


def _cell_statuses(status: pd.Series, cells: _Cells) -> list[str]:
    """Each cell's status from its runs': ok when all are, else the first unfinished state, else unsupported
    when all are, else failed."""
    total = cells.runs_per_cell(np.ones(len(status), dtype=bool))
    has = {state: cells.runs_per_cell((status == state.value).to_numpy()) for state in Status}
    out = []
    for i in range(cells.count):
        waiting = next((s for s in (Status.RUNNING, Status.LOST, Status.QUEUED) if has[s][i]), None)
        if has[Status.OK][i] == total[i]:
            out.append(Status.OK.value)
        elif waiting is not None:
            out.append(waiting.value)
        elif has[Status.UNSUPPORTED][i] == total[i]:
            out.append(Status.UNSUPPORTED.value)
        else:
            out.append(Status.FAILED.value)
    return out


def _representatives(runs: pd.DataFrame, carried: list[str], cells: _Cells, source: np.ndarray) -> pd.DataFrame:
    """Each cell's value of each carried column: median, sum or worst over the `source` runs (its usable runs,
    else its ok runs), or the first source run's value (the cell's first run when it has no source run)."""
    kinds = {column: _kind(column) for column in carried}
    parts = []
    for how in ("median", "sum", "min", "max"):
        names = [c for c in carried if kinds[c] == how]
        if names:
            frame = pd.DataFrame({name: numeric(runs, name) for name in names})
            parts.append(cells.reduce(frame, source, how, **({"min_count": 1} if how == "sum" else {})))
    chosen = np.where((cells.runs_per_cell(source) > 0)[cells.code], source, True)
    firsts = [c for c in carried if kinds[c] == "first"]
    parts.append(runs[firsts].iloc[cells.first_position(chosen).to_numpy()].reset_index(drop=True))
    return pd.concat(parts, axis=1)[carried]


def _failures(runs: pd.DataFrame, cells: _Cells, values: pd.DataFrame) -> list[str]:
    """Each cell's failed and unsupported runs as `run: error_type: error; ...`; the first one's error_type and
    error become the cell's (in `values`)."""
    not_ok = runs["status"].isin(FINISHED_NOT_OK).to_numpy()
    texts = [""] * cells.count
    if not not_ok.any():
        return texts
    failed = runs[not_ok]
    column = {name: failed[name] if name in failed.columns else pd.Series(None, index=failed.index, dtype=object)
              for name in ("run_id", "error_type", "error")}  # fmt: skip
    lines = [f"{_text(r)}: {_text(t)}: {_text(e)}" for r, t, e in zip(*column.values(), strict=True)]
    for code, text in pd.Series(lines).groupby(cells.code[not_ok], sort=True).agg("; ".join).items():
        texts[code] = text
    first = cells.first_position(not_ok)
    for name in ("error_type", "error"):
        if name in runs.columns:
            values[name] = values[name].astype(object)
            values.loc[first.index, name] = runs[name].iloc[first.to_numpy()].to_numpy()
    return texts


def _hosts(runs: pd.DataFrame, cells: _Cells, ok: np.ndarray) -> list[str]:
    """The hosts of each cell's ok runs, sorted, comma-joined."""
    texts = [""] * cells.count
    if "host" not in runs.columns:
        return texts
    mask = ok & runs["host"].notna().to_numpy()
    hosts = pd.DataFrame({"cell": cells.code[mask], "host": runs["host"][mask].astype(str).to_numpy()})
    hosts = hosts.drop_duplicates().sort_values(["cell", "host"])
    # Grouped in plain Python: pandas' group-by join calls Python once per cell (0.4 s at 10,000 cells).
    per_cell: dict[int, list[str]] = {}
    for code, host in zip(hosts["cell"].tolist(), hosts["host"].tolist(), strict=True):
        per_cell.setdefault(code, []).append(host)
    for code, names in per_cell.items():
        texts[code] = ",".join(names)
    return texts


def _t_quantiles(probability: np.ndarray, df: np.ndarray) -> np.ndarray:
    return special.stdtrit(df, probability)


def _value_intervals(values: pd.Series, cells: _Cells, used: np.ndarray, confidence: float) -> tuple[np.ndarray, ...]:
    """Per cell, `value_interval` of its usable runs' values: the t-interval of their geometric mean."""
    array = values.to_numpy(dtype=float, na_value=np.nan)
    keep = used & np.isfinite(array) & (array > 0)
    logs = pd.Series(np.log(np.where(keep, array, 1.0)))
    stats = cells.reduce(logs, keep, "agg", func=["count", "mean", "std"])
    n, mean, sd = (stats[name].to_numpy(dtype=float) for name in ("count", "mean", "std"))
    enough = n >= 2
    half = np.zeros(cells.count)
    se = np.where(enough, sd / np.sqrt(np.maximum(n, 1)), 0.0)
    spread = enough & (se > 0)
    half[spread] = _t_quantiles((1 + confidence) / 2, n[spread] - 1) * se[spread]
    nan = np.full(cells.count, np.nan)
    with np.errstate(over="ignore"):  # as in `_t_interval`
        return np.where(enough, np.exp(mean - half), nan), np.where(enough, np.exp(mean + half), nan)


def _cv(values: pd.Series, cells: _Cells, used: np.ndarray) -> np.ndarray:
    """Per cell, the coefficient of variation of its usable runs' finite values (NaN with fewer than two)."""
    array = values.to_numpy(dtype=float, na_value=np.nan)
    keep = used & np.isfinite(array)
    stats = cells.reduce(pd.Series(array), keep, "agg", func=["count", "mean", "std"])
    return np.where(stats["count"] >= 2, stats["std"] / stats["mean"], np.nan)


def _speedups(
    runs: pd.DataFrame,
    cells: _Cells,
    used: np.ndarray,
    table: pd.DataFrame,
    min_effect: float,
    confidence: float,
    looks: Looks,
) -> None:
    """Speedup of each optimization cell over the baseline cell on the same model, shape and device, from usable
    runs paired by round, with the verdict its interval gives at the sweep's confidence shared among all these
    comparisons and spent over `looks` (`results/sequential.py`); written into `table`.

    Only the runs on the cell's own device name count on either side, so a run that landed on another GPU model
    of a mixed cluster never enters a ratio. Each comparison is `ratio_interval` on the two cells' `run_series`.
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
    # The runs each side uses: usable, on the cell's own device name, keyed by round.
    chosen = used.copy()
    if "device_name" in runs.columns:
        device = table["device_name"].to_numpy(dtype=object)[cells.code]
        chosen &= pd.isna(device) | (runs["device_name"].to_numpy(dtype=object) == device)
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
    comparisons = len(pairs)
    alpha = 1 - confidence
    shared = np.maximum(n_shared, 2).astype(int)
    levels = {n: interval_confidence(alpha, comparisons, looks, int(n)) for n in np.unique(shared)}
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
        called = verdict_of(low[i], high[i], min_effect)
        verdicts.append(str(called))
        estimate_log = math.log(estimate[i]) if estimate[i] > 0 else math.nan
        rounds_needed = (
            rounds_to_decide(estimate_log, sd_log[i], min_effect, level[i]) if called is Verdict.INCONCLUSIVE else None
        )
        needed.append(math.nan if rounds_needed is None else rounds_needed)
    methods = np.where(is_paired, "paired_t_log", np.where(is_welch, "welch_t_log", "insufficient_runs"))
    at = pairs["cell"].to_numpy()
    table.loc[at, "speedup"] = estimate
    table.loc[at, "speedup_ci_low"] = low
    table.loc[at, "speedup_ci_high"] = high
    table.loc[at, "speedup_method"] = methods
    table.loc[at, "verdict"] = verdicts
    table.loc[at, "verdict_confidence"] = level
    table.loc[at, "comparisons"] = comparisons
    table.loc[at, "rounds_to_decide"] = needed


def aggregate(
    runs: pd.DataFrame,
    min_effect: float = DEFAULT_MIN_EFFECT,
    confidence: float = DEFAULT_CONFIDENCE,
    looks: Looks | None = None,
) -> pd.DataFrame:
    """One row per cell (in order of first appearance): status, representative values, intervals, verdict.

    `confidence` is the sweep's, for all its verdicts together; `looks` the plan of `--repeats auto` (None:
    a fixed number of runs, one look)."""
    carried = [c for c in runs.columns if c not in LEAD_COLUMNS + RUN_ONLY_COLUMNS + STAT_COLUMNS]
    columns = list(LEAD_COLUMNS) + carried + list(STAT_COLUMNS)
    runs = runs[runs["cell_id"].notna()].reset_index(drop=True)
    if runs.empty:
        return pd.DataFrame(columns=columns)
    code, ids = pd.factorize(runs["cell_id"], sort=False)
    cells = _Cells(code, len(ids))
    ok = (runs["status"] == Status.OK.value).to_numpy()
    busy = contended(runs).to_numpy()
    used = ok & ~busy
    source = np.where((cells.runs_per_cell(used) > 0)[code], used, ok)  # usable runs, else ok runs
    values = _representatives(runs, carried, cells, source)
    failed_runs = _failures(runs, cells, values)
    every = np.ones(len(runs), dtype=bool)
    first = cells.first_position(every).to_numpy()
    lead = {
        "sweep_id": runs["sweep_id"].to_numpy()[first] if "sweep_id" in runs else math.nan,
        "cell_id": ids,
        "status": _cell_statuses(runs["status"], cells),
        "repeats": cells.runs_per_cell(every),
        "repeats_ok": cells.runs_per_cell(ok),
        "attempts": cells.reduce(numeric(runs, "attempts"), every, "max").to_numpy(),
        "failed_runs": failed_runs,
    }
    stats: dict[str, object] = {"hosts": _hosts(runs, cells, ok)}
    for column in ("throughput_sps", "latency_ms_p50", "latency_ms_p99", "peak_mem_allocated_mb", "process_mem_mb"):
        name = "throughput" if column == "throughput_sps" else column  # the last three: what `recommend` constrains
        stats[f"{name}_ci_low"], stats[f"{name}_ci_high"] = _value_intervals(
            numeric(runs, column), cells, used, confidence
        )
    stats["run_to_run_cv"] = _cv(numeric(runs, "throughput_sps"), cells, used)
    stats["contended_runs"] = cells.runs_per_cell(ok & busy)
    stats["runs_used"] = cells.runs_per_cell(used)
    stats.update(speedup=math.nan, speedup_ci_low=math.nan, speedup_ci_high=math.nan, speedup_method="", verdict="")
    stats.update(verdict_confidence=math.nan, comparisons=math.nan, rounds_to_decide=math.nan)
    table = pd.concat([pd.DataFrame(lead), values, pd.DataFrame(stats, index=range(cells.count))], axis=1)
    _speedups(runs, cells, used, table, min_effect, confidence, looks or Looks.fixed(2))
    return table[columns].infer_objects()
