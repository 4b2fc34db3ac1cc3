"""The tasks: `optbench.run_cell` measures one run of a cell in its own process and returns its result;
`optbench.check_model` builds a sweep's model once, before the sweep enqueues anything (`check_model`).

What happens to a run, in order:
- its arguments are validated (`CellTask.from_kwargs`): a bad one is a failed result (`invalid_spec`), nothing runs;
- a task whose result is already stored (a redelivery after a lost acknowledgement) is not run again;
- a newer attempt sent without the producer (Flower's async-apply) becomes the run's current one; an
  older or duplicate attempt, or a run no manifest knows, is acknowledged without running (`superseded`);
- its delivery is counted in Redis; past OPTBENCH_MAX_TRIES deliveries of the same attempt (its
  process crashed, or its worker was killed, every time) it stays failed (`gave_up`) without running;
- the delivery records itself as the run attempt's owner: a worker that was frozen or cut off and
  wakes up after the broker handed the run to another worker stops its cell and stores nothing;
- its process crashing is retried through Celery's retry (a new delivery) until that bound;
- a warm shutdown (SIGTERM) kills the running cell and puts its message back in the queue at once.
Each worker also beats into Redis every few seconds (`shared/liveness.py`), so a run whose worker
vanished is shown `lost`, not `running`. A Redis restart fails no run: the task's Redis calls wait for it.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from celery.exceptions import Ignore, Reject
from celery.signals import worker_ready, worker_shutting_down
from kombu.exceptions import OperationalError
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from shared import keys, liveness, manifest
from shared.celery_app import app, settings
from shared.contract import CHECK_MODEL_TASK, TASK_NAME, CellTask, Envelope, ModelCheck
from shared.errors import OptbenchError, one_line
from shared.result import CellResult
from worker.isolation import Outcome, run_isolated, start_forkserver, stop_all

log = logging.getLogger(__name__)
REQUEUED = "REQUEUED"  # the task state of a run its worker put back in the queue (shown as `queued`)
# A Redis restart must not fail a run: its calls wait for Redis for about two minutes (0.1 s doubling to
# 5 s between 30 tries), as the result backend's own reads and stores do (`result_backend_always_retry`).
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)
REDIS_RETRY = Retry(ExponentialBackoff(cap=5.0, base=0.1), retries=30, supported_errors=UNREACHABLE)
T = TypeVar("T")


_heartbeat = {"stop": threading.Event(), "worker": None}


@worker_ready.connect
def _preload_forkserver(sender: Any = None, **_: Any) -> None:
    start_forkserver()
    _heartbeat["worker"] = getattr(sender, "hostname", None)
    if _heartbeat["worker"]:
        liveness.start_beating(app.backend.client, _heartbeat["worker"], _heartbeat["stop"])


@worker_shutting_down.connect
def _stop_running_cells(**_: Any) -> None:
    stop_all()
    _heartbeat["stop"].set()


@app.task(bind=True, name=TASK_NAME)
def run_cell(self, **kwargs: Any) -> dict:
    """Run one attempt of one run; returns an `Envelope` as a dict."""
    try:
        task, spec = CellTask.from_kwargs(kwargs, allow_faults=settings.allow_faults)
    except (OptbenchError, TypeError) as exc:
        log.warning("rejected task %s: %s", self.request.id, exc)
        return _envelope(self, kwargs, CellResult.failed(kwargs.get("spec") or {}, "invalid_spec", str(exc)))

    client = app.backend.client
    stored = app.backend.get_task_meta(self.request.id)  # the backend retries its reads itself
    if stored["status"] == "SUCCESS":  # a redelivery of a task whose result is stored (its ack was lost)
        log.info("run %s of sweep %s: already done, not run again", task.run_id, task.sweep_id)
        return stored["result"]
    if not _redis(lambda: manifest.claim(client, task.sweep_id, task.run_id, task.attempt, self.request.id)):
        log.info("run %s of sweep %s, attempt %d, is not current: not run", task.run_id, task.sweep_id, task.attempt)
        error = "a newer attempt of this run is current (or no sweep lists it): acknowledged without running"
        return _envelope(self, kwargs, CellResult.failed(spec, "superseded", error), superseded=True)

    counter = (keys.deliveries(task.sweep_id), keys.delivery_field(task.run_id, task.attempt))
    tries = _count_delivery(*counter)
    if tries > settings.max_tries:
        error = f"gave up after {tries - 1} tries: its process died or its worker was lost each time"
        return _envelope(self, kwargs, CellResult.failed(spec, "gave_up", error), tries=tries - 1)

    token = _redis(
        lambda: liveness.take_ownership(client, task.sweep_id, task.run_id, task.attempt, settings.result_expires)
    )

    def owner() -> bool:
        return liveness.owns(client, task.sweep_id, task.run_id, task.attempt, token)

    def still_owner() -> bool:
        """Asked at each progress report: an unreachable Redis is no reason to stop the cell."""
        try:
            return owner()
        except UNREACHABLE as exc:
            log.warning(
                "run %s of sweep %s: ownership not checked, Redis unreachable: %s", task.run_id, task.sweep_id, exc
            )
            return True

    outcome, result = run_isolated(
        spec, settings.cell_time_limit, _progress_reporter(self, task), task.fault, still_owner=still_owner
    )
    if outcome == Outcome.SUPERSEDED or not _redis(owner):
        # This worker was frozen or cut off long enough for the broker to hand the run to another
        # worker, which owns it now: its result is the run's, this one is dropped (nothing stored).
        log.warning("run %s of sweep %s was delivered again meanwhile: result dropped", task.run_id, task.sweep_id)
        raise Ignore()
    if outcome == Outcome.STOPPED:
        _redis(lambda: client.hincrby(*counter, -1))  # not the cell's fault: this delivery doesn't count
        log.info("worker shutting down: run %s of sweep %s goes back to the queue", task.run_id, task.sweep_id)
        self.update_state(state=REQUEUED, meta={"sweep_id": task.sweep_id, "run_id": task.run_id})
        raise Reject("worker shutting down", requeue=True)
    if outcome == Outcome.CRASHED and tries < settings.max_tries:
        log.warning("run %s of sweep %s crashed (try %d of %d): %s", task.run_id, task.sweep_id, tries,
                    settings.max_tries, result.error)  # fmt: skip
        raise self.retry(countdown=1, max_retries=settings.max_tries)
    log.info("run %s of sweep %s: %s", task.run_id, task.sweep_id, result.status)
    return _envelope(self, kwargs, result, tries=tries)


@app.task(bind=True, name=CHECK_MODEL_TASK)
def check_model(self, spec: dict, timeout: float) -> dict:
    """Build the model of a cell spec in a fresh process (`python -m worker.cell --check-model`), run it once on
    one sample, and return a `ModelCheck`: what the model is, or why it doesn't build here, in one line."""
    worker = self.request.hostname
    command = [sys.executable, "-m", "worker.cell", "--check-model", "--spec", json.dumps(spec)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return ModelCheck(worker, False, f"building the model took more than {timeout:g} s").to_dict()
    if done.returncode == 0:
        return ModelCheck(worker, True, model=json.loads(done.stdout.strip().splitlines()[-1])).to_dict()
    said = [line for line in done.stderr.splitlines() if line.startswith("python -m worker.cell: error: ")]
    error = said[-1].split(": error: ", 1)[1] if said else f"exit status {done.returncode}: {done.stderr[-300:]}"
    log.info("model check of %s on %s failed: %s", spec.get("model"), worker, error)
    return ModelCheck(worker, False, one_line(error)).to_dict()


def _envelope(task, kwargs: dict[str, Any], result: CellResult, **extra: Any) -> dict:
    def known(name: str) -> Any:
        return kwargs.get(name) if isinstance(kwargs.get(name), (str, int)) else None

    envelope = Envelope(
        sweep_id=known("sweep_id"),
        cell_id=known("cell_id"),
        repeat=known("repeat"),
        attempt=known("attempt"),
        worker=task.request.hostname,
        result=result.to_dict(),
        **extra,
    )
    return envelope.to_dict()


def _redis(call: Callable[[], T]) -> T:
    """`call()`, its Redis commands retried while Redis is unreachable (restarting)."""
    return REDIS_RETRY.call_with_retry(call, lambda error: log.warning("Redis unreachable, retrying: %s", error))


def _count_delivery(key: str, field: str) -> int:
    def count() -> int:
        with app.backend.client.pipeline() as pipe:
            tries, _ = pipe.hincrby(key, field, 1).expire(key, settings.result_expires).execute()
        return tries

    return _redis(count)


def _progress_reporter(task, cell_task: CellTask):
    """Report PROGRESS as the cell process sends it (already throttled there)."""

    def report(phase: str, **details: Any) -> None:
        meta = {"sweep_id": cell_task.sweep_id, "run_id": cell_task.run_id, "phase": phase, **details}
        task.update_state(state="PROGRESS", meta=meta)  # the result backend: `producer status`, Flower's API
        # The event stream: Flower's task page and /api/task/info show state PROGRESS and this as the result.
        try:
            task.send_event("task-progress", result=json.dumps(meta))
        except (OperationalError, *UNREACHABLE) as exc:  # the broker is restarting: this progress event is lost
            log.warning("progress event of %s not sent: %s", cell_task.run_id, exc)

    return report
