"""Client plumbing both CLIs use: connect to Redis and the broker, and with `--start-missing` start what
isn't running.

Each service is one small class, `Service`: `start()` makes it available (starting it only where that is
its job), `stop()` stops it only if this process started it, and `started` says whether it did. Each is a
context manager too (start, then stop), named in lower case like `contextlib.closing`: `with
private_redis(folder) as url:`. `session()` connects, starting what is missing, and says what it started.
Helpers for the processes themselves are in `shared/processes.py`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from shared import config
from shared.config import DEFAULT_REDIS_URL, redact
from shared.connection import check_broker, connect
from shared.errors import OptbenchError
from shared.processes import free_port, stop_group, stop_process, wait_for, write_private

log = logging.getLogger("optbench.services")
RUN_DIR = Path("run")


BROKERS = ("redis", "rabbitmq")


@dataclass
class Session:
    app: object
    client: redis.Redis
    settings: config.Settings
    # What this session started and will stop, in that order: "redis", "rabbitmq", "workers".
    started: list[str]


class Service(contextlib.AbstractContextManager):
    """A service a command needs. `start()` returns its URL (None for workers); `stop()` stops what this
    object started, and nothing else; `started` says whether it started the service. As a context
    manager, `stop()` also runs when `start()` fails half-way."""

    name = "service"

    def __init__(self) -> None:
        self.started = False

    def start(self) -> str | None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> str | None:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def session(start_missing: bool, need_workers: bool, broker: str = config.DEFAULT_BROKER) -> Iterator[Session]:
    """Connect to Redis and the broker (and with `start_missing`, start those and workers that aren't running).

    `broker`: what `start_missing` starts when OPTBENCH_BROKER_URL is unset: `redis` (the Redis is the
    broker too) or `rabbitmq` (a private RabbitMQ under run/rabbitmq)."""
    from shared.celery_app import app, use_services

    settings = config.load()
    services: list[Service] = []

    def run(service: Service) -> str | None:
        services.append(service)
        return stack.enter_context(service)

    with contextlib.ExitStack() as stack:
        url = run(redis_for_sweep()) if start_missing else settings.redis_url
        client = stack.enter_context(contextlib.closing(connect(url)))
        broker_url = config.broker_url_from_env()
        if broker_url is None and start_missing and broker == "rabbitmq":
            broker_url = run(private_rabbitmq(RUN_DIR / "rabbitmq", settings.cell_time_limit))
        elif broker_url is not None:
            check_broker(broker_url)
        use_services(url, broker_url)
        if start_missing and need_workers:
            run(local_workers(app, url, RUN_DIR / "worker.log", broker_url=broker_url))
        yield Session(app, client, settings, [service.name for service in services if service.started])


class private_redis(Service):
    """A password-protected redis-server on loopback with append-only persistence under `data_dir`.

    The password lives in `data_dir/password` (mode 600) and the config file, never on a command
    line; restarting over the same folder finds the same data.
    """

    name = "redis"

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        super().__init__()
        self.data_dir, self.port = data_dir, port
        self.process: subprocess.Popen | None = None

    def start(self) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise OptbenchError(
                "redis-server is not installed (apt-get install redis-server) and no Redis is reachable"
            )
        password = _private_password(self.data_dir)
        port = self.port or free_port()
        settings = self.data_dir / "redis.conf"
        write_private(
            settings,
            f"port {port}\nbind 127.0.0.1 -::1\nprotected-mode yes\nrequirepass {password}\n"
            f'dir {self.data_dir.resolve()}\nappendonly yes\nappendfsync everysec\nsave ""\n'
            "maxmemory-policy noeviction\ndaemonize no\nlogfile redis.log\n",
        )
        self.process = subprocess.Popen([binary, str(settings)], stdin=subprocess.DEVNULL, start_new_session=True)
        url = f"redis://:{password}@127.0.0.1:{port}/0"
        wait_for(lambda: connect(url, timeout=0.5), 20, "redis-server", self.process)
        log.info("started a private Redis at %s (data in %s)", redact(url), self.data_dir)
        self.started = True
        return url

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()  # SIGTERM: Redis flushes the append-only file and exits
            self.process.wait(timeout=30)
            self.process = None


class redis_for_sweep(Service):
    """OPTBENCH_REDIS_URL when set (it must answer), else the default URL if it answers, else a private one
    under `run_dir/redis` (the only case where it starts anything)."""

    name = "redis"

    def __init__(self, run_dir: Path = RUN_DIR) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.private: private_redis | None = None

    def start(self) -> str:
        explicit = config.redis_url_from_env()
        if explicit:
            connect(explicit).close()
            return explicit
        try:
            connect(DEFAULT_REDIS_URL, timeout=1.0).close()
        except OptbenchError:
            self.private = private_redis(self.run_dir / "redis")
            url = self.private.start()
            self.started = True
            return url
        return DEFAULT_REDIS_URL

    def stop(self) -> None:
        if self.private is not None:
            self.private.stop()
            self.private = None


class private_rabbitmq(Service):
    """A RabbitMQ node of our own on loopback, its data under `data_dir`; its URL is amqp://.

    Its user `optbench` has a generated password (in `data_dir/password` and `rabbitmq.conf`, mode 600,
    never on a command line); its Erlang port mapper and distribution port are private and bound to
    loopback too, and stopped with it. Restarting over the same folder finds the same queues (durable)
    and messages (persistent). `consumer_timeout` is set above the cell time limit.
    """

    name = "rabbitmq"

    def __init__(self, data_dir: Path, cell_time_limit: float, port: int | None = None) -> None:
        super().__init__()
        self.data_dir, self.cell_time_limit, self.port = data_dir.resolve(), cell_time_limit, port
        self.process: subprocess.Popen | None = None
        self.env: dict[str, str] = {}

    def start(self) -> str:
        server = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # the Debian wrapper in /usr/sbin would switch users
        server = server if os.path.exists(server) else shutil.which("rabbitmq-server")
        if server is None:
            raise OptbenchError("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
        data_dir = self.data_dir
        password = _private_password(data_dir)
        port = self.port or free_port()
        write_private(
            data_dir / "rabbitmq.conf",
            f"listeners.tcp.1 = 127.0.0.1:{port}\ndefault_user = optbench\ndefault_pass = {password}\n"
            f"consumer_timeout = {int(config.consumer_timeout(self.cell_time_limit) * 1000)}\n"
            "log.console = false\nlog.file.level = warning\n",
        )
        (data_dir / "enabled_plugins").write_text("[].\n")
        self.env = {
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
            "ERL_EPMD_PORT": str(free_port()),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        with open(data_dir / "server.log", "ab") as log_file:
            self.process = subprocess.Popen(
                [server], env=self.env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        url = f"amqp://optbench:{password}@127.0.0.1:{port}//"
        wait_for(lambda: check_broker(url, timeout=1.0) or True, 60, "rabbitmq-server", self.process)
        log.info("started a private RabbitMQ at %s (data in %s)", redact(url), data_dir)
        self.started = True
        return url

    def stop(self) -> None:
        if self.process is None:
            return
        stop_group(self.process, timeout=60)  # the node stops cleanly on SIGTERM (a few seconds)
        self.process = None
        epmd = shutil.which("epmd")
        if epmd:  # the node started its own port mapper on our private port: stop it too
            subprocess.run([epmd, "-kill"], env=self.env, capture_output=True, timeout=30)


class local_workers(Service):
    """`python -m worker` against `url` (and `broker_url`), unless a worker already answers; its output goes
    to `log_path`."""

    name = "workers"

    def __init__(self, app, url: str, log_path: Path, timeout: float = 180.0, broker_url: str | None = None) -> None:
        super().__init__()
        self.app, self.url, self.log_path, self.timeout, self.broker_url = app, url, log_path, timeout, broker_url
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        if self.app.control.ping(timeout=1.0):
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "worker"],
                env=config.env_with_services(self.url, self.broker_url),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us alone; we stop the workers with one SIGTERM (warm)
            )
        wait_for(lambda: self.app.control.ping(timeout=1.0) or None, self.timeout, "the local workers", self.process)
        log.info("started local workers (log: %s)", self.log_path)
        self.started = True

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=60)
            self.process = None


def _private_password(data_dir: Path) -> str:
    """The generated password of a service kept under `data_dir` (file `password`, mode 600), made once."""
    data_dir.mkdir(parents=True, exist_ok=True)
    password_file = data_dir / "password"
    if not password_file.exists():
        write_private(password_file, secrets.token_urlsafe(24))
    return password_file.read_text().strip()
