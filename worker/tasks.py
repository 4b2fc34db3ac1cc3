"""The one task: `optbench.run_cell` measures a cell in its own process and returns its result.

What happens to a cell, in order:
- its arguments are validated again here: a bad spec is a failed result (`invalid_spec`), nothing runs;
- a newer attempt sent without the producer (Flower's async-apply) becomes the cell's current one;
- its delivery is counted in Redis; past OPTBENCH_MAX_TRIES deliveries of the same attempt (its
  process crashed, or its worker was killed, every time) it stays failed (`gave_up`) without running;
- its process crashing is retried through Celery's retry (a new delivery) until that bound;
- a warm shutdown (SIGTERM) kills the running cell and puts its message back in the queue at once.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from celery.exceptions import Reject
from celery.signals import worker_ready, worker_shutting_down

from shared import keys, manifest
from shared.errors import OptbenchError
from shared.spec import CellSpec
from worker.app import app, settings
from worker.isolation import FAULTS, run_isolated, start_forkserver, stop_all

log = logging.getLogger(__name__)


@worker_ready.connect
def _preload_forkserver(**_: Any) -> None:
    start_forkserver()


@worker_shutting_down.connect
def _stop_running_cells(**_: Any) -> None:
    stop_all()


@app.task(bind=True, name="optbench.run_cell")
def run_cell(self, sweep_id: str, cell_id: str, attempt: int, spec: dict[str, Any], fault: str | None = None) -> dict:
    """Return {sweep_id, cell_id, attempt, worker, tries, result}; `result` is a CellResult dict."""
    envelope = {"sweep_id": sweep_id, "cell_id": cell_id, "attempt": attempt, "worker": self.request.hostname}
    try:
        if not (isinstance(sweep_id, str) and isinstance(cell_id, str) and type(attempt) is int and attempt >= 1):
            raise OptbenchError("sweep_id and cell_id must be strings and attempt a positive integer")
        cell = CellSpec.from_dict(spec)
        if fault is not None and (not settings.allow_faults or fault not in FAULTS):
            raise OptbenchError(f"fault injection {fault!r} is not enabled on this worker")
    except (OptbenchError, TypeError) as exc:
        log.warning("rejected cell %s of sweep %s: %s", cell_id, sweep_id, exc)
        return {**envelope, "result": _failed_without_running(spec, "invalid_spec", str(exc))}

    manifest.claim(app.backend.client, sweep_id, cell_id, attempt, self.request.id)
    counter = (keys.deliveries(sweep_id), keys.delivery_field(cell_id, attempt))
    tries = _count_delivery(*counter)
    if tries > settings.max_tries:
        error = f"gave up after {tries - 1} tries: its process died or its worker was lost each time"
        return {**envelope, "tries": tries - 1, "result": _failed_without_running(spec, "gave_up", error)}

    outcome, result = run_isolated(cell, settings.cell_time_limit, _progress_reporter(self, sweep_id, cell_id), fault)
    if outcome == "stopped":
        app.backend.client.hincrby(*counter, -1)  # not the cell's fault: this delivery doesn't count
        log.info("worker shutting down: cell %s of sweep %s goes back to the queue", cell_id, sweep_id)
        raise Reject("worker shutting down", requeue=True)
    if outcome == "crashed" and tries < settings.max_tries:
        log.warning("cell %s of sweep %s crashed (try %d of %d): %s", cell_id, sweep_id, tries, settings.max_tries,
                    result["error"])  # fmt: skip
        raise self.retry(countdown=1, max_retries=settings.max_tries)
    log.info("cell %s of sweep %s: %s", cell_id, sweep_id, result["status"])
    return {**envelope, "tries": tries, "result": result}


def _count_delivery(key: str, field: str) -> int:
    client = app.backend.client
    with client.pipeline() as pipe:
        tries, _ = pipe.hincrby(key, field, 1).expire(key, settings.result_expires).execute()
    return tries


def _progress_reporter(task, sweep_id: str, cell_id: str):
    """Report PROGRESS as the cell process sends it (already throttled there)."""

    def report(phase: str, **details: Any) -> None:
        meta = {"sweep_id": sweep_id, "cell_id": cell_id, "phase": phase, **details}
        task.update_state(state="PROGRESS", meta=meta)  # the result backend: `producer status`, Flower's API
        # The event stream: Flower's task page and /api/task/info show state PROGRESS and this as the result.
        task.send_event("task-progress", result=json.dumps(meta))

    return report


def _failed_without_running(spec: Any, error_type: str, error: str) -> dict[str, Any]:
    known = spec if isinstance(spec, dict) else {}
    return {
        "model": known.get("model"),
        "optimization": known.get("optimization"),
        "batch_size": known.get("batch_size"),
        "status": "failed",
        "error_type": error_type,
        "error": error,
    }
