"""The fleet in containers: a sweep across two worker hosts, the image's qualities, and host faults mid-cell.

Not part of `make test`: `make fleet-test` runs it (root, Debian's docker.io; ~15 min the first time, images
cached after). Each fault case asserts nothing lost and one row per run, and prints its recovery time.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import requests

from shared import manifest
from shared.connection import connect
from shared.state import FINISHED, sweep_rows
from tests.conftest import run_cli
from tests.fleet import docker as d
from tests.fleet.fleet import (
    FLOWER_USER,
    HOSTS,
    NETWORK,
    SUMMARY,
    WORKER_IMAGE,
    Fleet,
    answers,
    container,
    wait_until,
)

pytestmark = pytest.mark.timeout(3600)

RECOVERY_LIMIT = 60.0  # seconds from a fault until the run runs on the other host
# A cell long enough to be hit mid-measurement: the small model, measured for 40 s.
LONG_CELL = ("--model", "mobilenet_v3_small", "--image-size", "32", "--weights", "random", "--min-seconds", "40")


def producer(fleet: Fleet, *args: str, tmp: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """`python -m producer ARGS` on this machine, reaching the head through its loopback ports."""
    env = {**os.environ, "OPTBENCH_REDIS_URL": fleet.redis_url, "OPTBENCH_BROKER_URL": fleet.broker_url,
           "OPTBENCH_RESULTS_DIR": str(tmp / "results")}  # fmt: skip
    return run_cli("producer", *args, env=env, timeout=timeout)


def start_sweep(fleet: Fleet, tmp: Path, *args: str) -> str:
    done = producer(fleet, "sweep", "--device", "cpu", *args, tmp=tmp)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def rows_of(fleet: Fleet, sweep_id: str) -> list[dict]:
    from shared.celery_app import app

    return sweep_rows(app.backend, manifest.load(connect(fleet.redis_url), sweep_id))


def finished(fleet: Fleet, sweep_id: str, timeout: float = 600) -> list[dict]:
    return wait_until(
        lambda: (rows := rows_of(fleet, sweep_id)) and all(r["status"] in FINISHED for r in rows) and rows,
        timeout, f"sweep {sweep_id} finished", 2.0,
    )  # fmt: skip


def running_host(fleet: Fleet, sweep_id: str, not_on: str | None = None, timeout: float = 120) -> str:
    """The host measuring the sweep's only run (waiting for one other than `not_on`)."""

    def host() -> str | None:
        (row,) = rows_of(fleet, sweep_id)
        if row["status"] == "running" and row.get("phase") == "measuring" and row["worker"]:
            name = row["worker"].split("@", 1)[1]
            return name if name != not_on else None
        return None

    return wait_until(host, timeout, f"the run of sweep {sweep_id} measuring{f' off {not_on}' if not_on else ''}",
                      0.5)  # fmt: skip


def one_row_on(fleet: Fleet, sweep_id: str, host: str) -> dict:
    rows = finished(fleet, sweep_id)
    assert len(rows) == 1, rows
    (row,) = rows
    assert row["status"] == "ok", (row["error_type"], row["error"])
    assert row["worker"].split("@", 1)[1] == host and row["host"] == host, row["worker"]
    return row


def restart_host(fleet: Fleet, host: str) -> None:
    d.docker("start", container(host))
    wait_until(lambda: answers(host), 180, f"{host} answering again", 2.0)


def other(host: str) -> str:
    (name,) = [h for h in HOSTS if h != host]
    return name


