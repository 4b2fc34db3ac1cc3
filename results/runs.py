"""A sweep's runs as statistics read them: which runs count, which round each belongs to, what each is compared with.

The unit of replication is the run (a fresh process). Runs measured under contention (their process waited for a
CPU 10% or more of its runnable time, its VM lost that share to the hypervisor, or it shared its GPU with another
process) measured the machine as much as the model: they are left out of every interval and verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from shared.result import Status

CONTENDED_WAIT_FRACTION = 0.10  # a run waited for a CPU this fraction of its runnable time or more
CONTENDED_STEAL_FRACTION = 0.10  # ... or its VM lost this share of the host's CPU time to the hypervisor
BASELINE = "baseline"
AA_CONTROL = "aa_control"  # the baseline again as its own cell: what noise alone calls on this host
# A cell's baseline counterpart shares these (device too: a CPU and a GPU run may both lack a device name).
COUNTERPART_KEYS = ("model", "batch_size", "image_size", "device", "device_name")


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


@dataclass(frozen=True)
class Cells:
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
