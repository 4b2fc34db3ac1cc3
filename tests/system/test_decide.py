"""`--repeats auto` end to end on this CPU: real redis-server, real workers, the real CLI driving the rounds.

The sweep compares a large real effect and an A/A pair with the baseline: `prune_structured` at 90% removes
90% of the channels of `wide_convs` (tests/fixtures/file_models.py: four 512-channel 3x3 convolutions after a
strided stem, so nearly all its arithmetic is in convolutions thinned on both sides), and `aa_control` is the
baseline measured again. At 64 px, batch 2, measured in fresh processes on these VMs: 56-63 ms baseline,
2.6-3.1 ms pruned, 19-24x faster (26x in a sweep of this test), whatever the instruction set: it is less
arithmetic, not a faster kernel. Its 9.7 M parameters (37 MB) keep each run short: Wide ResNet-50, used before
at about 11x, spent most of every run building its 69 M parameters and compressing their 263 MB for the
model-size figure. With `--max-repeats 4` the plan has two looks: after round 3 and after round 4.

- The large effect is decided at the first look and runs no more: its interval clears the band even with 2
  degrees of freedom (at 19x, a sample spread of per-round log ratios up to 0.57 still decides it; these VMs
  show 0.05-0.25).
- A cell still open at round 3 runs round 4 with its baseline; a decided one doesn't. Which cells were open is
  recomputed here from the runs CSV cut at round 3, by the collector's own code, so the test checks exactly
  what the driver did, whatever the noise made of the A/A pair (an interval of 3 rounds at these levels is far
  wider than the ±3% band, so it stays open unless noise alone made a false call: at most 2.5% of sweeps by the
  plan, and then it must have stopped).
- Round 4 runs under a noisy neighbour (a CPU hog): its runs are flagged as contended and left out of the
  intervals, and the run ids, rounds and verdicts in the two CSVs agree.

That an A/A pair is called faster or slower no more often than the stated rate is shown by the simulations
of `tests/unit/test_sequential.py`, which run the same decision code on thousands of sweeps.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pandas as pd
import pytest

from results.collect import cells_frame
from results.sequential import Looks
from shared import manifest
from tests.conftest import REPO, service_env

WIDE_CONVS = REPO / "tests" / "fixtures" / "file_models.py:wide_convs"

pytestmark = [pytest.mark.timeout(900), pytest.mark.serial]  # a noisy neighbour of its own only

ARGS = [
    "--model", f"{WIDE_CONVS}", "--image-size", "64", "--device", "cpu", "--batch-sizes", "2",
    "--weights", "random", "--warmup", "1", "--warmup-seconds", "0", "--min-iters", "3", "--min-seconds", "0.3",
    "--prune-amount", "0.9",
    "--optimizations", "baseline,aa_control,prune_structured", "--repeats", "auto", "--max-repeats", "4",
    "--time-budget", "none",
]  # fmt: skip
# Busy half the time, in 5 ms slices: the cells' threads wait for a CPU well over 10% of the time (contended),
# without the tens-fold slowdown a neighbour that never sleeps inflicts on two OpenMP threads.
NEIGHBOUR = (
    "import time\n"
    "while True:\n"
    "    end = time.perf_counter() + 0.005\n"
    "    while time.perf_counter() < end: pass\n"
    "    time.sleep(0.005)"
)
EFFECT, CONTROL, BASE = "prune_structured@bs2", "aa_control@bs2", "baseline@bs2"


def wait_for_round(client, sweep_id: str, number: int, process: subprocess.Popen, timeout: float = 600) -> bool:
    """Whether the sweep reached round `number` (False when the producer ended first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if int(manifest.load(client, sweep_id).spec.get("rounds", 0)) >= number:
            return True
        time.sleep(0.5)
    return False


def newest_sweep(client, before: set[str], timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = {m.decode() for m in client.zrange("optbench:sweeps", 0, -1)} - before
        if new:
            return new.pop()
        time.sleep(0.2)
    raise AssertionError("the producer made no sweep")


def test_repeats_auto_stops_decided_cells_and_runs_the_open_ones_again(redis_url, redis_client, workers, tmp_path):
    env = service_env(redis_url, OPTBENCH_RESULTS_DIR=str(tmp_path))
    before = {m.decode() for m in redis_client.zrange("optbench:sweeps", 0, -1)}
    producer = subprocess.Popen(
        [sys.executable, "-m", "producer", "sweep", *ARGS, "--wait"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    hog = None
    try:
        sweep_id = newest_sweep(redis_client, before)
        if wait_for_round(redis_client, sweep_id, 4, producer):
            hog = subprocess.Popen([sys.executable, "-c", NEIGHBOUR])  # a noisy neighbour in round 4
        out, err = producer.communicate(timeout=800)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
        if producer.poll() is None:
            producer.kill()
    assert producer.returncode == 0, err[-3000:]
    assert out.strip() == sweep_id
    said = " ".join(err.split())  # rich wraps long lines
    assert "3 cells x 3 runs = 9 runs on cpu" in said and "up to 4 runs per cell" in said, err[-3000:]

    runs = pd.read_csv(tmp_path / f"{sweep_id}_runs.csv")
    cells = pd.read_csv(tmp_path / f"{sweep_id}.csv").set_index("cell_id")
    summary = cells[["repeats", "runs_used", "contended_runs", "speedup", "speedup_ci_low", "speedup_ci_high",
                     "verdict_confidence", "verdict"]]  # fmt: skip
    assert set(runs["status"]) == {"ok"}, runs[["run_id", "status", "error"]]
    # run ids and rounds agree: `<cell>#<round>`, each cell's rounds 1..n without gaps
    assert (runs["run_id"] == runs["cell_id"] + "#" + runs["repeat"].astype(str)).all()
    rounds = runs.groupby("cell_id")["repeat"].agg(sorted).to_dict()
    assert all(r == list(range(1, len(r) + 1)) for r in rounds.values()), rounds
    assert cells["repeats"].to_dict() == {cell: len(r) for cell, r in rounds.items()}, summary

    # The large effect: decided at the first look, and it ran no fourth round.
    assert cells.loc[EFFECT, "verdict"] == "faster" and rounds[EFFECT] == [1, 2, 3], summary

    # Exactly the cells open after round 3 (recomputed from the runs CSV) ran round 4, with their baseline.
    first_three = runs[runs["repeat"] <= 3]
    at_look_3 = cells_frame(first_three, looks=Looks.auto(4)).set_index("cell_id")
    open_at_3 = set(at_look_3.index[at_look_3["verdict"] == "inconclusive"])
    fourth = set(runs.loc[runs["repeat"] == 4, "cell_id"])
    assert fourth == (open_at_3 | {BASE} if open_at_3 else set()), (open_at_3, fourth)
    if CONTROL in open_at_3:  # what noise makes of an A/A pair in 3 rounds: far wider than ±3%
        assert len(rounds[CONTROL]) == 4
        assert "--repeats auto stopped after round 4" in said
        hogged = runs[runs["repeat"] == 4]
        assert (hogged["noise_cpu_wait_fraction"] >= 0.10).any(), hogged  # the neighbour was seen

    # The collector's verdicts are those of the final runs at each cell's own look.
    again = cells_frame(runs, looks=Looks.auto(4)).set_index("cell_id")
    assert again["verdict"].fillna("").to_dict() == cells["verdict"].fillna("").to_dict()
    assert (cells.loc[[EFFECT, CONTROL], "comparisons"] == 2).all()
    ok = runs.groupby("cell_id").size()
    assert (cells["runs_used"] + cells["contended_runs"] == ok.reindex(cells.index)).all(), summary

    report = (tmp_path / sweep_id / "report.md").read_text()
    assert report.index("## What to ship") < report.index("## Against the fp32 baseline")
    status = subprocess.run(
        [sys.executable, "-m", "producer", "status", "--sweep", sweep_id],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert status.returncode == 0 and "verdicts so far (stopped:" in status.stdout, status.stderr
