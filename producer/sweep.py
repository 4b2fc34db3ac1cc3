"""Sweeps: plan every run (validating all cells first), record the manifest, enqueue one task per run.

Each cell (optimization x batch size) is measured `repeats` times, each run its own task in its
own fresh process. Runs are enqueued round by round (every cell's run 1, then every cell's run 2,
...) in an order shuffled per round from the sweep's recorded seed, so that drift and a noisy
neighbour land on every optimization alike. A cell whose optimization runs only on the CPU
(dynamic_quant), and every cell of a CPU sweep, goes to the `optbench.cpu` queue; the others of a
CUDA sweep go to the `optbench.gpu` queue (or one GPU model's queue).
"""

from __future__ import annotations

import random
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

import redis

from shared import keys, manifest
from shared.catalogue import normalize, parse_chain, preferred_device
from shared.contract import TASK_NAME, run_id
from shared.environment import utc_now
from shared.errors import OptbenchError
from shared.manifest import RunEntry, Sweep
from shared.spec import CellSpec

DEFAULT_REPEATS = 3
MAX_REPEATS = 100
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
    repeats: int = DEFAULT_REPEATS
    order_seed: int | None = None  # None: drawn at random and recorded in the sweep


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


CELL_OR_RUN_ID = re.compile(r"^(?P<optimization>[a-z0-9_ +]+)@bs(?P<batch>[1-9][0-9]*)(?:#(?P<repeat>[1-9][0-9]*))?$")


def parse_cell_ids(text: str) -> tuple[str, ...]:
    """Cell ids (`fp16@bs16`: all its runs) or run ids (`fp16@bs16#2`), normalized (`fp16 + bf16` -> `fp16+bf16`)."""
    ids = []
    for item in parse_list(text, "cells"):
        match = CELL_OR_RUN_ID.match(item)
        if not match or not match["optimization"].strip():
            raise OptbenchError(
                f"malformed cell id {item!r}: cells look like fp16@bs16 (OPTIMIZATION@bsN), runs like fp16@bs16#2"
            )
        cell = f"{normalize(match['optimization'])}@bs{match['batch']}"
        ids.append(run_id(cell, int(match["repeat"])) if match["repeat"] else cell)
    return tuple(ids)


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
            models = ", ".join(q.removeprefix(keys.GPU_MODEL_QUEUE_PREFIX) for q in sorted(online_model_queues))
            raise OptbenchError(f"no online worker has a {requested!r} GPU (online: {models})")
        return queue
    if len(online_model_queues) > 1:
        models = ", ".join(q.removeprefix(keys.GPU_MODEL_QUEUE_PREFIX) for q in sorted(online_model_queues))
        raise OptbenchError(
            f"workers with several GPU models are online ({models}): pin the sweep to one with "
            "--gpu-model NAME, or compare them with --gpu-model any"
        )
    return next(iter(online_model_queues), keys.GPU_QUEUE)


def plan(request: SweepRequest, device: str) -> list[CellSpec]:
    """Every cell of the sweep, each validated; raises OptbenchError before anything is sent."""
    if not request.optimizations:
        raise OptbenchError("the sweep has no optimizations")
    if isinstance(request.repeats, bool) or not isinstance(request.repeats, int):
        raise OptbenchError(f"repeats must be an integer (got {request.repeats!r})")
    if not 1 <= request.repeats <= MAX_REPEATS:
        raise OptbenchError(f"repeats must be between 1 and {MAX_REPEATS} (got {request.repeats})")
    batch_sizes = request.batch_sizes if request.batch_sizes is not None else DEFAULT_BATCH_SIZES[device]
    if not batch_sizes:
        raise OptbenchError("the sweep has no batch sizes")
    optimizations = [normalize(name) for name in request.optimizations]
    for what, values in (("optimization", optimizations), ("batch size", batch_sizes)):
        repeated = sorted({str(v) for v in values if list(values).count(v) > 1})
        if repeated:
            raise OptbenchError(f"duplicate {what} {', '.join(repeated)}: each cell must appear once")
    cells = []
    for optimization in optimizations:
        cell_device = preferred_device(parse_chain(optimization), cuda_available=device == "cuda")
        for batch_size in batch_sizes:
            cells.append(
                CellSpec(optimization=optimization, batch_size=batch_size, device=cell_device, **request.cell_options)
            )
    return cells


