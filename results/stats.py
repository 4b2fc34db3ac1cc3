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
from scipy import stats as scipy_stats

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
    return float(scipy_stats.t.ppf(probability, df))


def _t_interval(mean: float, se: float, df: float, confidence: float) -> tuple[float, float]:
    """exp(mean ± t·se); a zero standard error gives a zero-width interval."""
    if se == 0:
        return math.exp(mean), math.exp(mean)
    half = _t_quantile((1 + confidence) / 2, df) * se
    return math.exp(mean - half), math.exp(mean + half)


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


def _cell_status(statuses: pd.Series) -> str:
    """A cell's status from its runs': ok when all are, else the first unfinished state, else failed."""
    values = set(statuses.fillna(""))
    if values == {Status.OK.value}:
        return Status.OK.value
    for waiting in (Status.RUNNING, Status.LOST, Status.QUEUED):
        if waiting.value in values:
            return waiting.value
    if values == {Status.UNSUPPORTED.value}:
        return Status.UNSUPPORTED.value
    return Status.FAILED.value


def _text(value: object) -> str:
    return "" if pd.api.types.is_scalar(value) and pd.isna(value) else str(value)


def _representative(column: str, cell: pd.DataFrame, ok: pd.DataFrame) -> object:
    """A cell's value of one per-run column: median, sum, worst, or the first ok (else first) run's."""
    if column in MEDIAN_COLUMNS or column.startswith(MEDIAN_PREFIXES):
        return numeric(ok, column).median()
    if column in SUM_COLUMNS:
        return numeric(ok, column).sum(min_count=1)
    if column in WORST_MIN_COLUMNS:
        return numeric(ok, column).min()
    if column in WORST_MAX_COLUMNS:
        return numeric(ok, column).max()
    source = ok if len(ok) else cell
    return source[column].iloc[0]


def _repeats(runs: pd.DataFrame) -> pd.Series:
    """The repeat of each run; the order within its cell when the column is missing."""
    if "repeat" in runs.columns:
        return runs["repeat"]
    return runs.groupby("cell_id", sort=False).cumcount() + 1


def _cell_row(cell: pd.DataFrame, carried: list[str], confidence: float) -> dict[str, object]:
    statuses = cell["status"]
    ok, used = cell[statuses == Status.OK.value], usable_runs(cell)
    not_ok = cell[statuses.isin(FINISHED_NOT_OK)]
    row: dict[str, object] = {
        "sweep_id": cell["sweep_id"].iloc[0] if "sweep_id" in cell.columns else math.nan,
        "cell_id": cell["cell_id"].iloc[0],
        "status": _cell_status(statuses),
        "repeats": len(cell),
        "repeats_ok": len(ok),
        "attempts": numeric(cell, "attempts").max(),
        "failed_runs": "; ".join(
            f"{_text(r.get('run_id'))}: {_text(r.get('error_type'))}: {_text(r.get('error'))}"
            for r in (not_ok.to_dict("records") if len(not_ok) else ())  # to_dict costs ms per cell even empty
        ),
    }
    for column in carried:
        row[column] = _representative(column, cell, used if len(used) else ok)
    if len(not_ok):
        for column in ("error_type", "error"):
            if column in cell.columns:
                row[column] = not_ok[column].iloc[0]
    throughput, p50 = numeric(used, "throughput_sps"), numeric(used, "latency_ms_p50")
    hosts = ok["host"].dropna().astype(str).unique() if "host" in ok.columns else []
    row["hosts"] = ",".join(sorted(hosts))
    row["throughput_ci_low"], row["throughput_ci_high"] = value_interval(throughput, confidence)
    row["latency_ms_p50_ci_low"], row["latency_ms_p50_ci_high"] = value_interval(p50, confidence)
    for column in ("latency_ms_p99", "peak_mem_allocated_mb", "process_mem_mb"):  # what `recommend` constrains
        row[f"{column}_ci_low"], row[f"{column}_ci_high"] = value_interval(numeric(used, column), confidence)
    finite = throughput[np.isfinite(throughput)]
    row["run_to_run_cv"] = float(finite.std(ddof=1) / finite.mean()) if len(finite) >= 2 else math.nan
    row["contended_runs"] = int(contended(ok).sum())
    row["runs_used"] = len(used)
    row.update(speedup=math.nan, speedup_ci_low=math.nan, speedup_ci_high=math.nan, speedup_method="", verdict="")
    row.update(verdict_confidence=math.nan, comparisons=math.nan, rounds_to_decide=math.nan)
    return row


def _key(values: dict[str, object]) -> tuple[object, ...]:
    """A hashable counterpart key; missing values (NaN, None) compare equal."""
    return tuple(None if pd.isna(values.get(k)) else values.get(k) for k in COUNTERPART_KEYS)


def _add_speedups(
    rows: list[dict[str, object]], oks: list[pd.DataFrame], min_effect: float, confidence: float, looks: Looks
) -> None:
    """Speedup of each optimization cell over the baseline cell on the same model, shape and device, from usable
    runs, with the verdict its interval gives at the sweep's confidence shared among all these comparisons and
    spent over `looks` (`results/sequential.py`).

    Only the runs on the cell's own device name count on either side, so a run that landed on
    another GPU model of a mixed cluster never enters a ratio.
    """
    baselines = {_key(row): i for i, row in enumerate(rows) if row.get("optimization") == BASELINE}
    compared = [
        (row, ok)
        for row, ok in zip(rows, oks, strict=True)
        if row.get("optimization") != BASELINE and _key(row) in baselines
    ]
    for row, ok in compared:
        base = _on_device(oks[baselines[_key(row)]], row)
        mine = _on_device(ok, row)
        paired = len(set(mine.index) & set(base.index))
        level = interval_confidence(1 - confidence, len(compared), looks, max(paired, 2))
        ratio = ratio_interval(mine, base, level)
        called = verdict(ratio, min_effect)
        needed = math.nan
        if called is Verdict.INCONCLUSIVE:
            estimate = rounds_to_decide(math.log(ratio.estimate) if ratio.estimate > 0 else math.nan,
                                        ratio.sd_log, min_effect, level)  # fmt: skip
            needed = math.nan if estimate is None else estimate
        row.update(
            speedup=ratio.estimate,
            speedup_ci_low=ratio.low,
            speedup_ci_high=ratio.high,
            speedup_method=ratio.method,
            verdict=str(called),
            verdict_confidence=level,
            comparisons=len(compared),
            rounds_to_decide=needed,
        )


def _on_device(ok: pd.DataFrame, row: dict[str, object]) -> pd.Series:
    """Throughput of the usable runs on the row's device name, indexed by their round."""
    return run_series(ok, "throughput_sps", row.get("device_name"))


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
    if runs.empty:
        return pd.DataFrame(columns=columns)
    rows, oks = [], []
    for _, cell in runs.groupby("cell_id", sort=False):
        rows.append(_cell_row(cell, carried, confidence))
        oks.append(usable_runs(cell))
    _add_speedups(rows, oks, min_effect, confidence, looks or Looks.fixed(2))
    return pd.DataFrame(rows, columns=columns)
