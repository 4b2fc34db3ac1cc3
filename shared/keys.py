"""Every Redis key optbench writes itself, and the names of its queues.

Celery's own keys are Celery's: `celery-task-meta-<task id>` for results, and (with the Redis
broker) one list per queue. Queue names start with `optbench.`, so a Redis or a RabbitMQ vhost shared
with other Celery apps never hands their messages to our workers, or ours to theirs.
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


def owners(sweep_id: str) -> str:
    """Hash naming the delivery that owns each run attempt: field `<run id>:<attempt>`, a random token."""
    return f"{PREFIX}owners:{sweep_id}"


def delivery_field(run_id: str, attempt: int) -> str:
    return f"{run_id}:{attempt}"


# Hash: worker name -> when it last said it was alive (Unix seconds); see shared/liveness.py.
WORKERS = PREFIX + "workers"

QUEUE_PREFIX = "optbench."
CPU_QUEUE = QUEUE_PREFIX + "cpu"  # CPU-only cells, and every cell of a CPU sweep
GPU_QUEUE = QUEUE_PREFIX + "gpu"  # GPU cells that may run on any GPU model
GPU_MODEL_QUEUE_PREFIX = GPU_QUEUE + "."


def gpu_model_queue(gpu_name: str) -> str:
    """The queue of one GPU model, e.g. `optbench.gpu.nvidia-h200`: a sweep pinned to that model uses it."""
    return GPU_MODEL_QUEUE_PREFIX + re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")
