"""Run a cell in a fresh process forked from a forkserver that has already imported torch.

The Celery worker never initializes CUDA; each cell's process does, measures, sends its result
back through a pipe and exits, so nothing (CUDA context, allocator cache, cuDNN autotune, a
segfault) carries from one cell to the next. Forking from the preloaded forkserver costs a
fraction of a second, where a fresh interpreter would pay 3-10 s to import torch.

Whatever happens to the cell's process becomes an outcome: `result` (what the cell measured),
`crashed` (a crash or `os._exit`: a failed result with the exit status and the tail of its stderr),
`timeout` (killed at its time limit: a failed result with `error_type: timeout`), `stopped`
(killed because the worker is shutting down: the task puts the cell back in the queue) or
`superseded` (killed because another delivery of the run owns it now: the task stores nothing).
A cell's process also dies with its parent (PR_SET_PDEATHSIG), so a killed worker leaves no cell
holding the GPU.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import multiprocessing
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from enum import Enum
from typing import Any

from shared.environment import host_name, utc_now
from shared.result import CellResult
from shared.spec import CellSpec

log = logging.getLogger(__name__)


class Outcome(str, Enum):
    """What happened to a cell's process (see the module's docstring)."""

    RESULT = "result"
    CRASHED = "crashed"
    TIMEOUT = "timeout"
    STOPPED = "stopped"
    SUPERSEDED = "superseded"

    def __str__(self) -> str:
        return self.value


STDERR_TAIL_CHARS = 300
PROGRESS_EVERY_SECONDS = 1.0  # within a phase; a new phase is reported at once

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(["worker.engine.run"])
_stopping = threading.Event()
PR_SET_PDEATHSIG = 1


def stop_all() -> None:
    """Make every running cell return `stopped` at once (the worker is shutting down)."""
    _stopping.set()


def start_forkserver() -> None:
    """Start the forkserver now (it imports torch once) rather than on the first cell."""
    from multiprocessing import forkserver

    forkserver.ensure_running()


def run_isolated(
    spec: CellSpec,
    time_limit: float,
    on_progress: Callable[..., None],
    fault: str | None = None,
    still_owner: Callable[[], bool] = lambda: True,
) -> tuple[Outcome, CellResult | None]:
    """(outcome, result): the result is None only for `stopped` and `superseded`.

    `still_owner` is asked before each progress report is relayed: False ends the cell (`superseded`)."""
    started_at = utc_now()
    receiver, sender = _context.Pipe(duplex=False)
    with tempfile.NamedTemporaryFile(prefix="optbench-cell-", suffix=".stderr", delete=False) as stderr_file:
        stderr_path = stderr_file.name
    process = _context.Process(target=_cell_process, args=(spec.to_dict(), sender, stderr_path, fault), daemon=True)
    try:
        process.start()
        sender.close()
        outcome, result = _receive(process, receiver, time.monotonic() + time_limit, on_progress, still_owner)
        if outcome == Outcome.TIMEOUT:
            error = f"the cell ran past its {time_limit:g} s time limit and was killed"
            return outcome, _failed(spec, started_at, "timeout", error)
        if outcome == Outcome.CRASHED:
            return outcome, _failed(spec, started_at, "crashed", _death_reason(process, stderr_path))
        return outcome, CellResult(**result) if result is not None else None
    finally:
        if process.is_alive():
            process.kill()
        process.join()
        receiver.close()
        os.unlink(stderr_path)


def _receive(process, receiver, deadline: float, on_progress, still_owner) -> tuple[Outcome, dict[str, Any] | None]:
    """Relay progress until the outcome: ("result", result) or (crashed|timeout|stopped|superseded, None)."""
    while (remaining := deadline - time.monotonic()) > 0:
        if _stopping.is_set():
            process.kill()
            return Outcome.STOPPED, None
        if not receiver.poll(min(remaining, 0.5)):
            if not process.is_alive():
                return Outcome.CRASHED, None
            continue
        try:
            kind, payload = receiver.recv()
        except EOFError:  # the process closed its end: it is gone
            return Outcome.CRASHED, None
        if kind == "result":
            return Outcome.RESULT, payload
        if not still_owner():
            process.kill()
            return Outcome.SUPERSEDED, None
        on_progress(payload.pop("phase"), **payload)
    process.kill()
    return Outcome.TIMEOUT, None


def _death_reason(process, stderr_path: str) -> str:
    process.join(timeout=10)
    if process.exitcode is None:  # closed its pipe but lingers: end it
        process.kill()
        process.join()
    code = process.exitcode
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
    tail = _tail(stderr_path)
    return f"the cell's process {how} before reporting a result" + (f"; stderr: {tail}" if tail else "")


def _tail(path: str) -> str:
    with open(path, errors="replace") as handle:
        text = handle.read()
    return " ".join(text.split())[-STDERR_TAIL_CHARS:]


def _failed(spec: CellSpec, started_at: str, error_type: str, error: str) -> CellResult:
    return CellResult.failed(spec, error_type, error, host=host_name(), started_at=started_at, finished_at=utc_now())


def _cell_process(spec: dict[str, Any], sender, stderr_path: str, fault: str | None) -> None:
    """Runs in the forked process: stdout and stderr go to a file whose tail explains a crash."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the forkserver, i.e. the worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal is the worker's to handle, not the cell's
    gc.freeze()  # what the forkserver imported is never garbage: keep collections of this process short
    descriptor = os.open(stderr_path, os.O_WRONLY | os.O_APPEND)
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
    from worker.engine.run import run_cell

    if fault and fault.startswith("sleep:"):  # a fixed-duration cell, for benchmarks of the queue itself
        sender.send(("result", _fixed_duration(CellSpec.from_dict(spec), float(fault.split(":", 1)[1])).to_dict()))
        sender.close()
        return
    _inject(fault)

    last = {"phase": None, "at": 0.0}

    def progress(phase: str, **details: Any) -> None:
        # Called between timed calls: send on a new phase, else at most once per PROGRESS_EVERY_SECONDS.
        now = time.monotonic()
        if phase == last["phase"] and now - last["at"] < PROGRESS_EVERY_SECONDS:
            return
        last.update(phase=phase, at=now)
        sender.send(("progress", {"phase": phase, **details}))

    result = run_cell(CellSpec.from_dict(spec), on_progress=progress)
    sender.send(("result", result.to_dict()))
    sender.close()


def _fixed_duration(spec: CellSpec, seconds: float) -> CellResult:
    """Sleeps `seconds` in place of measuring: tests and benchmarks of the queue (OPTBENCH_ALLOW_FAULTS=1 only)."""
    started_at = utc_now()
    time.sleep(seconds)
    note = f"fixed-duration test cell: slept {seconds:g} s, measured nothing"
    return CellResult.for_spec(spec, status="ok", error=note, host=host_name(), started_at=started_at,
                               finished_at=utc_now())  # fmt: skip


def _inject(fault: str | None) -> None:
    if fault == "exit":
        print("fault injection: os._exit(3)", flush=True)
        os._exit(3)
    if fault == "segfault":
        print("fault injection: SIGSEGV", flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)
    if fault == "hang":
        time.sleep(10**6)
