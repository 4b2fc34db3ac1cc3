"""No cell lost or duplicated under worker, cell and Redis faults: real processes, real signals.

Every test runs on both brokers (the `broker_url` fixture): the Redis, and a private RabbitMQ."""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import time

import pytest

from producer.sweep import SweepRequest, create
from results.collect import collect
from shared import keys, manifest
from shared.contract import TASK_NAME
from shared.spec import CellSpec
from tests.conftest import TINY_CELL_OPTIONS, start_workers, stop_workers, wait_for_sweep

pytestmark = pytest.mark.timeout(400)

# Fast redelivery for the tests: a cell whose worker vanished is handed out again after ~30 s.
# Production values are in the README (visibility 2 x time limit + 600 s, scans every 100 s).
# The visibility timeout stays above the time limit, or a slow cell would be delivered twice.
TIME_LIMIT, VISIBILITY = 20, 30
FAST = {
    "OPTBENCH_CELL_TIME_LIMIT": str(TIME_LIMIT),
    "OPTBENCH_VISIBILITY_TIMEOUT": str(VISIBILITY),
    "OPTBENCH_UNACKED_RESTORE_INTERVAL": "1",
    "OPTBENCH_UNACKED_RESTORE_THROTTLE": "1",
    "OPTBENCH_UNACKED_MUTEX_EXPIRE": "5",
}
SLOW_CELL = {**TINY_CELL_OPTIONS, "min_seconds": 3.0}  # long enough to be hit mid-measurement


class Hosts:
    """Worker groups named as two hosts would run them; a test may stop one and `ensure` restarts it.

    `fast`: the test-sized timeouts above, else production settings."""

    def __init__(self, app, redis_url: str, logs, broker_url: str | None = None, fast: bool = True) -> None:
        self.app, self.redis_url, self.logs, self.broker_url = app, redis_url, logs, broker_url
        self.env = FAST if fast else {}
        self.processes: dict[str, subprocess.Popen] = {}

    def ensure(self, *hosts: str) -> None:
        for host in hosts:
            if host not in self.processes or self.processes[host].poll() is not None:
                log = self.logs / f"{host}.log"
                self.processes[host] = start_workers(
                    self.app, self.redis_url, log, "--host", host, broker_url=self.broker_url, **self.env
                )

    def stop(self) -> None:
        for process in self.processes.values():
            stop_workers(process)

    def __getitem__(self, host: str) -> subprocess.Popen:
        return self.processes[host]


@pytest.fixture(scope="module")
def two_hosts(app, redis_url, broker_url, tmp_path_factory):
    hosts = Hosts(app, redis_url, tmp_path_factory.mktemp("hosts"), broker_url=broker_url)
    try:
        yield hosts
    finally:
        hosts.stop()


@pytest.fixture
def hosts(two_hosts):
    two_hosts.ensure("host-a", "host-b")
    return two_hosts


