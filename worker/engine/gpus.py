"""The devices GPU workers pin to, listed through NVML (no torch, no CUDA initialization, no Redis).

A GPU in MIG mode is listed as its MIG instances, each pinned by its `MIG-` UUID: memory is per
instance, energy is not (NVML's counter is the whole GPU's, so a MIG cell's energy is null).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gpu:
    """A device a GPU worker is pinned to: a whole GPU, or MIG instance `mig_index` of GPU `index`."""

    index: int
    uuid: str  # GPU-... or MIG-...
    name: str
    mig_index: int | None = None
    parent_uuid: str | None = None  # the physical GPU's, for a MIG instance

    @property
    def worker_name(self) -> str:
        return f"gpu{self.index}" if self.mig_index is None else f"gpu{self.index}-mig{self.mig_index}"


def visible_gpus() -> list[Gpu]:
    """GPUs NVML sees, restricted to CUDA_VISIBLE_DEVICES (indices or UUIDs) when it is set."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # no driver, no NVML: a CPU-only host
        log.info("no NVIDIA GPU found (%s)", exc)
        return []
    gpus = list_gpus()
    wanted = os.environ.get("CUDA_VISIBLE_DEVICES")
    if wanted is not None:
        allowed = {item.strip() for item in wanted.split(",") if item.strip()}
        gpus = [gpu for gpu in gpus if {str(gpu.index), gpu.uuid, gpu.parent_uuid} & allowed]
    return gpus


def list_gpus() -> list[Gpu]:
    """Every GPU NVML lists; a GPU in MIG mode is listed as its MIG instances instead (memory is per
    instance, energy is not: NVML's counter is the whole GPU's)."""
    import pynvml

    gpus = []
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        uuid, name = nvml_text(pynvml.nvmlDeviceGetUUID(handle)), nvml_text(pynvml.nvmlDeviceGetName(handle))
        instances = mig_instances(handle)
        if instances is None:
            gpus.append(Gpu(index, uuid, name))
            continue
        if not instances:
            log.warning("GPU %d (%s) is in MIG mode without MIG instances: no worker for it", index, uuid)
        gpus += [Gpu(index, mig_uuid, mig_name, slot, uuid) for slot, mig_uuid, mig_name in instances]
    return gpus


def mig_instances(handle) -> list[tuple[int, str, str]] | None:
    """(slot, MIG- UUID, name) of each MIG instance of the GPU; None when MIG is off or unsupported."""
    import pynvml

    try:
        current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
    except pynvml.NVMLError:  # a GPU without MIG support
        return None
    if current != pynvml.NVML_DEVICE_MIG_ENABLE:
        return None
    instances = []
    for slot in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except pynvml.NVMLError as exc:
            if getattr(exc, "value", None) == pynvml.NVML_ERROR_NOT_FOUND:  # an empty slot
                continue
            raise
        instances.append((slot, nvml_text(pynvml.nvmlDeviceGetUUID(mig)), nvml_text(pynvml.nvmlDeviceGetName(mig))))
    return instances


def nvml_text(value: str | bytes) -> str:
    """An NVML string as text: older nvidia-ml-py versions return bytes."""
    return value.decode() if isinstance(value, bytes) else value
