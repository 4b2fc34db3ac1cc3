"""`python -m worker.gpu_check --out DIR`: check a GPU host, write DIR/gpu_check.json (see the package)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from worker.engine.cores import CORES_ENV, format_cores, plan_cores
from worker.gpu_check import __doc__ as PACKAGE_DOC
from worker.gpu_check.checks import CHECKS, DEFAULT_BUDGET_SECONDS, GPU_CHECKS, GpuCheck, Host
from worker.gpu_check.environment import environment, find_gpu
from worker.gpu_check.run import Runner, nvml_lists_cells, run_checks, summary

SCHEMA = 2  # 2: a check no longer lists the tracker items it confirms


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m worker.gpu_check", description=(PACKAGE_DOC or "").split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, default=os.environ.get("OUT"), help="folder for gpu_check.json ($OUT)")
    parser.add_argument("--dry-run", action="store_true", help="no GPU: the CPU cell, GPU checks skipped")
    parser.add_argument("--gpu", help="NVML index or UUID (GPU-... or MIG-...); default the first")
    parser.add_argument("--budget-seconds", type=float, default=DEFAULT_BUDGET_SECONDS)
    parser.add_argument("--list", action="store_true", help="print the checks, one a line, and run nothing")
    args = parser.parse_args(argv)
    if args.out is None and not args.list:
        parser.error("--out is required (or set $OUT)")
    return args


def list_line(check: GpuCheck) -> str:
    """One check on one line: name, time estimate, needs, cell count, what it expects."""
    needs = ", ".join(check.needs) or "nothing"
    cells = f"{len(check.labels)} cell{'' if len(check.labels) == 1 else 's'}"
    return f"{check.name}\tabout {check.estimate_s:.0f} s\tneeds {needs}\t{cells}\t{check.expects}"


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when no check failed, 1 when one did, 2 without a GPU (unless --dry-run)."""
    args = parse_args(argv)
    if args.list:
        print("\n".join(list_line(check) for check in CHECKS))
        total = sum(check.estimate_s for check in GPU_CHECKS)
        print(f"GPU checks: about {total:.0f} s of cells; --budget-seconds {args.budget_seconds:.0f}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    started_at = _now()
    runner = Runner(args.budget_seconds)

    dry = "dry run: GPU checks are not run (run without --dry-run on a GPU host)"
    gpu, no_gpu = (None, dry) if args.dry_run else find_gpu(args.gpu)
    plan = plan_cores(sorted(os.sched_getaffinity(0)), 1 if gpu else 0, cpu_worker=True)
    if gpu is not None:  # before the forkserver starts: its cells inherit this environment
        os.environ.update({"CUDA_VISIBLE_DEVICES": gpu.uuid, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
        os.environ[CORES_ENV] = format_cores(plan.gpu[0]) if plan.gpu[0] else ""
    env = environment(gpu, None if gpu else no_gpu)
    gpu_cores = plan.gpu[0] if plan.gpu else None
    env["core_plan"] = {
        "gpu_worker": format_cores(gpu_cores) if gpu_cores else "not pinned",
        "cpu_worker": format_cores(plan.cpu) if plan.cpu else "not pinned",
    }
    host = Host(
        gpu_uuid=gpu.uuid if gpu else None,
        no_gpu_reason=no_gpu,
        mig=gpu is not None and gpu.mig_index is not None,
        memory_total_bytes=env.get("gpu_memory_total_bytes", 0),
        extras=env["extras"],
        cpu_worker_cores=tuple(plan.cpu or ()),
    )
    results = run_checks(runner, CHECKS if args.dry_run else GPU_CHECKS, host)
    if gpu is not None:
        env["nvml_lists_cell_process"] = nvml_lists_cells(runner.cells)
    report: dict[str, Any] = {
        "tool": "optbench worker.gpu_check",
        "schema": SCHEMA,
        "dry_run": args.dry_run,
        "started_at": started_at,
        "finished_at": _now(),
        "seconds": time.monotonic() - runner.started,
        "budget_seconds": args.budget_seconds,
        "environment": env,
        "summary": summary(results),
        "checks": [asdict(result) for result in results],
        "cells": runner.cells,
    }
    path = args.out / "gpu_check.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps({"written": str(path), **report["summary"]}))
    if gpu is None and not args.dry_run:
        print(f"gpu_check: no GPU checked: {no_gpu} (--dry-run checks the CPU path on any machine)", file=sys.stderr)
        return 2
    return 1 if report["summary"]["fail"] else 0


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


if __name__ == "__main__":
    sys.exit(main())
