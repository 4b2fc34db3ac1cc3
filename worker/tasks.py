"""The one task: `optbench.run_cell` measures a cell in its own process and returns its result."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.signals import worker_ready

from shared.errors import OptbenchError
from shared.spec import CellSpec
from worker.app import app, settings
from worker.isolation import FAULTS, run_isolated, start_forkserver

log = logging.getLogger(__name__)

PROGRESS_EVERY_SECONDS = 1.0


@worker_ready.connect
def _preload_forkserver(**_: Any) -> None:
    start_forkserver()


@app.task(bind=True, name="optbench.run_cell")
def run_cell(self, sweep_id: str, cell_id: str, attempt: int, spec: dict[str, Any], fault: str | None = None) -> dict:
    """Return {sweep_id, cell_id, attempt, worker, result}; `result` is a CellResult dict.

    The arguments are validated here as well as by the producer: a task sent by hand with a bad
    spec gets a failed result with error_type `invalid_spec`, and nothing runs.
    """
    envelope = {"sweep_id": sweep_id, "cell_id": cell_id, "attempt": attempt, "worker": self.request.hostname}
    try:
        cell = CellSpec.from_dict(spec)
        if fault is not None and (not settings.allow_faults or fault not in FAULTS):
            raise OptbenchError(f"fault injection {fault!r} is not enabled on this worker")
    except (OptbenchError, TypeError) as exc:
        log.warning("rejected cell %s of sweep %s: %s", cell_id, sweep_id, exc)
        return {**envelope, "result": _invalid(spec, str(exc))}

    last = {"phase": None, "at": 0.0}

    def progress(phase: str, **details: Any) -> None:
        now = time.monotonic()
        if phase == last["phase"] and now - last["at"] < PROGRESS_EVERY_SECONDS:
            return
        last.update(phase=phase, at=now)
        self.update_state(state="PROGRESS", meta={"sweep_id": sweep_id, "cell_id": cell_id, "phase": phase, **details})

    result = run_isolated(cell, settings.cell_time_limit, progress, fault)
    log.info("cell %s of sweep %s: %s", cell_id, sweep_id, result["status"])
    return {**envelope, "result": result}


def _invalid(spec: Any, error: str) -> dict[str, Any]:
    known = spec if isinstance(spec, dict) else {}
    return {
        "model": known.get("model"),
        "optimization": known.get("optimization"),
        "batch_size": known.get("batch_size"),
        "status": "failed",
        "error_type": "invalid_spec",
        "error": error,
    }
