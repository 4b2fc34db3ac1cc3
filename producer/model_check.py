"""Before a sweep enqueues anything, a worker builds each model that only a worker can check.

The client checks torchvision and timm names itself (`shared/models.py`). Whether a factory imports and
builds, and whether `--model-kwargs`, `--input-shape` or a state-dict file fit the model, is known only
where the model's code is: for each such model the producer sends one `optbench.check_model` task to the
queue its cells go to, and the worker that takes it builds the model once in a fresh process and runs it
on one sample. A model that fails stops the sweep with the worker's one-line reason before anything is
written, so a typo never becomes a sweep of failed runs. The check's own result is deleted once read, and a
check nobody answered in time is revoked.
"""

from __future__ import annotations

import dataclasses
import time

from celery.exceptions import TimeoutError as CeleryTimeout

from producer.sweep import queue_of
from shared.contract import CHECK_MODEL_TASK, ModelCheck
from shared.errors import OptbenchError
from shared.models import TORCHVISION
from shared.spec import WEIGHTS_KEYWORDS, CellSpec

START_MARGIN = 30.0  # seconds beyond the build's own timeout for the worker to take the task and start a process


def needs_check(cell: CellSpec) -> bool:
    """Whether only a worker can tell if the cell's model builds: anything but a plain torchvision name."""
    plain = cell.model_spec.kind == TORCHVISION and not cell.model_kwargs and cell.input_shape is None
    return not (plain and cell.weights in WEIGHTS_KEYWORDS)


def check_models(
    app, cells: dict[str, CellSpec], gpu_queue: str, online: set[str] | None, timeout: float
) -> dict[str, dict]:
    """Ask a worker of each model's queue to build it; what each model is (`BuiltModel.fields` and the worker),
    by model spec. `online`: the queues online workers consume (None: no worker answered). Raises OptbenchError,
    naming the worker and its reason, for a model that fails; or when no online worker serves its queue, or none
    answers in time."""
    firsts: dict[str, CellSpec] = {}
    for cell in cells.values():
        firsts.setdefault(cell.model, cell)
    checks = {model: (cell, queue_of(cell, gpu_queue)) for model, cell in firsts.items() if needs_check(cell)}
    for model, (_, queue) in checks.items():
        if queue not in (online or set()):
            raise OptbenchError(
                f"no online worker serves queue {queue} to build model {model} before the sweep: start one "
                "(make worker, python -m worker) or pass --start-missing; nothing enqueued"
            )
    pending = {}
    for model, (cell, queue) in checks.items():
        spec = dataclasses.replace(cell, optimization="baseline").to_dict()
        kwargs = {"spec": spec, "timeout": timeout}
        pending[model] = (queue, app.send_task(CHECK_MODEL_TASK, kwargs=kwargs, queue=queue))
    deadline = time.monotonic() + timeout + START_MARGIN
    answers = {}
    try:
        for model, (queue, result) in pending.items():
            try:
                value = result.get(timeout=max(0.1, deadline - time.monotonic()), propagate=False)
            except CeleryTimeout:
                raise OptbenchError(
                    f"no worker of queue {queue} built model {model} within {timeout + START_MARGIN:g} s (busy, or "
                    "no worker there): nothing enqueued; retry when one is free, or raise OPTBENCH_MODEL_CHECK_TIMEOUT"
                ) from None
            check = ModelCheck.from_dict(value) if isinstance(value, dict) else ModelCheck(None, False, str(value))
            if not check.ok:
                raise OptbenchError(f"{check.error} (checked on worker {check.worker}; nothing enqueued)")
            answers[model] = {"worker": check.worker, **(check.model or {})}
    finally:
        for _, result in pending.values():
            if not result.ready():
                result.revoke()
            result.forget()
    return answers
