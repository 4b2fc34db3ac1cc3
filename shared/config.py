"""Settings from the environment, read in one place. Every variable is documented in the README."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from shared.errors import OptbenchError

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
# Statistics: a verdict's band is [1 - min effect, 1 + min effect]; the confidence is a sweep's, for all its
# verdicts together (results/sequential.py).
DEFAULT_MIN_EFFECT = 0.03
DEFAULT_CONFIDENCE = 0.95
# Runs per cell: `--repeats auto` runs every cell 3 rounds, then more rounds for the undecided cells only,
# up to the maximum; a number means exactly that many.
DEFAULT_MAX_REPEATS = 10
MAX_REPEATS = 100
BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps")
DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "amqp": 5672, "amqps": 5671}


@dataclass(frozen=True)
class Settings:
    redis_url: str  # results, the manifest, delivery counters, worker liveness
    broker_url: str  # where the cells' messages wait: the Redis above (default) or RabbitMQ (amqp://)
    cell_time_limit: float  # seconds a cell may run before its process is killed (status failed, timeout)
    visibility_timeout: float  # seconds before Redis redelivers a cell whose worker vanished
    result_expires: int  # seconds results (and the manifest) are kept in Redis
    results_dir: Path
    allow_faults: bool  # tests only: lets a task carry a fault to inject into its cell process
    max_tries: int  # deliveries of one cell attempt (crashes and lost workers) before it stays failed
    unacked_restore_interval: float  # seconds between the broker's scans for cells to redeliver
    unacked_restore_throttle: int  # scan on every Nth interval
    unacked_mutex_expire: int  # seconds a scan's lock outlives a worker killed while holding it
    stall_timeout: float  # seconds `--wait` waits with no run starting, advancing or finishing before it gives up
    broker_heartbeat: float  # RabbitMQ: AMQP heartbeat; a silent worker's connection is closed after ~2 of them


def load() -> Settings:
    limit = float(os.environ.get("OPTBENCH_CELL_TIME_LIMIT", "1800"))
    redis_url = os.environ.get("OPTBENCH_REDIS_URL") or DEFAULT_REDIS_URL
    broker_url = os.environ.get("OPTBENCH_BROKER_URL") or redis_url
    return Settings(
        redis_url=redis_url,
        broker_url=broker_url,
        cell_time_limit=limit,
        visibility_timeout=float(os.environ.get("OPTBENCH_VISIBILITY_TIMEOUT", str(2 * limit + 600))),
        result_expires=int(os.environ.get("OPTBENCH_RESULT_EXPIRES", str(30 * 24 * 3600))),
        results_dir=results_dir(),
        allow_faults=os.environ.get("OPTBENCH_ALLOW_FAULTS") == "1",
        max_tries=int(os.environ.get("OPTBENCH_MAX_TRIES", "2")),
        unacked_restore_interval=float(os.environ.get("OPTBENCH_UNACKED_RESTORE_INTERVAL", "10")),
        unacked_restore_throttle=int(os.environ.get("OPTBENCH_UNACKED_RESTORE_THROTTLE", "10")),
        unacked_mutex_expire=int(os.environ.get("OPTBENCH_UNACKED_MUTEX_EXPIRE", "300")),
        stall_timeout=float(os.environ.get("OPTBENCH_STALL_TIMEOUT", str(_redelivery_bound(limit, broker_url) + 60))),
        broker_heartbeat=float(os.environ.get("OPTBENCH_BROKER_HEARTBEAT", "10")),
    )


def results_dir() -> Path:
    """Where CSVs and reports are written: OPTBENCH_RESULTS_DIR, else `results`."""
    return Path(os.environ.get("OPTBENCH_RESULTS_DIR") or "results")


def broker_kind(url: str) -> str:
    """`redis` or `rabbitmq`, from the URL's scheme; OptbenchError for anything else."""
    scheme = urlsplit(url).scheme
    if scheme not in BROKER_SCHEMES:
        raise OptbenchError(
            f"broker URL scheme {scheme + '://' if scheme else '(none)'} is not supported: "
            "use redis://, rediss://, amqp:// or amqps:// in OPTBENCH_BROKER_URL"
        )
    return "rabbitmq" if scheme.startswith("amqp") else "redis"


def consumer_timeout(limit: float) -> float:
    """RabbitMQ's `consumer_timeout` for optbench, in seconds: RabbitMQ closes the channel of a delivery
    unacknowledged for longer (and requeues it: a second run). A cell is acknowledged when it ends, so
    this must exceed the cell time limit; RabbitMQ's default (30 min) equals ours. Set on the server."""
    return 2 * limit + 600


def _redelivery_bound(limit: float, broker_url: str) -> float:
    """The longest a run can sit unfinished without anything changing: a cell at its time limit, or the
    Redis transport's redelivery of a lost worker's run (visibility timeout + one restore scan + its lock).
    RabbitMQ requeues a lost worker's run within seconds (connection closed, or missed heartbeats)."""
    if urlsplit(broker_url).scheme.startswith("amqp"):
        return limit
    visibility = float(os.environ.get("OPTBENCH_VISIBILITY_TIMEOUT", str(2 * limit + 600)))
    scan = float(os.environ.get("OPTBENCH_UNACKED_RESTORE_INTERVAL", "10")) * int(
        os.environ.get("OPTBENCH_UNACKED_RESTORE_THROTTLE", "10")
    )
    return max(limit, visibility + scan + int(os.environ.get("OPTBENCH_UNACKED_MUTEX_EXPIRE", "300")))


def redact(url: str) -> str:
    """The URL with its password replaced by ***, for anything a person or a file will see."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def host_and_port(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or DEFAULT_PORTS.get(parts.scheme, 6379)}"
