"""The timer and the timed loop, against modules whose duration we know."""

import time

import numpy as np
import pytest
import torch

from shared import measure


class Sleeper(torch.nn.Module):
    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return x


@pytest.mark.parametrize("sleep_ms", [5.0, 20.0])
def test_a_module_that_sleeps_a_known_time_is_measured_within_ten_percent(sleep_ms):
    model, x = Sleeper(sleep_ms / 1000), torch.zeros(1)
    budget = measure.Budget(warmup_iters=2, warmup_seconds=0.0, min_iters=20, min_seconds=0.0)
    latency = measure.time_calls(lambda: model(x), budget, measure.CpuTimer())
    summary = latency.summary(batch_size=4)
    assert summary["latency_ms_p50"] == pytest.approx(sleep_ms, rel=0.10)
    assert summary["throughput_sps"] == pytest.approx(4 * 1000 / sleep_ms, rel=0.10)
    assert summary["iterations"] == 20


def test_budget_minimums_hold_for_calls_and_seconds():
    budget = measure.Budget(warmup_iters=3, warmup_seconds=0.05, min_iters=4, min_seconds=0.1)
    seen = []
    warmup = measure.warm_up(lambda: time.sleep(0.001), budget, measure.CpuTimer(), lambda *a: seen.append(a[0]))
    latency = measure.time_calls(lambda: time.sleep(0.001), budget, measure.CpuTimer())
    assert warmup.iterations >= 3 and warmup.seconds >= 0.05
    assert latency.iterations >= 4 and latency.measure_seconds >= 0.1
    assert latency.stability_reached is None
    assert set(seen) == {"warmup"}


def test_spread_target_stops_when_reached_and_records_it():
    budget = measure.Budget(warmup_iters=0, warmup_seconds=0, min_iters=5, min_seconds=0, target_spread=0.5)
    latency = measure.time_calls(lambda: time.sleep(0.002), budget, measure.CpuTimer())
    assert latency.stability_reached is True
    assert latency.iterations == measure.SPREAD_CHECK_EVERY


def test_spread_target_gives_up_at_max_seconds_and_says_so():
    durations = iter(np.tile([0.001, 0.004], 10_000))
    budget = measure.Budget(0, 0, min_iters=5, min_seconds=0, target_spread=0.01, max_seconds=0.3)
    latency = measure.time_calls(lambda: time.sleep(next(durations)), budget, measure.CpuTimer())
    assert latency.stability_reached is False
    assert 0.3 <= latency.measure_seconds < 1.0


def test_percentiles_are_numpy_percentiles_of_the_samples():
    latency = measure.Latency(np.arange(1.0, 101.0), measure_seconds=1.0, stability_reached=None)
    summary = latency.summary(batch_size=1)
    assert summary["latency_ms_p50"] == pytest.approx(50.5)
    assert summary["latency_ms_p99"] == pytest.approx(np.percentile(np.arange(1.0, 101.0), 99))
    assert summary["latency_ms_min"] == 1.0 and summary["latency_ms_max"] == 100.0


def test_device_defaults_can_be_overridden_one_at_a_time():
    budget = measure.budget_for("cpu", min_iters=7, min_seconds=None)
    assert budget.min_iters == 7
    assert budget.min_seconds == measure.DEFAULT_BUDGETS["cpu"].min_seconds
