"""Every Redis key optbench writes itself (Celery's own keys are Celery's: queues `gpu`/`cpu`,
`celery-task-meta-<task id>` for results)."""

PREFIX = "optbench:"
SWEEPS = PREFIX + "sweeps"  # sorted set: sweep id scored by creation time


def sweep(sweep_id: str) -> str:
    """Hash of one sweep's manifest: field `meta` (JSON) and one field `cell:<cell id>` (JSON) per cell."""
    return f"{PREFIX}sweep:{sweep_id}"


def deliveries(sweep_id: str) -> str:
    """Hash counting deliveries of each cell attempt to a worker: field `<cell id>#<attempt>`."""
    return f"{PREFIX}deliveries:{sweep_id}"


def delivery_field(cell_id: str, attempt: int) -> str:
    return f"{cell_id}#{attempt}"
