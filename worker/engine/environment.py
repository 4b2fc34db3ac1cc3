"""Where a cell was measured: host, device, driver and library versions, numeric settings, CPU cores, CPU ISA."""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata

import torch
import torchvision

from shared import config
from shared.environment import host_name
from worker.engine.cores import format_cores, parse_cores
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
        **cpu_isa_fields(),
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
    wanted = config.cell_cores()
    if wanted:
        cores = parse_cores(wanted)
        os.sched_setaffinity(0, cores)
        torch.set_num_threads(len(cores))
    cores = sorted(os.sched_getaffinity(0))
    if torch.get_num_threads() > len(cores):
        torch.set_num_threads(len(cores))
    return format_cores(cores)


# The CPU features that change which int8 and bf16 kernels run, in the order the `cpu_isa` columns list them.
ISA_FEATURES = ("vnni", "avx512_bf16", "amx")
# /proc/cpuinfo flags of each: VNNI in its AVX-512 or its AVX2 (AVX-VNNI) form; AMX by its tiles.
CPUINFO_FLAGS = {
    "vnni": ("avx512_vnni", "avx_vnni"),
    "avx512_bf16": ("avx512_bf16",),
    "amx": ("amx_tile",),
}
# The flags ATen requires for each of its x86 capability levels (aten/src/ATen/native/DispatchStub.cpp), best first.
ATEN_LEVELS = (("AVX512", ("avx512f", "avx512bw", "avx512vl", "avx512dq")), ("AVX2", ("avx2", "fma")))
ONEDNN_ISA_LINE = re.compile(r"onednn_verbose,(?:v\d+,)?info,cpu,isa:(.*)")
AVX10 = re.compile(r"AVX ?10")


@dataclass(frozen=True)
class CpuIsa:
    """An instruction-set level (torch's CPU capability: DEFAULT, AVX2, AVX512...) and the int8/bf16 features."""

    level: str
    vnni: bool
    avx512_bf16: bool
    amx: bool

    def __str__(self) -> str:
        """`AVX512 vnni avx512_bf16 amx`, `AVX2`: the level, then the features present."""
        return " ".join([self.level, *(name for name in ISA_FEATURES if getattr(self, name))])


def cpu_isa_fields() -> dict[str, str | None]:
    """The `cpu_isa` (effective), `cpu_isa_hardware` and `onednn_isa` columns."""
    hardware = hardware_cpu_isa()
    return {
        "cpu_isa": str(effective_cpu_isa()),
        "cpu_isa_hardware": str(hardware) if hardware is not None else None,
        "onednn_isa": onednn_isa(),
    }


def effective_cpu_isa() -> CpuIsa:
    """What this process's kernels use: torch's CPU capability and the features of oneDNN's ISA.

    Both honour their dispatch limits: ATEN_CPU_CAPABILITY (ATen's vectorized kernels, and the vector ISA
    inductor generates code for) and ONEDNN_MAX_CPU_ISA (oneDNN's convolutions, matmuls and its int8 and
    bf16 kernels). A limit below the hardware makes this differ from `hardware_cpu_isa`.
    """
    return CpuIsa(torch.backends.cpu.get_cpu_capability(), **onednn_features(onednn_isa() or ""))


def onednn_features(description: str) -> dict[str, bool]:
    """The int8/bf16 features in oneDNN's name for its ISA (oneDNN 3.x's words, e.g. `Intel AVX2 with Intel DL Boost`).

    DL Boost is VNNI; AVX10.1 (and Sapphire Rapids' AVX-512 FP16) includes VNNI and AVX-512 BF16; `bfloat16`
    means AVX-512 BF16 only with AVX-512 (AVX2 with bfloat16 is AVX-NE-CONVERT, another thing).
    """
    avx10 = bool(AVX10.search(description))
    return {
        "vnni": "DL Boost" in description or "8-bit integer" in description or avx10,
        "avx512_bf16": ("bfloat16" in description and "AVX-512" in description) or avx10,
        "amx": "AMX" in description,
    }


def hardware_cpu_isa() -> CpuIsa | None:
    """What the CPU offers, from /proc/cpuinfo's flags, whatever the dispatch limits (None without them)."""
    flags = cpu_flags()
    if flags is None:
        return None
    level = next((name for name, needs in ATEN_LEVELS if flags.issuperset(needs)), "DEFAULT")
    return CpuIsa(level, **{name: bool(flags.intersection(CPUINFO_FLAGS[name])) for name in ISA_FEATURES})


def cpu_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


@functools.cache
def onednn_isa() -> str | None:
    """oneDNN's own name for the ISA it dispatches to (`Intel AVX2`), after ONEDNN_MAX_CPU_ISA; None without oneDNN.

    oneDNN says it only in the header of its verbose output, once per process: this turns verbose on around
    one tiny convolution and reads that header from fd 1 (C's stdout), redirected to a file for the ~2 ms
    it takes. Where verbose output already ran in this process (ONEDNN_VERBOSE set, say), the header is
    gone, and a fresh interpreter with the same environment is asked instead (~3 s).
    """
    if not torch.backends.mkldnn.is_available():
        return None
    with tempfile.TemporaryFile() as captured:
        _flush_stdout()
        saved = os.dup(1)
        os.dup2(captured.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                _tiny_onednn_convolution()
            _flush_stdout()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        captured.seek(0)
        text = captured.read().decode(errors="replace")
    found = ONEDNN_ISA_LINE.search(text)
    if found is None:
        text = _onednn_verbose_of_a_fresh_process()
        found = ONEDNN_ISA_LINE.search(text)
    if found is None:
        raise RuntimeError(f"oneDNN did not say its ISA (no `info,cpu,isa:` line in its verbose output): {text[-300:]}")
    return found.group(1).strip()


def _tiny_onednn_convolution() -> None:
    with torch.no_grad():
        one = torch.ones(1, 1, 1, 1)
        torch.mkldnn_convolution(one, one, None, [0, 0], [1, 1], [1, 1], 1)


def _onednn_verbose_of_a_fresh_process() -> str:
    code = "from worker.engine.environment import _tiny_onednn_convolution as c; c()"
    env = {**os.environ, "ONEDNN_VERBOSE": "1"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    return run.stdout + run.stderr


def _flush_stdout() -> None:
    """Python's and C's stdout buffers, so fd 1's redirection catches what oneDNN printf'd and nothing else."""
    sys.stdout.flush()
    if sys.__stdout__ is not None:
        sys.__stdout__.flush()
    ctypes.CDLL(None).fflush(None)
