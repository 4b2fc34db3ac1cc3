"""Which workers are alive, and which delivery of a run owns it.

Liveness: every worker writes the time into the hash `optbench:workers` every BEAT_SECONDS (a thread of
the worker process, see `worker/tasks.py`). A run `running` on a worker silent for LOST_AFTER seconds
is shown as `lost` (status table, `--wait`, collector), with the time since it was last heard of,
until the broker hands the run to another worker (RabbitMQ: seconds; Redis: its visibility timeout).

Ownership: a worker frozen (SIGSTOP, a hung host, a network partition) may wake up after its run was
delivered again and run by another worker. Each delivery records itself as the run attempt's owner
(`optbench:owners:<sweep>`); a delivery that is no longer the owner stores nothing and stops its cell.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

import redis

from shared import keys

log = logging.getLogger(__name__)

BEAT_SECONDS = 5.0
LOST_AFTER = 20.0  # four missed beats: a worker under heavy load still beats, a frozen one doesn't


def beat(client: redis.Redis, worker: str, now: float | None = None) -> None:
    client.hset(keys.WORKERS, worker, now if now is not None else time.time())


def last_seen(client: redis.Redis) -> dict[str, float]:
    """Worker name -> when it last beat (Unix seconds)."""
    return {name.decode(): float(value) for name, value in client.hgetall(keys.WORKERS).items()}


def lost_since(worker: str | None, seen: dict[str, float], now: float) -> float | None:
    """Seconds since `worker` last beat, if that is longer than LOST_AFTER; None when alive or unknown."""
    if worker is None or worker not in seen:
        return None  # a worker that never beat (no optbench heartbeat) is not called lost
    silent = now - seen[worker]
    return silent if silent > LOST_AFTER else None


def start_beating(client: redis.Redis, worker: str, stop: threading.Event) -> threading.Thread:
    """Beat from a daemon thread until `stop` is set; a Redis outage is logged, not fatal."""

    def loop() -> None:
        while not stop.is_set():
            try:
                beat(client, worker)
            except redis.RedisError as exc:
                log.warning("worker heartbeat not written: %s", exc)
            stop.wait(BEAT_SECONDS)

    thread = threading.Thread(target=loop, name="optbench-heartbeat", daemon=True)
    thread.start()
    return thread


def take_ownership(client: redis.Redis, sweep_id: str, run_id: str, attempt: int, ttl: int) -> str:
    """Record this delivery as the owner of the run attempt; returns its token."""
    token = uuid.uuid4().hex
    key = keys.owners(sweep_id)
    with client.pipeline() as pipe:
        pipe.hset(key, keys.delivery_field(run_id, attempt), token).expire(key, ttl).execute()
    return token


def owns(client: redis.Redis, sweep_id: str, run_id: str, attempt: int, token: str) -> bool:
    current = client.hget(keys.owners(sweep_id), keys.delivery_field(run_id, attempt))
    return current is not None and current.decode() == token