def test_a_sweep_runs_across_both_hosts_and_the_report_says_so(fleet, tmp_path):
    done = producer(fleet, "sweep", "--device", "cpu", "--model", "resnet18", "--image-size", "64",
                    "--optimizations", "baseline,channels_last", "--batch-sizes", "1", "--repeats", "2", "--wait",
                    tmp=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    runs = pd.read_csv(next((tmp_path / "results").glob("*_runs.csv")))
    assert len(runs) == 4 and set(runs["status"]) == {"ok"}, runs[["run_id", "status", "error"]]
    assert set(runs["host"]) == set(HOSTS), runs[["run_id", "host"]]  # round-robin over the two hosts' workers
    assert set(runs["model"]) == {"resnet18"}
    report = next((tmp_path / "results").glob("*/report.md")).read_text()
    assert "channels_last@bs1" in report and "resnet18" in report
    SUMMARY.append(f"sweep: 4 runs of resnet18 on {', '.join(sorted(set(runs['host'])))}, report written")


def test_the_image_runs_as_a_user_has_a_healthcheck_and_holds_no_secret(fleet):
    config = d.docker("image", "inspect", "-f", "{{.Config.User}} {{json .Config.Healthcheck.Test}}", WORKER_IMAGE)
    assert config.startswith("10001 ") and '"--ping"' in config, config
    assert d.docker("run", "--rm", "--entrypoint", "id", WORKER_IMAGE, "-u") == "10001"
    markers = [*fleet.passwords, *proxy_ca_lines()]
    history = d.docker("history", "--no-trunc", WORKER_IMAGE)
    assert not [m for m in markers if m in history]
    patterns = [arg for marker in markers for arg in ("-e", marker)]
    found = subprocess.run(
        [d.DOCKER, "run", "--rm", "--user", "0", "--entrypoint", "grep", WORKER_IMAGE, "-rlF", *patterns, "/opt",
         "/app", "/etc", "/home", "/root", "/tmp", "/usr/local", "/var"],
        env=d.env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert found.returncode == 1 and found.stdout == "", found.stdout  # grep: 1 is "no line matched"
    for name, port in (("redis", 6379), ("rabbitmq", 5672), ("flower", 5555)):
        bindings = d.docker("port", container(name), f"{port}/tcp").splitlines()
        assert bindings and all(b.startswith("127.0.0.1:") for b in bindings), (name, bindings)
    SUMMARY.append(f"image: user 10001, healthcheck `python -m worker --ping`, no password or proxy CA in "
                   f"{len(history.splitlines()) - 1} layers or its files; head ports on 127.0.0.1 only")  # fmt: skip


def proxy_ca_lines() -> list[str]:
    """A line of each certificate in pip's CA bundle here that no public bundle holds (a proxy's own CA): the
    bundle is passed to the build as a secret, so none of them may be in the image. Public: certifi's bundle
    here and those in the image (pip's vendored one)."""
    import certifi

    cert = d.pip_cert()
    if cert is None:
        return []
    bundles = "find /opt /usr -xdev -name cacert.pem -exec cat {} +"  # pip's vendored certifi, and any other
    public = Path(certifi.where()).read_text() + d.docker("run", "--rm", "--entrypoint", "sh", WORKER_IMAGE, "-c",
                                                          bundles)  # fmt: skip
    known = {"".join(block.split()) for block in PEM.findall(public)}
    return [block.split()[1] for block in PEM.findall(Path(cert).read_text()) if "".join(block.split()) not in known]


PEM = re.compile(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.S)  # a certificate's base64 body


def test_flower_answers_401_without_credentials_and_lists_both_hosts_with_them(fleet):
    assert requests.get(f"{fleet.flower_url}/api/workers", timeout=30).status_code == 401
    auth = (FLOWER_USER, fleet.flower_password)
    workers = wait_until(
        lambda: (r := requests.get(f"{fleet.flower_url}/api/workers?refresh=1", auth=auth, timeout=30)).ok
        and {name.split("@", 1)[1] for name in r.json()} >= set(HOSTS) and r.json(),
        90, "Flower listing both hosts", 3.0,
    )  # fmt: skip
    assert {name.split("@", 1)[1] for name in workers} >= set(HOSTS)


def test_docker_kill_of_a_host_mid_cell_runs_the_cell_on_the_other_host(fleet, tmp_path):
    sweep_id = start_sweep(fleet, tmp_path, *LONG_CELL, "--optimizations", "baseline", "--batch-sizes", "1",
                           "--repeats", "1")  # fmt: skip
    victim = running_host(fleet, sweep_id)
    started = time.monotonic()
    d.docker("kill", container(victim))
    survivor = running_host(fleet, sweep_id, not_on=victim, timeout=RECOVERY_LIMIT)
    recovery = time.monotonic() - started
    one_row_on(fleet, sweep_id, survivor)
    restart_host(fleet, victim)
    SUMMARY.append(f"kill:          docker kill {victim} mid-cell; running on {survivor} after {recovery:.1f} s")


def test_a_partitioned_host_loses_its_run_to_the_other_and_its_late_result_is_dropped(fleet, tmp_path):
    sweep_id = start_sweep(fleet, tmp_path, *LONG_CELL, "--optimizations", "baseline", "--batch-sizes", "1",
                           "--repeats", "1")  # fmt: skip
    victim = running_host(fleet, sweep_id)
    started = time.monotonic()
    d.docker("network", "disconnect", NETWORK, container(victim))
    try:
        survivor = running_host(fleet, sweep_id, not_on=victim, timeout=RECOVERY_LIMIT)
        recovery = time.monotonic() - started
    finally:
        d.docker("network", "connect", "--alias", victim, NETWORK, container(victim))
    row = one_row_on(fleet, sweep_id, survivor)
    wait_until(lambda: "result dropped" in logs(victim), 180, f"{victim} dropping its late result", 3.0)
    assert one_row_on(fleet, sweep_id, survivor) == row  # the newer row stays
    SUMMARY.append(f"partition:     {victim} cut off mid-cell; running on {survivor} after {recovery:.1f} s; "
                   f"its late result dropped when the network came back")  # fmt: skip


def logs(host: str) -> str:
    done = subprocess.run([d.DOCKER, "logs", container(host)], env=d.env(), capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    return done.stdout + done.stderr


def test_a_redis_restart_mid_sweep_loses_no_stored_result(fleet, tmp_path):
    sweep_id = start_sweep(fleet, tmp_path, "--model", "mobilenet_v3_small", "--image-size", "32", "--weights",
                           "random", "--min-seconds", "4", "--optimizations", "baseline,channels_last",
                           "--batch-sizes", "1,2", "--repeats", "2")  # fmt: skip
    done = wait_until(lambda: [r for r in rows_of(fleet, sweep_id) if r["status"] == "ok"], 300, "a first run ok")
    before = {r["run_id"]: r["latency_ms_p50"] for r in done}
    started = time.monotonic()
    d.docker("restart", container("redis"))
    wait_until(lambda: connect(fleet.redis_url, timeout=1.0).ping(), 60, "Redis back", 0.2)
    recovery = time.monotonic() - started
    rows = finished(fleet, sweep_id)
    assert len(rows) == 8 and {r["status"] for r in rows} == {"ok"}, [(r["run_id"], r["status"]) for r in rows]
    assert {r["run_id"]: r["latency_ms_p50"] for r in rows if r["run_id"] in before} == before
    SUMMARY.append(f"redis restart: docker restart redis mid-sweep ({len(before)} of 8 runs stored); answering "
                   f"after {recovery:.1f} s; all 8 runs ok, none lost or repeated")  # fmt: skip


def test_docker_stop_of_a_host_mid_cell_requeues_its_run_to_the_other_host(fleet, tmp_path):
    sweep_id = start_sweep(fleet, tmp_path, *LONG_CELL, "--optimizations", "baseline", "--batch-sizes", "1",
                           "--repeats", "1")  # fmt: skip
    victim = running_host(fleet, sweep_id)
    started = time.monotonic()
    stopping = threading.Thread(target=d.docker, args=("stop", "-t", "60", container(victim)), daemon=True)
    stopping.start()  # SIGTERM; `docker stop` returns once the container has exited
    survivor = running_host(fleet, sweep_id, not_on=victim, timeout=RECOVERY_LIMIT)
    recovery = time.monotonic() - started
    stopping.join(timeout=120)
    one_row_on(fleet, sweep_id, survivor)
    restart_host(fleet, victim)
    SUMMARY.append(f"SIGTERM:       docker stop {victim} mid-cell; running on {survivor} after {recovery:.1f} s")