def running_on(app, task_id: str, timeout: float = 60) -> str:
    """Wait until the task reports progress; the host part of the worker running it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        meta = app.backend.get_task_meta(task_id)
        if meta["status"] == "PROGRESS" and meta["result"].get("phase") == "measuring":
            return meta["worker"].split("@")[1]
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} never ran: {app.backend.get_task_meta(task_id)}")


def group_gone(pgid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def one_cell_sweep(app, client, **options):
    request = SweepRequest(
        optimizations=("baseline",), batch_sizes=(1,), cell_options={**SLOW_CELL, **options}, repeats=1
    )
    sweep = create(app, client, request, "cpu", ttl=3600)
    return sweep, sweep.runs["baseline@bs1#1"]


def test_sigterm_mid_cell_requeues_it_at_once(app, redis_client, hosts, tmp_path):
    sweep, cell = one_cell_sweep(app, redis_client)
    host = running_on(app, cell.task_id)
    stopped_at = datetime.datetime.now(datetime.timezone.utc)
    hosts[host].send_signal(signal.SIGTERM)  # `python -m worker` forwards it: warm shutdown
    [row] = wait_for_sweep(app, redis_client, sweep.id, timeout=60)
    other = "host-b" if host == "host-a" else "host-a"
    assert row["status"] == "ok" and row["worker"] == f"cpu@{other}", row["error"]
    assert row["tries"] == 1  # the interrupted delivery isn't held against the cell
    # The other host started it long before the visibility timeout could have: requeued at once.
    restarted_after = (datetime.datetime.fromisoformat(row["started_at"]) - stopped_at).total_seconds()
    assert restarted_after < VISIBILITY / 2
    assert hosts[host].wait(timeout=30) == 0


def test_sigkill_of_a_worker_mid_cell_redelivers_it_and_leaves_no_cell_process(
    app, redis_client, redis_url, hosts, tmp_path
):
    sweep, cell = one_cell_sweep(app, redis_client)
    host = running_on(app, cell.task_id)
    launcher = hosts[host]
    celery_main = int(subprocess.check_output(["pgrep", "-P", str(launcher.pid)]).split()[0])
    os.kill(celery_main, signal.SIGKILL)  # the worker only: its forkserver and the cell must follow
    launcher.wait(timeout=30)
    assert group_gone(launcher.pid), subprocess.run(["ps", "-g", str(launcher.pid)], capture_output=True).stdout

    [row] = wait_for_sweep(app, redis_client, sweep.id, timeout=90)
    other = "host-b" if host == "host-a" else "host-a"
    assert row["status"] == "ok" and row["worker"] == f"cpu@{other}" and row["tries"] == 2
    frame = collect(app.backend, manifest.load(redis_client, sweep.id), tmp_path, False).frame
    assert list(frame["cell_id"]) == ["baseline@bs1"]


def test_a_hanging_cell_is_ended_by_its_time_limit_and_the_worker_goes_on(app, redis_client, hosts):
    request = SweepRequest(
        optimizations=("baseline", "channels_last"), batch_sizes=(1,), cell_options=TINY_CELL_OPTIONS, repeats=1
    )
    sweep = create(app, redis_client, request, "cpu", ttl=3600, faults={"baseline@bs1#1": "hang"})
    rows = {row["cell_id"]: row for row in wait_for_sweep(app, redis_client, sweep.id, timeout=120)}
    hung = rows["baseline@bs1"]
    assert (hung["status"], hung["error_type"]) == ("failed", "timeout")
    assert f"{TIME_LIMIT} s time limit" in hung["error"] and hung["tries"] == 1
    assert rows["channels_last@bs1"]["status"] == "ok"


def test_a_poison_cell_is_tried_a_bounded_number_of_times_then_stays_failed(app, redis_client, hosts):
    request = SweepRequest(optimizations=("baseline",), batch_sizes=(1, 2), cell_options=TINY_CELL_OPTIONS, repeats=1)
    sweep = create(app, redis_client, request, "cpu", ttl=3600, faults={"baseline@bs1#1": "exit"})
    rows = {row["cell_id"]: row for row in wait_for_sweep(app, redis_client, sweep.id, timeout=120)}
    poison = rows["baseline@bs1"]
    assert (poison["status"], poison["error_type"], poison["tries"]) == ("failed", "crashed", 2)
    assert rows["baseline@bs2"]["status"] == "ok"
    time.sleep(3)  # nothing delivers it again
    assert int(redis_client.hget(keys.deliveries(sweep.id), keys.delivery_field("baseline@bs1#1", 1))) == 2


def test_a_cell_whose_worker_was_lost_too_often_gives_up_without_running(app, redis_client, hosts):
    from shared.manifest import RunEntry, Sweep, new_task_id, save

    spec = CellSpec(**SLOW_CELL, device="cpu")
    run = RunEntry("baseline@bs1#1", spec.cell_id, 1, spec.to_dict(), keys.CPU_QUEUE, task_id=new_task_id())
    sweep = Sweep("lost-workers", "2026-01-01T00:00:00+00:00", {"cells": [spec.cell_id]}, runs={run.run_id: run})
    save(redis_client, sweep, ttl_seconds=600)
    redis_client.hset(keys.deliveries(sweep.id), keys.delivery_field(run.run_id, 1), 2)  # two workers died on it
    task = run.task(sweep.id)
    envelope = app.send_task(TASK_NAME, kwargs=task.kwargs(), task_id=run.task_id, queue=keys.CPU_QUEUE)
    envelope = envelope.get(timeout=60)
    assert envelope["result"]["error_type"] == "gave_up" and envelope["tries"] == 2


def test_duplicate_or_stale_deliveries_never_add_or_replace_rows(app, redis_client, hosts, tmp_path):
    sweep, _ = one_cell_sweep(app, redis_client, min_seconds=0.0)
    wait_for_sweep(app, redis_client, sweep.id)
    from producer.sweep import rerun, send

    [second] = rerun(app, redis_client, manifest.load(redis_client, sweep.id), ["baseline@bs1#1"], ttl=3600)
    [newest] = wait_for_sweep(app, redis_client, sweep.id)
    assert newest["attempts"] == 2

    # A late copy of attempt 1 (under a task id of its own, so its result can be awaited), and a
    # duplicate of attempt 2 (the same task id: it runs again and replaces its own result).
    stale = manifest.RunEntry(
        "baseline@bs1#1", "baseline@bs1", 1, second.spec, keys.CPU_QUEUE, task_id=manifest.new_task_id(), attempts=1
    )
    measured_before = newest["started_at"]
    send(app, sweep, [stale, second], {})
    late = app.AsyncResult(stale.task_id).get(timeout=60)
    # The stale attempt was acknowledged without running: no measurement, no cell process.
    assert late["superseded"] and late["result"]["error_type"] == "superseded"
    assert late["result"]["started_at"] is None and late["result"]["latency_ms_p50"] is None
    # Its result is stored already: the duplicate is acknowledged without running, and the result stays.
    done = f"run baseline@bs1#1 of sweep {sweep.id}: already done, not run again"
    deadline = time.monotonic() + 60
    while not any(done in log.read_text() for log in hosts.logs.glob("*.log")):
        assert time.monotonic() < deadline, "the duplicate of attempt 2 was never handled"
        time.sleep(0.2)
    assert app.backend.get_task_meta(second.task_id)["result"]["result"]["started_at"] == measured_before
    frame = collect(app.backend, manifest.load(redis_client, sweep.id), tmp_path, False).frame
    assert len(frame) == 1
    row = frame.iloc[0]
    assert row["attempts"] == 2 and row["status"] == "ok"
    assert app.backend.get_task_meta(second.task_id)["result"]["attempt"] == 2


def states(app, task_ids: list[str]) -> dict[str, str]:
    """Each task's state; a run that reports progress by its phase (warmup, measuring, ...)."""
    metas = {task_id: app.backend.get_task_meta(task_id) for task_id in task_ids}
    return {
        task_id: meta["result"]["phase"] if meta["status"] == "PROGRESS" else meta["status"]
        for task_id, meta in metas.items()
    }


