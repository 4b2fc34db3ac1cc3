"""The distributed sweep end to end: real redis-server, real `python -m worker`, the real CLIs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from producer.sweep import SweepRequest, create
from shared import keys, manifest
from shared.errors import OptbenchError
from shared.state import RUN_COLUMNS
from tests.conftest import TINY_CELL_OPTIONS, TINY_SWEEP_ARGS, run_cli, service_env, wait_for_sweep
from tests.unit.test_report import check_report

pytestmark = pytest.mark.timeout(400)


def exit_status(main, argv: list[str]) -> int:
    """A CLI's exit status, called in-process (argparse exits through SystemExit)."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def read_csv(path, index: str = "cell_id") -> pd.DataFrame:
    return pd.read_csv(path).set_index(index)


def test_a_small_sweep_yields_run_and_cell_csvs_and_rerun_replaces_one_cells_runs(redis_url, workers, tmp_path):
    env = service_env(redis_url, OPTBENCH_RESULTS_DIR=str(tmp_path))
    sweep = run_cli(
        "producer", "sweep", *TINY_SWEEP_ARGS, "--optimizations", "baseline,prune,dynamic_quant",
        "--batch-sizes", "1,2", "--repeats", "2", "--name", "e2e", "--wait", env=env,
    )  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr
    sweep_id = sweep.stdout.strip()
    assert redis_url.split("@")[0].split(":")[-1] not in sweep.stderr  # the password isn't printed
    assert "6 cells x 2 runs = 12 runs on cpu, interleaved round by round" in sweep.stderr

    assert (tmp_path / sweep_id / "report.md").exists()
    check_report(tmp_path / f"{sweep_id}.csv", tmp_path / f"{sweep_id}_runs.csv", tmp_path / sweep_id)
    cells = [f"{o}@bs{b}" for o in ("baseline", "prune", "dynamic_quant") for b in (1, 2)]
    runs = read_csv(tmp_path / f"{sweep_id}_runs.csv", "run_id")
    assert sorted(runs.reset_index().columns) == sorted(RUN_COLUMNS)
    assert sorted(runs.index) == sorted(f"{cell}#{repeat}" for cell in cells for repeat in (1, 2))
    assert set(runs["status"]) == {"ok"}, runs[["status", "error"]]
    # Round by round: one worker runs one cell at a time, so every first run started before any second run.
    started = runs["started_at"].groupby(runs["repeat"])
    assert started.max()[1] < started.min()[2]

    first = read_csv(tmp_path / f"{sweep_id}.csv")
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "benchmark_results.csv"), pd.read_csv(tmp_path / f"{sweep_id}.csv")
    )
    assert sorted(first.index) == sorted(cells)
    assert set(first["status"]) == {"ok"} and set(first["repeats"]) == set(first["repeats_ok"]) == {2}
    assert set(first["sweep_id"]) == {sweep_id} and set(first["attempts"]) == {1}
    assert set(first["worker"]) == {f"cpu@{first['host'].iloc[0]}"}
    assert (first["latency_ms_p50"] > 0).all() and (first["image_size"] == 32).all()
    # Tiny cells time a few milliseconds, mostly too short for the CPU-wait signal (null); a run that
    # waited for a CPU anyway is left out of the statistics, and the counts say so.
    assert (first["runs_used"] + first["contended_runs"] == 2).all()
    both = first[first["runs_used"] == 2]
    assert (both["throughput_ci_low"] <= both["throughput_sps"]).all()
    assert (both["throughput_sps"] <= both["throughput_ci_high"]).all()
    assert pd.isna(first.loc["baseline@bs1", "verdict"])  # a baseline row has no verdict
    assert set(first.loc[["prune@bs1", "prune@bs2"], "verdict"]) <= {"faster", "slower", "equivalent", "inconclusive"}
    for batch in (1, 2):  # an in-run interval where prune kept its two runs; none where a contended run was left out
        prune = first.loc[f"prune@bs{batch}"]
        if prune["runs_used"] == 2:
            assert prune["speedup_method"].startswith("in_run_") and prune["speedup_ci_low"] > 0
        else:
            assert prune["speedup_method"] == "insufficient_runs" and pd.isna(prune["speedup_ci_low"])

    rerun = run_cli("producer", "rerun", "--sweep", sweep_id, "--cells", "prune@bs2", "--wait", env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert "re-enqueued prune@bs2#1 (attempt 2)" in rerun.stderr and "re-enqueued prune@bs2#2" in rerun.stderr
    second = read_csv(tmp_path / f"{sweep_id}.csv")
    assert second.loc["prune@bs2", "attempts"] == 2 and second.loc["prune@bs2", "status"] == "ok"
    rerun_runs = read_csv(tmp_path / f"{sweep_id}_runs.csv", "run_id")
    assert (rerun_runs.loc[["prune@bs2#1", "prune@bs2#2"], "attempts"] == 2).all()
    assert rerun_runs.loc["prune@bs2#1", "started_at"] > runs.loc["prune@bs2#2", "started_at"]
    others = runs.index.drop(["prune@bs2#1", "prune@bs2#2"])
    pd.testing.assert_frame_equal(runs.loc[others], rerun_runs.loc[others])

    status = run_cli("producer", "status", "--sweep", sweep_id, env=env)
    assert status.returncode == 0 and "prune@bs2#2" in status.stdout and "12 ok" in status.stdout

    collect = run_cli("results", "collect", "--sweep", "latest", env=env)
    assert collect.returncode == 0, collect.stderr
    assert f"sweep {sweep_id}: 6 cells (6 ok), 12 runs" in collect.stdout


def test_a_cell_that_kills_its_process_is_a_failed_row_and_the_sweep_goes_on(app, redis_client, workers):
    request = SweepRequest(
        optimizations=("baseline", "fp16"), batch_sizes=(1, 2), cell_options=TINY_CELL_OPTIONS, repeats=1
    )
    faults = {"baseline@bs2#1": "exit", "fp16@bs1#1": "segfault"}
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

    small = SweepRequest(optimizations=("baseline",), batch_sizes=(1, 2), cell_options=TINY_CELL_OPTIONS, repeats=1)
    large = SweepRequest(
        optimizations=("baseline", "channels_last"),
        batch_sizes=(1,),
        cell_options={**TINY_CELL_OPTIONS, "image_size": 48},
        repeats=1,
    )
    first = create(app, redis_client, small, "cpu", ttl=3600)
    second = create(app, redis_client, large, "cpu", ttl=3600)
    wait_for_sweep(app, redis_client, first.id)
    wait_for_sweep(app, redis_client, second.id)

    frames = {}
    for sweep in (first, second):
        frames[sweep.id] = collect(app.backend, manifest.load(redis_client, sweep.id), tmp_path, False).frame
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
        (["--model", "timm:resnet_nope"], "unknown timm model 'resnet_nope'"),
        (["--model", "pkg.mod:"], "malformed model 'pkg.mod:'"),
        (["--model", ".py:build"], "the file path is empty"),
        (["--model", "resnet18,,resnet50"], "models must be a comma-separated list without empty items"),
        (["--model", "resnet18,torchvision:resnet18"], "model resnet18 appears twice"),
        (["--model", "resnet18,resnet50", "--model-kwargs", '{"num_classes": 10}'], "apply to one model"),
        (["--model-kwargs", "{num_classes: 10}"], "model kwargs must be a JSON object"),
        (["--model-kwargs", "[1, 2]"], "model kwargs must be a JSON object of keyword arguments"),
        (["--input-shape", "3,x,32"], "input shape must be comma-separated integers"),
        (["--model", "pkg.models:build", "--weights", "pretrained"], "weights pretrained are torchvision's or timm's"),
        (["--optimizations", ""], "optimizations must be a comma-separated list without empty items"),
        (["--batch-sizes=-1"], "batch_size must be between 1 and 4096 (got -1)"),
        (["--batch-sizes", "1.5"], "batch sizes must be integers"),
        (["--batch-sizes", "100000"], "batch_size must be between 1 and 4096 (got 100000)"),
        (["--repeats", "0"], "repeats must be between 1 and 100 (got 0)"),
        (["--repeats", "three"], "repeats must be auto or a whole number of runs per cell (got 'three')"),
        (["--max-repeats", "1"], "max repeats must be an integer between 2 and 100 (got 1)"),
        (["--max-repeats", "x"], "argument --max-repeats: invalid int value: 'x'"),
        (["--time-budget", "0"], "time budget must be a positive number of seconds or none (got 0.0)"),
        (["--time-budget", "soon"], "time budget must be seconds or none (got 'soon')"),
        (["--optimizations", "fp16 + bf16"], "optimization 'fp16 + bf16' sets the precision twice"),
        (["--optimizations", "fp16+channels_last,fp16 + channels_last"], "duplicate optimization fp16+channels_last"),
    ],
)
def test_an_invalid_sweep_enqueues_nothing(args, message, redis_url, redis_client, monkeypatch, capsys):
    """In-process: the producer validates before it connects, so no subprocess (and no import) is needed."""
    from producer.__main__ import main

    monkeypatch.setenv("OPTBENCH_REDIS_URL", redis_url)
    keys_before = set(redis_client.keys("*"))
    assert exit_status(main, ["sweep", "--device", "cpu", *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith("python -m producer")
    assert message in err and "Traceback" not in err
    assert set(redis_client.keys("*")) == keys_before
    assert redis_client.llen(keys.CPU_QUEUE) == redis_client.llen(keys.GPU_QUEUE) == 0


def test_unknown_sweep_and_unreachable_redis_are_one_line_errors(redis_url, tmp_path):
    unknown = run_cli("producer", "status", "--sweep", "nope", env=service_env(redis_url))
    assert unknown.returncode == 2 and "unknown sweep 'nope'" in unknown.stderr
    env = service_env("redis://:secret-pass@127.0.0.1:1/0")
    down = run_cli("results", "collect", env=env)
    assert down.returncode == 2 and "can't reach Redis at 127.0.0.1:1" in down.stderr
    assert "secret-pass" not in down.stderr and len(down.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("cells", ["fp16@", "fp16@bs0", "fp16,,prune@bs1", "@bs2", "fp16@bs1#0", "nonsense@bs1"])
def test_a_malformed_cells_list_is_rejected(cells, redis_url, monkeypatch, capsys):
    from producer.__main__ import main

    monkeypatch.setenv("OPTBENCH_REDIS_URL", redis_url)
    assert exit_status(main, ["rerun", "--cells", cells]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and ("cells" in err or "cell id" in err or "optimization" in err)


def test_names_with_spaces_are_normalized_so_their_cells_can_be_rerun_by_name():
    from producer.sweep import parse_cell_ids, plan

    [cell] = plan(SweepRequest(optimizations=(" fp16 + channels_last ",), batch_sizes=(1,), repeats=1), "cpu").values()
    assert cell.optimization == "fp16+channels_last" and cell.cell_id == "fp16+channels_last@bs1"
    assert parse_cell_ids("fp16 + channels_last@bs1,fp16@bs2#3") == ("fp16+channels_last@bs1", "fp16@bs2#3")


def test_an_auto_sweep_on_a_cpu_has_a_time_budget_by_default_and_none_on_a_gpu_or_when_asked():
    from producer.sweep import DEFAULT_TIME_BUDGETS, parse_time_budget, time_budget_for

    assert time_budget_for(SweepRequest(), "cpu") == DEFAULT_TIME_BUDGETS["cpu"] == 300.0
    assert time_budget_for(SweepRequest(), "cuda") is None
    assert time_budget_for(SweepRequest(time_budget=parse_time_budget("none")), "cpu") is None
    assert time_budget_for(SweepRequest(time_budget=parse_time_budget("90")), "cuda") == 90.0


def test_runs_are_enqueued_round_by_round_in_an_order_shuffled_per_round_from_the_recorded_seed():
    from producer.sweep import enqueue_order

    cells = [f"c{i}@bs1" for i in range(8)]
    order = enqueue_order(cells, repeats=3, seed=7)
    rounds = [order[i * 8 : (i + 1) * 8] for i in range(3)]
    assert [sorted(r) for r in rounds] == [sorted(f"{c}#{n}" for c in cells) for n in (1, 2, 3)]
    assert len({tuple(x.split("#")[0] for x in r) for r in rounds}) > 1  # each round has its own order
    assert enqueue_order(cells, repeats=3, seed=7) == order != enqueue_order(cells, repeats=3, seed=8)


def test_a_cpu_sweep_ignores_how_many_gpu_models_are_online(app, redis_url, redis_client, workers, monkeypatch):
    from producer import __main__ as cli

    online = {keys.CPU_QUEUE, keys.GPU_QUEUE, keys.gpu_model_queue("NVIDIA H200"), keys.gpu_model_queue("NVIDIA A100")}
    monkeypatch.setattr(cli, "online_queues", lambda app: online)  # as if two GPU models were online
    monkeypatch.setenv("OPTBENCH_REDIS_URL", redis_url)
    args = ["sweep", *TINY_SWEEP_ARGS, "--optimizations", "baseline", "--batch-sizes", "1"]
    assert cli.main(args) == 0
    wait_for_sweep(app, redis_client, manifest.latest_id(redis_client))
    with pytest.raises(OptbenchError, match="several GPU models are online"):  # a CUDA sweep must still choose
        cli.gpu_queue_for(None, {q for q in online if q.startswith(keys.GPU_MODEL_QUEUE_PREFIX)})


def test_wait_says_no_worker_serves_the_queue_and_gives_up_after_the_stall_timeout(
    redis_url, redis_client, monkeypatch, capsys
):
    from producer.__main__ import main

    monkeypatch.setenv("OPTBENCH_REDIS_URL", redis_url)
    args = ["sweep", *TINY_SWEEP_ARGS, "--device", "cuda", "--optimizations", "baseline", "--batch-sizes", "1"]
    try:
        assert main([*args, "--wait", "--stall-timeout", "2"]) == 3  # nobody serves `optbench.gpu` in these tests
    finally:
        redis_client.delete(keys.GPU_QUEUE)
    err = capsys.readouterr().err
    assert "warning: 1 runs wait in queue 'optbench.gpu', which no online worker consumes" in err
    assert "made no progress for 2 s (1 runs wait in queue 'optbench.gpu', which no online worker consumes)" in err


def test_the_sweep_index_forgets_sweeps_whose_manifest_expired(app, redis_client):
    request = SweepRequest(optimizations=("baseline",), batch_sizes=(1,), cell_options=TINY_CELL_OPTIONS, repeats=1)
    older = create(app, redis_client, request, "cuda", ttl=3600)
    newer = create(app, redis_client, request, "cuda", ttl=3600)
    redis_client.delete(keys.GPU_QUEUE)
    redis_client.delete(keys.sweep(newer.id))  # as if it had expired
    assert manifest.latest_id(redis_client) == older.id
    assert redis_client.zscore(keys.SWEEPS, newer.id) is None


def test_a_rerun_never_overwrites_a_concurrent_attempt(app, redis_client):
    request = SweepRequest(optimizations=("baseline",), batch_sizes=(1,), cell_options=TINY_CELL_OPTIONS, repeats=2)
    sweep = create(app, redis_client, request, "cuda", ttl=3600)
    redis_client.delete(keys.GPU_QUEUE)
    flower_task = manifest.new_task_id()  # a re-run sent through Flower claims attempt 2 first
    assert manifest.claim(redis_client, sweep.id, "baseline@bs1#2", 2, flower_task)
    entry = manifest.new_attempt(redis_client, sweep.id, "baseline@bs1#2")  # the producer's re-run, from a stale read
    assert entry.attempts == 3 and entry.task_id != flower_task
    assert not manifest.claim(redis_client, sweep.id, "baseline@bs1#2", 2, flower_task)  # now superseded

    # Many re-runs at once (producers and Flower): each gets its own attempt, none is lost.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:
        entries = list(pool.map(lambda _: manifest.new_attempt(redis_client, sweep.id, "baseline@bs1#1"), range(40)))
    assert sorted(e.attempts for e in entries) == list(range(2, 42))
    assert len({e.task_id for e in entries}) == 40
    final = manifest.load(redis_client, sweep.id).runs["baseline@bs1#1"]
    assert final.attempts == 41 and final.task_id == max(entries, key=lambda e: e.attempts).task_id


def test_rerun_of_a_cell_the_sweep_lacks_is_rejected(app, redis_client, redis_url):
    request = SweepRequest(optimizations=("baseline",), batch_sizes=(1,), cell_options=TINY_CELL_OPTIONS, repeats=1)
    sweep = create(app, redis_client, request, "cuda", ttl=3600)  # nobody serves `gpu` here: stays queued
    try:
        done = run_cli("producer", "rerun", "--sweep", sweep.id, "--cells", "fp16@bs1", env=service_env(redis_url))
        assert done.returncode == 2 and f"sweep {sweep.id} has no cell 'fp16@bs1'" in done.stderr
        assert manifest.load(redis_client, sweep.id).runs["baseline@bs1#1"].attempts == 1
    finally:
        redis_client.delete(keys.GPU_QUEUE)


def test_collecting_a_sweep_without_results_writes_pending_rows(app, redis_client, tmp_path):
    from results.collect import collect

    request = SweepRequest(
        optimizations=("baseline", "fp16"), batch_sizes=(1,), cell_options=TINY_CELL_OPTIONS, repeats=1
    )
    sweep = create(app, redis_client, request, "cuda", ttl=3600)  # nobody serves `gpu` here: stays queued
    try:
        written = pd.read_csv(collect(app.backend, manifest.load(redis_client, sweep.id), tmp_path, True).cells)
        assert list(written["status"]) == ["queued", "queued"]
        assert list(written["cell_id"]) == ["baseline@bs1", "fp16@bs1"]
        assert written["latency_ms_p50"].isna().all() and (written["attempts"] == 1).all()
    finally:
        redis_client.delete(keys.GPU_QUEUE)


def test_a_task_sent_by_hand_with_a_bad_spec_fails_without_running(app, workers):
    bad = {"model": "densenet121", "optimization": "baseline", "batch_size": -1}
    result = app.send_task(
        "optbench.run_cell", kwargs=dict(sweep_id="x", cell_id="y", repeat=1, attempt=1, spec=bad), queue=keys.CPU_QUEUE
    )
    envelope = result.get(timeout=60)
    assert envelope["result"]["status"] == "failed" and envelope["result"]["error_type"] == "invalid_spec"
    assert "batch_size" in envelope["result"]["error"]
    kwargs = {"sweep_id": "x", "cell_id": "y", "repeat": 1, "attempt": "1; DROP", "spec": {"model": "densenet121"}}
    envelope = app.send_task("optbench.run_cell", kwargs=kwargs, queue=keys.CPU_QUEUE).get(timeout=60)
    assert envelope["result"]["error_type"] == "invalid_spec" and "attempt" in envelope["result"]["error"]


def test_the_manifest_keys_are_named_in_one_place(app, redis_client, workers):
    request = SweepRequest(optimizations=("baseline",), batch_sizes=(1,), cell_options=TINY_CELL_OPTIONS, repeats=1)
    sweep = create(app, redis_client, request, "cpu", ttl=3600)
    assert keys.sweep(sweep.id) == f"optbench:sweep:{sweep.id}"
    assert redis_client.zscore("optbench:sweeps", sweep.id) is not None
    meta = json.loads(redis_client.hget(f"optbench:sweep:{sweep.id}", "meta"))
    assert meta["spec"]["cells"] == ["baseline@bs1"]
    assert 0 < redis_client.ttl(f"optbench:sweep:{sweep.id}") <= 3600
    wait_for_sweep(app, redis_client, sweep.id)


def processes_under(folder) -> list[str]:
    """Processes (but this one) whose working directory, command line or environment names `folder`:
    redis-server, rabbitmq-server and its port mapper (HOME is its data folder), `python -m worker`,
    its Celery workers and their forkservers all start there."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/environ", "rb") as handle:
                environ = handle.read().decode(errors="replace")
        except OSError:
            continue
        named = cwd.startswith(str(folder)) or str(folder) in cmdline or f"HOME={folder}" in environ
        if int(pid) != os.getpid() and named:
            found.append(f"{pid}: {cmdline[:120]}")
    return found


def processes_left(folder, grace: float = 30) -> list[str]:
    """`processes_under(folder)` once they had `grace` seconds to exit (a forkserver follows its worker)."""
    deadline = time.monotonic() + grace
    while (left := processes_under(folder)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_sigterm_stops_what_make_sweep_started_and_resume_finishes_the_sweep(broker, tmp_path):
    """`make sweep [BROKER=rabbitmq]` in its embedded mode, stopped by SIGTERM (a cancelled CI job), then
    `make resume`."""
    env = {k: v for k, v in service_env("").items() if k not in ("OPTBENCH_REDIS_URL", "OPTBENCH_BROKER_URL")}
    env["OPTBENCH_RESULTS_DIR"] = str(tmp_path / "results")
    env["OPTBENCH_BROKER"] = broker  # what `make sweep BROKER=...` passes as --broker
    args = ["--optimizations", "baseline,channels_last", "--batch-sizes", "1", "--min-seconds", "1", "--repeats", "2"]
    command = [sys.executable, "-m", "producer", "sweep", "--start-missing", "--wait", *TINY_SWEEP_ARGS, *args]
    with open(tmp_path / "sweep.log", "wb") as log:
        sweep = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=log)
    try:
        sweep_id = sweep.stdout.readline().decode().strip()  # printed once the runs are enqueued
        deadline = time.monotonic() + 60
        while not re.search(r"^(ok|failed) ", (tmp_path / "sweep.log").read_text(), re.M):
            assert time.monotonic() < deadline, (tmp_path / "sweep.log").read_text()
            time.sleep(0.2)  # stop it part-way: once the first run has finished
        sweep.send_signal(signal.SIGTERM)
        assert sweep.wait(timeout=90) == 128 + signal.SIGTERM
    finally:
        if sweep.poll() is None:
            sweep.kill()
    stderr = (tmp_path / "sweep.log").read_text()
    assert f"resume it with `make resume SWEEP={sweep_id}`" in stderr, stderr
    started = "the private Redis and the private RabbitMQ" if broker == "rabbitmq" else "the private Redis"
    assert f"stopped {started} and the local workers this command started" in stderr
    assert processes_left(tmp_path) == []  # no redis-server, rabbitmq-server, epmd, worker or Celery child left

    done = run_cli("producer", "resume", "--start-missing", "--sweep", sweep_id, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "started a private Redis" in done.stderr and "started local workers" in done.stderr
    assert ("started a private RabbitMQ" in done.stderr) == (broker == "rabbitmq")
    runs = pd.read_csv(tmp_path / "results" / f"{sweep_id}_runs.csv")
    assert sorted(runs["run_id"]) == ["baseline@bs1#1", "baseline@bs1#2", "channels_last@bs1#1", "channels_last@bs1#2"]
    assert set(runs["status"]) == {"ok"}
    assert (tmp_path / "results" / sweep_id / "report.md").exists()
    assert processes_left(tmp_path) == []


def test_bad_input_with_start_missing_starts_nothing(tmp_path):
    env = {k: v for k, v in service_env("").items() if k != "OPTBENCH_REDIS_URL"}
    done = run_cli(
        "producer", "sweep", "--start-missing", "--wait", "--optimizations", "nonsense", env=env, cwd=tmp_path
    )
    assert done.returncode == 2 and "unknown optimization 'nonsense'" in done.stderr
    assert not (tmp_path / "run").exists()  # no private Redis, no workers were started
