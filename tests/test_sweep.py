"""The distributed sweep end to end: real redis-server, real `python -m worker`, the real CLIs."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest

from producer.sweep import SweepRequest, create
from results.collect import COLUMNS
from shared import keys, manifest
from tests.conftest import TINY_CELL_OPTIONS, TINY_SWEEP_ARGS, run_cli, service_env, wait_for_sweep
from tests.test_report import check_report

pytestmark = pytest.mark.timeout(400)


def read_csv(path) -> pd.DataFrame:
    return pd.read_csv(path).set_index("cell_id")


def test_a_small_sweep_yields_a_complete_csv_and_rerun_replaces_one_row(redis_url, workers, tmp_path):
    env = service_env(redis_url, OPTBENCH_RESULTS_DIR=str(tmp_path))
    sweep = run_cli(
        "producer", "sweep", *TINY_SWEEP_ARGS, "--optimizations", "baseline,prune,dynamic_quant",
        "--batch-sizes", "1,2", "--name", "e2e", "--wait", env=env,
    )  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr
    sweep_id = sweep.stdout.strip()
    assert redis_url.split("@")[0].split(":")[-1] not in sweep.stderr  # the password isn't printed

    assert (tmp_path / sweep_id / "report.md").exists()
    check_report(tmp_path / f"{sweep_id}.csv", tmp_path / sweep_id)
    first = read_csv(tmp_path / f"{sweep_id}.csv")
    assert list(pd.read_csv(tmp_path / "benchmark_results.csv").columns) == list(COLUMNS)
    assert sorted(first.index) == sorted(f"{o}@bs{b}" for o in ("baseline", "prune", "dynamic_quant") for b in (1, 2))
    assert set(first["status"]) == {"ok"}, first[["status", "error"]]
    assert set(first["sweep_id"]) == {sweep_id} and set(first["attempts"]) == {1}
    assert set(first["worker"]) == {f"cpu@{first['host'].iloc[0]}"}
    assert (first["latency_ms_p50"] > 0).all() and (first["image_size"] == 32).all()

    rerun = run_cli("producer", "rerun", "--sweep", sweep_id, "--cells", "prune@bs2", "--wait", env=env)
    assert rerun.returncode == 0, rerun.stderr
    second = read_csv(tmp_path / f"{sweep_id}.csv")
    assert second.loc["prune@bs2", "attempts"] == 2 and second.loc["prune@bs2", "status"] == "ok"
    assert second.loc["prune@bs2", "started_at"] > first.loc["prune@bs2", "started_at"]
    others = first.index.drop("prune@bs2")
    pd.testing.assert_frame_equal(first.loc[others], second.loc[others])

    status = run_cli("producer", "status", "--sweep", sweep_id, env=env)
    assert status.returncode == 0 and "prune@bs2" in status.stdout and "6 ok" in status.stdout

    collect = run_cli("results", "collect", "--sweep", "latest", env=env)
    assert collect.returncode == 0, collect.stderr
    assert f"sweep {sweep_id}: 6 cells (6 ok)" in collect.stdout


def test_a_cell_that_kills_its_process_is_a_failed_row_and_the_sweep_goes_on(app, redis_client, workers):
    request = SweepRequest(optimizations=("baseline", "fp16"), batch_sizes=(1, 2), cell_options=TINY_CELL_OPTIONS)
    faults = {"baseline@bs2": "exit", "fp16@bs1": "segfault"}
    sweep = create(app, redis_client, request, "cpu", ttl=3600, faults=faults)
    rows = {row["cell_id"]: row for row in wait_for_sweep(app, redis_client, sweep.id)}

    assert rows["baseline@bs1"]["status"] == rows["fp16@bs2"]["status"] == "ok"
    exited, segfaulted = rows["baseline@bs2"], rows["fp16@bs1"]
    assert (exited["status"], exited["error_type"]) == ("failed", "crashed")
    assert "exited with status 3" in exited["error"] and "fault injection: os._exit(3)" in exited["error"]
    assert (segfaulted["status"], segfaulted["error_type"]) == ("failed", "crashed")
    assert "killed by SIGSEGV" in segfaulted["error"]
    assert exited["attempts"] == 1  # stored once, not redelivered


def test_two_sweeps_at_once_keep_their_cells_and_rows_apart(app, redis_client, workers, tmp_path):
    from results.collect import collect

    small = SweepRequest(optimizations=("baseline",), batch_sizes=(1, 2), cell_options=TINY_CELL_OPTIONS)
    large = SweepRequest(
        optimizations=("baseline", "channels_last"),
        batch_sizes=(1,),
        cell_options={**TINY_CELL_OPTIONS, "image_size": 48},
    )
    first = create(app, redis_client, small, "cpu", ttl=3600)
    second = create(app, redis_client, large, "cpu", ttl=3600)
    wait_for_sweep(app, redis_client, first.id)
    wait_for_sweep(app, redis_client, second.id)

    frames = {}
    for sweep in (first, second):
        frames[sweep.id], _ = collect(app.backend, manifest.load(redis_client, sweep.id), tmp_path, False)
    a, b = frames[first.id], frames[second.id]
    assert sorted(a["cell_id"]) == ["baseline@bs1", "baseline@bs2"] and set(a["image_size"]) == {32}
    assert sorted(b["cell_id"]) == ["baseline@bs1", "channels_last@bs1"] and set(b["image_size"]) == {48}
    assert set(a["sweep_id"]) == {first.id} and set(b["sweep_id"]) == {second.id}
    assert set(a["status"]) == set(b["status"]) == {"ok"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-sizes", "0"], "batch_size must be between 1 and 4096 (got 0)"),
        (["--batch-sizes", "1,x"], "batch sizes must be integers"),
        (["--batch-sizes", "1,,2"], "without empty items"),
        (["--batch-sizes", "2,2"], "duplicate batch size 2"),
        (["--optimizations", "fp16,nonsense"], "unknown optimization 'nonsense'"),
        (["--optimizations", "fp16,fp16"], "duplicate optimization fp16"),
        (["--model", "nonsense"], "unknown model 'nonsense'"),
        (["--optimizations", ""], "optimizations must be a comma-separated list without empty items"),
        (["--batch-sizes=-1"], "batch_size must be between 1 and 4096 (got -1)"),
        (["--batch-sizes", "1.5"], "batch sizes must be integers"),
        (["--batch-sizes", "100000"], "batch_size must be between 1 and 4096 (got 100000)"),
    ],
)
def test_an_invalid_sweep_enqueues_nothing(args, message, redis_url, redis_client):
    keys_before = set(redis_client.keys("*"))
    done = run_cli("producer", "sweep", "--device", "cpu", *args, env=service_env(redis_url))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"python -m producer: error: {done.stderr.split('error: ', 1)[1].strip()}"
    ]
    assert message in done.stderr and "Traceback" not in done.stderr
    assert set(redis_client.keys("*")) == keys_before
    assert redis_client.llen("cpu") == redis_client.llen("gpu") == 0


def test_unknown_sweep_and_unreachable_redis_are_one_line_errors(redis_url, tmp_path):
    unknown = run_cli("producer", "status", "--sweep", "nope", env=service_env(redis_url))
    assert unknown.returncode == 2 and "unknown sweep 'nope'" in unknown.stderr
    env = service_env("redis://:secret-pass@127.0.0.1:1/0")
    down = run_cli("results", "collect", env=env)
    assert down.returncode == 2 and "can't reach Redis at 127.0.0.1:1" in down.stderr
    assert "secret-pass" not in down.stderr and len(down.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("cells", ["fp16@", "fp16@bs0", "fp16,,prune@bs1", "@bs2", "fp16 @bs1"])
def test_a_malformed_cells_list_is_rejected(cells, redis_url):
    done = run_cli("producer", "rerun", "--cells", cells, env=service_env(redis_url))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "cells" in done.stderr or "cell id" in done.stderr


def test_rerun_of_a_cell_the_sweep_lacks_is_rejected(app, redis_client, redis_url):
    request = SweepRequest(optimizations=("baseline",), batch_sizes=(1,), cell_options=TINY_CELL_OPTIONS)
    sweep = create(app, redis_client, request, "cuda", ttl=3600)  # nobody serves `gpu` here: stays queued
    try:
        done = run_cli("producer", "rerun", "--sweep", sweep.id, "--cells", "fp16@bs1", env=service_env(redis_url))
        assert done.returncode == 2 and f"sweep {sweep.id} has no cell 'fp16@bs1'" in done.stderr
        assert manifest.load(redis_client, sweep.id).cells["baseline@bs1"].attempts == 1
    finally:
        redis_client.delete("gpu")


def test_collecting_a_sweep_without_results_writes_pending_rows(app, redis_client, tmp_path):
    from results.collect import collect

    request = SweepRequest(optimizations=("baseline", "fp16"), batch_sizes=(1,), cell_options=TINY_CELL_OPTIONS)
    sweep = create(app, redis_client, request, "cuda", ttl=3600)  # nobody serves `gpu` here: stays queued
    try:
        _, paths = collect(app.backend, manifest.load(redis_client, sweep.id), tmp_path, True)
        written = pd.read_csv(paths[0])
        assert list(written["status"]) == ["queued", "queued"]
        assert list(written["cell_id"]) == ["baseline@bs1", "fp16@bs1"]
        assert written["latency_ms_p50"].isna().all() and (written["attempts"] == 1).all()
    finally:
        redis_client.delete("gpu")


def test_a_task_sent_by_hand_with_a_bad_spec_fails_without_running(app, workers):
    bad = {"model": "densenet121", "optimization": "baseline", "batch_size": -1}
    result = app.send_task(
        "optbench.run_cell", kwargs=dict(sweep_id="x", cell_id="y", attempt=1, spec=bad), queue="cpu"
    )
    envelope = result.get(timeout=60)
    assert envelope["result"]["status"] == "failed" and envelope["result"]["error_type"] == "invalid_spec"
    assert "batch_size" in envelope["result"]["error"]
    kwargs = {"sweep_id": "x", "cell_id": "y", "attempt": "1; DROP", "spec": {"model": "densenet121"}}
    envelope = app.send_task("optbench.run_cell", kwargs=kwargs, queue="cpu").get(timeout=60)
    assert envelope["result"]["error_type"] == "invalid_spec" and "attempt" in envelope["result"]["error"]


def test_the_manifest_keys_are_named_in_one_place(app, redis_client, workers):
    request = SweepRequest(optimizations=("baseline",), batch_sizes=(1,), cell_options=TINY_CELL_OPTIONS)
    sweep = create(app, redis_client, request, "cpu", ttl=3600)
    assert keys.sweep(sweep.id) == f"optbench:sweep:{sweep.id}"
    assert redis_client.zscore("optbench:sweeps", sweep.id) is not None
    meta = json.loads(redis_client.hget(f"optbench:sweep:{sweep.id}", "meta"))
    assert meta["spec"]["cells"] == ["baseline@bs1"]
    assert 0 < redis_client.ttl(f"optbench:sweep:{sweep.id}") <= 3600
    wait_for_sweep(app, redis_client, sweep.id)


def test_sweep_with_start_missing_runs_end_to_end_and_leaves_no_process(tmp_path):
    def ours() -> set[str]:
        listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
        return {line.split()[0] for line in listing.splitlines() if str(tmp_path) in line or "-m worker" in line}

    before = ours()
    env = {k: v for k, v in service_env("").items() if k != "OPTBENCH_REDIS_URL"}
    env["OPTBENCH_RESULTS_DIR"] = str(tmp_path / "results")
    done = run_cli(
        "producer", "sweep", "--start-missing", "--wait", *TINY_SWEEP_ARGS,
        "--optimizations", "baseline", "--batch-sizes", "1", env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "started a private Redis" in done.stderr and "started local workers" in done.stderr
    frame = pd.read_csv(tmp_path / "results" / "benchmark_results.csv")
    assert list(frame["status"]) == ["ok"]
    assert ours() <= before


def test_bad_input_with_start_missing_starts_nothing(tmp_path):
    env = {k: v for k, v in service_env("").items() if k != "OPTBENCH_REDIS_URL"}
    done = run_cli(
        "producer", "sweep", "--start-missing", "--wait", "--optimizations", "nonsense", env=env, cwd=tmp_path
    )
    assert done.returncode == 2 and "unknown optimization 'nonsense'" in done.stderr
    assert not (tmp_path / "run").exists()  # no private Redis, no workers were started