def test_a_redis_restart_mid_sweep_loses_no_result(broker_url, redis_url, two_hosts, tmp_path):
    """Its own Redis (append-only, as `make sweep` starts it), down for seconds while one run is stored
    and the next measures: the measuring cell reports progress into the outage, and must go on."""
    from celery import Celery

    from shared.connection import connect
    from shared.processes import free_port
    from shared.services import private_redis

    rabbitmq = None if broker_url == redis_url else broker_url
    two_hosts.stop()  # on RabbitMQ they would take this test's cells and store them in the session's Redis

    def probe(url: str) -> Celery:
        return Celery(broker=rabbitmq or url, backend=url)

    data, port = tmp_path / "redis", free_port()
    request = SweepRequest(("baseline", "channels_last"), batch_sizes=(1, 2), cell_options=SLOW_CELL, repeats=1)
    with private_redis(data, port) as url:
        app = probe(url)
        workers = start_workers(app, url, tmp_path / "worker.log", broker_url=rabbitmq, **FAST)
        try:
            client = connect(url)
            sweep = create(app, client, request, "cpu", ttl=3600)
            tasks = [run.task_id for run in sweep.runs.values()]
            deadline = time.monotonic() + 120
            while not {"SUCCESS", "measuring"} <= set((now := states(app, tasks)).values()):
                assert "FAILURE" not in now.values() and time.monotonic() < deadline, now
                time.sleep(0.1)
            stored = next(task_id for task_id, state in now.items() if state == "SUCCESS")
            client.close()
        except BaseException:
            stop_workers(workers)
            raise
    time.sleep(3)  # Redis is down; the measuring cell (3 s or more) reports progress every second
    try:
        with private_redis(data, port) as url:  # the same folder: the append-only file is replayed
            app, client = probe(url), connect(url)
            rows = {row["cell_id"]: row for row in wait_for_sweep(app, client, sweep.id, timeout=180)}
            assert app.backend.get_task_meta(stored)["status"] == "SUCCESS"
            assert {cell: row["status"] for cell, row in rows.items()} == dict.fromkeys(sweep.cell_ids(), "ok"), [
                (cell, row["error"]) for cell, row in rows.items()
            ]
            assert {row["attempts"] for row in rows.values()} == {1}  # nothing was re-run: the cell went on
            client.close()
    finally:
        stop_workers(workers)
    assert "ownership not checked, Redis unreachable" in (tmp_path / "worker.log").read_text()


def test_fault_injection_is_refused_unless_enabled_and_named():
    from shared.contract import CellTask
    from shared.errors import OptbenchError

    spec = CellSpec(**SLOW_CELL, device="cpu").to_dict()
    base = {"sweep_id": "s", "cell_id": "baseline@bs1", "repeat": 1, "attempt": 1, "spec": spec}
    for fault in ("exit", "segfault", "hang", "sleep:2", "sleep:0.5"):
        task, _ = CellTask.from_kwargs({**base, "fault": fault}, allow_faults=True)
        assert task.fault == fault
        with pytest.raises(OptbenchError, match="is not enabled on this worker"):
            CellTask.from_kwargs({**base, "fault": fault}, allow_faults=False)
    for fault in ("sleep:", "sleep:abc", "sleep:-1", "sleep:99999", "rm -rf"):
        with pytest.raises(OptbenchError, match="is not enabled on this worker"):
            CellTask.from_kwargs({**base, "fault": fault}, allow_faults=True)
