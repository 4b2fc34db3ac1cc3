"""Memory, energy and noise trackers: `reset()`/`start()` before the timed work, `read()` after it.

GPU memory comes from two places, reported under separate names because they differ:
- the caching allocator's peaks (`peak_mem_allocated_mb`, `peak_mem_reserved_mb`), reset per cell.
  CUDA-graph replays (torch.compile `reduce-overhead`/`max-autotune`) never call the allocator: their
  activations live in the graphs' private memory pools, allocated while the graphs were recorded.
  For those cells the peak adds the pools' memory not held by live tensors (`cuda_graph_pool_mb`
  is the pools' whole size), so the figure still covers activations;
- NVML's figure for this process (`process_mem_mb`), which includes the CUDA context (several
  hundred MB) and the allocator's cache; NVML keeps no peak, so it is read at the end of the cell.
  NVML lists host PIDs: in a container without `pid: host` it never lists the cell, and the
  figure is null with `process_mem_source` saying why (`unavailable:...`).
On the CPU, `process_mem_mb` is the peak resident set size (VmHWM), reset before the timed work.
All sizes are MiB (2**20 bytes).

NVML calls go through `import pynvml` at call time, so tests substitute a fake module.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import torch

from shared.result import MIB
from worker.engine.gpus import nvml_text

log = logging.getLogger(__name__)
MIN_ENERGY_SECONDS = 1.0  # NVML's energy counter advances in steps: shorter phases read too coarse
NVML_NOT_AVAILABLE = 2**64 - 1  # NVML_VALUE_NOT_AVAILABLE for an unsigned long long


@dataclass(frozen=True)
class NvmlDevice:
    """The NVML device a cell runs on: a whole GPU, or a MIG instance (`handle`) of a GPU (`parent`)."""

    handle: Any
    parent: Any
    uuid: str

    @property
    def is_mig(self) -> bool:
        return self.uuid.startswith("MIG-")


def nvml_handle(device: torch.device) -> NvmlDevice | None:
    """The NVML device that `device` is, matched by UUID, or None (logged) when NVML is unusable."""
    try:
        import pynvml

        pynvml.nvmlInit()
        uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
        return find_nvml_device(uuid, device.index or 0)
    except Exception as exc:  # NVML missing or driver without it: the fields stay null, say why
        log.warning("NVML unavailable, GPU process memory and energy not measured: %s", exc)
        return None


def find_nvml_device(torch_uuid: object, index: int) -> NvmlDevice:
    """Match torch's device to NVML's: the UUID the worker pinned (CUDA_VISIBLE_DEVICES), else torch's UUID.

    torch prints a GPU's and a MIG instance's UUID without the `GPU-`/`MIG-` prefix NVML uses.
    """
    import pynvml

    candidates = []
    pinned = [item.strip() for item in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if item.strip()]
    if len(pinned) == 1 and pinned[0].startswith(("GPU-", "MIG-")):
        candidates.append(pinned[0])
    if torch_uuid is not None:
        candidates += [f"GPU-{torch_uuid}", f"MIG-{torch_uuid}"]
    for uuid in candidates:
        try:
            handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
        except pynvml.NVMLError:
            continue
        parent = pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle) if uuid.startswith("MIG-") else handle
        return NvmlDevice(handle, parent, uuid)
    if candidates:
        raise LookupError(f"NVML knows none of the UUIDs {', '.join(candidates)}")
    log.warning("torch reports no GPU UUID; assuming NVML index %s", index)
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    return NvmlDevice(handle, handle, nvml_text(pynvml.nvmlDeviceGetUUID(handle)))


def nvml_processes(handle: Any) -> list[Any]:
    """Compute and graphics processes NVML lists on the device (a MIG handle: that instance's only)."""
    import pynvml

    processes = list(pynvml.nvmlDeviceGetComputeRunningProcesses(handle))
    seen = {proc.pid for proc in processes}
    with contextlib.suppress(pynvml.NVMLError):  # unsupported on some data-center parts; compute is enough
        processes += [p for p in pynvml.nvmlDeviceGetGraphicsRunningProcesses(handle) if p.pid not in seen]
    return processes


def process_memory(nvml: NvmlDevice | None, pid: int | None = None) -> dict[str, float | str | None]:
    """NVML's memory for this process, or null with the reason in `process_mem_source`."""
    if nvml is None:
        return {"process_mem_mb": None, "process_mem_source": "unavailable:no_nvml"}
    import pynvml

    pid = os.getpid() if pid is None else pid
    try:
        processes = nvml_processes(nvml.handle)
    except pynvml.NVMLError as exc:
        log.warning("NVML could not list the GPU's processes: %s", exc)
        return {"process_mem_mb": None, "process_mem_source": "unavailable:nvml_error"}
    mine = [proc for proc in processes if proc.pid == pid]
    if not mine:
        log.warning("NVML does not list pid %s (a PID namespace: a container without `pid: host`?)", pid)
        return {"process_mem_mb": None, "process_mem_source": "unavailable:pid_not_listed"}
    used = mine[0].usedGpuMemory
    if used is None or used >= NVML_NOT_AVAILABLE:  # pynvml turns N/A into None; older versions pass it raw
        return {"process_mem_mb": None, "process_mem_source": "unavailable:not_reported"}
    return {"process_mem_mb": used / MIB, "process_mem_source": "nvml_process_incl_cuda_context"}


def graph_pool_bytes(segments: list[dict[str, Any]], device_index: int) -> tuple[int, int]:
    """(reserved, allocated) bytes of the private memory pools (CUDA graphs) in `torch.cuda.memory_snapshot()`."""
    reserved = allocated = 0
    for segment in segments:
        if segment.get("device", device_index) != device_index:
            continue
        if tuple(segment.get("segment_pool_id", (0, 0))) != (0, 0):
            reserved += segment["total_size"]
            allocated += segment["allocated_size"]
    return reserved, allocated


class CudaMemory:
    def __init__(self, device: torch.device, nvml: NvmlDevice | None) -> None:
        self.device, self.nvml = device, nvml

    def reset(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def read(self) -> dict[str, float | str | None]:
        torch.cuda.synchronize(self.device)
        pool_reserved, pool_allocated = graph_pool_bytes(torch.cuda.memory_snapshot(), self.device.index or 0)
        peak = torch.cuda.max_memory_allocated(self.device) + (pool_reserved - pool_allocated)
        return {
            "peak_mem_allocated_mb": peak / MIB,
            "peak_mem_reserved_mb": torch.cuda.max_memory_reserved(self.device) / MIB,
            "cuda_graph_pool_mb": pool_reserved / MIB,
            **process_memory(self.nvml),
        }


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
    """Whole-GPU energy (NVML's counter, Volta and newer) over the timed phase.

    Null, with the reason in `energy_source`, when the counter is unsupported, when it did not move
    (it advances in steps, so a short phase can read 0 J), when the phase was shorter than
    MIN_ENERGY_SECONDS, or on a MIG instance (the counter is the whole GPU's, shared by every instance).
    """

    def __init__(self, nvml: NvmlDevice | None, on_gpu: bool = True, clock=time.monotonic) -> None:
        self.nvml, self.clock = nvml, clock
        self.start_mj: int | None = None
        self.start_s = 0.0
        # Why there is no figure; None on the CPU, where GPU energy does not apply.
        self.unavailable: str | None = "unavailable:no_nvml" if on_gpu and nvml is None else None

    def start(self) -> None:
        if self.nvml is None:
            return
        if self.nvml.is_mig:
            self.unavailable = "unavailable:mig_instance"
            return
        import pynvml

        try:
            self.start_mj = pynvml.nvmlDeviceGetTotalEnergyConsumption(self.nvml.handle)
        except pynvml.NVMLError as exc:
            log.warning("GPU energy counter unsupported: %s", exc)
            self.unavailable = "unavailable:counter_unsupported"
        self.start_s = self.clock()

    def read(self) -> dict[str, float | str | None]:
        """`energy_j` over the phase and `energy_source`."""
        if self.start_mj is None:
            return {"energy_j": None, "energy_source": self.unavailable}
        import pynvml

        seconds = self.clock() - self.start_s
        try:
            delta_mj = pynvml.nvmlDeviceGetTotalEnergyConsumption(self.nvml.handle) - self.start_mj
        except pynvml.NVMLError as exc:
            log.warning("GPU energy counter failed: %s", exc)
            return {"energy_j": None, "energy_source": "unavailable:counter_unsupported"}
        if seconds < MIN_ENERGY_SECONDS:
            return {"energy_j": None, "energy_source": "unavailable:phase_too_short"}
        if delta_mj <= 0:
            return {"energy_j": None, "energy_source": "unavailable:counter_did_not_move"}
        return {"energy_j": delta_mj / 1000.0, "energy_source": "nvml_total_energy_whole_gpu"}


def _schedstat_ns() -> tuple[int, int]:
    """(time on a CPU, time runnable but waiting for a CPU) summed over this process's threads, in ns."""
    on_cpu = waiting = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/schedstat") as handle:
                fields = handle.read().split()
        except OSError:  # the thread ended meanwhile
            continue
        on_cpu, waiting = on_cpu + int(fields[0]), waiting + int(fields[1])
    return on_cpu, waiting


MIN_RUNNABLE_NS_FOR_WAIT_FRACTION = 200_000_000  # 0.2 s of runnable time across the process's threads


class Noise:
    """What else the machine was doing during the timed phase, so a run measured under contention shows it.

    `noise_cpu_wait_fraction`: of the time this process's threads were runnable, the fraction they
    waited for a CPU (Linux schedstat): near 0 on a quiet machine, large when another process (or
    another cell) competes for the cores; null when the threads were runnable under 0.2 s in all
    (a single wake-up is then a large fraction). It covers the per-call and back-to-back phases.
    `noise_cpu_steal_fraction`: of all CPU time on the host meanwhile, the share a hypervisor stole
    from this VM (/proc/stat). `noise_load_avg`: the 1-minute load average at the end.
    With a GPU (NVML), read at the end of the phase: `noise_gpu_sm_clock_mhz` (the SM clock: low
    means throttled or idle), `noise_gpu_other_processes` (processes other than this one on the
    GPU or MIG instance) and `gpu_power_limit_w` (the enforced power limit).
    """

    def __init__(self, nvml: NvmlDevice | None = None) -> None:
        self.nvml = nvml

    def start(self) -> None:
        self.start_ns, self.start_steal = _schedstat_ns(), _host_cpu_ticks()

    def read(self) -> dict[str, float | int | None]:
        on_cpu, waiting = (end - start for end, start in zip(_schedstat_ns(), self.start_ns, strict=True))
        runnable = on_cpu + waiting
        # Over a few milliseconds one wake-up or one context switch is a large fraction: too short to tell.
        measurable = runnable >= MIN_RUNNABLE_NS_FOR_WAIT_FRACTION
        steal, total = (end - start for end, start in zip(_host_cpu_ticks(), self.start_steal, strict=True))
        return {
            "noise_cpu_wait_fraction": waiting / runnable if measurable else None,
            "noise_cpu_steal_fraction": steal / total if measurable and total > 0 else None,
            "noise_load_avg": os.getloadavg()[0],
            **gpu_noise(self.nvml),
        }


def _host_cpu_ticks() -> tuple[int, int]:
    """(steal, all) CPU ticks of the host so far (/proc/stat): steal is time a hypervisor gave our vCPUs away."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    steal = fields[7] if len(fields) > 7 else 0
    return steal, sum(fields[:8])


def gpu_noise(nvml: NvmlDevice | None, pid: int | None = None) -> dict[str, float | int | None]:
    """SM clock and power limit of the physical GPU, and the other processes on the device; null if unknown."""
    if nvml is None:
        return {"noise_gpu_sm_clock_mhz": None, "noise_gpu_other_processes": None, "gpu_power_limit_w": None}
    import pynvml

    sm_clock = pynvml.NVML_CLOCK_SM
    return {
        "noise_gpu_sm_clock_mhz": _nvml_or_none(lambda: pynvml.nvmlDeviceGetClockInfo(nvml.parent, sm_clock)),
        "noise_gpu_other_processes": _nvml_or_none(lambda: other_processes(nvml.handle, pid)),
        "gpu_power_limit_w": _nvml_or_none(lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(nvml.parent) / 1000.0),
    }


def other_processes(handle: Any, pid: int | None = None) -> int | None:
    """Compute processes on the device other than this one (a desktop's graphics processes don't count:
    they would mark every run of a workstation GPU as contended).

    This process holds a CUDA context there, so it is in NVML's list: under its own PID, or under a
    host PID NVML reports when this one runs in a PID namespace (then one listed process is us).
    An empty list means NVML can't see processes here: unknown (None).
    """
    import pynvml

    pid = os.getpid() if pid is None else pid
    pids = {proc.pid for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)}
    if not pids:
        return None
    return len(pids - {pid}) if pid in pids else len(pids) - 1


def _nvml_or_none(read):
    import pynvml

    try:
        return read()
    except pynvml.NVMLError as exc:
        log.info("NVML reading unavailable: %s", exc)
        return None
