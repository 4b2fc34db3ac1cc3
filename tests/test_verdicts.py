"""Verdicts end to end on this CPU: an A/A pair stays `no_difference` under a noisy neighbour, a real effect is called.

`prune` computes the same dense kernels as the baseline (its zeros are still multiplied), so any
speed difference between them is noise; `channels_last` runs SqueezeNet ~1.7x faster here. A
CPU-bound process competes for the two cores during the second round only: the runs it hits are
flagged by their noise signal and left out of the statistics, and the verdicts must not change.
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

pytestmark = [pytest.mark.timeout(400), pytest.mark.serial]  # a noisy neighbour of its own only

CELLS = {  # small enough for seconds per run, large enough that channels_last matters
    "model": "squeezenet1_1",
    "image_size": 96,
    "warmup_iters": 3,
    "warmup_seconds": 0.2,
    "min_iters": 20,
    "min_seconds": 0.5,
}
# Fresh processes of one cell land in two speed modes about 20% apart on this VM (p50 2.1 or 2.55 ms for
# the same SqueezeNet cell, whatever the neighbours do): five usable runs can't resolve a 3% effect
# through that, so this test asks for 10% (`--min-effect 0.10`, what a user of such a host should set).
REPEATS, BATCH_SIZES, MIN_EFFECT = 6, (1, 2), 0.10


def finished_runs(app, client, sweep_id: str) -> int:
    rows = sweep_rows(app.backend, manifest.load(client, sweep_id))
    return sum(row["status"] in FINISHED for row in rows)


def wait_until_finished(app, client, sweep_id: str, count: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while finished_runs(app, client, sweep_id) < count:
        assert time.monotonic() < deadline, f"fewer than {count} runs of {sweep_id} finished in {timeout} s"
        time.sleep(0.1)


def test_an_aa_pair_is_no_difference_under_a_noisy_neighbour_and_a_real_effect_is_faster(
    app, redis_client, workers, tmp_path
):
    request = SweepRequest(("baseline", "prune", "channels_last"), BATCH_SIZES, cell_options=CELLS, repeats=REPEATS)
    sweep = create(app, redis_client, request, "cpu", ttl=3600)
    per_round = len(sweep.cell_ids())
    wait_until_finished(app, redis_client, sweep.id, per_round)  # round 1 on a quiet machine
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # a noisy neighbour on the cores
    try:
        wait_until_finished(app, redis_client, sweep.id, 2 * per_round)  # round 2 under contention
    finally:
        hog.kill()
        hog.wait()
    wait_for_sweep(app, redis_client, sweep.id)  # rounds 3 to 6 quiet again

    written = collect(app.backend, manifest.load(redis_client, sweep.id), tmp_path, False, min_effect=MIN_EFFECT)
    cells = written.frame.set_index("cell_id")
    summary = cells[["speedup", "speedup_ci_low", "speedup_ci_high", "verdict", "runs_used", "contended_runs"]]
    assert set(cells["status"]) == {"ok"}, summary
    assert cells["contended_runs"].sum() >= 1, summary  # the neighbour was seen by the runs it slowed
    for batch_size in BATCH_SIZES:
        aa, real = cells.loc[f"prune@bs{batch_size}"], cells.loc[f"channels_last@bs{batch_size}"]
        assert aa["verdict"] == "no_difference", summary
        assert real["verdict"] == "faster", summary
