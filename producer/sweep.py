"""Sweeps: plan every cell (validating all of them first), record the manifest, enqueue one task per cell.

A cell whose optimization runs only on the CPU (dynamic_quant), and every cell of a CPU sweep,
goes to the `cpu` queue; the others of a CUDA sweep go to the `gpu` queue.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis

from shared import keys, manifest
from shared.environment import utc_now
from shared.errors import OptbenchError
from shared.manifest import CellEntry, Sweep
from shared.optimizations import parse_chain, preferred_device
from shared.spec import CellSpec

TASK_NAME = "optbench.run_cell"
DEFAULT_OPTIMIZATIONS = ("baseline", "fp16", "prune", "dynamic_quant", "torchscript")
DEFAULT_BATCH_SIZES = {"cuda": (1, 2, 4, 8, 16), "cpu": (1, 2, 4)}  # the CPU set finishes in minutes


@dataclass(frozen=True)
class SweepRequest:
    """What a user asks for; `cell_options` are the other CellSpec fields (image size, budgets...)."""

    optimizations: tuple[str, ...] = DEFAULT_OPTIMIZATIONS
    batch_sizes: tuple[int, ...] | None = None  # None: the device's default set
    device: str = "auto"
    gpu_model: str | None = None  # a GPU name to pin the sweep to, `any` to allow mixed GPUs, None: the only one
    name: str | None = None
    cell_options: dict[str, Any] = field(default_factory=dict)


def parse_list(text: str, what: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in text.split(","))
    if not text.strip() or any(not item for item in items):
        raise OptbenchError(f"{what} must be a comma-separated list without empty items (got {text!r})")
    return items


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    items = parse_list(text, "batch sizes")
    try:
        return tuple(int(item) for item in items)
    except ValueError:
        raise OptbenchError(f"batch sizes must be integers such as 1,8,16 (got {text!r})") from None


CELL_ID = re.compile(r"^[a-z0-9_]+(\+[a-z0-9_]+)*@bs[1-9][0-9]*$")


def parse_cell_ids(text: str) -> tuple[str, ...]:
    cells = parse_list(text, "cells")
    for cell in cells:
        if not CELL_ID.match(cell):
            raise OptbenchError(f"malformed cell id {cell!r}: cells look like fp16@bs16 (OPTIMIZATION@bsN)")
    return cells


def resolve_device(requested: str, gpu_workers_online: bool | None) -> str:
    """`auto` becomes `cuda` when a worker serves the gpu queue, `cpu` otherwise."""
    if requested != "auto":
        return requested
    if gpu_workers_online is None:
        raise OptbenchError("no worker is online to tell whether GPUs exist: start workers or pass --device")
    return "cuda" if gpu_workers_online else "cpu"


def gpu_queue_for(requested: str | None, online_model_queues: set[str]) -> str:
    """The queue of a CUDA sweep's GPU cells: one GPU model's, so a sweep never mixes hardware,
    unless the user asks for a comparison (`any`: every GPU worker serves it; rows show device_name)."""
    if requested == "any":
        return keys.GPU_QUEUE
    if requested:
        queue = keys.gpu_model_queue(requested)
        if online_model_queues and queue not in online_model_queues:
            models = ", ".join(q.removeprefix("gpu.") for q in sorted(online_model_queues))
            raise OptbenchError(f"no online worker has a {requested!r} GPU (online: {models})")
        return queue
    if len(online_model_queues) > 1:
        models = ", ".join(q.removeprefix("gpu.") for q in sorted(online_model_queues))
        raise OptbenchError(
            f"workers with several GPU models are online ({models}): pin the sweep to one with "
            "--gpu-model NAME, or compare them with --gpu-model any"
        )
    return next(iter(online_model_queues), keys.GPU_QUEUE)


def plan(request: SweepRequest, device: str, gpu_queue: str = keys.GPU_QUEUE) -> list[CellEntry]:
    """Every cell of the sweep, each validated; raises OptbenchError before anything is sent."""
    if not request.optimizations:
        raise OptbenchError("the sweep has no optimizations")
    batch_sizes = request.batch_sizes if request.batch_sizes is not None else DEFAULT_BATCH_SIZES[device]
    if not batch_sizes:
        raise OptbenchError("the sweep has no batch sizes")
    for what, values in (("optimization", request.optimizations), ("batch size", batch_sizes)):
        repeated = sorted({str(v) for v in values if list(values).count(v) > 1})
        if repeated:
            raise OptbenchError(f"duplicate {what} {', '.join(repeated)}: each cell must appear once")
    cells = []
    for optimization in request.optimizations:
        cell_device = preferred_device(parse_chain(optimization), cuda_available=device == "cuda")
        for batch_size in batch_sizes:
            spec = CellSpec(
                optimization=optimization, batch_size=batch_size, device=cell_device, **request.cell_options
            )
            queue = gpu_queue if cell_device == "cuda" else keys.CPU_QUEUE
            cells.append(CellEntry(spec.cell_id, spec.to_dict(), queue, task_id=str(uuid.uuid4())))
    return cells


def create(
    app,
    client: redis.Redis,
    request: SweepRequest,
    device: str,
    ttl: int,
    faults: dict[str, str] | None = None,
    gpu_queue: str = keys.GPU_QUEUE,
) -> Sweep:
    """Plan, save the manifest, then enqueue. `faults` (tests only) maps cell ids to a fault to inject."""
    cells = plan(request, device, gpu_queue)
    unknown = sorted(set(faults or {}) - {c.cell_id for c in cells})
    if unknown:
        raise OptbenchError(f"faults name cells the sweep doesn't have: {', '.join(unknown)}")
    sweep = Sweep(
        id=manifest.new_sweep_id(),
        created_at=utc_now(),
        name=request.name,
        spec={
            "model": cells[0].spec["model"],
            "optimizations": list(request.optimizations),
            "batch_sizes": sorted({c.spec["batch_size"] for c in cells}),
            "device": device,
            "gpu_queue": gpu_queue if device == "cuda" else None,
            "cell_options": request.cell_options,
            "cells": [c.cell_id for c in cells],
        },
        cells={c.cell_id: c for c in cells},
    )
    manifest.save(client, sweep, ttl)
    send(app, sweep, cells, faults or {})
    return sweep


def rerun(app, client: redis.Redis, sweep: Sweep, cell_ids: list[str], ttl: int) -> list[CellEntry]:
    """Send the named cells again as a new attempt; the others keep their results."""
    if not cell_ids:
        raise OptbenchError("no cells to re-run")
    missing = [cid for cid in cell_ids if cid not in sweep.cells]
    if missing:
        raise OptbenchError(f"sweep {sweep.id} has no cell {missing[0]!r} (cells look like {next(iter(sweep.cells))})")
    entries = []
    for cid in dict.fromkeys(cell_ids):
        entry = sweep.cells[cid]
        entry.task_id, entry.attempts = str(uuid.uuid4()), entry.attempts + 1
        manifest.save_cell(client, sweep.id, entry)
        entries.append(entry)
    client.expire(keys.sweep(sweep.id), ttl)
    send(app, sweep, entries, {})
    return entries


def send(app, sweep: Sweep, cells: list[CellEntry], faults: dict[str, str]) -> None:
    with app.producer_or_acquire() as producer:
        for cell in cells:
            kwargs = {"sweep_id": sweep.id, "cell_id": cell.cell_id, "attempt": cell.attempts, "spec": cell.spec}
            if cell.cell_id in faults:
                kwargs["fault"] = faults[cell.cell_id]
            app.send_task(TASK_NAME, kwargs=kwargs, task_id=cell.task_id, queue=cell.queue, producer=producer)
