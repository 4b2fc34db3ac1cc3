"""The timer and the timed loop, against modules whose duration we know."""

import threading
import time

import numpy as np
import pytest
import torch

from worker.engine import measure

pytestmark = pytest.mark.serial  # timed against known durations: alone, not beside other tests


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
    assert summary["throughput_sequential_sps"] == pytest.approx(4 * 1000 / sleep_ms, rel=0.10)
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


def test_back_to_back_throughput_times_n_calls_between_one_pair_of_timestamps():
    model, x = Sleeper(0.010), torch.zeros(1)
    budget = measure.Budget(warmup_iters=0, warmup_seconds=0.0, min_iters=5, min_seconds=0.2)
    latency = measure.time_calls(lambda: model(x), budget, measure.CpuTimer())
    run = measure.time_back_to_back(lambda: model(x), budget, latency, measure.CpuTimer())
    assert run.iterations == pytest.approx(20, abs=2)  # min_seconds / mean latency
    summary = run.summary(batch_size=4)
    assert summary["throughput_sps"] == pytest.approx(4 * 1000 / 10.0, rel=0.10)
    assert summary["throughput_iterations"] == run.iterations
    assert summary["throughput_seconds"] == pytest.approx(run.iterations * 0.010, rel=0.10)


def test_back_to_back_length_is_about_a_second_and_at_least_ten_calls():
    budget = measure.Budget(0, 0.0, min_iters=100, min_seconds=5.0)
    assert measure.back_to_back_iterations(budget, mean_ms=1.0) == 1000  # capped at 1 s of 1 ms calls
    assert measure.back_to_back_iterations(budget, mean_ms=499.0) == 10  # at least 10 calls
    short = measure.Budget(0, 0.0, min_iters=3, min_seconds=0.25)
    assert measure.back_to_back_iterations(short, mean_ms=1.0) == 250  # min_seconds when it is shorter


class ScriptedTimer:
    """A timer whose every call "takes" `call_ms` without waiting: what the protocol decides from durations alone."""

    name = "scripted"

    def __init__(self, call_ms: float) -> None:
        self.call_ms, self.calls = call_ms, 0

    def time_ms(self, call) -> float:
        self.calls += 1
        return self.call_ms

    def time_many_ms(self, call, iterations: int) -> float:
        self.calls += iterations
        return self.call_ms * iterations


def measure_with(timer: ScriptedTimer, budget: measure.Budget) -> tuple:
    warmup = measure.warm_up(lambda: None, budget, timer)
    latency = measure.time_calls(lambda: None, budget, timer)
    back_to_back = measure.time_back_to_back(lambda: None, budget, latency, timer)
    return warmup, latency, back_to_back, measure.reduced_counts(warmup, latency, back_to_back)


def test_slow_calls_are_counted_not_timed_for_seconds_and_the_row_says_why():
    budget = measure.budget_for("cpu")  # 2 warm-up calls and 1 s, 5 timed calls and 2 s, a second back to back
    warmup, latency, back_to_back, why = measure_with(ScriptedTimer(4600.0), budget)
    assert (warmup.iterations, latency.iterations, back_to_back.iterations) == (1, 3, 3)
    assert warmup.slow and latency.slow and back_to_back.slow
    assert back_to_back.total_ms == pytest.approx(3 * 4600.0)  # the timed calls' rate: no phase of their own
    assert why == (
        "calls of 4.60 s (>= 0.5 s) counted, not timed for seconds: 1 warm-up, 3 timed, the rate from the timed calls"
    )


class TwoModelTimer:
    """Calls of `optimized` "take" `optimized_ms`, of anything else `reference_ms`; each block drifts by `drift` ms."""

    name = "scripted"

    def __init__(self, optimized, optimized_ms: float, reference_ms: float, drift: float = 0.0) -> None:
        self.optimized, self.optimized_ms, self.reference_ms, self.drift = optimized, optimized_ms, reference_ms, drift
        self.blocks: list[str] = []

    def _ms(self, call) -> float:
        return self.optimized_ms if call is self.optimized else self.reference_ms

    def time_ms(self, call) -> float:
        return self._ms(call)

    def time_many_ms(self, call, iterations: int) -> float:
        self.blocks.append("A" if call is self.optimized else "B")
        return (self._ms(call) + self.drift * len(self.blocks)) * iterations


