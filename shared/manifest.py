"""The sweep manifest in Redis: which runs a sweep has, and each run's current task and attempts.

A sweep has cells (optimization x batch size), and each cell one run per round (`fp16@bs16#2`), each
its own task in its own process; `--repeats auto` adds rounds for the cells still undecided.
Celery's result backend answers PENDING for a task it has never heard of as well as for a queued
one; the manifest is what says a run was enqueued, as which task, and how many times. Every change
to a run's entry is a compare-and-set (redis-py's WATCH/MULTI transaction), so the producer and a
re-run sent through Flower never overwrite each other.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import operator
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import redis

from shared import keys
from shared.bulk import gc_paused
from shared.contract import CellTask
from shared.errors import OptbenchError


@dataclass
class RunEntry:
    run_id: str  # e.g. fp16@bs16#2
    cell_id: str  # e.g. fp16@bs16
    repeat: int  # 1..repeats
    spec: dict[str, Any]  # a CellSpec as a dict, device resolved
    queue: str  # optbench.cpu, optbench.gpu, or one GPU model's, such as optbench.gpu.nvidia-h200
    task_id: str  # the current attempt's Celery task id
    attempts: int = 1

    def task(self, sweep_id: str, fault: str | None = None) -> CellTask:
        return CellTask(sweep_id, self.cell_id, self.repeat, self.attempts, self.spec, fault)


@dataclass
class Sweep:
    id: str
    created_at: str
    spec: dict[str, Any]  # what the user asked for: model, optimizations, batch sizes, device, repeats, seed...
    name: str | None = None
    runs: dict[str, RunEntry] = field(default_factory=dict)

    def cell_ids(self) -> list[str]:
        """The cells in the order the user listed them (optimization, then batch size)."""
        return list(self.spec["cells"])

    def ordered_runs(self) -> list[RunEntry]:
        """Runs grouped by cell in the sweep's cell order, then by repeat (runs of cells the spec doesn't list
        last, by repeat)."""
        by_cell: dict[str, list[RunEntry]] = {cell: [] for cell in self.cell_ids()}
        others: list[RunEntry] = []
        for run in self.runs.values():
            by_cell.get(run.cell_id, others).append(run)
        by_repeat = operator.attrgetter("repeat")
        return [run for runs in (*by_cell.values(), others) for run in sorted(runs, key=by_repeat)]


_ENTRY_DECODER = msgspec.json.Decoder(RunEntry)  # a stored entry straight into a RunEntry, in C


def new_sweep_id() -> str:
    """Sortable and unique enough: creation time (UTC) plus 4 random hex digits."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def new_task_id() -> str:
    return str(uuid.uuid4())


def _field(run_id: str) -> str:
    return f"run:{run_id}"


def _entry_json(entry: RunEntry) -> str:
    """A run entry as stored (a shallow dict: `dataclasses.asdict` would deep-copy each spec first)."""
    return json.dumps({field.name: getattr(entry, field.name) for field in dataclasses.fields(entry)})


def save(client: redis.Redis, sweep: Sweep, ttl_seconds: int) -> None:
    """Write the whole manifest in one transaction, and index the sweep by creation time."""
    meta = {"id": sweep.id, "created_at": sweep.created_at, "spec": sweep.spec, "name": sweep.name}
    mapping = {"meta": json.dumps(meta)}
    mapping.update({_field(rid): _entry_json(r) for rid, r in sweep.runs.items()})
    created = datetime.datetime.fromisoformat(sweep.created_at).timestamp()
    with client.pipeline(transaction=True) as pipe:
        pipe.hset(keys.sweep(sweep.id), mapping=mapping)
        pipe.expire(keys.sweep(sweep.id), ttl_seconds)
        pipe.zadd(keys.SWEEPS, {sweep.id: created})
        pipe.execute()


def add_runs(client: redis.Redis, sweep: Sweep, entries: list[RunEntry], spec_changes: dict, ttl_seconds: int) -> None:
    """Add runs (a new round) to a sweep and update its spec, in one transaction; `sweep` is updated too."""
    sweep.spec.update(spec_changes)
    sweep.runs.update({entry.run_id: entry for entry in entries})
    meta = {"id": sweep.id, "created_at": sweep.created_at, "spec": sweep.spec, "name": sweep.name}
    mapping = {"meta": json.dumps(meta)}
    mapping.update({_field(e.run_id): _entry_json(e) for e in entries})
    with client.pipeline(transaction=True) as pipe:
        pipe.hset(keys.sweep(sweep.id), mapping=mapping)
        pipe.expire(keys.sweep(sweep.id), ttl_seconds)
        pipe.execute()


