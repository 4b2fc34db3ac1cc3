"""Where a cell was measured: host, device, driver and library versions, numeric settings, CPU cores."""

from __future__ import annotations

import os
import platform
from importlib import metadata

import torch
import torchvision

from shared.environment import host_name
from worker.engine.cores import CORES_ENV, format_cores, parse_cores
from worker.engine.precision import tf32_flags
from worker.engine.trackers import NvmlDevice


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def snapshot(device: torch.device, nvml: NvmlDevice | None = None) -> dict[str, object]:
    """The environment fields of a result; only host fields for a CUDA device this host lacks.

    `gpu_uuid` is NVML's (`GPU-...`, or `MIG-...` for a MIG instance) when NVML knows the device.
    The TF32 flags are read again after the optimization chain (the `tf32` step changes them).
    """
    on_cuda = device.type == "cuda" and torch.cuda.is_available()
    properties = torch.cuda.get_device_properties(device) if on_cuda else None
    uuid = getattr(properties, "uuid", None)
    flags = tf32_flags() if on_cuda else {"tf32_matmul": None, "tf32_cudnn": None}
    return {
        "device": device.type,
        "device_name": properties.name if on_cuda else cpu_model(),
        "gpu_uuid": nvml.uuid if nvml is not None else (f"GPU-{uuid}" if uuid is not None else None),
        "gpu_driver": _driver_version() if nvml is not None else None,
        "cuda_version": torch.version.cuda if on_cuda else None,
        "cudnn_version": torch.backends.cudnn.version() if on_cuda else None,
        "compute_capability": f"{properties.major}.{properties.minor}" if on_cuda else None,
        **flags,
        "cudnn_benchmark": torch.backends.cudnn.benchmark if on_cuda else None,
        "host": host_name(),
        "cpu_model": cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "torchao_version": package_version("torchao"),
        "onnxruntime_version": package_version("onnxruntime") or package_version("onnxruntime-gpu"),
        "python_version": platform.python_version(),
    }


def package_version(distribution: str) -> str | None:
    """An installed distribution's version, read from its metadata without importing it (None when absent)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _driver_version() -> str | None:
    import pynvml

    version = pynvml.nvmlSystemGetDriverVersion()
    return version.decode() if isinstance(version, bytes) else version


def pin_cpu_cores() -> str:
    """Pin this process to OPTBENCH_CPU_CORES when the launcher set it, and size torch's threads to the cores.

    Without the variable the affinity is left alone and torch keeps its default thread count, capped
    at the cores this process may run on. Returns the cores, e.g. `0-7`, for the result's `cpu_cores`.
    Called at the start of a cell, before torch starts its worker threads (they inherit the affinity).
    """
    wanted = os.environ.get(CORES_ENV)
    if wanted:
        cores = parse_cores(wanted)
        os.sched_setaffinity(0, cores)
        torch.set_num_threads(len(cores))
    cores = sorted(os.sched_getaffinity(0))
    if torch.get_num_threads() > len(cores):
        torch.set_num_threads(len(cores))
    return format_cores(cores)
