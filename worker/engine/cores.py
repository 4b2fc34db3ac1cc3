"""Which CPU cores each worker's cells run on (no torch: the launcher imports this too).

Policy (README, "Checking a GPU host"): on a host with GPUs, each GPU worker gets its own block of
cores and the CPU worker the rest, so a CPU cell (e.g. `dynamic_quant`) never competes with the
thread that launches a GPU cell's kernels. The launcher passes each worker its cores in
`OPTBENCH_CPU_CORES` (e.g. `0-7`); a cell's process pins itself to them and sets torch's thread
count to match (`worker/engine/environment.py`, `pin_cpu_cores`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from shared import config

log = logging.getLogger(__name__)

CORES_ENV = config.CORES_ENV
MAX_CORES_PER_GPU = 8  # a GPU cell needs one launching thread plus a few for compilation and inputs


@dataclass(frozen=True)
class CorePlan:
    """The cores of each GPU worker (in the order of the GPUs) and of the CPU worker; None: not pinned."""

    gpu: list[list[int] | None]
    cpu: list[int] | None


def plan_cores(cores: list[int], gpu_workers: int, cpu_worker: bool) -> CorePlan:
    """Split `cores` (the launcher's affinity) between the workers.

    - no GPU: the CPU worker keeps every core and is not pinned (torch's default threads apply);
    - GPUs: each GPU worker gets `min(8, cores // workers)` contiguous cores, the CPU worker the rest;
      without a CPU worker the GPU workers share all cores equally;
    - fewer cores than workers: nobody is pinned (logged; each cell still records its cores).
    """
    cores = sorted(cores)
    workers = gpu_workers + (1 if cpu_worker else 0)
    if gpu_workers == 0:
        return CorePlan(gpu=[], cpu=None)
    if len(cores) < workers:
        log.warning("%d cores for %d workers: not pinning, CPU and GPU cells share the cores", len(cores), workers)
        return CorePlan(gpu=[None] * gpu_workers, cpu=None)
    per_gpu = min(MAX_CORES_PER_GPU, len(cores) // workers) if cpu_worker else len(cores) // gpu_workers
    gpu = [cores[i * per_gpu : (i + 1) * per_gpu] for i in range(gpu_workers)]
    rest = cores[gpu_workers * per_gpu :]
    return CorePlan(gpu=gpu, cpu=rest if cpu_worker else None)


def format_cores(cores: list[int]) -> str:
    """[0, 1, 2, 3, 8, 9] -> `0-3,8-9` (the form of /sys/devices/system/cpu/online and taskset -c)."""
    parts: list[str] = []
    ordered = sorted(set(cores))
    start = previous = None
    for core in [*ordered, None]:
        if start is not None and (core is None or core != previous + 1):
            parts.append(str(start) if start == previous else f"{start}-{previous}")
            start = None
        if core is not None and start is None:
            start = core
        previous = core
    return ",".join(parts)


def parse_cores(text: str) -> list[int]:
    """`0-3,8-9` -> [0, 1, 2, 3, 8, 9]; ValueError for anything else."""
    cores: set[int] = set()
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        first, last = int(low), int(high or low)
        if first < 0 or last < first:
            raise ValueError(f"bad core range {part!r} in {text!r}")
        cores.update(range(first, last + 1))
    if not cores:
        raise ValueError(f"no cores in {text!r}")
    return sorted(cores)
