"""Running the GPU check's list: each check's cells through the worker's forked path, then its judge,
within a time budget; a check whose needs are missing, or that would overrun the budget, is skipped."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from worker.gpu_check.checks import CELL_BUDGET, CELL_TIME_LIMIT, MODEL, Cell, GpuCheck, Host
from worker.gpu_check.environment import cpu_load
from worker.gpu_check.judges import Cells, ok


class BudgetSpent(Exception):
    """The time budget ran out before a check could run any of its cells."""


@dataclass
class CheckResult:
    """What one check found: `status` pass, fail or skipped, and why (gpu_check.json's `checks`)."""

    name: str
    expected: str
    status: str = "skipped"
    reason: str | None = None
    observed: dict[str, Any] = field(default_factory=dict)
    cells: list[str] = field(default_factory=list)  # labels in the report's `cells`
    seconds: float = 0.0


class Runner:
    """Runs cells the way a worker does (forked from a forkserver), within a time budget."""

    def __init__(self, budget_seconds: float) -> None:
        self.started = time.monotonic()
        self.budget = budget_seconds
        self.cells: Cells = {}

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.started)

    def cell(self, label: str, **spec: Any) -> dict[str, Any]:
        """Run one cell (DenseNet-121 on the GPU unless `spec` says otherwise) and record its result."""
        from shared.spec import CellSpec
        from worker.isolation import run_isolated

        spec = {"model": MODEL, "device": "cuda", "weights": "random", **CELL_BUDGET, **spec}
        print(f"gpu_check: {label} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        outcome, result = run_isolated(CellSpec(**spec), CELL_TIME_LIMIT, lambda *args, **kwargs: None)
        record = result.to_dict() if result is not None else {"status": outcome}
        record["check_seconds"] = time.monotonic() - started
        print(f"gpu_check: {label}: {record['status']} ({record['check_seconds']:.0f} s)", file=sys.stderr)
        self.cells[label] = record
        return record


def run_checks(runner: Runner, checks: list[GpuCheck], host: Host) -> list[CheckResult]:
    """Run `checks` in order on `host`; every check gets a result, run or skipped with its reason."""
    results: list[CheckResult] = []
    owner: dict[str, CheckResult] = {}  # cell label -> the result of the check that runs it
    for check in checks:
        result = CheckResult(check.name, check.expects, cells=check.labels)
        results.append(result)
        owner.update({cell.label: result for cell in check.cells if cell.label not in owner})
        result.reason = host.lacks(check.needs) or _unread(check, runner.cells, owner) or _over_budget(runner, check)
        if result.reason is None:
            _run_one(runner, check, host, result)
    return results


def _unread(check: GpuCheck, cells: Cells, owner: dict[str, CheckResult]) -> str | None:
    """Why a check can't judge the earlier cells it reads (they did not run), or None."""
    missing = [label for label in check.reads if label not in cells]
    if not missing:
        return None
    by = owner.get(missing[0])
    return f"{by.name} did not run its cells: {by.reason}" if by else f"no earlier check runs {missing}"


def _over_budget(runner: Runner, check: GpuCheck) -> str | None:
    if runner.left() >= check.estimate_s:
        return None
    return f"time budget: {runner.left():.0f} s left, this check needs about {check.estimate_s:.0f} s"


def _run_one(runner: Runner, check: GpuCheck, host: Host, result: CheckResult) -> None:
    """Run the check's cells, then its judge; an exception is a failed check, with what broke."""
    started = time.monotonic()
    try:
        ran = 0
        for cell in check.cells:
            if runner.left() < cell.min_left_s:
                break
            _run_cell(runner, cell, host)
            ran += 1
        if check.cells and not ran:
            raise BudgetSpent(f"time budget spent before {check.cells[0].label}")
        verdict = check.judge(runner.cells, host)
    except BudgetSpent as exc:
        result.status, result.reason = "skipped", str(exc)
    except Exception as exc:  # a check that breaks is a failed check, with what broke
        result.status, result.reason = "fail", f"{type(exc).__name__}: {exc}"
    else:
        result.status = "pass" if verdict.passed else "fail"
        result.observed, result.reason = verdict.observed, verdict.reason
    result.seconds = time.monotonic() - started


def _run_cell(runner: Runner, cell: Cell, host: Host) -> None:
    spec = dict(cell.spec)
    if cell.batch_for_memory is not None:
        spec["batch_size"] = cell.batch_for_memory(host.memory_total_bytes)
    if cell.load is None:
        runner.cell(cell.label, **spec)
        return
    cores = sorted(os.sched_getaffinity(0)) if cell.load == "every_core" else list(host.cpu_worker_cores)
    with cpu_load(cores):
        runner.cell(cell.label, **spec)


def summary(results: list[CheckResult]) -> dict[str, Any]:
    """Counts of pass, fail and skipped, and the names of the failed checks."""
    counts = {status: sum(r.status == status for r in results) for status in ("pass", "fail", "skipped")}
    return {**counts, "failed": [r.name for r in results if r.status == "fail"]}


def nvml_lists_cells(cells: Cells) -> bool | None:
    """Whether NVML listed the GPU cells' processes (None: no GPU cell got that far)."""
    sources = [cell.get("process_mem_source") for cell in cells.values() if ok(cell) and cell.get("device") == "cuda"]
    return all(source == "nvml_process_incl_cuda_context" for source in sources) if sources else None
