"""The measurement protocol: warm up, then time each call on its own, then summarise.

- Warm-up runs at least `warmup_iters` calls and at least `warmup_seconds` (cuDNN autotuning,
  TorchScript profiling and torch.compile's first runs happen here, outside the timed phase).
- Each timed call is measured alone: on CUDA between two CUDA events with a synchronize on the end
  event, on the CPU with `perf_counter_ns`. Inputs already sit on the device; nothing else is timed.
- The timed phase runs at least `min_iters` calls and at least `min_seconds`; with a
  `target_spread` it goes on until the interquartile range over the median is below it (the gate
  torch.utils.benchmark's adaptive_autorange uses), or until `max_seconds`.
- Then a back-to-back phase: N calls issued one after the other between one pair of CUDA events (or
  one perf_counter pair on the CPU), with no synchronize in between, as an offline job runs them.
  Its rate is `throughput_sps`; the per-call phase's rate (one request at a time, each waited for)
  is `throughput_sequential_sps`. N is estimated from the per-call mean to last about
  min(`min_seconds`, BACK_TO_BACK_MAX_SECONDS), and is at least BACK_TO_BACK_MIN_CALLS: one rate
  needs far fewer seconds than percentiles do, so the phase adds about a second to a cell.
- Slow calls are counted, not timed for seconds (as pyperf calibrates its loops and torch.utils.benchmark
  autoranges to the call's duration): once a call takes SLOW_CALL_SECONDS or more, its own duration is
  the measurement, so the warm-up ends after SLOW_WARMUP_CALLS calls (the cell's first call, made while
  preparing, came before) and the timed phase after SLOW_CALLS, whatever their seconds (a 4.6 s fp16 call
  on a CPU would otherwise be timed 5 + 10 times for nothing). A slow call's launch overhead is nothing
  against its duration, so no back-to-back phase follows: its rate is the timed calls' (`from_timed_calls`).
  `reduced_counts` says so in the row. This applies to the device's default budget only: counts or seconds
  set by the user are kept.
- Then, for a cell compared with the baseline, the in-run reference (`time_against_reference`): blocks of
  back-to-back calls of the optimized model and of an eager fp32 copy of the baseline, alternating ABBA, so
  the process's speed mode lands on both and cancels in their ratio (docs/statistics.md).
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

SPREAD_CHECK_EVERY = 10  # timed calls between two checks of the spread gate
BACK_TO_BACK_MAX_SECONDS = 1.0  # the back-to-back phase lasts about this long at most (estimated)
BACK_TO_BACK_MIN_CALLS = 10  # ... and makes at least this many calls
SLOW_CALL_SECONDS = 0.5  # a call this long or longer is its own measurement: counted, not timed for seconds
SLOW_WARMUP_CALLS = 1  # warm-up calls of slow calls (after the cell's first call)
SLOW_CALLS = 3  # timed calls of slow calls
# The in-run reference: pairs of blocks (optimized, reference) of back-to-back calls, each about this long.
# Sized from this VM's variance components (Kalibera and Jones; docs/statistics.md): the ratio's spread between
# runs dwarfs its spread between pairs, so a run needs few pairs and more runs buy the precision.
REFERENCE_PAIRS = 4
REFERENCE_BLOCK_SECONDS = 0.25


@dataclass(frozen=True)
class Budget:
    warmup_iters: int
    warmup_seconds: float
    min_iters: int
    min_seconds: float
    target_spread: float | None = None
    max_seconds: float = 60.0
    count_slow_calls: bool = True  # slow calls get the reduced counts (SLOW_*); off when the user set counts

    def is_slow(self, call_ms: float) -> bool:
        return self.count_slow_calls and call_ms >= SLOW_CALL_SECONDS * 1000.0


# Sized so a CPU cell of DenseNet-121 takes seconds, and a GPU cell gathers enough calls for a p99.
DEFAULT_BUDGETS = {
    "cpu": Budget(warmup_iters=2, warmup_seconds=0.5, min_iters=5, min_seconds=1.0),
    "cuda": Budget(warmup_iters=10, warmup_seconds=2.0, min_iters=100, min_seconds=5.0),
}


USER_COUNTS = ("warmup_iters", "warmup_seconds", "min_iters", "min_seconds")  # set: no reduced counts


def budget_for(device: str, **overrides: float | int | None) -> Budget:
    """The device's default budget with the non-None overrides applied; counts or seconds the user set are kept
    even for slow calls."""
    defaults = DEFAULT_BUDGETS[device]
    values = {name: value for name, value in overrides.items() if value is not None}
    count_slow_calls = not any(name in values for name in USER_COUNTS)
    return Budget(**{**defaults.__dict__, **values, "count_slow_calls": count_slow_calls})


class CpuTimer:
    name = "perf_counter_ns"

    def time_ms(self, call: Callable[[], object]) -> float:
        start = time.perf_counter_ns()
        call()
        return (time.perf_counter_ns() - start) / 1e6

    def time_many_ms(self, call: Callable[[], object], iterations: int) -> float:
        """Milliseconds for `iterations` calls in a row."""
        start = time.perf_counter_ns()
        for _ in range(iterations):
            call()
        return (time.perf_counter_ns() - start) / 1e6


class CudaEventTimer:
    """Times one call between CUDA events recorded on the current stream, then waits for the end."""

    name = "cuda_event"

    def __init__(self) -> None:
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    def time_ms(self, call: Callable[[], object]) -> float:
        torch.cuda.synchronize()
        self.start.record()
        call()
        self.end.record()
        self.end.synchronize()
        return self.start.elapsed_time(self.end)

    def time_many_ms(self, call: Callable[[], object], iterations: int) -> float:
        """`iterations` calls queued back to back between one pair of events; one synchronize at the end."""
        torch.cuda.synchronize()
        self.start.record()
        for _ in range(iterations):
            call()
        self.end.record()
        self.end.synchronize()
        return self.start.elapsed_time(self.end)


Timer = CpuTimer | CudaEventTimer


def timer_for(device: str) -> Timer:
    return CudaEventTimer() if device == "cuda" else CpuTimer()


@dataclass(frozen=True)
class Warmup:
    iterations: int
    seconds: float
    slow: bool = False  # ended early: its calls took SLOW_CALL_SECONDS or more


@dataclass(frozen=True)
class Latency:
    """Per-call latencies of the timed phase, summarised; all times in milliseconds per batch."""

    samples_ms: np.ndarray
    measure_seconds: float
    stability_reached: bool | None
    slow: bool = False  # ended at SLOW_CALLS calls: its calls took SLOW_CALL_SECONDS or more

    @property
    def iterations(self) -> int:
        return len(self.samples_ms)

    def summary(self, batch_size: int) -> dict[str, float | int | bool | None]:
        s = self.samples_ms
        p50, p90, p99 = np.percentile(s, [50, 90, 99])
        mean = float(s.mean())
        return {
            "latency_ms_mean": mean,
            "latency_ms_std": float(s.std(ddof=1)) if len(s) > 1 else 0.0,
            "latency_ms_min": float(s.min()),
            "latency_ms_p50": float(p50),
            "latency_ms_p90": float(p90),
            "latency_ms_p99": float(p99),
            "latency_ms_max": float(s.max()),
            "latency_spread": relative_spread(s),
            "throughput_sequential_sps": batch_size * 1000.0 / mean,
            "iterations": self.iterations,
            "measure_seconds": self.measure_seconds,
            "stability_reached": self.stability_reached,
        }


def relative_spread(samples_ms: np.ndarray) -> float:
    """Interquartile range over the median."""
    q1, median, q3 = np.percentile(samples_ms, [25, 50, 75])
    return float((q3 - q1) / median) if median > 0 else float("inf")


Progress = Callable[[str, int, float], None]  # (phase, calls done, seconds elapsed)


def warm_up(call: Callable[[], object], budget: Budget, timer: Timer, on_progress: Progress | None = None) -> Warmup:
    """Run `call` at least `warmup_iters` times and at least `warmup_seconds`; slow calls: SLOW_WARMUP_CALLS."""
    done, start = 0, time.perf_counter()
    slow_calls = max(1, min(SLOW_WARMUP_CALLS, budget.warmup_iters))
    while done < budget.warmup_iters or time.perf_counter() - start < budget.warmup_seconds:
        call_ms = timer.time_ms(call)
        done += 1
        if on_progress:
            on_progress("warmup", done, time.perf_counter() - start)
        if budget.is_slow(call_ms) and done >= slow_calls:
            return Warmup(iterations=done, seconds=time.perf_counter() - start, slow=True)
    return Warmup(iterations=done, seconds=time.perf_counter() - start)


def time_calls(
    call: Callable[[], object], budget: Budget, timer: Timer, on_progress: Progress | None = None
) -> Latency:
    """Time `call` one call at a time until the budget (and the spread target, if any) is met.

    Python's garbage collector is paused meanwhile, as timeit does, so its pauses don't land in a sample.
    """
    gc.collect()
    gc.disable()
    try:
        return _time_calls(call, budget, timer, on_progress)
    finally:
        gc.enable()


def _time_calls(call: Callable[[], object], budget: Budget, timer: Timer, on_progress: Progress | None) -> Latency:
    samples: list[float] = []
    start = time.perf_counter()
    target_met: bool | None = None
    while True:
        samples.append(timer.time_ms(call))
        elapsed = time.perf_counter() - start
        if on_progress:
            on_progress("measuring", len(samples), elapsed)
        slow = len(samples) >= SLOW_CALLS and budget.is_slow(float(np.median(samples)))
        if (len(samples) < budget.min_iters or elapsed < budget.min_seconds) and not slow:
            continue
        if budget.target_spread is None:
            break
        if len(samples) % SPREAD_CHECK_EVERY == 0 or elapsed >= budget.max_seconds:
            target_met = relative_spread(np.asarray(samples)) <= budget.target_spread
            if target_met or elapsed >= budget.max_seconds:
                break
    reduced = slow and (len(samples) < budget.min_iters or elapsed < budget.min_seconds)
    return Latency(np.asarray(samples), time.perf_counter() - start, target_met, slow=reduced)


@dataclass(frozen=True)
class BackToBack:
    """N calls issued back to back and the milliseconds they took together."""

    iterations: int
    total_ms: float
    slow: bool = False  # slow calls: the timed phase's calls, not a phase of their own (`from_timed_calls`)

    @classmethod
    def from_timed_calls(cls, latency: Latency) -> BackToBack:
        """A slow call's rate: its timed calls', whose launch overhead is nothing against their duration."""
        return cls(latency.iterations, float(latency.samples_ms.sum()), slow=True)

    def summary(self, batch_size: int) -> dict[str, float | int]:
        return {
            "throughput_sps": batch_size * self.iterations * 1000.0 / self.total_ms,
            "throughput_iterations": self.iterations,
            "throughput_seconds": self.total_ms / 1000.0,
        }


def back_to_back_iterations(budget: Budget, mean_ms: float) -> int:
    """Calls lasting about min(min_seconds, BACK_TO_BACK_MAX_SECONDS) at the mean; at least BACK_TO_BACK_MIN_CALLS."""
    seconds = min(budget.min_seconds, BACK_TO_BACK_MAX_SECONDS)
    return max(BACK_TO_BACK_MIN_CALLS, math.ceil(seconds * 1000.0 / mean_ms) if mean_ms > 0 else 1)


def time_back_to_back(
    call: Callable[[], object], budget: Budget, latency: Latency, timer: Timer, on_progress: Progress | None = None
) -> BackToBack:
    """Time N calls in a row (N from the per-call phase's mean), GC paused as in `time_calls`; slow calls: their
    timed calls' rate, with no phase of their own."""
    mean_ms = float(latency.samples_ms.mean())
    if budget.is_slow(mean_ms):
        return BackToBack.from_timed_calls(latency)
    iterations = back_to_back_iterations(budget, mean_ms)
    if on_progress:
        on_progress("throughput", 0, 0.0)
    gc.collect()
    gc.disable()
    try:
        return BackToBack(iterations, timer.time_many_ms(call, iterations))
    finally:
        gc.enable()


def reduced_counts(warmup: Warmup, latency: Latency, back_to_back: BackToBack) -> str | None:
    """Why a row's call counts are below the budget's (slow calls), in words; None when they are not."""
    if not (warmup.slow or latency.slow or back_to_back.slow):
        return None
    mean_ms = float(latency.samples_ms.mean())
    return (
        f"calls of {mean_ms / 1000.0:.2f} s (>= {SLOW_CALL_SECONDS:g} s) counted, not timed for seconds: "
        f"{warmup.iterations} warm-up, {latency.iterations} timed"
        + (", the rate from the timed calls" if back_to_back.slow else f", {back_to_back.iterations} back-to-back")
    )


@dataclass(frozen=True)
class ReferencePairs:
    """The in-run reference: per pair of blocks, the optimized model's and the reference's calls per second."""

    optimized_rates: np.ndarray
    reference_rates: np.ndarray
    seconds: float

    def summary(self) -> dict[str, float | int]:
        """`reference_ratio` (the geometric mean of the pairs' rate ratios: > 1, the optimized model is faster),
        the SD of the pairs' log ratios and how many pairs and seconds it took."""
        logs = np.log(self.optimized_rates / self.reference_rates)
        return {
            "reference_ratio": float(np.exp(logs.mean())),
            "reference_pair_sd": float(logs.std(ddof=1)) if len(logs) > 1 else math.nan,
            "reference_pairs": len(logs),
            "reference_seconds": self.seconds,
        }


def time_against_reference(
    optimized: Callable[[], object],
    reference: Callable[[], object],
    optimized_ms: float,
    timer: Timer,
    pairs: int = REFERENCE_PAIRS,
    block_seconds: float = REFERENCE_BLOCK_SECONDS,
) -> ReferencePairs:
    """Alternate blocks of back-to-back calls of `optimized` and `reference` (AB BA AB BA: a linear drift lands on
    both alike), each the whole number of calls nearest `block_seconds` (at least one), after a warm-up of the
    reference; GC paused."""
    start = time.perf_counter()
    reference_ms = float(np.median([timer.time_ms(reference) for _ in range(3)]))  # warm-up, and its call time

    def calls(mean_ms: float) -> int:
        return max(1, round(block_seconds * 1000.0 / mean_ms)) if mean_ms > 0 else 1

    blocks = {"optimized": (optimized, calls(optimized_ms)), "reference": (reference, calls(reference_ms))}
    rates: dict[str, list[float]] = {"optimized": [], "reference": []}
    gc.collect()
    gc.disable()
    try:
        for pair in range(pairs):
            order = ("optimized", "reference") if pair % 2 == 0 else ("reference", "optimized")
            for name in order:
                call, count = blocks[name]
                rates[name].append(count * 1000.0 / timer.time_many_ms(call, count))
    finally:
        gc.enable()
    return ReferencePairs(np.array(rates["optimized"]), np.array(rates["reference"]), time.perf_counter() - start)
