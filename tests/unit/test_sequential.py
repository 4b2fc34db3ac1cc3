"""results.sequential: `--repeats auto` and many verdicts keep the stated error rate, proven by simulated sweeps.

A simulated sweep has a baseline and `k` cells; each run's log throughput is the cell's true log ratio, plus a
drift shared by the whole round, plus its own noise (per-run SD `sd / sqrt(2)`, so the per-round log ratio of a
cell to the baseline has SD `sd`, the figure measured on these VMs: 0.05-0.25). After each planned look, every
undecided cell's verdict is read off its t-interval at `interval_confidence` exactly as `results.stats` does,
and a decided cell runs no more rounds. `test_the_simulation_decides_as_aggregate_does` checks, sweep by
sweep, that this vectorized simulation calls every verdict as `aggregate` does on the same runs.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from results.sequential import Looks, interval_confidence, one_sided_level, rounds_to_decide
from results.stats import aggregate

SWEEPS = 4000
MIN_EFFECT = 0.03
ALPHA = 0.05
CALLS = ("faster", "slower")


def simulate(
    true_ratios: list[float], sd: float, looks: Looks, sweeps: int = SWEEPS, seed: int = 0, drift: float = 0.2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Verdicts (sweeps x cells, strings), the round each cell stopped at, and the per-run log values
    (sweeps x rounds x (1 + cells), baseline first) of simulated `--repeats auto` sweeps."""
    rng = np.random.default_rng(seed)
    k = len(true_ratios)
    shape = (sweeps, looks.last)
    logs = rng.normal(0.0, drift, shape)[..., None] + rng.normal(0.0, sd / math.sqrt(2), (*shape, k + 1))
    logs[..., 1:] += np.log(true_ratios)
    ratios = logs[..., 1:] - logs[..., :1]  # per-round log ratio of each cell to the baseline
    verdicts = np.full((sweeps, k), "inconclusive", dtype=object)
    stopped = np.full((sweeps, k), looks.last)
    open_ = np.ones((sweeps, k), dtype=bool)
    upper, lower = math.log1p(MIN_EFFECT), math.log1p(-MIN_EFFECT)
    for n in looks.rounds:
        confidence = interval_confidence(ALPHA, k, looks, n)
        mean = ratios[:, :n].mean(axis=1)
        half = scipy_stats.t.ppf((1 + confidence) / 2, n - 1) * ratios[:, :n].std(axis=1, ddof=1) / math.sqrt(n)
        low, high = mean - half, mean + half
        call = np.select(
            [low > upper, high < lower, (low >= lower) & (high <= upper)], ["faster", "slower", "equivalent"], ""
        )
        now = open_ & (call != "")
        verdicts[now], stopped[now] = call[now], n
        open_ &= ~now
    return verdicts, stopped, logs


@pytest.mark.parametrize("max_repeats", [3, 5, 10, 20])
@pytest.mark.parametrize("sd", [0.05, 0.15, 0.25])
def test_an_a_a_cell_is_called_faster_or_slower_in_at_most_5_percent_of_sweeps(sd, max_repeats):
    verdicts, stopped, _ = simulate([1.0], sd, Looks.auto(max_repeats), seed=int(sd * 100) + max_repeats)
    false_calls = np.isin(verdicts[:, 0], CALLS).mean()
    print(f"\nA/A sd {sd}, max {max_repeats}: false calls {false_calls:.4f}, mean rounds {stopped.mean():.2f}")
    assert false_calls <= ALPHA


def test_a_20_percent_effect_at_sd_015_is_mostly_found_within_10_rounds():
    """The issue asked for >= 90%. No test at a 5% error rate reaches that at 10 rounds: even a z-test that
    knew the SD, with a single look, has 89.6% (computed below). The plan's figure is asserted as measured."""
    verdicts, stopped, _ = simulate([1.2], 0.15, Looks.auto(10), seed=7)
    faster = (verdicts[:, 0] == "faster").mean()
    shift = (math.log(1.2) - math.log1p(MIN_EFFECT)) / (0.15 / math.sqrt(10))
    oracle = scipy_stats.norm.sf(scipy_stats.norm.isf(ALPHA / 2) - shift)
    fixed_t = scipy_stats.nct.sf(scipy_stats.t.isf(ALPHA / 2, 9), 9, shift)
    mean_stop = stopped[verdicts == "faster"].mean()
    print(f"\n1.20x at sd 0.15: faster in {faster:.4f} within 10 rounds (mean stop {mean_stop:.2f}); "
          f"bounds: fixed 10-round t-test {fixed_t:.4f}, known-SD z-test {oracle:.4f}")  # fmt: skip
    assert oracle < 0.90
    assert faster >= 0.65  # 0.700 with these seeds; margin for floating-point differences between CPUs
    assert (verdicts[:, 0] == "slower").mean() == 0


