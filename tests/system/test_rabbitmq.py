"""RabbitMQ as the broker, with production settings: every client command and Flower work on it; a lost
worker's cell runs again within a minute; `status` says `lost` (not `running`) while a run waits for
redelivery (on Redis, where that wait is long). Real rabbitmq-server, Redis, workers, signals, Flower.
The reliability and security suites also run on RabbitMQ (their `broker_url` fixture)."""

from __future__ import annotations

import datetime
import os
import signal
import time

import pytest

from results.collect import collect
from shared import keys, liveness, manifest
from shared.celery_app import queue_lengths
from shared.state import run_row
from tests.conftest import TINY_SWEEP_ARGS, run_cli, service_env, wait_for_sweep
from tests.system.test_flower import poll_json, running_flower
from tests.system.test_reliability import Hosts, group_gone, one_cell_sweep, running_on

pytestmark = pytest.mark.timeout(300)
REDELIVERY_GOAL = 60  # seconds from losing a worker to its cell running on another one


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@pytest.fixture(scope="module")
def rabbit_hosts(app, redis_url, rabbitmq_url, tmp_path_factory):
    """Two worker groups on RabbitMQ with production settings (no test-sized timeouts)."""
    from shared.celery_app import use_services

    use_services(redis_url, rabbitmq_url)
    hosts = Hosts(app, redis_url, tmp_path_factory.mktemp("rabbit-hosts"), broker_url=rabbitmq_url, fast=False)
    try:
        yield hosts
    finally:
        hosts.stop()
        use_services(redis_url)


@pytest.fixture
def hosts(rabbit_hosts):
    rabbit_hosts.ensure("host-a", "host-b")
    return rabbit_hosts


