"""Read a sweep's cells from the manifest and the Celery result backend; write its CSV atomically.

One row per cell, columns `sweep_id, cell_id, status, attempts, tries, worker`, then the result
schema. `attempts` counts enqueues of the cell (1 + re-runs); `tries` counts deliveries of its
current attempt to a worker (more than 1 after a crash or a lost worker).
A cell's `status` is the result's (`ok`, `failed`, `unsupported`) once its current attempt is
stored, else `queued` or `running` (the manifest says it was sent; Celery's PENDING can't).
Only the manifest's current task id of a cell is read, so an older attempt never shows.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from shared.manifest import CellEntry, Sweep
from shared.result import FIELD_NAMES

LEAD_COLUMNS = ("sweep_id", "cell_id", "status", "attempts", "tries", "worker")
COLUMNS = LEAD_COLUMNS + tuple(name for name in FIELD_NAMES if name not in LEAD_COLUMNS)
FINISHED = ("ok", "failed", "unsupported")
LATEST_CSV = "benchmark_results.csv"


def cell_row(sweep: Sweep, entry: CellEntry, meta: dict[str, Any]) -> dict[str, Any]:
    """The CSV row of one cell from its task's meta (`backend.get_task_meta(task_id)`)."""
    spec = entry.spec
    row: dict[str, Any] = {
        "sweep_id": sweep.id,
        "cell_id": entry.cell_id,
        "attempts": entry.attempts,
        "model": spec["model"],
        "optimization": spec["optimization"],
        "batch_size": spec["batch_size"],
        "image_size": spec["image_size"],
        "requested_device": spec["device"],
    }
    state = meta.get("status")
    if state == "SUCCESS":
        envelope = meta["result"]
        row.update(envelope["result"])
        row.update(worker=envelope["worker"], tries=envelope.get("tries"))
    elif state == "FAILURE":
        row.update(status="failed", error_type="task_error", error=str(meta.get("result"))[:500])
        row["worker"] = meta.get("worker")
    elif state in ("STARTED", "PROGRESS"):
        info = meta.get("result") or {}
        row.update(status="running", worker=meta.get("worker") or info.get("hostname"), phase=info.get("phase"))
    else:
        row["status"] = "queued"
    return row


def sweep_rows(backend, sweep: Sweep) -> list[dict[str, Any]]:
    return [cell_row(sweep, entry, backend.get_task_meta(entry.task_id)) for entry in ordered_cells(sweep)]


def ordered_cells(sweep: Sweep) -> list[CellEntry]:
    order = sweep.spec.get("cells", [])
    return sorted(sweep.cells.values(), key=lambda c: order.index(c.cell_id) if c.cell_id in order else len(order))


def to_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per cell in sweep order, grouped by device name when several GPUs took part."""
    frame = pd.DataFrame([{column: row.get(column) for column in COLUMNS} for row in rows], columns=list(COLUMNS))
    return frame.sort_values("device_name", kind="stable", na_position="last").reset_index(drop=True)


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a CSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", newline="") as stream:
            frame.to_csv(stream, index=False)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def collect(backend, sweep: Sweep, results_dir: Path, is_latest: bool) -> tuple[pd.DataFrame, list[Path]]:
    """Write `<results_dir>/<sweep id>.csv`, and `benchmark_results.csv` when it is the latest sweep."""
    frame = to_frame(sweep_rows(backend, sweep))
    paths = [results_dir / f"{sweep.id}.csv"] + ([results_dir / LATEST_CSV] if is_latest else [])
    for path in paths:
        write_csv(frame, path)
    return frame, paths
