"""Every Redis key optbench writes itself, and the names of its queues.

Celery's own keys are Celery's: `celery-task-meta-<task id>` for results, and one list per queue.
"""

import re

PREFIX = "optbench:"
SWEEPS = PREFIX + "sweeps"  # sorted set: sweep id scored by creation time


def sweep(sweep_id: str) -> str:
    """Hash of one sweep's manifest: field `meta` (JSON) and one field `run:<run id>` (JSON) per run."""
    return f"{PREFIX}sweep:{sweep_id}"


def deliveries(sweep_id: str) -> str:
    """Hash counting deliveries of each run attempt to a worker: field `<run id>:<attempt>`."""
    return f"{PREFIX}deliveries:{sweep_id}"


def delivery_field(run_id: str, attempt: int) -> str:
    return f"{run_id}:{attempt}"


CPU_QUEUE = "cpu"  # CPU-only cells, and every cell of a CPU sweep
GPU_QUEUE = "gpu"  # GPU cells that may run on any GPU model


def gpu_model_queue(gpu_name: str) -> str:
    """The queue of one GPU model, e.g. `gpu.nvidia-h200`: a sweep pinned to that model uses it."""
    return f"{GPU_QUEUE}." + re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")
