"""Memory and energy trackers: `reset()`/`start()` before the timed work, `read()` after it.

GPU memory comes from two places, reported under separate names because they differ:
- the caching allocator's peaks (`peak_mem_allocated_mb`, `peak_mem_reserved_mb`), reset per cell;
- NVML's figure for this process (`process_mem_mb`), which includes the CUDA context (several
  hundred MB) and the allocator's cache; NVML keeps no peak, so it is read at the end of the cell.
On the CPU, `process_mem_mb` is the peak resident set size (VmHWM), reset before the timed work.
All sizes are MiB (2**20 bytes).
"""

from __future__ import annotations

import logging
import os
import re

import torch

log = logging.getLogger(__name__)
MIB = 2**20


def nvml_handle(device: torch.device):
    """The NVML handle of the GPU that `device` is, matched by UUID, or None when NVML is unusable."""
    try:
        import pynvml

        pynvml.nvmlInit()
        uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
        if uuid is not None:
            return pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        log.warning("torch reports no GPU UUID; assuming NVML index %s", device.index or 0)
        return pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
    except Exception as exc:  # NVML missing or driver without it: the fields stay null, say why
        log.warning("NVML unavailable, GPU process memory and energy not measured: %s", exc)
        return None


class CudaMemory:
    def __init__(self, device: torch.device, handle) -> None:
        self.device, self.handle = device, handle

    def reset(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def read(self) -> dict[str, float | str | None]:
        return {
            "peak_mem_allocated_mb": torch.cuda.max_memory_allocated(self.device) / MIB,
            "peak_mem_reserved_mb": torch.cuda.max_memory_reserved(self.device) / MIB,
            "process_mem_mb": self._nvml_process_bytes() / MIB if self.handle is not None else None,
            "process_mem_source": "nvml_process_incl_cuda_context" if self.handle is not None else None,
        }

    def _nvml_process_bytes(self) -> float | None:
        import pynvml

        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(self.handle):
            if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                return proc.usedGpuMemory
        log.warning("NVML lists no memory for pid %s (another PID namespace?)", os.getpid())
        return None


class CpuMemory:
    """Peak RSS of this process, reset through /proc/self/clear_refs (Linux 4.0+)."""

    def reset(self) -> None:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")

    def read(self) -> dict[str, float | str | None]:
        with open("/proc/self/status") as handle:
            match = re.search(r"^VmHWM:\s+(\d+) kB", handle.read(), re.MULTILINE)
        return {
            "peak_mem_allocated_mb": None,
            "peak_mem_reserved_mb": None,
            "process_mem_mb": int(match.group(1)) * 1024 / MIB if match else None,
            "process_mem_source": "cpu_peak_rss" if match else None,
        }


class GpuEnergy:
    """Whole-GPU energy (NVML's counter, Volta and newer) over the timed phase."""

    def __init__(self, handle) -> None:
        self.handle, self.start_mj = handle, None

    def start(self) -> None:
        if self.handle is None:
            return
        import pynvml

        try:
            self.start_mj = pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        except pynvml.NVMLError as exc:
            log.warning("GPU energy counter unsupported: %s", exc)

    def joules(self) -> float | None:
        if self.start_mj is None:
            return None
        import pynvml

        return (pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) - self.start_mj) / 1000.0
