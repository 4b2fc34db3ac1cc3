"""Sweeps: plan every run (validating all cells first), record the manifest, enqueue one task per run.

Each cell (model x optimization x batch size; one model unless `--model a,b`) is measured in rounds, each
run its own task in its own fresh process: `repeats` rounds, or with `repeats="auto"` 3 rounds and then one
more round at a time for the cells whose verdict is still open (`producer/decide.py`), up to `max_repeats`. Runs
are enqueued round by round (every cell's run 1, then every cell's run 2, ...) in an order shuffled
per round from the sweep's recorded seed, so that drift and a noisy neighbour land on every
optimization alike. A cell whose optimization runs only on the CPU
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
from celery.result import denied_join_result

from shared import keys, manifest
from shared.catalogue import normalize, parse_chain, preferred_device
from shared.config import DEFAULT_MAX_REPEATS, MAX_REPEATS
from shared.contract import TASK_NAME, arguments_repr, run_id
from shared.environment import utc_now
from shared.errors import OptbenchError
from shared.manifest import RunEntry, Sweep
from shared.models import parse_models
from shared.spec import CellSpec

AUTO = "auto"
DEFAULT_REPEATS = AUTO
FIRST_ROUNDS = 3  # rounds every cell of an `auto` sweep runs before its first verdict
DEFAULT_OPTIMIZATIONS = ("baseline", "fp16", "prune", "dynamic_quant", "torchscript")
DEFAULT_BATCH_SIZES = {"cuda": (1, 2, 4, 8, 16), "cpu": (1, 4)}  # the CPU set: a first sweep in minutes
# An `auto` sweep's default --time-budget: on a CPU box the first sweep ends in minutes (its 3 first rounds always
# run; later rounds only start while they end within it); a GPU host's rounds take seconds a run: no default.
DEFAULT_TIME_BUDGETS: dict[str, float | None] = {"cuda": None, "cpu": 300.0}
NO_BUDGET = "none"


@dataclass(frozen=True)
class SweepRequest:
    """What a user asks for; `cell_options` are the other CellSpec fields (image size, budgets...)."""

    optimizations: tuple[str, ...] = DEFAULT_OPTIMIZATIONS
    batch_sizes: tuple[int, ...] | None = None  # None: the device's default set
    device: str = "auto"
    gpu_model: str | None = None  # a GPU name to pin the sweep to, `any` to allow mixed GPUs, None: the only one
    name: str | None = None
    cell_options: dict[str, Any] = field(default_factory=dict)
    repeats: int | str = DEFAULT_REPEATS  # a number of rounds, or "auto": until decided
    max_repeats: int = DEFAULT_MAX_REPEATS  # with "auto": the most rounds a cell gets
    time_budget: float | str | None = None  # with "auto": seconds after which no new round starts; None: the
    # device's default (DEFAULT_TIME_BUDGETS), "none": no budget
    order_seed: int | None = None  # None: drawn at random and recorded in the sweep
    models: tuple[str, ...] | None = None  # model specs; None: cell_options' model, else CellSpec's default

    @property
    def first_rounds(self) -> int:
        """The rounds enqueued at once: all of them, or the first 3 of an `auto` sweep."""
        return min(FIRST_ROUNDS, self.max_repeats) if self.repeats == AUTO else int(self.repeats)


def parse_list(text: str, what: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in text.split(","))
    if not text.strip() or any(not item for item in items):
        raise OptbenchError(f"{what} must be a comma-separated list without empty items (got {text!r})")
    return items


def parse_repeats(text: str) -> int | str:
    """`auto` or a whole number of rounds."""
    if text.strip() == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise OptbenchError(f"repeats must be auto or a whole number of runs per cell (got {text!r})") from None


def parse_time_budget(text: str) -> float | str:
    """Seconds, or `none` (no time budget)."""
    if text.strip() == NO_BUDGET:
        return NO_BUDGET
    try:
        return float(text)
    except ValueError:
        raise OptbenchError(f"time budget must be seconds or none (got {text!r})") from None


def time_budget_for(request: SweepRequest, device: str) -> float | None:
    """The sweep's time budget in seconds: the one asked for, else the device's default; None: no budget."""
    if request.time_budget is None:
        return DEFAULT_TIME_BUDGETS[device]
    return None if request.time_budget == NO_BUDGET else float(request.time_budget)


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    items = parse_list(text, "batch sizes")
    try:
        return tuple(int(item) for item in items)
    except ValueError:
        raise OptbenchError(f"batch sizes must be integers such as 1,8,16 (got {text!r})") from None


CELL_OR_RUN_ID = re.compile(
    r"^(?:(?P<model>[^/@#,\s]+)/)?(?P<optimization>[a-z0-9_ +]+)@bs(?P<batch>[1-9][0-9]*)(?:#(?P<repeat>[1-9][0-9]*))?$"
)


def cell_id(cell: CellSpec, several_models: bool) -> str:
    """A cell's id in its sweep: `fp16@bs16`, or `resnet50/fp16@bs16` in a sweep of several models."""
    return f"{cell.model_spec.label}/{cell.cell_id}" if several_models else cell.cell_id


