"""Flower over HTTP, as `make flower` starts it, against a real sweep on real workers."""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from producer.sweep import SweepRequest, create
from results.collect import collect
from shared import keys, manifest
from shared.processes import free_port, stop_process
from tests.conftest import REPO, TINY_CELL_OPTIONS, run_cli, service_env, wait_for_sweep

pytestmark = pytest.mark.timeout(300)
USER, PASSWORD = "optbench", "flower-test-password"


@contextlib.contextmanager
def running_flower(env: dict[str, str], log: Path) -> Iterator[str]:
    """`python -m producer flower` on a free port with basic auth; yields its base URL."""
    port = free_port()
    env = {**env, "OPTBENCH_FLOWER_USER": USER, "OPTBENCH_FLOWER_PASSWORD": PASSWORD}
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "producer", "flower", "--port", str(port)],
            cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if get(base + "/healthcheck", auth=False)[0] == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        stop_process(process, timeout=10)
        raise AssertionError("Flower did not start: " + log.read_text()[-2000:])
    try:
        yield base
    finally:
        stop_process(process, timeout=20)
    time.sleep(1)
    leftover = subprocess.run(["pgrep", "-f", f"flower --address=127.0.0.1 --port={port}"], capture_output=True)
    assert leftover.returncode == 1, "Flower outlived `python -m producer flower`"


@pytest.fixture(scope="module")
def flower(redis_url, workers, tmp_path_factory):
    with running_flower(service_env(redis_url), tmp_path_factory.mktemp("flower") / "flower.log") as base:
        yield base


def request(url: str, auth: bool = True, body: dict | None = None) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def get(url: str, auth: bool = True) -> tuple[int, str]:
    return request(url, auth)


def poll_json(url: str, until, timeout: float = 60):
    """GET `url` until it answers 200 with JSON that satisfies `until`; the last JSON seen.

    Flower learns about a task from its event stream, asynchronously: until then it answers 404
    (`Unknown task '<id>'`, as text), or a list without the task. Both mean "not yet".
    """
    deadline, seen = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        status, body = get(url)
        if status == 200:
            seen = json.loads(body)
            if until(seen):
                return seen
        else:
            assert status == 404, (status, body)
        time.sleep(0.3)
    raise AssertionError(f"{url} never answered as expected; last JSON: {seen}")


def test_healthcheck_answers_and_the_api_needs_credentials(flower):
    assert get(flower + "/healthcheck", auth=False) == (200, "OK")
    assert get(flower + "/api/workers", auth=False)[0] == 401
    assert get(flower + "/api/workers")[0] == 200


def test_workers_are_listed_with_the_hardware_they_are_pinned_to(flower):
    status, body = get(flower + "/api/workers?refresh=1")
    assert status == 200
    workers = json.loads(body)
    [name] = [name for name in workers if name.startswith("cpu@")]
    assert workers[name]["conf"]["optbench_gpu"] == "none (CPU worker)"
    assert [queue["name"] for queue in workers[name]["active_queues"]] == [keys.CPU_QUEUE]


def test_a_sweep_shows_in_flower_and_a_rerun_through_flower_lands_in_its_results(flower, app, redis_client, tmp_path):
    request_ = SweepRequest(
        optimizations=("baseline", "prune"), batch_sizes=(1,), cell_options=TINY_CELL_OPTIONS, repeats=1
    )
    sweep = create(app, redis_client, request_, "cpu", ttl=3600)
    wait_for_sweep(app, redis_client, sweep.id)

    def ours(tasks: dict) -> dict[str, str]:
        return {t["name"]: t["state"] for t in tasks.values() if sweep.id in (t.get("kwargs") or "")}

    tasks = poll_json(
        flower + "/api/tasks?limit=1000",
        until=lambda tasks: len(ours(tasks)) == 2 and set(ours(tasks).values()) == {"SUCCESS"},
    )
    # Flower's task list names each task by its run and sweep, not only `optbench.run_cell` and a UUID.
    assert set(ours(tasks)) == {f"optbench.run_cell {run} [{sweep.id}]" for run in ("baseline@bs1#1", "prune@bs1#1")}

    run = sweep.runs["prune@bs1#1"]
    kwargs = {**run.task(sweep.id).kwargs(), "attempt": 2}
    body = {"kwargs": kwargs, "queue": keys.CPU_QUEUE}
    status, body = request(flower + "/api/task/async-apply/optbench.run_cell", body=body)
    assert status == 200, body
    flower_task = json.loads(body)["task-id"]
    app.AsyncResult(flower_task).get(timeout=120)
    frame = collect(app.backend, manifest.load(redis_client, sweep.id), tmp_path, False).frame
    rows = frame.set_index("cell_id")
    assert rows.loc["prune@bs1", "attempts"] == 2 and rows.loc["prune@bs1", "status"] == "ok"
    assert manifest.load(redis_client, sweep.id).runs["prune@bs1#1"].task_id == flower_task
    assert rows.loc["baseline@bs1", "attempts"] == 1


def test_a_running_cell_reports_its_phase_to_flower(flower, app, redis_client):
    slow = {**TINY_CELL_OPTIONS, "min_seconds": 6.0}
    sweep = create(app, redis_client, SweepRequest(("baseline",), (1,), cell_options=slow, repeats=1), "cpu", ttl=3600)
    task_id = sweep.runs["baseline@bs1#1"].task_id
    info = poll_json(
        f"{flower}/api/task/info/{task_id}",
        until=lambda info: info.get("state") == "PROGRESS" and '"phase": "measuring"' in (info.get("result") or ""),
    )
    # The result backend is written before the event is sent, so it already says PROGRESS.
    status, body = get(f"{flower}/api/task/result/{task_id}")
    assert status == 200 and json.loads(body).get("state") == "PROGRESS", body
    progress = json.loads(info["result"])
    assert progress["phase"] == "measuring" and progress["run_id"] == "baseline@bs1#1"
    assert progress["iterations"] >= 1 and progress["elapsed"] >= 0
    wait_for_sweep(app, redis_client, sweep.id)


def test_flower_refuses_a_public_address_without_credentials(redis_url):
    env = {k: v for k, v in service_env(redis_url).items() if "FLOWER" not in k}
    done = run_cli("producer", "flower", "--address", "0.0.0.0", env=env, timeout=60)
    assert done.returncode == 2
    assert "refusing to serve Flower on 0.0.0.0 without credentials" in done.stderr
