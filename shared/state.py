"""Where a sweep stands: each run's state and row, from the manifest and the result backend.

One row per run: `sweep_id, run_id, cell_id, repeat, status, attempts, tries, worker`, then the
result schema. `attempts` counts enqueues of the run (1 + re-runs); `tries` counts deliveries of
its current attempt to a worker (more than 1 after a crash or a lost worker). A run's `status` is
the result's (`ok`, `failed`, `unsupported`) once its current attempt is stored, else `queued` or
`running` (the manifest says it was sent; Celery's PENDING can't). Only the manifest's current task
id of a run is read, so an older attempt never shows. The status table, `--wait` and the
collector all read rows from here.
"""

from __future__ import annotations

from typing import Any

from shared.contract import Envelope
from shared.manifest import RunEntry, Sweep
from shared.result import FIELD_NAMES

LEAD_COLUMNS = ("sweep_id", "run_id", "cell_id", "repeat", "status", "attempts", "tries", "worker")
RUN_COLUMNS = LEAD_COLUMNS + tuple(name for name in FIELD_NAMES if name not in LEAD_COLUMNS)
FINISHED = ("ok", "failed", "unsupported")


def run_row(sweep: Sweep, entry: RunEntry, meta: dict[str, Any]) -> dict[str, Any]:
    """The row of one run from its current task's meta (as the result backend stores it)."""
    spec = entry.spec
    row: dict[str, Any] = {
        "sweep_id": sweep.id,
        "run_id": entry.run_id,
        "cell_id": entry.cell_id,
        "repeat": entry.repeat,
        "attempts": entry.attempts,
        "model": spec["model"],
        "optimization": spec["optimization"],
        "batch_size": spec["batch_size"],
        "image_size": spec["image_size"],
        "requested_device": spec["device"],
    }
    state = meta.get("status")
    if state == "SUCCESS":
        envelope = Envelope.from_dict(meta["result"])
        row.update(envelope.result)
        row.update(worker=envelope.worker, tries=envelope.tries)
    elif state == "FAILURE":
        row.update(status="failed", error_type="task_error", error=str(meta.get("result"))[:500])
        row["worker"] = meta.get("worker")
    elif state in ("STARTED", "PROGRESS"):
        info = meta.get("result") or {}
        row.update(status="running", worker=meta.get("worker") or info.get("hostname"), phase=info.get("phase"))
        row["iterations"] = info.get("iterations")  # advancing within a phase (PROGRESS, about once a second)
    else:
        row["status"] = "queued"
    return row


def sweep_rows(backend, sweep: Sweep) -> list[dict[str, Any]]:
    """Every run's row, grouped by cell in sweep order, read from the backend in one round trip."""
    runs = sweep.ordered_runs()
    raw = backend.mget([backend.get_key_for_task(run.task_id) for run in runs]) if runs else []
    metas = [backend.decode_result(value) if value is not None else {"status": "PENDING"} for value in raw]
    return [run_row(sweep, run, meta) for run, meta in zip(runs, metas, strict=True)]