def update_spec(client: redis.Redis, sweep: Sweep, spec_changes: dict) -> None:
    """Record changes to a sweep's spec (e.g. why `--repeats auto` stopped adding rounds)."""
    sweep.spec.update(spec_changes)
    meta = {"id": sweep.id, "created_at": sweep.created_at, "spec": sweep.spec, "name": sweep.name}
    client.hset(keys.sweep(sweep.id), "meta", json.dumps(meta))


def _update_run(client: redis.Redis, sweep_id: str, run_id: str, change: Callable[[dict], dict | None]) -> dict | None:
    """Compare-and-set one run's entry: `change(entry)` returns the new entry, or None to leave it.

    Returns the entry as it stands afterwards (None for an unknown run).
    """
    key, name = keys.sweep(sweep_id), _field(run_id)
    with client.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                raw = pipe.hget(key, name)
                if raw is None:
                    pipe.unwatch()
                    return None
                entry = json.loads(raw)
                new = change(dict(entry))
                if new is None:
                    pipe.unwatch()
                    return entry
                pipe.multi()
                pipe.hset(key, name, json.dumps(new))
                pipe.execute()
                return new
            except redis.WatchError:  # the manifest changed meanwhile: read it again
                continue


def new_attempt(client: redis.Redis, sweep_id: str, run_id: str) -> RunEntry:
    """Make a new attempt of a run current (attempts + 1, a new task id), atomically; the new entry."""

    def bump(entry: dict) -> dict:
        return {**entry, "attempts": entry["attempts"] + 1, "task_id": new_task_id()}

    entry = _update_run(client, sweep_id, run_id, bump)
    if entry is None:
        raise OptbenchError(f"sweep {sweep_id} has no run {run_id!r} (it may have expired)")
    return RunEntry(**entry)


def claim(client: redis.Redis, sweep_id: str, run_id: str, attempt: int, task_id: str) -> bool:
    """Whether `task_id` is (now) the run's current attempt.

    A re-run sent without the producer (e.g. through Flower's async-apply, with the attempt number
    bumped) becomes current when its attempt is newer than the manifest's; an older or duplicate
    attempt never replaces a newer one. Unknown sweeps and runs are left alone (not current).
    """

    def take(entry: dict) -> dict | None:
        if entry["task_id"] == task_id or attempt <= entry["attempts"]:
            return None
        return {**entry, "task_id": task_id, "attempts": attempt}

    entry = _update_run(client, sweep_id, run_id, take)
    return entry is not None and entry["task_id"] == task_id


def latest_id(client: redis.Redis) -> str | None:
    """The newest sweep whose manifest still exists; index entries of expired sweeps are dropped on the way."""
    while newest := client.zrevrange(keys.SWEEPS, 0, 0):
        sweep_id = newest[0].decode()
        if client.exists(keys.sweep(sweep_id)):
            return sweep_id
        client.zrem(keys.SWEEPS, sweep_id)
    return None


def load(client: redis.Redis, ref: str) -> Sweep:
    """The sweep `ref` names: an id, or `latest`."""
    sweep_id = latest_id(client) if ref == "latest" else ref
    if sweep_id is None:
        raise OptbenchError("there is no sweep yet: start one with `make sweep` or `python -m producer sweep`")
    fields = client.hgetall(keys.sweep(sweep_id))
    if not fields:
        client.zrem(keys.SWEEPS, sweep_id)
        raise OptbenchError(f"unknown sweep {sweep_id!r} (`python -m producer status --sweep latest` shows the newest)")
    meta = json.loads(fields.pop(b"meta"))
    if any(name.startswith(b"cell:") for name in fields):
        raise OptbenchError(f"sweep {sweep_id} was made by an older optbench (one run per cell): sweep it again")
    with gc_paused():  # 50,000 entries, each a dataclass holding a spec dict
        runs = {entry.run_id: entry for entry in map(_ENTRY_DECODER.decode, fields.values())}
    return Sweep(id=meta["id"], created_at=meta["created_at"], spec=meta["spec"], name=meta["name"], runs=runs)