def test_the_in_run_reference_alternates_abba_and_a_linear_drift_cancels():
    def optimized():
        return None

    def reference():
        return None

    timer = TwoModelTimer(optimized, optimized_ms=40.0, reference_ms=50.0)
    pairs = measure.time_against_reference(optimized, reference, 40.0, timer, pairs=4, block_seconds=0.2)
    assert "".join(timer.blocks) == "ABBAABBA"
    summary = pairs.summary()
    assert summary["reference_ratio"] == pytest.approx(50.0 / 40.0)  # > 1: the optimized model is faster
    assert summary["reference_pairs"] == 4 and summary["reference_pair_sd"] == pytest.approx(0.0, abs=1e-12)
    drifting = TwoModelTimer(optimized, optimized_ms=50.0, reference_ms=50.0, drift=0.5)  # an A/A pair on a slope
    ratio = measure.time_against_reference(optimized, reference, 50.0, drifting, pairs=4).summary()["reference_ratio"]
    assert ratio == pytest.approx(1.0, abs=0.002)


def test_fast_calls_and_counts_the_user_set_keep_the_protocol():
    fast = measure.Budget(warmup_iters=2, warmup_seconds=0.0, min_iters=5, min_seconds=0.0)
    warmup, latency, back_to_back, why = measure_with(ScriptedTimer(499.0), fast)
    assert (warmup.iterations, latency.iterations, back_to_back.iterations, why) == (2, 5, 10, None)
    asked = measure.budget_for("cpu", warmup_iters=3, warmup_seconds=0.0, min_iters=4, min_seconds=0.0)
    assert not asked.count_slow_calls and measure.budget_for("cpu").count_slow_calls
    warmup, latency, back_to_back, why = measure_with(ScriptedTimer(4600.0), asked)
    assert (warmup.iterations, latency.iterations, back_to_back.iterations, why) == (3, 4, 10, None)


class FakeDevice:
    """A device that runs queued work on its own thread, as a GPU runs kernels the CPU launched.

    Each call costs `launch_s` on the caller (the CPU launching kernels) and `run_s` on the device;
    `synchronize` waits for the queue. Timed per call (synchronize each time) the costs add up;
    back to back the CPU launches the next call while the device runs the previous one.
    """

    def __init__(self, launch_s: float, run_s: float) -> None:
        self.launch_s, self.run_s = launch_s, run_s
        self.pending = threading.Semaphore(0)
        self.idle = threading.Condition()
        self.queued = 0
        threading.Thread(target=self._work, daemon=True).start()

    def call(self) -> None:
        time.sleep(self.launch_s)
        with self.idle:
            self.queued += 1
        self.pending.release()

    def _work(self) -> None:
        while True:
            self.pending.acquire()
            time.sleep(self.run_s)
            with self.idle:
                self.queued -= 1
                self.idle.notify_all()

    def synchronize(self) -> None:
        with self.idle:
            self.idle.wait_for(lambda: self.queued == 0)


class FakeDeviceTimer(measure.CpuTimer):
    """CudaEventTimer's protocol on the fake device: synchronize around the timed work."""

    name = "fake_device"

    def __init__(self, device: FakeDevice) -> None:
        self.device = device

    def time_ms(self, call):
        return self.time_many_ms(call, 1)

    def time_many_ms(self, call, iterations):
        def calls_then_wait():
            for _ in range(iterations):
                call()
            self.device.synchronize()

        self.device.synchronize()
        return super().time_ms(calls_then_wait)


def test_back_to_back_overlaps_launch_and_device_work_where_per_call_timing_cannot():
    device = FakeDevice(launch_s=0.004, run_s=0.008)
    timer = FakeDeviceTimer(device)
    budget = measure.Budget(0, 0.0, min_iters=15, min_seconds=0.0)
    latency = measure.time_calls(device.call, budget, timer)
    run = measure.time_back_to_back(device.call, budget, latency, timer)
    sequential = latency.summary(batch_size=1)["throughput_sequential_sps"]
    back_to_back = run.summary(batch_size=1)["throughput_sps"]
    assert sequential == pytest.approx(1000 / 12, rel=0.15)  # launch + run, one at a time
    assert back_to_back == pytest.approx(1000 / 8, rel=0.15)  # the device is the bottleneck


def test_the_cpu_wait_fraction_is_null_over_a_phase_too_short_to_tell_and_measured_over_a_long_one():
    from worker.engine.trackers import Noise

    noise = Noise()
    noise.start()
    assert noise.read()["noise_cpu_wait_fraction"] is None  # microseconds: one wake-up would dominate
    noise.start()
    deadline = time.perf_counter() + 0.3
    while time.perf_counter() < deadline:  # 0.3 s on a CPU
        pass
    fraction = noise.read()["noise_cpu_wait_fraction"]
    assert fraction is not None and 0.0 <= fraction < 1.0
