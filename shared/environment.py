"""Where a cell was measured: host, device, driver and library versions, numeric settings."""

from __future__ import annotations

import datetime
import os
import platform
import socket

import torch
import torchvision


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def host_name() -> str:
    """The host a result says it ran on: OPTBENCH_HOST (set by `python -m worker --host`), else the hostname."""
    return os.environ.get("OPTBENCH_HOST") or socket.gethostname()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def snapshot(device: torch.device, nvml_handle=None) -> dict[str, object]:
    """The environment fields of a result; only host fields for a CUDA device this host lacks."""
    on_cuda = device.type == "cuda" and torch.cuda.is_available()
    properties = torch.cuda.get_device_properties(device) if on_cuda else None
    uuid = getattr(properties, "uuid", None)
    return {
        "device": device.type,
        "device_name": properties.name if on_cuda else cpu_model(),
        "gpu_uuid": f"GPU-{uuid}" if uuid is not None else None,
        "gpu_driver": _driver_version() if nvml_handle is not None else None,
        "cuda_version": torch.version.cuda if on_cuda else None,
        "cudnn_version": torch.backends.cudnn.version() if on_cuda else None,
        "compute_capability": f"{properties.major}.{properties.minor}" if on_cuda else None,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32 if on_cuda else None,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32 if on_cuda else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark if on_cuda else None,
        "host": host_name(),
        "cpu_model": cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "python_version": platform.python_version(),
    }


def _driver_version() -> str | None:
    import pynvml

    version = pynvml.nvmlSystemGetDriverVersion()
    return version.decode() if isinstance(version, bytes) else version
