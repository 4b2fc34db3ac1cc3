"""Verdicts end to end on this CPU: an A/A pair is never faster or slower under a noisy neighbour, a real effect is.

`aa_control` is the baseline measured again as a cell of its own, so any speed difference between the
two is noise; `channels_last` runs SqueezeNet at 192 px 2-3x faster on this VM's CPUs (1.3-1.8x at
96 px, too close to the noise: a CI run once measured 1.36x [1.00x, ...] there). A CPU-bound process
competes for the two cores during the second round only: the runs it hits are flagged by their noise
signal and left out of the statistics, and the verdicts must not change.

`prune` is no A/A pair on this VM, though it computes the same dense kernels: within one worker it ran
1.28x [1.18x, 1.40x] faster than the baseline over 11 rounds, while separate interpreters showed no
difference (docs/notes/2026-11-vm-findings.md, "prune against baseline: an A/A pair that is not one").
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from producer.sweep import SweepRequest, create
from results.collect import collect
from shared import manifest
from shared.state import FINISHED, sweep_rows
from tests.conftest import wait_for_sweep

pytestmark = [pytest.mark.timeout(700), pytest.mark.serial]  # a noisy neighbour of its own only

CELLS = {  # small enough for seconds per run, large enough that channels_last matters
    "model": "squeezenet1_1",
    "image_size": 192,
    "warmup_iters": 3,
    "warmup_seconds": 0.2,
    "min_iters": 20,
    "min_seconds": 0.5,
}
# Fresh processes of one cell land in speed modes 20-35% apart on this VM (p50 1.9 or 2.6 ms for the same
# SqueezeNet cell, whatever the neighbours do), and the whole VM runs up to 2x slower for minutes at a time:
# the per-round ratio's log has a standard deviation of 0.15-0.25. With 11 usable rounds and a 10% minimum
# effect (`--min-effect 0.10`, what a user of such a host should set), a simulation of that noise gives an
# A/A pair called "faster" or "slower" in under 0.3% of runs and misses a 1.6x effect in under 1%.
REPEATS, BATCH_SIZE, MIN_EFFECT = 12, 2, 0.10
POLL_SECONDS = 1.0  # reading every run's result is CPU work beside the cells: not faster than this


def finished_runs(app, client, sweep_id: str) -> int:
    rows = sweep_rows(app.backend, manifest.load(client, sweep_id))
    return sum(row["status"] in FINISHED for row in rows)


def wait_until_finished(app, client, sweep_id: str, count: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while finished_runs(app, client, sweep_id) < count:
        assert time.monotonic() < deadline, f"fewer than {count} runs of {sweep_id} finished in {timeout} s"
        time.sleep(POLL_SECONDS)


def test_an_aa_pair_is_never_faster_or_slower_under_a_noisy_neighbour_and_a_real_effect_is_faster(
    app, redis_client, workers, tmp_path
):
    optimizations = ("baseline", "aa_control", "channels_last")
    request = SweepRequest(optimizations, (BATCH_SIZE,), cell_options=CELLS, repeats=REPEATS)
    sweep = create(app, redis_client, request, "cpu", ttl=3600)
    per_round = len(sweep.cell_ids())
    wait_until_finished(app, redis_client, sweep.id, per_round)  # round 1 on a quiet machine
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # a noisy neighbour on the cores
    try:
        wait_until_finished(app, redis_client, sweep.id, 2 * per_round)  # round 2 under contention
    finally:
        hog.kill()
        hog.wait()
    wait_for_sweep(app, redis_client, sweep.id, timeout=500)  # the other rounds quiet again

    written = collect(app.backend, manifest.load(redis_client, sweep.id), tmp_path, False, min_effect=MIN_EFFECT)
    cells = written.frame.set_index("cell_id")
    summary = cells[["speedup", "speedup_ci_low", "speedup_ci_high", "verdict", "runs_used", "contended_runs"]]
    assert set(cells["status"]) == {"ok"}, summary
    assert cells["contended_runs"].sum() >= 1, summary  # the neighbour was seen by the runs it slowed
    # equivalent needs the interval inside ±10%; at this host's noise it may stay inconclusive: both are right
    assert cells.loc[f"aa_control@bs{BATCH_SIZE}", "verdict"] in ("equivalent", "inconclusive"), summary
    assert cells.loc[f"channels_last@bs{BATCH_SIZE}", "verdict"] == "faster", summary
