"""From runs to cell rows: a representative value per cell, intervals, and a verdict against the baseline.

Method. Every cell of a sweep is measured `repeats` times, each run in a fresh process, and the runs are
enqueued round by round (repeat 1 of every cell in shuffled order, then repeat 2, ...): a round is a block, so
slow drift lands on all the cells of a round alike. The unit of replication is the run: a run's value (its median
latency, its throughput) already carries its own within-run noise, so a t-interval over runs covers both the
between-run and the within-run variation; the per-call samples are autocorrelated and would understate it.
Runs measured under contention are left out of every interval and verdict (`results/runs.py`; `runs_used` counts
the runs that remain). The representative medians come from the usable runs, or from all ok runs when none is.
Each cell's speedup, interval and verdict against its baseline come from `results/verdicts.py`.

Why not a bootstrap: with 3 runs there are only 10 distinct resamples (multisets of size 3 of 3), the bootstrap
distribution is coarse and too narrow, and its percentile intervals under-cover badly at this size; the
t-interval is exact for log-normal run values and robust enough near them.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from results.runs import (  # noqa: F401  (re-exported: what readers of a sweep's runs import from here)
    AA_CONTROL,
    BASELINE,
    COUNTERPART_KEYS,
    Cells,
    contended,
    numeric,
    rounds,
    run_series,
    usable_runs,
)
from results.sequential import Looks
from results.verdicts import (  # noqa: F401  (re-exported, as above)
    LEGACY_NO_DIFFERENCE,
    Ratio,
    Verdict,
    _logs,
    _t_interval,
    _t_quantiles,
    legacy_verdict,
    ratio_interval,
    speedups,
    verdict,
    verdict_of,
)
from shared.config import DEFAULT_CONFIDENCE, DEFAULT_MIN_EFFECT
from shared.result import Status

HIGH_CV = 0.05  # run-to-run coefficient of variation above which a cell's runs disagree notably

LEAD_COLUMNS = ("sweep_id", "cell_id", "status", "repeats", "repeats_ok", "attempts", "failed_runs")
RUN_ONLY_COLUMNS = ("run_id", "repeat")  # identify one run: no meaning in a cell row
MEDIAN_COLUMNS = (
    "latency_spread",
    "reference_ratio",
    "reference_pair_sd",
    "reference_seconds",
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
    "speedup_df",
    "speedup_between_processes",
    "verdict_confidence",
    "comparisons",
    "rounds_to_decide",
    "verdict",
)
FINISHED_NOT_OK = (Status.FAILED.value, Status.UNSUPPORTED.value)


# The run columns a cell's verdict and intervals are computed from (`status` and the open cells of an `auto` sweep
# aggregate these alone: a frame of 50,000 runs x 20 columns, not x 170).
VERDICT_INPUTS = (
    "sweep_id", "run_id", "cell_id", "repeat", "status", "attempts", "worker", "host", "error_type", "error",
    "optimization", "model_sha256", *COUNTERPART_KEYS, "throughput_sps", "latency_ms_p50", "latency_ms_p99",
    "peak_mem_allocated_mb", "process_mem_mb",
    "noise_cpu_wait_fraction", "noise_cpu_steal_fraction", "noise_gpu_other_processes",
    "reference_status", "reference_ratio", "reduced_counts",
)  # fmt: skip


def value_interval(values: pd.Series, confidence: float = 0.95) -> tuple[float, float]:
    """t-interval of the geometric mean of run values; (NaN, NaN) with fewer than two values."""
    logs = np.array(list(_logs(values.reset_index(drop=True)).values()))
    if len(logs) < 2:
        return math.nan, math.nan
    return _t_interval(float(logs.mean()), float(logs.std(ddof=1)) / math.sqrt(len(logs)), len(logs) - 1, confidence)


# --- from runs to cell rows, all cells at once ---------------------------------------------------------
# `aggregate` works column by column over every run (pandas group-bys keyed by each run's cell), never cell by
# cell: a sweep of 50,000 runs aggregates in seconds. `tests/unit/test_stats.py` holds it to the per-cell rules
# (`ratio_interval`, `value_interval`) on random sweeps.


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


def _cell_statuses(status: pd.Series, cells: Cells) -> list[str]:
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


def _representatives(runs: pd.DataFrame, carried: list[str], cells: Cells, source: np.ndarray) -> pd.DataFrame:
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


def _text(value: object) -> str:
    return "" if pd.api.types.is_scalar(value) and pd.isna(value) else str(value)


def _failures(runs: pd.DataFrame, cells: Cells, values: pd.DataFrame) -> list[str]:
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


def _hosts(runs: pd.DataFrame, cells: Cells, ok: np.ndarray) -> list[str]:
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


def _value_intervals(values: pd.Series, cells: Cells, used: np.ndarray, confidence: float) -> tuple[np.ndarray, ...]:
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


def _cv(values: pd.Series, cells: Cells, used: np.ndarray) -> np.ndarray:
    """Per cell, the coefficient of variation of its usable runs' finite values (NaN with fewer than two)."""
    array = values.to_numpy(dtype=float, na_value=np.nan)
    keep = used & np.isfinite(array)
    stats = cells.reduce(pd.Series(array), keep, "agg", func=["count", "mean", "std"])
    return np.where(stats["count"] >= 2, stats["std"] / stats["mean"], np.nan)


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
    cells = Cells(code, len(ids))
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
    stats.update(speedup_df=math.nan, speedup_between_processes=math.nan)
    table = pd.concat([pd.DataFrame(lead), values, pd.DataFrame(stats, index=range(cells.count))], axis=1)
    speedups(runs, cells, used, table, min_effect, confidence, looks or Looks.fixed(2))
    return table[columns].infer_objects()