def started_elsewhere(app, task_id: str, lost_host: str, timeout: float) -> tuple[str, datetime.datetime]:
    """Wait until a worker other than `lost_host` runs the task; (that host, when it was seen running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        meta = app.backend.get_task_meta(task_id)
        worker = meta.get("worker") or ""
        if meta["status"] in ("STARTED", "PROGRESS") and not worker.endswith("@" + lost_host):
            return worker.split("@")[1], now()
        assert meta["status"] != "SUCCESS" or not worker.endswith("@" + lost_host), "the lost worker finished it"
        time.sleep(0.1)
    raise AssertionError(f"not running elsewhere {timeout} s after {lost_host} was lost: {meta['status']}")


def test_sweep_status_rerun_report_and_flower_work_on_rabbitmq(
    app, redis_client, redis_url, rabbitmq_url, hosts, tmp_path
):
    env = service_env(redis_url, rabbitmq_url, OPTBENCH_RESULTS_DIR=str(tmp_path))
    args = [*TINY_SWEEP_ARGS, "--optimizations", "baseline,channels_last", "--batch-sizes", "1"]
    with running_flower(env, tmp_path / "flower.log") as flower:
        done = run_cli("producer", "sweep", *args, "--wait", env=env)
        assert done.returncode == 0, done.stderr
        sweep_id = done.stdout.strip()
        status = run_cli("producer", "status", "--sweep", sweep_id, env=env)
        assert status.returncode == 0 and "2 runs (1 per cell): 2 ok" in status.stdout, status.stdout
        rerun = run_cli("producer", "rerun", "--sweep", sweep_id, "--cells", "channels_last@bs1", "--wait", env=env)
        assert rerun.returncode == 0 and "re-enqueued channels_last@bs1#1 (attempt 2)" in rerun.stderr, rerun.stderr
        report = run_cli("results", "report", "--sweep", sweep_id, env=env)
        assert report.returncode == 0 and (tmp_path / sweep_id / "report.md").is_file(), report.stderr
        # Flower on the same broker: the workers with their queue, the runs by name, the re-run's result.
        workers = poll_json(flower + "/api/workers?refresh=1", lambda w: "cpu@host-a" in w and "cpu@host-b" in w)
        assert [q["name"] for q in workers["cpu@host-a"]["active_queues"]] == [keys.CPU_QUEUE]

        def ours(tasks: dict) -> dict[str, str]:
            return {t["name"]: t["state"] for t in tasks.values() if sweep_id in (t.get("kwargs") or "")}

        names = {f"optbench.run_cell {run}#1 [{sweep_id}]" for run in ("baseline@bs1", "channels_last@bs1")}
        tasks = poll_json(flower + "/api/tasks?limit=1000", lambda tasks: set(ours(tasks)) == names)
        assert set(ours(tasks).values()) <= {"SUCCESS", "STARTED", "RECEIVED", "PROGRESS"}

    # A CUDA sweep's runs wait in the GPU queue, which nobody serves here: said, then given up on (exit 3).
    cuda = [*TINY_SWEEP_ARGS, "--device", "cuda", "--optimizations", "baseline", "--batch-sizes", "1"]
    stalled = run_cli("producer", "sweep", *cuda, "--wait", "--stall-timeout", "3", env=env)
    assert stalled.returncode == 3, stalled.stderr
    assert "1 runs wait in queue 'optbench.gpu', which no online worker consumes" in stalled.stderr
    assert queue_lengths({keys.GPU_QUEUE}) == {keys.GPU_QUEUE: 1}
    with app.connection_for_write() as connection:
        connection.default_channel.queue_purge(keys.GPU_QUEUE)


def test_a_killed_worker_group_s_cell_runs_on_another_worker_within_a_minute(app, redis_client, hosts, tmp_path):
    sweep, run = one_cell_sweep(app, redis_client)
    host = running_on(app, run.task_id)
    group = hosts[host].pid
    killed_at = now()
    os.killpg(group, signal.SIGKILL)  # the whole group: launcher, Celery worker, forkserver, cell
    hosts[host].wait(timeout=30)
    other, running_at = started_elsewhere(app, run.task_id, host, REDELIVERY_GOAL)
    print(f"killed -> running on {other} after {(running_at - killed_at).total_seconds():.1f} s")
    assert group_gone(group)

    [row] = wait_for_sweep(app, redis_client, sweep.id, timeout=120)
    assert (row["status"], row["worker"], row["tries"]) == ("ok", f"cpu@{other}", 2), row["error"]
    frame = collect(app.backend, manifest.load(redis_client, sweep.id), tmp_path, False).frame
    assert list(frame["cell_id"]) == ["baseline@bs1"]


def test_a_frozen_worker_s_cell_runs_elsewhere_and_its_late_result_is_dropped(app, redis_client, hosts, tmp_path):
    sweep, run = one_cell_sweep(app, redis_client)
    host = running_on(app, run.task_id)
    group = hosts[host].pid
    frozen_at = now()
    os.killpg(group, signal.SIGSTOP)  # a hung host: its TCP connection stays open, only heartbeats stop
    try:
        other, running_at = started_elsewhere(app, run.task_id, host, REDELIVERY_GOAL)
        print(f"frozen -> running on {other} after {(running_at - frozen_at).total_seconds():.1f} s")
        [row] = wait_for_sweep(app, redis_client, sweep.id, timeout=120)
    finally:
        os.killpg(group, signal.SIGCONT)
    assert (row["status"], row["worker"], row["tries"]) == ("ok", f"cpu@{other}", 2), row["error"]

    # Woken up, the frozen worker finds its delivery owned by the other one: it stops its cell, stores nothing.
    log = hosts.logs / f"{host}.log"
    deadline = time.monotonic() + 90
    while "was delivered again meanwhile: result dropped" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    [after] = wait_for_sweep(app, redis_client, sweep.id)
    assert (after["worker"], after["started_at"], after["tries"]) == (row["worker"], row["started_at"], 2)
    frame = collect(app.backend, manifest.load(redis_client, sweep.id), tmp_path, False).frame
    assert list(frame["cell_id"]) == ["baseline@bs1"] and frame.iloc[0]["worker"] == f"cpu@{other}"


def test_status_says_a_run_is_lost_while_the_redis_broker_waits_to_redeliver_it_and_resume_sends_it_again(
    app, redis_client, redis_url, tmp_path
):
    """Redis broker, production visibility timeout (70 min): the run must not show `running` meanwhile."""
    from celery import Celery

    app = Celery(broker=redis_url, backend=redis_url)  # the module's workers (host-a, host-b) use RabbitMQ
    hosts = Hosts(app, redis_url, tmp_path, broker_url=None, fast=False)
    try:
        hosts.ensure("host-c")
        sweep, run = one_cell_sweep(app, redis_client)
        assert running_on(app, run.task_id) == "host-c"
        os.killpg(hosts["host-c"].pid, signal.SIGKILL)
        hosts["host-c"].wait(timeout=30)
        env = service_env(redis_url, OPTBENCH_RESULTS_DIR=str(tmp_path))
        deadline = time.monotonic() + liveness.LOST_AFTER + 3 * liveness.BEAT_SECONDS
        while "lost" not in (status := run_cli("producer", "status", "--sweep", sweep.id, env=env)).stdout:
            assert status.returncode == 0 and "running" in status.stdout, status.stdout + status.stderr
            assert time.monotonic() < deadline, status.stdout
            time.sleep(1)
        assert "worker cpu@host-c lost" in status.stdout and "waiting for redelivery" in status.stdout

        hosts.ensure("host-d")
        resumed = run_cli("producer", "resume", "--sweep", sweep.id, "--stall-timeout", "120", env=env)
        assert resumed.returncode == 0, resumed.stderr
        assert "re-enqueued baseline@bs1#1 (attempt 2)" in resumed.stderr
        [row] = wait_for_sweep(app, redis_client, sweep.id)
        assert (row["status"], row["attempts"], row["worker"]) == ("ok", 2, "cpu@host-d")
    finally:
        hosts.stop()


def test_a_run_on_a_silent_worker_is_lost_and_one_on_a_beating_or_unknown_worker_is_running():
    entry = manifest.RunEntry("baseline@bs1#1", "baseline@bs1", 1, {"model": "m", "optimization": "baseline",
                              "batch_size": 1, "image_size": 32, "device": "cpu"}, "optbench.cpu", "t1")  # fmt: skip
    sweep = manifest.Sweep("s", "2026-01-01T00:00:00+00:00", {"cells": ["baseline@bs1"]}, runs={entry.run_id: entry})
    meta = {"status": "PROGRESS", "worker": "cpu@a", "result": {"phase": "measuring", "iterations": 3}}
    at = 1000.0
    silent = {"cpu@a": at - liveness.LOST_AFTER - 12}
    row = run_row(sweep, entry, meta, silent, at)
    assert (row["status"], row["error_type"]) == ("lost", "worker_lost")
    assert row["error"] == "worker cpu@a lost 32 s ago, waiting for redelivery"
    assert run_row(sweep, entry, meta, {"cpu@a": at - 3}, at)["status"] == "running"
    assert run_row(sweep, entry, meta, {}, at)["status"] == "running"  # never beat: not called lost
    assert run_row(sweep, entry, {"status": "REQUEUED", "result": {}}, silent, at)["status"] == "queued"
