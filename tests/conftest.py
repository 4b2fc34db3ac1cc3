"""Shared test helpers: tiny cells so the CPU suite stays fast."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from shared.spec import CellSpec

# The tests' tiny cell: small images, a handful of timed calls, enough to exercise every code path. A sweep's
# cells use it with a small model (TINY_CELL_OPTIONS, TINY_SWEEP_ARGS); a single cell (`tiny_spec`) keeps the
# default model unless told, at batch size 2.
# Random weights (not the default `auto`, which re-estimates BatchNorm statistics): the same numerics on every CPU,
# and no extra forward passes; tests of the weights themselves say which they use.
TINY = dict(image_size=32, weights="random", warmup_iters=1, warmup_seconds=0.0, min_iters=3, min_seconds=0.0)
TINY_CELL_OPTIONS = {"model": "mobilenet_v3_small", **TINY}
CLI_OPTION = {"warmup_iters": "--warmup"}  # the spec fields whose command-line option isn't --<field-name>
TINY_SWEEP_ARGS = [
    arg
    for name, value in TINY_CELL_OPTIONS.items()
    for arg in (
        CLI_OPTION.get(name, "--" + name.replace("_", "-")),
        f"{value:g}" if isinstance(value, float) else str(value),
    )
] + ["--device", "cpu", "--repeats", "1"]


def tiny_spec(**overrides) -> CellSpec:
    return CellSpec(**{**TINY, "batch_size": 2, **overrides})


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False  # `--dist loadscope`: the order of SLOWEST_FIRST, see below
    _share_cores()


def _share_cores():
    """Under `pytest -n N` (make test), give each test process its own share of the CPU cores.

    Its workers, cells, Redis and RabbitMQ inherit the share, and torch sizes its thread pool to it:
    two processes each running torch on every core oversubscribe the CPU (OpenMP threads spin while
    waiting) and slow each other down many times over, not twice."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return
    cores = sorted(os.sched_getaffinity(0))
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    share = cores[int(worker.removeprefix("gw")) % len(cores) :: count] or cores
    os.sched_setaffinity(0, share)
    torch.set_num_threads(len(share))


# The slowest modules (seconds under `make test`), scheduled first. `--dist loadscope` hands out whole modules in
# collection order, which otherwise (xdist's default reorder) is by number of tests: test_rabbitmq (5 tests,
# 2.5 minutes) went near the end, and one process ran it while the other was done. Longest first, the two
# finish within seconds of each other. Modules not listed keep their order, after these.
SLOWEST_FIRST = (
    "tests/system/test_reliability.py",  # 290 s
    "tests/system/test_sweep.py",  # 180 s
    "tests/system/test_rabbitmq.py",  # 150 s
    "tests/system/test_cell.py",  # 115 s
    "tests/system/test_optimizations.py",  # 100 s
    "tests/system/test_own_models.py",  # 70 s
    "tests/system/test_client_without_torch.py",  # 55 s
    "tests/system/test_security.py",  # 50 s
)


def pytest_collection_modifyitems(config, items):
    rank = {path: index for index, path in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: modules stay whole
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# --- real services: a private redis-server on a free loopback port, real `python -m worker` -------

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    from shared.services import private_redis

    with private_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="session")
def app(redis_url):
    from shared.celery_app import app, use_services

    use_services(redis_url)
    return app


@pytest.fixture(scope="session")
def rabbitmq_url(tmp_path_factory) -> Iterator[str]:
    """A private rabbitmq-server on a free loopback port, as `make sweep BROKER=rabbitmq` starts it."""
    from shared.services import private_rabbitmq

    with private_rabbitmq(tmp_path_factory.mktemp("rabbitmq"), cell_time_limit=1800) as url:
        yield url


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def broker_url(request, app, redis_url) -> Iterator[str]:
    """Runs a module's tests once per broker: the app, and the workers the tests start, use it."""
    from shared.celery_app import use_services

    url = redis_url if request.param == "redis" else request.getfixturevalue("rabbitmq_url")
    use_services(redis_url, url)
    yield url
    use_services(redis_url)


@pytest.fixture(scope="session")
def redis_client(redis_url):
    from shared.connection import connect

    client = connect(redis_url)
    yield client
    client.close()


def online_workers(app) -> set[str]:
    return {name for reply in app.control.ping(timeout=0.5) for name in reply}


def service_env(redis_url: str, broker_url: str | None = None, **extra: str) -> dict[str, str]:
    env = {**os.environ, "OPTBENCH_REDIS_URL": redis_url, "OPTBENCH_ALLOW_FAULTS": "1", **extra}
    env.pop("OPTBENCH_BROKER_URL", None)
    return {**env, "OPTBENCH_BROKER_URL": broker_url} if broker_url else env


def start_workers(
    app, redis_url: str, log_path: Path, *args: str, broker_url: str | None = None, **env: str
) -> subprocess.Popen:
    """`python -m worker` as a user starts it (in its own process group); returns once it answers."""
    before = online_workers(app)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker", *args],
            cwd=REPO,
            env=service_env(redis_url, broker_url, **env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if online_workers(app) - before:
            return process
        if process.poll() is not None:
            break
    stop_workers(process)
    raise AssertionError("workers did not come up: " + log_path.read_text()[-3000:])


def stop_workers(process: subprocess.Popen) -> None:
    """SIGTERM (warm shutdown), then SIGKILL to the whole group if it lingers."""
    from shared.processes import stop_process

    stop_process(process, timeout=60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def running_workers(
    app, redis_url: str, log_path: Path, *args: str, broker_url: str | None = None, **env: str
) -> Iterator[subprocess.Popen]:
    process = start_workers(app, redis_url, log_path, *args, broker_url=broker_url, **env)
    try:
        yield process
    finally:
        stop_workers(process)


@pytest.fixture(scope="module")
def workers(app, redis_url, tmp_path_factory):
    with running_workers(app, redis_url, tmp_path_factory.mktemp("logs") / "worker.log") as process:
        yield process


def wait_for_sweep(app, client, sweep_id: str, timeout: float = 240) -> list[dict]:
    """Poll the backend until every cell of the sweep has finished; the rows."""
    from shared import manifest
    from shared.state import FINISHED, sweep_rows

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = sweep_rows(app.backend, manifest.load(client, sweep_id))
        if all(row["status"] in FINISHED for row in rows):
            return rows
        time.sleep(0.5)
    raise AssertionError(f"sweep {sweep_id} unfinished: {[(r['run_id'], r['status']) for r in rows]}")


def run_cli(module: str, *args: str, env: dict[str, str], cwd: Path = REPO, timeout: float = 300):
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
