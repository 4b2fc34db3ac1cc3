"""The fleet test's fleet: images built, containers brought up, and the helpers the tests use.

A private dockerd (tests/fleet/docker.py); images: the local Debian base, the head image (Redis and RabbitMQ from
Debian's packages, tests/fleet/Dockerfile.head) and the worker image from Dockerfile.gpu on that base, CPU only;
on one private network: Redis (append-only, on a volume), RabbitMQ (on a volume), Flower with auth, and two worker
"hosts", `host-a` and `host-b`, each its own container with its own address, disk and hostname. This machine
reaches Redis, RabbitMQ and Flower through ports published on loopback only, and runs the producer there.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from shared.processes import free_port
from tests.fleet import docker as d

REPO = Path(__file__).resolve().parents[2]
LOGS = REPO / "run" / "fleet-test"
NETWORK = "optbench-fleet"
HEAD_IMAGE = "optbench-fleet-head:test"
WORKER_IMAGE = "optbench-gpu:fleet-test"
HOSTS = ("host-a", "host-b")
FLOWER_USER = "fleet"
# Test-sized: a cell may run 120 s; RabbitMQ closes a silent worker's connection after ~2 missed heartbeats.
WORKER_ENV = {"OPTBENCH_CELL_TIME_LIMIT": "120", "OPTBENCH_BROKER_HEARTBEAT": "10"}
SUMMARY: list[str] = []  # lines printed after the tests: build, image and each fault's recovery time


@dataclass
class Fleet:
    redis_password: str
    rabbitmq_password: str
    flower_password: str
    ports: dict[str, int] = field(default_factory=dict)  # service -> port published on 127.0.0.1
    build_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def redis_url(self) -> str:  # from this machine
        return f"redis://:{self.redis_password}@127.0.0.1:{self.ports['redis']}/0"

    @property
    def broker_url(self) -> str:
        return f"amqp://optbench:{self.rabbitmq_password}@127.0.0.1:{self.ports['rabbitmq']}//"

    @property
    def flower_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['flower']}"

    def inside_env(self) -> list[str]:
        """`-e` options giving a container the head's services by their names on the private network."""
        urls = {
            "OPTBENCH_REDIS_URL": f"redis://:{self.redis_password}@redis:6379/0",
            "OPTBENCH_BROKER_URL": f"amqp://optbench:{self.rabbitmq_password}@rabbitmq:5672//",
            **WORKER_ENV,
        }
        return [arg for name, value in urls.items() for arg in ("-e", f"{name}={value}")]

    @property
    def passwords(self) -> tuple[str, ...]:
        return self.redis_password, self.rabbitmq_password, self.flower_password


def container(name: str) -> str:
    return f"optbench-fleet-{name}"


def _run(name: str, *options: str, image: str, command: tuple[str, ...] = ()) -> None:
    d.docker("run", "-d", "--name", container(name), "--label", d.LABEL, "--network", NETWORK, "--network-alias",
             name, "--hostname", name, *options, image, *command)  # fmt: skip


def start_worker_host(fleet: Fleet, host: str) -> None:
    _run(host, *fleet.inside_env(), "-e", f"OPTBENCH_HOST={host}", "--shm-size", "1g", "--stop-timeout", "60",
         image=WORKER_IMAGE)  # fmt: skip


def wait_until(check, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            result = check()
            if result:
                return result
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:g} s")


def answers(host: str) -> bool:
    """The host's workers answer a ping through the broker (the image's own healthcheck command)."""
    done = subprocess.run([d.DOCKER, "exec", container(host), "python", "-m", "worker", "--ping"], env=d.env(),
                          capture_output=True, timeout=60)  # fmt: skip
    return done.returncode == 0


def publish(fleet: Fleet, name: str, port: int) -> list[str]:
    """`-p` publishing the container's `port` on a fixed loopback port of this machine (fixed: a restarted
    container must come back on the same one)."""
    fleet.ports[name] = free_port()
    return ["-p", f"127.0.0.1:{fleet.ports[name]}:{port}"]


