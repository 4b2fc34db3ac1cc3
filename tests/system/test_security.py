"""Nobody in who shouldn't be: JSON only on the broker, passwords kept out of everything written.

The tests with workers run on both brokers (the `broker_url` fixture): the Redis, and a private RabbitMQ."""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from shared import keys
from shared.celery_app import queue_lengths
from shared.connection import check_broker, connect, warn_if_exposed
from shared.errors import OptbenchError
from tests.conftest import TINY_SWEEP_ARGS, run_cli, running_workers, service_env

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def logged_workers(app, redis_url, broker_url, tmp_path_factory):
    log = tmp_path_factory.mktemp("security") / "worker.log"
    with running_workers(app, redis_url, log, broker_url=broker_url):
        yield log


def password_of(url: str) -> str:
    return urlsplit(url).password


class Unpickled:
    """Creates a file when unpickled: proof that a worker ran a pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_message_in_the_queue_is_refused_not_executed(app, redis_client, logged_workers, tmp_path):
    marker = tmp_path / "pwned"
    task_id = str(uuid.uuid4())
    queue = keys.CPU_QUEUE
    app.send_task("optbench.run_cell", args=(Unpickled(marker),), task_id=task_id, queue=queue, serializer="pickle")
    deadline = time.monotonic() + 20
    while "untrusted content" not in logged_workers.read_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "untrusted content of type pickle" in logged_workers.read_text()
    assert not marker.exists()
    assert queue_lengths({queue}) == {queue: 0}  # dropped, not left to be retried
    # and the worker is still serving JSON cells
    bad = {"model": "densenet121", "batch_size": 0}
    envelope = app.send_task(
        "optbench.run_cell",
        kwargs={"sweep_id": "s", "cell_id": "c", "repeat": 1, "attempt": 1, "spec": bad},
        queue=queue,
    ).get(timeout=60)
    assert envelope["result"]["error_type"] == "invalid_spec"


def test_the_password_appears_in_nothing_a_sweep_writes(redis_url, broker_url, redis_client, logged_workers, tmp_path):
    passwords = {password_of(redis_url), password_of(broker_url)}
    assert all(len(password) >= 20 for password in passwords)
    env = service_env(redis_url, broker_url, OPTBENCH_RESULTS_DIR=str(tmp_path))
    done = run_cli(
        "producer", "sweep", *TINY_SWEEP_ARGS, "--optimizations", "baseline,nonexistent_is_rejected_first",
        env=env,
    )  # fmt: skip
    assert done.returncode == 2 and not any(password in done.stderr + done.stdout for password in passwords)
    done = run_cli("producer", "sweep", *TINY_SWEEP_ARGS, "--optimizations", "baseline", "--wait", env=env)
    assert done.returncode == 0, done.stderr
    status = run_cli("producer", "status", env=env)
    collect = run_cli("results", "collect", env=env)
    written = [done.stdout, done.stderr, status.stdout, status.stderr, collect.stdout, collect.stderr]
    written += [path.read_text() for path in tmp_path.glob("*.csv")]
    written.append(logged_workers.read_text())
    for key in redis_client.keys("*"):
        kind = redis_client.type(key).decode()
        if kind == "string":
            written.append(redis_client.get(key).decode(errors="replace"))
        elif kind == "hash":
            written.append(str(redis_client.hgetall(key)))
        elif kind == "list":
            written.append(str(redis_client.lrange(key, 0, -1)))
        elif kind == "zset":
            written.append(str(redis_client.zrange(key, 0, -1)))
    assert any("baseline@bs1" in text for text in written)  # the search covers the sweep's output
    assert not [text[:200] for text in written if any(password in text for password in passwords)]


def test_the_private_redis_listens_on_loopback_and_requires_its_password(redis_url, redis_client):
    assert redis_client.config_get("bind")["bind"].split()[0] == "127.0.0.1"
    assert redis_client.config_get("appendonly")["appendonly"] == "yes"
    assert redis_client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    with pytest.raises(OptbenchError, match=f"Redis at 127.0.0.1:{port} needs a password"):
        connect(f"redis://127.0.0.1:{port}/0")
    with pytest.raises(OptbenchError, match=f"Redis at 127.0.0.1:{port} refused the password") as error:
        connect(f"redis://:wrong-password@127.0.0.1:{port}/0")
    assert "wrong-password" not in str(error.value)
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=int(port), password="wrong-password").ping()


def test_a_remote_redis_without_password_is_warned_about(caplog):
    with caplog.at_level(logging.WARNING):
        assert warn_if_exposed("redis://gpu-head.example:6379/0")
        assert not warn_if_exposed("redis://:secret@gpu-head.example:6379/0")
        assert not warn_if_exposed("redis://localhost:6379/0")
    assert caplog.messages == [
        "Redis at gpu-head.example:6379 has no password: anyone who reaches it can run tasks on the workers"
    ]


def test_a_wrong_password_is_a_one_line_error_without_the_password(redis_url):
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    done = run_cli("producer", "status", env=service_env(f"redis://:hunter2-wrong@127.0.0.1:{port}/0"))
    assert done.returncode == 2 and "hunter2" not in done.stderr
    assert (
        done.stderr.strip()
        == f"python -m producer: error: Redis at 127.0.0.1:{port} refused the password in OPTBENCH_REDIS_URL"
    )


def listening_addresses(port: int) -> set[str]:
    """The IPv4/IPv6 addresses listening on TCP `port` (from /proc/net/tcp*), as hex like the kernel shows them."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_the_private_rabbitmq_listens_on_loopback_only_and_refuses_a_wrong_password(redis_url, rabbitmq_url):
    port = urlsplit(rabbitmq_url).port
    assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, and nothing else
    wrong = f"amqp://optbench:hunter2-wrong@127.0.0.1:{port}//"
    message = f"RabbitMQ at 127.0.0.1:{port} refused the user or password in OPTBENCH_BROKER_URL"
    with pytest.raises(OptbenchError) as error:
        check_broker(wrong)
    assert str(error.value) == message
    done = run_cli("producer", "status", env=service_env(redis_url, wrong))
    assert done.returncode == 2 and done.stderr.strip() == f"python -m producer: error: {message}"


@pytest.mark.parametrize(
    "url, message",
    [
        (
            "kafka://head:9092",
            "broker URL scheme kafka:// is not supported: use redis://, rediss://, amqp:// or amqps://",
        ),
        ("amqp://optbench:s3cret-pw@127.0.0.1:1//", "can't reach RabbitMQ at 127.0.0.1:1 ("),
    ],
)
@pytest.mark.parametrize("module", ["producer", "worker"])
def test_a_bad_broker_url_is_a_one_line_error_without_the_password(redis_url, url, message, module):
    done = run_cli(module, *(["status"] if module == "producer" else []), env=service_env(redis_url, url))
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "s3cret" not in done.stderr