def parse_cell_ids(text: str) -> tuple[str, ...]:
    """Cell ids (`fp16@bs16`, `resnet50/fp16@bs16`: all its runs) or run ids (`fp16@bs16#2`), normalized
    (`fp16 + bf16` -> `fp16+bf16`)."""
    ids = []
    for item in parse_list(text, "cells"):
        match = CELL_OR_RUN_ID.match(item)
        if not match or not match["optimization"].strip():
            raise OptbenchError(
                f"malformed cell id {item!r}: cells look like fp16@bs16 (OPTIMIZATION@bsN) or resnet50/fp16@bs16 "
                "(MODEL/...) in a sweep of several models, runs like fp16@bs16#2"
            )
        model = f"{match['model']}/" if match["model"] else ""
        cell = f"{model}{normalize(match['optimization'])}@bs{match['batch']}"
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


def sweep_models(request: SweepRequest) -> tuple[str, ...]:
    """The sweep's model specs, canonical (`torchvision:resnet50` -> `resnet50`), each once, their labels apart."""
    if request.models is not None and "model" in request.cell_options:
        raise OptbenchError("say the model once: in models or in cell_options, not both")
    texts = request.models if request.models is not None else (request.cell_options.get("model", CellSpec.model),)
    models = parse_models(",".join(texts))
    if len(models) > 1 and (request.cell_options.get("model_kwargs") or request.cell_options.get("input_shape")):
        raise OptbenchError(
            "--model-kwargs and --input-shape apply to one model: sweep several models with their defaults, "
            "or each model in its own sweep"
        )
    return tuple(model.text for model in models)


def plan(request: SweepRequest, device: str) -> dict[str, CellSpec]:
    """Every cell of the sweep by cell id, each validated; raises OptbenchError before anything is sent."""
    if not request.optimizations:
        raise OptbenchError("the sweep has no optimizations")
    if request.repeats != AUTO:
        if isinstance(request.repeats, bool) or not isinstance(request.repeats, int):
            raise OptbenchError(f"repeats must be auto or an integer (got {request.repeats!r})")
        if not 1 <= request.repeats <= MAX_REPEATS:
            raise OptbenchError(f"repeats must be between 1 and {MAX_REPEATS} (got {request.repeats})")
    max_repeats = request.max_repeats
    if isinstance(max_repeats, bool) or not isinstance(max_repeats, int) or not 2 <= max_repeats <= MAX_REPEATS:
        raise OptbenchError(f"max repeats must be an integer between 2 and {MAX_REPEATS} (got {max_repeats!r})")
    budget = request.time_budget
    if budget not in (None, NO_BUDGET) and (
        isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget < float("inf")
    ):
        raise OptbenchError(f"time budget must be a positive number of seconds or none (got {budget!r})")
    batch_sizes = request.batch_sizes if request.batch_sizes is not None else DEFAULT_BATCH_SIZES[device]
    if not batch_sizes:
        raise OptbenchError("the sweep has no batch sizes")
    optimizations = [normalize(name) for name in request.optimizations]
    for what, values in (("optimization", optimizations), ("batch size", batch_sizes)):
        repeated = sorted({str(v) for v in values if list(values).count(v) > 1})
        if repeated:
            raise OptbenchError(f"duplicate {what} {', '.join(repeated)}: each cell must appear once")
    models = sweep_models(request)
    options = {name: value for name, value in request.cell_options.items() if name != "model"}
    cells = {}
    for model in models:
        for optimization in optimizations:
            cell_device = preferred_device(parse_chain(optimization), cuda_available=device == "cuda")
            for batch_size in batch_sizes:
                cell = CellSpec(
                    model=model, optimization=optimization, batch_size=batch_size, device=cell_device, **options
                )
                cells[cell_id(cell, len(models) > 1)] = cell
    return cells


