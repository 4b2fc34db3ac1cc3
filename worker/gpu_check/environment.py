"""The GPU check's view of the host: versions, NVML's GPU and energy counter, the GPU to pin, CPU load.

Reads the GPU through NVML only: this process never initializes CUDA (its forked cells do).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

from worker.engine.cores import format_cores
from worker.engine.gpus import Gpu, list_gpus, nvml_text

EXTRAS = ("pynvml", "torch_pruning", "celery", "torchao", "onnxruntime")


def environment(gpu: Gpu | None, no_gpu_reason: str | None) -> dict[str, Any]:
    """Versions, TF32 defaults (read before any cell sets them), NVML's view of the GPU; no CUDA init."""
    import torch
    import torchvision

    from worker.engine.precision import tf32_flags

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda_build": torch.version.cuda,
        "cudnn": _or_error(torch.backends.cudnn.version),
        "tf32_defaults": tf32_flags(),
        "extras": {name: version(name) for name in EXTRAS},
        "cpu_cores": format_cores(sorted(os.sched_getaffinity(0))),
        "no_gpu_reason": no_gpu_reason,
    }
    if gpu is not None:
        env.update(nvml_view(gpu))
    return env


def nvml_view(gpu: Gpu) -> dict[str, Any]:
    """The driver, the GPU (or MIG instance) and its parent's memory, MIG mode, power limit, energy counter."""
    import pynvml

    handle = pynvml.nvmlDeviceGetHandleByUUID(gpu.uuid)
    parent = pynvml.nvmlDeviceGetHandleByUUID(gpu.parent_uuid) if gpu.parent_uuid else handle
    return {
        "driver": nvml_text(pynvml.nvmlSystemGetDriverVersion()),
        "gpu": asdict(gpu),
        "gpu_memory_total_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
        "mig_mode": _or_error(lambda: pynvml.nvmlDeviceGetMigMode(parent)),
        "power_limit_w": _or_error(lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(parent) / 1000.0),
        "energy_counter": energy_counter_step(parent),
        "all_gpus": [asdict(g) for g in list_gpus()],
    }


def energy_counter_step(handle: Any, seconds: float = 2.0) -> dict[str, Any]:
    """How often NVML's energy counter moves, and by how much, read every millisecond (idle GPU)."""
    import pynvml

    try:
        changes = [(time.monotonic(), pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))]
    except pynvml.NVMLError as exc:
        return {"supported": False, "error": str(exc)}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        value = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        if value != changes[-1][1]:
            changes.append((time.monotonic(), value))
        time.sleep(0.001)
    intervals = [(b[0] - a[0]) * 1000 for a, b in itertools.pairwise(changes)]
    steps = [b[1] - a[1] for a, b in itertools.pairwise(changes)]
    span = changes[-1][0] - changes[0][0]
    return {
        "supported": True,
        "changes_in_window": len(steps),
        "window_seconds": seconds,
        "median_interval_ms": statistics.median(intervals) if intervals else None,
        "median_step_mj": statistics.median(steps) if steps else None,
        "idle_power_w": (changes[-1][1] - changes[0][1]) / span / 1000 if span > 0 else None,
    }


def find_gpu(wanted: str | None) -> tuple[Gpu | None, str | None]:
    """The GPU (or first MIG instance) to check, and why there is none."""
    try:
        import pynvml

        pynvml.nvmlInit()
        gpus = list_gpus()
    except Exception as exc:  # no nvidia-ml-py, no driver
        return None, f"NVML unavailable: {type(exc).__name__}: {exc}"
    if not gpus:
        return None, "NVML lists no usable GPU (or MIG instance)"
    if wanted is None:
        return gpus[0], None
    for gpu in gpus:
        if wanted in (str(gpu.index), gpu.uuid):
            return gpu, None
    return None, f"no GPU {wanted!r} among {[g.uuid for g in gpus]}"


@contextlib.contextmanager
def cpu_load(cores: list[int]) -> Iterator[None]:
    """One busy Python process pinned to each of `cores`."""
    hogs = []
    try:
        for core in cores:
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            os.sched_setaffinity(hog.pid, {core})
            hogs.append(hog)
        time.sleep(0.5)
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def version(module: str) -> str | None:
    """The installed version of an optional extra, by its distribution's name (None: not installed)."""
    from importlib import metadata

    names = {"pynvml": ["nvidia-ml-py"], "torch_pruning": ["torch-pruning"], "onnxruntime": ["onnxruntime-gpu"]}
    for distribution in [*names.get(module, []), module]:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return None


def _or_error(read: Callable[[], Any]) -> Any:
    try:
        return read()
    except Exception as exc:  # recorded, not fatal: the JSON says what could not be read
        return f"error: {type(exc).__name__}: {exc}"
