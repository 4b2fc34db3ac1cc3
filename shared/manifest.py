"""The sweep manifest in Redis: which cells a sweep has, and each cell's current task and attempts.

Celery's result backend answers PENDING for a task it has never heard of as well as for a queued
one; the manifest is what says a cell was enqueued, as which task, and how many times.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

import redis

from shared import keys
from shared.errors import OptbenchError


@dataclass
class CellEntry:
    cell_id: str
    spec: dict[str, Any]  # a CellSpec as a dict, device resolved
    queue: str  # "cpu", "gpu", or one GPU model's queue such as "gpu.nvidia-h200"
    task_id: str  # the current attempt's Celery task id
    attempts: int = 1


@dataclass
class Sweep:
    id: str
    created_at: str
    spec: dict[str, Any]  # what the user asked for: model, optimizations, batch sizes, device, ...
    name: str | None = None
    cells: dict[str, CellEntry] = field(default_factory=dict)


def new_sweep_id() -> str:
    """Sortable and unique enough: creation time (UTC) plus 4 random hex digits."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def save(client: redis.Redis, sweep: Sweep, ttl_seconds: int) -> None:
    """Write the whole manifest in one transaction."""
    meta = {"id": sweep.id, "created_at": sweep.created_at, "spec": sweep.spec, "name": sweep.name}
    mapping = {"meta": json.dumps(meta)}
    mapping.update({f"cell:{cid}": json.dumps(dataclasses.asdict(c)) for cid, c in sweep.cells.items()})
    created = datetime.datetime.fromisoformat(sweep.created_at).timestamp()
    with client.pipeline(transaction=True) as pipe:
        pipe.hset(keys.sweep(sweep.id), mapping=mapping)
        pipe.expire(keys.sweep(sweep.id), ttl_seconds)
        pipe.zadd(keys.SWEEPS, {sweep.id: created})
        pipe.execute()


def save_cell(client: redis.Redis, sweep_id: str, entry: CellEntry) -> None:
    client.hset(keys.sweep(sweep_id), f"cell:{entry.cell_id}", json.dumps(dataclasses.asdict(entry)))


def claim(client: redis.Redis, sweep_id: str, cell_id: str, attempt: int, task_id: str) -> bool:
    """Whether `task_id` is (now) the cell's current attempt.

    A re-run sent without the producer (e.g. through Flower's async-apply, with the attempt number
    bumped) becomes current when its attempt is newer than the manifest's; an older or duplicate
    attempt never replaces a newer one. Unknown sweeps and cells are left alone.
    """
    key, field = keys.sweep(sweep_id), f"cell:{cell_id}"
    with client.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                raw = pipe.hget(key, field)
                if raw is None:
                    return False
                entry = json.loads(raw)
                if entry["task_id"] == task_id or attempt <= entry["attempts"]:
                    return entry["task_id"] == task_id
                entry.update(task_id=task_id, attempts=attempt)
                pipe.multi()
                pipe.hset(key, field, json.dumps(entry))
                pipe.execute()
                return True
            except redis.WatchError:  # the manifest changed meanwhile: read it again
                continue


def latest_id(client: redis.Redis) -> str | None:
    newest = client.zrevrange(keys.SWEEPS, 0, 0)
    return newest[0].decode() if newest else None


def load(client: redis.Redis, ref: str) -> Sweep:
    """The sweep `ref` names: an id, or `latest`."""
    sweep_id = latest_id(client) if ref == "latest" else ref
    if sweep_id is None:
        raise OptbenchError("there is no sweep yet: start one with `make sweep` or `python -m producer sweep`")
    fields = client.hgetall(keys.sweep(sweep_id))
    if not fields:
        raise OptbenchError(f"unknown sweep {sweep_id!r} (`python -m producer status --sweep latest` shows the newest)")
    meta = json.loads(fields.pop(b"meta"))
    cells = {}
    for raw in fields.values():
        entry = CellEntry(**json.loads(raw))
        cells[entry.cell_id] = entry
    return Sweep(id=meta["id"], created_at=meta["created_at"], spec=meta["spec"], name=meta["name"], cells=cells)
