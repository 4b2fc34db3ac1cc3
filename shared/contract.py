"""The task contract: what the producer sends, what a worker accepts, what it returns. Defined once here.

- `TASK_NAME`: the task that measures, `optbench.run_cell`.
- `CHECK_MODEL_TASK`: `optbench.check_model`, sent before a sweep enqueues anything: a worker builds the
  model of a cell spec once (in a fresh process) and returns `ModelCheck`.
- `CellTask`: its keyword arguments (one *run* of a cell: the cell's spec, which repetition, which
  attempt), validated by the worker before anything runs.
- `Envelope`: what the task returns and the result backend stores; the collector reads it back.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.errors import OptbenchError
from shared.spec import CellSpec

if TYPE_CHECKING:
    from typing import Self  # Python 3.11+: annotations are never evaluated here

TASK_NAME = "optbench.run_cell"
CHECK_MODEL_TASK = "optbench.check_model"
# Injected by tests and benchmarks only (OPTBENCH_ALLOW_FAULTS=1); `sleep:<seconds>` is a cell that
# sleeps that long instead of measuring (a fixed-duration cell for benchmarks of the queue).
FAULTS = ("exit", "segfault", "hang")


def is_fault(text: object) -> bool:
    if text in FAULTS:
        return True
    if not isinstance(text, str) or not text.startswith("sleep:"):
        return False
    try:
        return 0 <= float(text.removeprefix("sleep:")) <= 3600
    except ValueError:
        return False


def run_id(cell_id: str, repeat: int) -> str:
    """A run's name: the cell and its repetition, e.g. `fp16@bs16#2`."""
    return f"{cell_id}#{repeat}"


@dataclass(frozen=True)
class CellTask:
    """The arguments of one task: run `repeat` of cell `cell_id` of sweep `sweep_id`, as its `attempt`-th enqueue."""

    sweep_id: str
    cell_id: str
    repeat: int
    attempt: int
    spec: dict[str, Any]  # a CellSpec as a dict, device resolved
    fault: str | None = None

    @property
    def run_id(self) -> str:
        return run_id(self.cell_id, self.repeat)

    @property
    def shadow(self) -> str:
        """The name Flower and the worker's log show for this task instead of `optbench.run_cell`."""
        return f"{TASK_NAME} {self.run_id} [{self.sweep_id}]"

    def kwargs(self) -> dict[str, Any]:
        """The task's keyword arguments (a shallow dict: the spec is sent as it is, not copied)."""
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        if self.fault is None:
            del values["fault"]
        return values

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any], allow_faults: bool = False) -> tuple[CellTask, CellSpec]:
        """Validate what a worker received; OptbenchError says what is wrong."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise OptbenchError(f"unknown task argument(s): {', '.join(unknown)}")
        missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in kwargs and f.name != "fault")
        if missing:
            raise OptbenchError(f"missing task argument(s): {', '.join(missing)}")
        task = cls(**kwargs)
        if not (isinstance(task.sweep_id, str) and task.sweep_id and isinstance(task.cell_id, str) and task.cell_id):
            raise OptbenchError("sweep_id and cell_id must be non-empty strings")
        for name in ("repeat", "attempt"):
            value = getattr(task, name)
            if type(value) is not int or value < 1:
                raise OptbenchError(f"{name} must be a positive integer (got {value!r})")
        if task.fault is not None and (not allow_faults or not is_fault(task.fault)):
            raise OptbenchError(f"fault injection {task.fault!r} is not enabled on this worker")
        return task, CellSpec.from_dict(task.spec)


ARGUMENTS_REPR_MAX = 1024  # Celery's `kwargsrepr_maxsize`


def arguments_repr(kwargs: dict[str, Any]) -> str:
    """What Flower shows as a task's arguments, as Celery's `saferepr` would make it (cut at ARGUMENTS_REPR_MAX
    characters), at the cost of a `repr`: Celery's own walk of the spec took a third of each enqueue."""
    text = repr(kwargs)
    return text if len(text) <= ARGUMENTS_REPR_MAX else text[: ARGUMENTS_REPR_MAX - 3] + "..."


class Returned:
    """A task's return value as JSON: `to_dict`, and `from_dict` keeping the fields this version knows."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        known = _field_names(cls)
        return cls(**{name: value for name, value in data.items() if name in known})


@functools.cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


@dataclass
class Envelope(Returned):
    """What a task returns: which run and attempt, who ran it, how many deliveries, and the CellResult dict."""

    sweep_id: str | None
    cell_id: str | None
    repeat: int | None
    attempt: int | None
    worker: str | None
    result: dict[str, Any]
    tries: int | None = None
    superseded: bool = False  # a newer attempt of the run exists: this one was acknowledged without running


@dataclass
class ModelCheck(Returned):
    """What `optbench.check_model` returns: whether the model built on `worker`, and what it is, or why not."""

    worker: str | None
    ok: bool
    error: str | None = None  # one line
    model: dict[str, Any] | None = None  # the row's model fields (input_shape, model_source, model_sha256, ...)