def round_order(cell_ids: list[str], repeat: int, seed: int) -> list[str]:
    """The run ids of one round, its cells shuffled from the sweep's seed and the round's number."""
    shuffled = list(cell_ids)
    random.Random(f"{seed}:{repeat}").shuffle(shuffled)
    return [run_id(cell, repeat) for cell in shuffled]


def enqueue_order(cell_ids: list[str], repeats: int, seed: int) -> list[str]:
    """Run ids round by round (every cell's run 1, then run 2, ...), the cells shuffled anew in each round."""
    return [rid for repeat in range(1, repeats + 1) for rid in round_order(cell_ids, repeat, seed)]


def queue_of(cell: CellSpec, gpu_queue: str) -> str:
    return gpu_queue if cell.device == "cuda" else keys.CPU_QUEUE


def run_entry(cell_id: str, cell: CellSpec, repeat: int, gpu_queue: str) -> RunEntry:
    rid = run_id(cell_id, repeat)
    return RunEntry(rid, cell_id, repeat, cell.to_dict(), queue_of(cell, gpu_queue), manifest.new_task_id())


def create(
    app,
    client: redis.Redis,
    request: SweepRequest,
    device: str,
    ttl: int,
    faults: dict[str, str] | None = None,
    gpu_queue: str = keys.GPU_QUEUE,
    models: dict[str, dict] | None = None,
) -> Sweep:
    """Plan, save the manifest, then enqueue. `faults` (tests only) maps run ids to a fault to inject; `models`,
    what the workers' model checks said of each model (`producer.model_check`), is kept in the sweep's spec."""
    cells = plan(request, device)
    seed = request.order_seed if request.order_seed is not None else secrets.randbelow(2**31)
    cell_ids = list(cells)
    rounds = request.first_rounds
    order = enqueue_order(cell_ids, rounds, seed)
    runs = {
        entry.run_id: entry
        for cid, cell in cells.items()
        for entry in (run_entry(cid, cell, repeat, gpu_queue) for repeat in range(1, rounds + 1))
    }
    unknown = sorted(set(faults or {}) - set(runs))
    if unknown:
        raise OptbenchError(f"faults name runs the sweep doesn't have: {', '.join(unknown)}")
    sweep = Sweep(
        id=manifest.new_sweep_id(),
        created_at=utc_now(),
        name=request.name,
        spec={
            "model": next(iter(cells.values())).model,
            "models": list(dict.fromkeys(cell.model for cell in cells.values())),
            "model_checks": models or {},
            "optimizations": list(dict.fromkeys(cell.optimization for cell in cells.values())),
            "batch_sizes": sorted({cell.batch_size for cell in cells.values()}),
            "device": device,
            "gpu_queue": gpu_queue if device == "cuda" else None,
            "cell_options": request.cell_options,
            "cells": cell_ids,
            "repeats": request.repeats,
            "rounds": rounds,
            "max_repeats": request.max_repeats if request.repeats == AUTO else request.repeats,
            "time_budget": time_budget_for(request, device) if request.repeats == AUTO else None,
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
    order = enqueue_order(sweep.cell_ids(), rounds_of(sweep), sweep.spec["order_seed"])
    position = {rid: index for index, rid in enumerate(order)}
    run_ids = sorted(dict.fromkeys(run_ids), key=lambda rid: position.get(rid, len(position)))
    entries = [manifest.new_attempt(client, sweep.id, rid) for rid in run_ids]
    client.expire(keys.sweep(sweep.id), ttl)
    send(app, sweep, entries, {})
    return entries


def rounds_of(sweep: Sweep) -> int:
    """How many rounds a sweep has enqueued so far (its `repeats`, for a sweep made before `auto`)."""
    return int(sweep.spec.get("rounds") or sweep.spec["repeats"])


def add_round(app, client: redis.Redis, sweep: Sweep, cell_ids: list[str], ttl: int) -> list[RunEntry]:
    """Enqueue the next round for `cell_ids` only (in the round's shuffled order), recording it first."""
    repeat = rounds_of(sweep) + 1
    specs = {r.cell_id: r.spec for r in sweep.runs.values()}
    queues = {r.cell_id: r.queue for r in sweep.runs.values()}
    order = round_order([c for c in sweep.cell_ids() if c in cell_ids], repeat, sweep.spec["order_seed"])
    entries = [
        RunEntry(rid, sweep_cell, repeat, specs[sweep_cell], queues[sweep_cell], manifest.new_task_id())
        for rid, sweep_cell in ((rid, rid.rsplit("#", 1)[0]) for rid in order)
    ]
    manifest.add_runs(client, sweep, entries, {"rounds": repeat}, ttl)
    send(app, sweep, entries, {})
    return entries


SEND_BATCH = 1000  # Redis: messages per pipeline
CONFIRM_WINDOW = 1000  # RabbitMQ: messages published before waiting for the broker's confirms of them all
CONFIRM_TIMEOUT = 30.0  # RabbitMQ: seconds without a confirm before sending fails


def send(app, sweep: Sweep, runs: list[RunEntry], faults: dict[str, str]) -> None:
    """Enqueue the runs in the given order; each task is shown in Flower as `optbench.run_cell <run id> [<sweep>]`.

    On Redis, kombu's producer batch sends the messages in pipelines of SEND_BATCH (one round trip each, in
    order). On RabbitMQ a sent run is on the broker or sending fails: publisher confirms, streamed (`send_confirmed`).
    The producer never waits on a task's AsyncResult (it reads results in bulk: `shared.state`), so Celery's
    Redis backend is told not to subscribe to each one's result channel (`denied_join_result`)."""
    with denied_join_result(), app.producer_or_acquire() as producer:
        if producer.supports_batch_publish:
            _declare_queues(app, producer, runs)
            with producer.batch(max_size=SEND_BATCH):
                for run in runs:
                    _send_one(app, producer, sweep.id, run, faults)
            return
    send_confirmed(app, sweep.id, runs, faults)


def send_confirmed(app, sweep_id: str, runs: list[RunEntry], faults: dict[str, str]) -> None:
    """Publish on one channel in confirm mode, CONFIRM_WINDOW messages at a time, then wait until RabbitMQ has
    confirmed all of them (its "streaming confirms": a confirm per message, waited for as a batch, rather than
    one round trip to the disk per message); a nack or CONFIRM_TIMEOUT seconds of silence raises OptbenchError."""
    with denied_join_result(), app.connection_for_write(transport_options={"confirm_publish": False}) as connection:
        channel = connection.channel()
        channel.confirm_select()
        waiting: set[int] = set()
        nacked: list[int] = []

        def settle(tag: int, multiple: bool, into: list[int] | None = None) -> None:
            done = {t for t in waiting if t <= tag} if multiple else {tag}
            waiting.difference_update(done)
            if into is not None:
                into.extend(done)

        channel.events["basic_ack"].add(settle)
        channel.events["basic_nack"].add(lambda tag, multiple: settle(tag, multiple, nacked))
        producer = app.amqp.Producer(channel, auto_declare=False)
        _declare_queues(app, producer, runs)
        published = 0
        for start in range(0, len(runs), CONFIRM_WINDOW):
            for run in runs[start : start + CONFIRM_WINDOW]:
                _send_one(app, producer, sweep_id, run, faults)
                published += 1
                waiting.add(published)  # delivery tags count the channel's publishes from 1
            while waiting:
                try:
                    connection.drain_events(timeout=CONFIRM_TIMEOUT)
                except TimeoutError:
                    raise OptbenchError(
                        f"RabbitMQ confirmed no message for {CONFIRM_TIMEOUT:g} s ({len(waiting)} unconfirmed)"
                    ) from None
            if nacked:
                raise OptbenchError(f"RabbitMQ refused {len(nacked)} messages (nack): they were not enqueued")


def _declare_queues(app, producer, runs: list[RunEntry]) -> None:
    """Each queue the runs go to, declared once (not again with each message)."""
    for queue in dict.fromkeys(run.queue for run in runs):
        producer.maybe_declare(app.amqp.queues[queue])


def _send_one(app, producer, sweep_id: str, run: RunEntry, faults: dict[str, str]) -> None:
    task = run.task(sweep_id, faults.get(run.run_id))
    kwargs = task.kwargs()
    app.send_task(
        TASK_NAME,
        kwargs=kwargs,
        task_id=run.task_id,
        queue=run.queue,
        shadow=task.shadow,
        producer=producer,
        argsrepr="()",
        kwargsrepr=arguments_repr(kwargs),
        declare=[],  # declared once by `send`
    )