def build(fleet: Fleet, base: str) -> None:
    started = time.monotonic()
    d.docker("build", "-f", "tests/fleet/Dockerfile.head", "--build-arg", f"BASE_IMAGE={base}", "-t", HEAD_IMAGE,
             str(REPO), timeout=1800)  # fmt: skip
    fleet.build_seconds["head"] = time.monotonic() - started
    started = time.monotonic()
    cert = d.pip_cert()  # pip's CA bundle here, passed as a build secret: in no layer
    secret = ["--secret", f"id=pip_cert,src={cert}"] if cert else []
    d.docker("build", "-f", "Dockerfile.gpu", "--build-arg", f"BASE_IMAGE={base}", "--build-arg", "ONNXRUNTIME_GPU=",
             *secret, "-t", WORKER_IMAGE, str(REPO), timeout=3600)  # fmt: skip
    fleet.build_seconds["worker"] = time.monotonic() - started


REDIS_COMMAND = (  # as docker-compose.yml's redis service: password, append-only on the volume, no eviction
    'exec redis-server --requirepass "$REDIS_PASSWORD" --appendonly yes --appendfsync everysec --dir /data '
    "--maxmemory-policy noeviction --protected-mode yes --bind '* -::*'"
)
RABBITMQ_COMMAND = (  # its user from the environment (the official image's RABBITMQ_DEFAULT_USER/PASS)
    'printf "default_user = optbench\\ndefault_pass = %s\\nconsumer_timeout = 840000\\n" "$RABBITMQ_PASSWORD" '
    "> /tmp/rabbitmq.conf && RABBITMQ_CONFIG_FILE=/tmp/rabbitmq exec /usr/lib/rabbitmq/bin/rabbitmq-server"
)


def bring_up(fleet: Fleet) -> None:
    from shared.connection import check_broker, connect

    d.docker("network", "create", "--label", d.LABEL, NETWORK)
    for volume in ("redis-data", "rabbitmq-data"):
        d.docker("volume", "create", "--label", d.LABEL, container(volume))
    redis_options = ["--user", "redis", "-e", f"REDIS_PASSWORD={fleet.redis_password}"]
    _run("redis", *redis_options, "-v", f"{container('redis-data')}:/data", *publish(fleet, "redis", 6379),
         image=HEAD_IMAGE, command=("sh", "-c", REDIS_COMMAND))  # fmt: skip
    rabbitmq_options = ["--user", "rabbitmq", "-e", f"RABBITMQ_PASSWORD={fleet.rabbitmq_password}"]
    _run("rabbitmq", *rabbitmq_options, "-e", "HOME=/var/lib/rabbitmq", "-v",
         f"{container('rabbitmq-data')}:/var/lib/rabbitmq", *publish(fleet, "rabbitmq", 5672), image=HEAD_IMAGE,
         command=("sh", "-c", RABBITMQ_COMMAND))  # fmt: skip
    wait_until(lambda: connect(fleet.redis_url, timeout=1.0).ping(), 60, "Redis answering")
    wait_until(lambda: check_broker(fleet.broker_url, timeout=2.0) or True, 120, "RabbitMQ answering", 2.0)
    flower_options = ["-e", f"OPTBENCH_FLOWER_USER={FLOWER_USER}", "-e",
                      f"OPTBENCH_FLOWER_PASSWORD={fleet.flower_password}"]  # fmt: skip
    _run("flower", *fleet.inside_env(), *flower_options, *publish(fleet, "flower", 5555), image=WORKER_IMAGE,
         command=("python", "-m", "producer", "flower", "--address", "0.0.0.0", "--port", "5555"))  # fmt: skip
    for host in HOSTS:
        start_worker_host(fleet, host)
    for host in HOSTS:
        wait_until(lambda host=host: answers(host), 180, f"{host}'s workers answering", 2.0)


def save_logs() -> None:
    LOGS.mkdir(parents=True, exist_ok=True)
    for name in ("redis", "rabbitmq", "flower", *HOSTS):
        with open(LOGS / f"{name}.log", "wb") as log:
            subprocess.run([d.DOCKER, "logs", container(name)], env=d.env(), stdout=log, stderr=subprocess.STDOUT,
                           timeout=60, check=False)  # fmt: skip