def enqueue_order(cell_ids: list[str], repeats: int, seed: int) -> list[str]:
    """Run ids round by round (every cell's run 1, then run 2, ...), the cells shuffled anew in each round."""
    order = []
    for repeat in range(1, repeats + 1):
        shuffled = list(cell_ids)
        random.Random(f"{seed}:{repeat}").shuffle(shuffled)
        order += [run_id(cell, repeat) for cell in shuffled]
    return order


def create(
    app,
    client: redis.Redis,
    request: SweepRequest,
    device: str,
    ttl: int,
    faults: dict[str, str] | None = None,
    gpu_queue: str = keys.GPU_QUEUE,
) -> Sweep:
    """Plan, save the manifest, then enqueue. `faults` (tests only) maps run ids to a fault to inject."""
    cells = plan(request, device)
    seed = request.order_seed if request.order_seed is not None else secrets.randbelow(2**31)
    cell_ids = [cell.cell_id for cell in cells]
    order = enqueue_order(cell_ids, request.repeats, seed)
    runs = {
        run_id(cell.cell_id, repeat): RunEntry(
            run_id=run_id(cell.cell_id, repeat),
            cell_id=cell.cell_id,
            repeat=repeat,
            spec=cell.to_dict(),
            queue=gpu_queue if cell.device == "cuda" else keys.CPU_QUEUE,
            task_id=manifest.new_task_id(),
        )
        for cell in cells
        for repeat in range(1, request.repeats + 1)
    }
    unknown = sorted(set(faults or {}) - set(runs))
    if unknown:
        raise OptbenchError(f"faults name runs the sweep doesn't have: {', '.join(unknown)}")
    sweep = Sweep(
        id=manifest.new_sweep_id(),
        created_at=utc_now(),
        name=request.name,
        spec={
            "model": cells[0].model,
            "optimizations": list(dict.fromkeys(cell.optimization for cell in cells)),
            "batch_sizes": sorted({cell.batch_size for cell in cells}),
            "device": device,
            "gpu_queue": gpu_queue if device == "cuda" else None,
            "cell_options": request.cell_options,
            "cells": cell_ids,
            "repeats": request.repeats,
            "order_seed": seed,
        },
        runs=runs,
    )
    manifest.save(client, sweep, ttl)
    send(app, sweep, [runs[rid] for rid in order], faults or {})
    return sweep


def runs_named(sweep: Sweep, ids: list[str]) -> list[str]:
    """The run ids that cell ids (all of a cell's runs) and run ids name, in sweep order, each once."""
    wanted = []
    for name in ids:
        matched = [r.run_id for r in sweep.ordered_runs() if name in (r.cell_id, r.run_id)]
        if not matched:
            example = next(iter(sweep.cell_ids()), "fp16@bs16")
            raise OptbenchError(f"sweep {sweep.id} has no cell {name!r} (cells look like {example})")
        wanted += matched
    return list(dict.fromkeys(wanted))


def rerun(app, client: redis.Redis, sweep: Sweep, run_ids: list[str], ttl: int) -> list[RunEntry]:
    """Send the named runs again, each as a new attempt (made current atomically); the others keep their results."""
    if not run_ids:
        raise OptbenchError("no runs to re-run")
    # In the sweep's own order, round by round, so that the runs re-run together are interleaved too.
    order = enqueue_order(sweep.cell_ids(), sweep.spec["repeats"], sweep.spec["order_seed"])
    position = {rid: index for index, rid in enumerate(order)}
    run_ids = sorted(dict.fromkeys(run_ids), key=lambda rid: position.get(rid, len(position)))
    entries = [manifest.new_attempt(client, sweep.id, rid) for rid in run_ids]
    client.expire(keys.sweep(sweep.id), ttl)
    send(app, sweep, entries, {})
    return entries


def send(app, sweep: Sweep, runs: list[RunEntry], faults: dict[str, str]) -> None:
    """Enqueue the runs in the given order; each task is shown in Flower as `optbench.run_cell <run id> [<sweep>]`."""
    with app.producer_or_acquire() as producer:
        for run in runs:
            task = run.task(sweep.id, faults.get(run.run_id))
            app.send_task(
                TASK_NAME,
                kwargs=task.kwargs(),
                task_id=run.task_id,
                queue=run.queue,
                shadow=task.shadow,
                producer=producer,
            )