def test_a_1_percent_effect_with_a_3_percent_band_is_never_faster_or_slower_beyond_the_rate():
    for sd in (0.05, 0.15, 0.25):
        verdicts, _, _ = simulate([1.01], sd, Looks.auto(10), seed=31 + int(sd * 100))
        rate = np.isin(verdicts[:, 0], CALLS).mean()
        print(f"\n1.01x sd {sd}: faster/slower {rate:.4f}, equivalent {(verdicts[:, 0] == 'equivalent').mean():.4f}")
        assert rate <= ALPHA


def test_an_all_a_a_sweep_of_20_cells_makes_any_false_call_in_at_most_5_percent_of_sweeps():
    for sd in (0.05, 0.25):
        verdicts, _, _ = simulate([1.0] * 20, sd, Looks.auto(10), sweeps=2000, seed=99 + int(sd * 100))
        any_false = np.isin(verdicts, CALLS).any(axis=1).mean()
        print(f"\n20 A/A cells, sd {sd}: sweeps with any false call {any_false:.4f}")
        assert any_false <= ALPHA


def test_a_large_effect_stops_at_the_first_look_and_an_a_a_cell_runs_on():
    verdicts, stopped, _ = simulate([3.0, 1.0], 0.05, Looks.auto(10), sweeps=500, seed=5)
    # An SD estimated from 3 rounds (2 degrees of freedom) is twice the true one in ~2% of sweeps
    print(f"\n3x at sd 0.05: stopped at round 3 in {(stopped[:, 0] == 3).mean():.3f}")
    assert (verdicts[:, 0] == "faster").all() and (stopped[:, 0] == 3).mean() >= 0.95
    assert (stopped[:, 0] <= 4).all() and (stopped[:, 1] > 3).all()


def test_the_simulation_decides_as_aggregate_does():
    """The same runs, handed to `results.stats.aggregate` at the round each cell stopped (or the last),
    get the same verdicts as the vectorized simulation: the tests above measure the product's rule."""
    looks = Looks.auto(6)
    verdicts, stopped, logs = simulate([1.0, 1.15, 0.8], 0.15, looks, sweeps=60, seed=11)
    names = ["baseline", "a", "b", "c"]
    for sweep in range(len(logs)):
        rows = []
        for cell, name in enumerate(names):
            last = looks.last if cell == 0 else int(stopped[sweep, cell - 1])
            rows += [
                {"sweep_id": "s", "cell_id": f"{name}@bs1", "optimization": name, "status": "ok", "repeat": r + 1,
                 "model": "m", "batch_size": 1, "image_size": 32, "device": "cpu", "device_name": "cpu",
                 "throughput_sps": math.exp(logs[sweep, r, cell])}
                for r in range(last)
            ]  # fmt: skip
        cells = aggregate(pd.DataFrame(rows), MIN_EFFECT, 1 - ALPHA, looks).set_index("cell_id")
        got = [cells.loc[f"{name}@bs1", "verdict"] for name in names[1:]]
        assert got == list(verdicts[sweep]), sweep


def test_levels_spend_the_error_over_the_looks():
    looks = Looks.auto(10)
    levels = [one_sided_level(0.025, looks, n) for n in looks.rounds]
    # each look at least its Bonferroni share (looks are correlated, so more), none the whole rate
    assert levels == sorted(levels) and levels[0] >= 0.025 / 8 and levels[-1] < 0.025
    assert one_sided_level(0.025, Looks.fixed(5), 5) == 0.025  # one look: the whole rate
    assert one_sided_level(0.025, looks, 2) == levels[0] and one_sided_level(0.025, looks, 12) == levels[-1]
    assert interval_confidence(0.05, 4, Looks.fixed(3), 3) == pytest.approx(1 - 0.05 / 4)


def test_rounds_to_decide_estimates():
    assert rounds_to_decide(math.log(1.5), 0.1, MIN_EFFECT, 0.95) == 3
    estimate = rounds_to_decide(math.log(1.06), 0.1, MIN_EFFECT, 0.95)
    half = scipy_stats.t.ppf(0.975, estimate - 1) * 0.1 / math.sqrt(estimate)
    assert half < math.log(1.06) - math.log(1.03)  # enough rounds ...
    assert scipy_stats.t.ppf(0.975, estimate - 2) * 0.1 / math.sqrt(estimate - 1) >= half  # ... and no more
    assert rounds_to_decide(math.log(1.03), 0.1, MIN_EFFECT, 0.95) is None  # at the band edge: never
    assert rounds_to_decide(0.0, 0.0, MIN_EFFECT, 0.95) is None
