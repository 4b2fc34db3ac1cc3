"""Client plumbing both CLIs use: connect to Redis and the broker, and with `--start-missing` start what
isn't running.

`session()` connects (and may start a private Redis, a private RabbitMQ and local workers); each
service is a context manager that, on exit, stops only what it started itself, and says what it started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from shared import config
from shared.config import DEFAULT_REDIS_URL, redact
from shared.connection import check_broker, connect
from shared.errors import OptbenchError

log = logging.getLogger("optbench.services")
RUN_DIR = Path("run")


BROKERS = ("redis", "rabbitmq")


@dataclass
class Session:
    app: object
    client: redis.Redis
    settings: config.Settings
    # What this session started and will stop: "redis", "rabbitmq", "workers".
    started: list[str] = field(default_factory=list)


@contextlib.contextmanager
def session(start_missing: bool, need_workers: bool, broker: str = "redis") -> Iterator[Session]:
    """Connect to Redis and the broker (and with `start_missing`, start those and workers that aren't running).

    `broker`: what `start_missing` starts when OPTBENCH_BROKER_URL is unset: `redis` (the Redis is the
    broker too) or `rabbitmq` (a private RabbitMQ under run/rabbitmq)."""
    from shared.celery_app import app, use_services

    settings = config.load()
    with contextlib.ExitStack() as stack:
        started: list[str] = []
        url = stack.enter_context(redis_for_sweep(started=started)) if start_missing else settings.redis_url
        client = stack.enter_context(contextlib.closing(connect(url)))
        broker_url = os.environ.get("OPTBENCH_BROKER_URL") or None
        if broker_url is None and start_missing and broker == "rabbitmq":
            broker_url = stack.enter_context(private_rabbitmq(RUN_DIR / "rabbitmq", settings.cell_time_limit))
            started.append("rabbitmq")
        elif broker_url is not None:
            check_broker(broker_url)
        use_services(url, broker_url)
        if start_missing and need_workers:
            stack.enter_context(local_workers(app, url, RUN_DIR / "worker.log", started=started, broker_url=broker_url))
        yield Session(app, client, settings, started)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def private_redis(data_dir: Path, port: int | None = None) -> Iterator[str]:
    """A password-protected redis-server on loopback with append-only persistence under `data_dir`.

    The password lives in `data_dir/password` (mode 600) and the config file, never on a command
    line; restarting over the same folder finds the same data.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise OptbenchError("redis-server is not installed (apt-get install redis-server) and no Redis is reachable")
    password = _private_password(data_dir)
    port = port or free_port()
    config = data_dir / "redis.conf"
    _write_private(
        config,
        f"port {port}\nbind 127.0.0.1 -::1\nprotected-mode yes\nrequirepass {password}\n"
        f'dir {data_dir.resolve()}\nappendonly yes\nappendfsync everysec\nsave ""\n'
        "maxmemory-policy noeviction\ndaemonize no\nlogfile redis.log\n",
    )
    process = subprocess.Popen([binary, str(config)], stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    try:
        _wait_for(lambda: connect(url, timeout=0.5), 20, "redis-server", process)
        log.info("started a private Redis at %s (data in %s)", redact(url), data_dir)
        yield url
    finally:
        process.terminate()  # SIGTERM: Redis flushes the append-only file and exits
        process.wait(timeout=30)


@contextlib.contextmanager
def redis_for_sweep(run_dir: Path = RUN_DIR, started: list[str] | None = None) -> Iterator[str]:
    """OPTBENCH_REDIS_URL when set (it must answer), else the default URL if it answers, else a private one."""
    explicit = os.environ.get("OPTBENCH_REDIS_URL")
    if explicit:
        connect(explicit).close()
        yield explicit
        return
    try:
        connect(DEFAULT_REDIS_URL, timeout=1.0).close()
    except OptbenchError:
        with private_redis(run_dir / "redis") as url:
            if started is not None:
                started.append("redis")
            yield url
        return
    yield DEFAULT_REDIS_URL


@contextlib.contextmanager
def private_rabbitmq(data_dir: Path, cell_time_limit: float, port: int | None = None) -> Iterator[str]:
    """A RabbitMQ node of our own on loopback, its data under `data_dir`; yields its amqp:// URL.

    Its user `optbench` has a generated password (in `data_dir/password` and `rabbitmq.conf`, mode 600,
    never on a command line); its Erlang port mapper and distribution port are private and bound to
    loopback too, and stopped with it. Restarting over the same folder finds the same queues (durable)
    and messages (persistent). `consumer_timeout` is set above the cell time limit.
    """
    server = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # the Debian wrapper in /usr/sbin would switch users
    server = server if os.path.exists(server) else shutil.which("rabbitmq-server")
    if server is None:
        raise OptbenchError("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
    data_dir = data_dir.resolve()
    password = _private_password(data_dir)
    port = port or free_port()
    settings = data_dir / "rabbitmq.conf"
    _write_private(
        settings,
        f"listeners.tcp.1 = 127.0.0.1:{port}\ndefault_user = optbench\ndefault_pass = {password}\n"
        f"consumer_timeout = {int(config.consumer_timeout(cell_time_limit) * 1000)}\n"
        "log.console = false\nlog.file.level = warning\n",
    )
    (data_dir / "enabled_plugins").write_text("[].\n")
    epmd_port = str(free_port())
    env = {
        **os.environ,
        "HOME": str(data_dir),  # the Erlang cookie lives here
        "RABBITMQ_NODENAME": "optbench@localhost",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(free_port()),
        "RABBITMQ_CONFIG_FILE": str(data_dir / "rabbitmq"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(data_dir / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(data_dir / "mnesia"),
        "RABBITMQ_LOG_BASE": str(data_dir / "log"),
        "RABBITMQ_PID_FILE": str(data_dir / "rabbitmq.pid"),
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        "ERL_EPMD_PORT": epmd_port,
        "ERL_EPMD_ADDRESS": "127.0.0.1",
    }
    with open(data_dir / "server.log", "ab") as log_file:
        process = subprocess.Popen(
            [server], env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    url = f"amqp://optbench:{password}@127.0.0.1:{port}//"
    try:
        _wait_for(lambda: check_broker(url, timeout=1.0) or True, 60, "rabbitmq-server", process)
        log.info("started a private RabbitMQ at %s (data in %s)", redact(url), data_dir)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)  # the node stops cleanly on SIGTERM (a few seconds)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        epmd = shutil.which("epmd")
        if epmd:  # the node started its own port mapper on our private port: stop it too
            subprocess.run([epmd, "-kill"], env=env, capture_output=True, timeout=30)


@contextlib.contextmanager
def local_workers(
    app,
    url: str,
    log_path: Path,
    timeout: float = 180.0,
    started: list[str] | None = None,
    broker_url: str | None = None,
) -> Iterator[None]:
    """Start `python -m worker` against `url` (and `broker_url`) unless a worker already answers; stop it afterwards."""
    if app.control.ping(timeout=1.0):
        yield
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker"],
            env={**os.environ, "OPTBENCH_REDIS_URL": url, "OPTBENCH_BROKER_URL": broker_url or url},
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us alone; we stop the workers with one SIGTERM (warm)
        )
    try:
        _wait_for(lambda: app.control.ping(timeout=1.0) or None, timeout, "the local workers", process)
        log.info("started local workers (log: %s)", log_path)
        if started is not None:
            started.append("workers")
        yield
    finally:
        stop_process(process, timeout=60)


def stop_process(process: subprocess.Popen, timeout: float) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _private_password(data_dir: Path) -> str:
    """The generated password of a service kept under `data_dir` (file `password`, mode 600), made once."""
    data_dir.mkdir(parents=True, exist_ok=True)
    password_file = data_dir / "password"
    if not password_file.exists():
        _write_private(password_file, secrets.token_urlsafe(24))
    return password_file.read_text().strip()


def _write_private(path: Path, text: str) -> None:
    """Write `text` into a file only its owner may read (created with mode 600 before anything is in it)."""
    path.touch(mode=0o600)
    path.write_text(text)


def _wait_for(check, timeout: float, what: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise OptbenchError(f"{what} exited with status {process.returncode} while starting")
        try:
            if check():
                return
        except OptbenchError:
            pass
        time.sleep(0.2)
    raise OptbenchError(f"{what} did not come up within {timeout:g} s")
