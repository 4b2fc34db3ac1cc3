"""Settings from the environment, read in one place: every OPTBENCH_* variable is read here, and every
default is defined here once. Every variable is documented in the README."""

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
# The queue's limits and timings (seconds unless named otherwise); each is overridden by its variable.
DEFAULT_CELL_TIME_LIMIT = 1800.0  # OPTBENCH_CELL_TIME_LIMIT
DEFAULT_RESULT_EXPIRES = 30 * 24 * 3600  # OPTBENCH_RESULT_EXPIRES
DEFAULT_MAX_TRIES = 2  # OPTBENCH_MAX_TRIES (deliveries)
DEFAULT_UNACKED_RESTORE_INTERVAL = 10.0  # OPTBENCH_UNACKED_RESTORE_INTERVAL
DEFAULT_UNACKED_RESTORE_THROTTLE = 10  # OPTBENCH_UNACKED_RESTORE_THROTTLE (every Nth interval)
DEFAULT_UNACKED_MUTEX_EXPIRE = 300  # OPTBENCH_UNACKED_MUTEX_EXPIRE
DEFAULT_BROKER_HEARTBEAT = 10.0  # OPTBENCH_BROKER_HEARTBEAT
# OPTBENCH_MODEL_CHECK_TIMEOUT: seconds a sweep waits for a worker to build its model before enqueuing anything
DEFAULT_MODEL_CHECK_TIMEOUT = 120.0
STALL_MARGIN = 60.0  # the default stall timeout: the longest a run can sit unchanged, plus this
DEFAULT_BROKER = "redis"  # OPTBENCH_BROKER: what `--start-missing` starts as the broker without OPTBENCH_BROKER_URL
BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps")
DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "amqp": 5672, "amqps": 5671}
# Set by `python -m worker` for each worker it starts: the host in the worker's name and results, and its GPU.
HOST_ENV = "OPTBENCH_HOST"
GPU_ENV = "OPTBENCH_GPU"
CORES_ENV = "OPTBENCH_CPU_CORES"  # set by `python -m worker` for each worker's cells, e.g. `0-7`
NO_GPU = "none (CPU worker)"


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
    model_check_timeout: float  # seconds a sweep waits for a worker to build a model (producer/model_check.py)


def load() -> Settings:
    limit = float(os.environ.get("OPTBENCH_CELL_TIME_LIMIT", DEFAULT_CELL_TIME_LIMIT))
    redis_url = redis_url_from_env() or DEFAULT_REDIS_URL
    broker_url = broker_url_from_env() or redis_url
    visibility = float(os.environ.get("OPTBENCH_VISIBILITY_TIMEOUT", redelivery_timeout(limit)))
    restore_interval = float(os.environ.get("OPTBENCH_UNACKED_RESTORE_INTERVAL", DEFAULT_UNACKED_RESTORE_INTERVAL))
    restore_throttle = int(os.environ.get("OPTBENCH_UNACKED_RESTORE_THROTTLE", DEFAULT_UNACKED_RESTORE_THROTTLE))
    mutex_expire = int(os.environ.get("OPTBENCH_UNACKED_MUTEX_EXPIRE", DEFAULT_UNACKED_MUTEX_EXPIRE))
    bound = _redelivery_bound(limit, broker_url, visibility, restore_interval * restore_throttle + mutex_expire)
    return Settings(
        redis_url=redis_url,
        broker_url=broker_url,
        cell_time_limit=limit,
        visibility_timeout=visibility,
        result_expires=int(os.environ.get("OPTBENCH_RESULT_EXPIRES", DEFAULT_RESULT_EXPIRES)),
        results_dir=results_dir(),
        allow_faults=os.environ.get("OPTBENCH_ALLOW_FAULTS") == "1",
        max_tries=int(os.environ.get("OPTBENCH_MAX_TRIES", DEFAULT_MAX_TRIES)),
        unacked_restore_interval=restore_interval,
        unacked_restore_throttle=restore_throttle,
        unacked_mutex_expire=mutex_expire,
        stall_timeout=float(os.environ.get("OPTBENCH_STALL_TIMEOUT", bound + STALL_MARGIN)),
        broker_heartbeat=float(os.environ.get("OPTBENCH_BROKER_HEARTBEAT", DEFAULT_BROKER_HEARTBEAT)),
        model_check_timeout=float(os.environ.get("OPTBENCH_MODEL_CHECK_TIMEOUT", DEFAULT_MODEL_CHECK_TIMEOUT)),
    )


