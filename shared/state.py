"""Where a sweep stands: each run's state and row, from the manifest and the result backend.

One row per run: `sweep_id, run_id, cell_id, repeat, status, attempts, tries, worker`, then the
result schema. `attempts` counts enqueues of the run (1 + re-runs); `tries` counts deliveries of
its current attempt to a worker (more than 1 after a crash or a lost worker). A run's `status` is
the result's (`ok`, `failed`, `unsupported`) once its current attempt is stored, else `queued`,
`running`, or `lost` (running on a worker that stopped beating: `shared/liveness.py`; it waits for the
broker to hand it to another worker). The manifest says a run was sent; Celery's PENDING can't. Only
the manifest's current task id of a run is read, so an older attempt never shows. The status table,
`--wait` and the collector all read rows from here.
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any

import msgspec

from shared import liveness
from shared.bulk import gc_paused
from shared.manifest import RunEntry, Sweep
from shared.result import FIELD_NAMES, Status

LEAD_COLUMNS = ("sweep_id", "run_id", "cell_id", "repeat", "status", "attempts", "tries", "worker")
RUN_COLUMNS = LEAD_COLUMNS + tuple(name for name in FIELD_NAMES if name not in LEAD_COLUMNS)
FINISHED = (Status.OK, Status.FAILED, Status.UNSUPPORTED)
UNFINISHED = (Status.QUEUED, Status.RUNNING, Status.LOST)


def run_row(
    sweep: Sweep, entry: RunEntry, meta: dict[str, Any], seen: dict[str, float] | None = None, now: float = 0.0
) -> dict[str, Any]:
    """The row of one run from its current task's meta (as the result backend stores it).

    `seen`: when each worker last beat (`liveness.last_seen`), to tell `running` from `lost` at `now`."""
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
        envelope = meta["result"]  # an Envelope as a dict (shared/contract.py)
        row.update(envelope["result"])
        row.update(worker=envelope.get("worker"), tries=envelope.get("tries"))
    elif state == "FAILURE":
        row.update(status=Status.FAILED.value, error_type="task_error", error=str(meta.get("result"))[:500])
        row["worker"] = meta.get("worker")
    elif state in ("STARTED", "PROGRESS"):
        info = meta.get("result") or {}
        worker = meta.get("worker") or info.get("hostname")
        row.update(status=Status.RUNNING.value, worker=worker, phase=info.get("phase"))
        row["iterations"] = info.get("iterations")  # advancing within a phase (PROGRESS, about once a second)
        silent = liveness.lost_since(worker, seen or {}, now)
        if silent is not None:
            row.update(status=Status.LOST.value, error_type="worker_lost")
            row["error"] = f"worker {worker} lost {silent:.0f} s ago, waiting for redelivery"
    else:  # PENDING (sent, not yet taken), or REQUEUED (its worker put it back in the queue)
        row["status"] = Status.QUEUED.value
    return row


@functools.cache
def _meta_decoder(columns: tuple[str, ...]) -> msgspec.json.Decoder:
    """Decodes a stored task meta in one pass, keeping only `columns` of a result row (msgspec skips the other
    fields in C). A meta whose result is not an object (a state other than SUCCESS may store anything) fails
    validation, and is then decoded in full."""
    unset = msgspec.UNSET  # a field the stored row lacks stays out of the dict, as with a full decode
    row = msgspec.defstruct("Row", [(name, Any, unset) for name in columns])
    envelope = msgspec.defstruct("Envelope", [("result", row, unset), ("worker", Any, None), ("tries", Any, None)])
    return msgspec.json.Decoder(msgspec.defstruct("Meta", [("status", str), ("result", envelope | None, None)]))


def decode(backend, payload: bytes | None, columns: tuple[str, ...] | None = None) -> dict[str, Any]:
    """A stored task meta; one never stored is PENDING. Plain JSON (Celery's default) is read by msgspec (kombu's
    decoder adds a Python hook per JSON object, a third of reading 50,000 results; the stdlib's takes twice
    msgspec's time); with `columns`, a stored result keeps only those fields of its row, never building the
    others. JSON only Python reads (NaN, which a row's nested values might hold) goes to the stdlib's decoder."""
    if payload is None:
        return {"status": "PENDING"}
    if backend.content_type != "application/json" or payload[:1] != b"{":
        return backend.decode_result(payload)  # compressed, or another serializer
    if columns is not None:
        try:
            meta = _meta_decoder(columns).decode(payload)
        except msgspec.MsgspecError:  # not the shape above, or JSON that only Python's decoder reads (NaN)
            meta = None
        envelope = meta.result if meta is not None and meta.status == "SUCCESS" else None
        if envelope is not None and envelope.result is not msgspec.UNSET:
            row = msgspec.to_builtins(envelope.result)
            return {"status": "SUCCESS", "result": {"result": row, "worker": envelope.worker, "tries": envelope.tries}}
    try:
        decoded = msgspec.json.decode(payload)  # twice as fast as the stdlib's decoder, the same values
    except msgspec.MsgspecError:
        decoded = json.loads(payload)  # NaN and Infinity, which Python's JSON encoder writes and msgspec refuses
    return backend.meta_from_decoded(decoded)


def sweep_rows(backend, sweep: Sweep, columns: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Every run's row, grouped by cell in sweep order, read from the backend in two round trips.

    `columns`: the result fields wanted (the others are left out of each row, and never decoded); all by default.
    """
    runs = sweep.ordered_runs()
    prefix = backend.task_keyprefix  # b"celery-task-meta-": the key of a task id is built here, in bulk
    wanted = None if columns is None else tuple(sorted(set(columns) & set(FIELD_NAMES)))
    with gc_paused():
        raw = backend.mget([prefix + run.task_id.encode() for run in runs]) if runs else []
        metas = [decode(backend, value, wanted) for value in raw]
        running = any(meta["status"] in ("STARTED", "PROGRESS") for meta in metas)
        seen = liveness.last_seen(backend.client) if running else {}
        now = time.time()
        return [run_row(sweep, run, meta, seen, now) for run, meta in zip(runs, metas, strict=True)]