def redis_url_from_env() -> str | None:
    """OPTBENCH_REDIS_URL, or None when it is unset (or empty)."""
    return os.environ.get("OPTBENCH_REDIS_URL") or None


def broker_url_from_env() -> str | None:
    """OPTBENCH_BROKER_URL, or None when it is unset (or empty): then the Redis is the broker too."""
    return os.environ.get("OPTBENCH_BROKER_URL") or None


def default_broker() -> str:
    """What `--start-missing` starts as the broker when OPTBENCH_BROKER_URL is unset: OPTBENCH_BROKER, else
    `redis` (the Redis is the broker too); `rabbitmq` is a private RabbitMQ."""
    return os.environ.get("OPTBENCH_BROKER") or DEFAULT_BROKER


def results_dir() -> Path:
    """Where CSVs and reports are written: OPTBENCH_RESULTS_DIR, else `results`."""
    return Path(os.environ.get("OPTBENCH_RESULTS_DIR") or "results")


def cache_dir() -> Path:
    """Where a worker keeps what every run of a cell measures alike (worker/engine/facts.py): OPTBENCH_CACHE_DIR,
    else `~/.cache/optbench`."""
    return Path(os.environ.get("OPTBENCH_CACHE_DIR") or Path.home() / ".cache" / "optbench")


def worker_host() -> str | None:
    """The host a worker's results name (OPTBENCH_HOST, set by `python -m worker --host`), or None."""
    return os.environ.get(HOST_ENV) or None


def cell_cores() -> str | None:
    """The CPU cores a cell pins itself to (OPTBENCH_CPU_CORES, set by `python -m worker`), or None: not pinned."""
    return os.environ.get(CORES_ENV) or None


def worker_gpu() -> str:
    """What this worker is pinned to (OPTBENCH_GPU, set by `python -m worker`), for Flower's worker view."""
    return os.environ.get(GPU_ENV, NO_GPU)


def flower_login() -> tuple[str | None, str | None]:
    """OPTBENCH_FLOWER_USER and OPTBENCH_FLOWER_PASSWORD, each None when unset (or empty)."""
    return os.environ.get("OPTBENCH_FLOWER_USER") or None, os.environ.get("OPTBENCH_FLOWER_PASSWORD") or None


def env_with_services(redis_url: str, broker_url: str | None = None) -> dict[str, str]:
    """This process's environment for a child (workers, Flower) that uses this Redis and this broker
    (without `broker_url`, the Redis is the broker too)."""
    return {**os.environ, "OPTBENCH_REDIS_URL": redis_url, "OPTBENCH_BROKER_URL": broker_url or redis_url}


def broker_kind(url: str) -> str:
    """`redis` or `rabbitmq`, from the URL's scheme; OptbenchError for anything else."""
    scheme = urlsplit(url).scheme
    if scheme not in BROKER_SCHEMES:
        raise OptbenchError(
            f"broker URL scheme {scheme + '://' if scheme else '(none)'} is not supported: "
            "use redis://, rediss://, amqp:// or amqps:// in OPTBENCH_BROKER_URL"
        )
    return "rabbitmq" if scheme.startswith("amqp") else "redis"


def redelivery_timeout(limit: float) -> float:
    """How long a worker may hold a cell unacknowledged before the broker gives it to another worker: twice
    the cell time limit plus ten minutes (72 min at the default limit). The Redis transport's visibility
    timeout (unless OPTBENCH_VISIBILITY_TIMEOUT says otherwise) and RabbitMQ's `consumer_timeout`."""
    return 2 * limit + 600


def consumer_timeout(limit: float) -> float:
    """RabbitMQ's `consumer_timeout` for optbench, in seconds: RabbitMQ closes the channel of a delivery
    unacknowledged for longer (and requeues it: a second run). A cell is acknowledged when it ends, so
    this must exceed the cell time limit; RabbitMQ's default (30 min) equals ours. Set on the server."""
    return redelivery_timeout(limit)


def _redelivery_bound(limit: float, broker_url: str, visibility: float, restore_delay: float) -> float:
    """The longest a run can sit unfinished without anything changing: a cell at its time limit, or the
    Redis transport's redelivery of a lost worker's run (visibility timeout + `restore_delay`: one restore
    scan and its lock). RabbitMQ requeues a lost worker's run within seconds (connection closed, or missed
    heartbeats)."""
    if urlsplit(broker_url).scheme.startswith("amqp"):
        return limit
    return max(limit, visibility + restore_delay)


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
