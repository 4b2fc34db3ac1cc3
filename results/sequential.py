"""How sure each verdict must be: the sweep's error rate shared among its verdicts (Bonferroni) and over
the looks of `--repeats auto` (error spending), so that more runs and more cells never mean more false calls.

A sweep states one confidence (95% by default), that is one error rate `alpha = 1 - confidence` for the
whole family of its verdicts. Two things would inflate it, and both are paid for here:

- **Many verdicts** (one per cell compared with its baseline). Each of the `k` comparisons gets `alpha / k`
  (Bonferroni): the chance that *any* verdict of the sweep is a false `faster`, `slower` or `equivalent`
  stays at most `alpha`, whatever the cells' correlation (they share a baseline). Family-wise, not a
  false discovery rate: a user ships one cell, and one false call is one too many.
- **Repeated looks** (`--repeats auto` decides after round 3, 4, ... up to the last look planned at round 3 from
  the time budget and the rounds' durations, or `--max-repeats`: `plan_last_look`). Looking again
  after every round and stopping at the first interval that clears the band would call noise a finding far
  more often than the stated rate. A comparison's share `alpha / k` is therefore spent over its planned looks
  with the error-spending function `alpha * t` (`t`: the fraction of the plan's looks done; Lan and
  DeMets' Pocock-like member): every look gets an equal share, so a large effect can stop at the first
  look (after 3 rounds) while a small one still has most of the rate left for the later looks.

The thresholds of the looks are found by simulating the null hypothesis. A verdict is a t-interval on the
mean log ratio of paired rounds, and the t statistics of successive looks, with the true ratio at a band
edge, have a distribution that does not depend on the noise's size: so one simulation of standard normal
per-round log ratios (`SIMULATIONS` sweeps, a fixed seed) gives each look's nominal one-sided level
exactly enough, with the dependence between looks taken into account (a plain Bonferroni split over the
looks would waste most of it). A look's interval is then a two-sided t-interval at `1 - 2 * level`; the
verdict is read off it (`results.stats.verdict_of`), so the interval a report prints is the one that decided.

A sweep with a fixed `--repeats N` has one look, at N rounds: its level is `alpha / (2k)` per side.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import special  # Student t: `stdtr` is its CDF, `stdtrit` its quantile (scipy.stats is slower to load)

FIRST_LOOK = 3  # rounds before `--repeats auto` first decides: a t-interval of two rounds has 1 degree of freedom
SPENDING_POWER = 1.0  # alpha * t**SPENDING_POWER is spent by the fraction t of the planned looks
SIMULATIONS = 200_000  # simulated null sweeps per plan (about 0.3 s, cached)
SEED = 20261202


@dataclass(frozen=True)
class Looks:
    """When a cell's verdict may be made: after `first` rounds, and after every round up to `last`."""

    first: int
    last: int

    def __post_init__(self) -> None:
        if not 2 <= self.first <= self.last:
            raise ValueError(f"looks need 2 <= first <= last (got {self.first}, {self.last})")

    @classmethod
    def fixed(cls, repeats: int) -> Looks:
        """A sweep of exactly `repeats` rounds: one look, at the end."""
        return cls(max(repeats, 2), max(repeats, 2))

    @classmethod
    def auto(cls, max_repeats: int) -> Looks:
        """`--repeats auto`: a look after round 3 (or `max_repeats`, if fewer), then after every round to the last."""
        return cls(min(FIRST_LOOK, max(max_repeats, 2)), max(max_repeats, 2))

    @property
    def rounds(self) -> range:
        return range(self.first, self.last + 1)

    def describe(self) -> str:
        if self.first == self.last:
            return f"one look after {self.last} rounds"
        return f"a look after each round from {self.first} to {self.last}"


def looks_for(sweep_spec: dict) -> Looks:
    """The looks of a sweep, from its recorded spec: `repeats` "auto" up to its planned last look (`plan_last_look`),
    else `max_repeats`; or a fixed number."""
    if sweep_spec.get("repeats") == "auto":
        return Looks.auto(int(sweep_spec.get("planned_last_look") or sweep_spec["max_repeats"]))
    return Looks.fixed(int(sweep_spec.get("repeats") or 2))


def plan_last_look(
    rounds_done: int, max_repeats: int, elapsed: float, round_seconds: float, budget: float | None
) -> int:
    """The last round a sweep's looks are planned to, made at its first look from durations only (never from
    results): as many more rounds as the time budget has room for at `round_seconds` a round (a round of every
    cell, the longest a later round can take), within `max_repeats`. The whole error rate is spent by then, so a
    sweep that its budget stops has used all of it."""
    if budget is None or round_seconds <= 0:
        return max_repeats
    room = max(int((budget - elapsed) // round_seconds), 0)
    return max(min(rounds_done + room, max_repeats), min(rounds_done, max_repeats))


def one_sided_level(alpha_one_sided: float, looks: Looks, rounds: int) -> float:
    """The nominal one-sided level of the look after `rounds` rounds, for a comparison whose whole plan may
    err with probability `alpha_one_sided` per side. Rounds before the first look use the first look's level;
    rounds after the last (re-runs) the last's."""
    if looks.first == looks.last:
        return alpha_one_sided
    levels = _spent_levels(round(alpha_one_sided, 12), looks.first, looks.last)
    return levels[min(max(rounds, looks.first), looks.last) - looks.first]


def interval_confidence(alpha: float, comparisons: int, looks: Looks, rounds: int) -> float:
    """The confidence of a verdict's two-sided interval after `rounds` rounds, when the sweep's `alpha` is
    shared by `comparisons` verdicts (Bonferroni) and spent over `looks`."""
    level = one_sided_level(alpha / (2 * max(comparisons, 1)), looks, rounds)
    return 1 - 2 * level


@functools.lru_cache(maxsize=64)
def _spent_levels(alpha_one_sided: float, first: int, last: int) -> tuple[float, ...]:
    """Each look's nominal one-sided level, calibrated on simulated null sweeps so that the chance of crossing
    the boundary at any look is `alpha_one_sided`, spent as `alpha * t**SPENDING_POWER`."""
    rng = np.random.default_rng(SEED)
    steps = rng.standard_normal((SIMULATIONS, last))
    p_values = np.stack([_p_value(steps[:, :n]) for n in range(first, last + 1)], axis=1)
    looks = last - first + 1
    spent = alpha_one_sided * (np.arange(1, looks + 1) / looks) ** SPENDING_POWER
    alive = np.ones(SIMULATIONS, dtype=bool)
    levels, crossed = [], 0
    for look in range(looks):
        quota = round(float(spent[look]) * SIMULATIONS) - crossed  # null sweeps allowed to stop at this look
        candidates = np.sort(p_values[alive, look])
        level = float(candidates[quota - 1]) if 0 < quota <= len(candidates) else 0.0
        stops = alive & (p_values[:, look] <= level)
        crossed += int(stops.sum())
        alive &= ~stops
        levels.append(level)
    return tuple(levels)


def _p_value(steps: np.ndarray) -> np.ndarray:
    """One-sided p-value of a positive mean, per row: Student's t on the row's values."""
    n = steps.shape[1]
    mean = steps.mean(axis=1)
    se = steps.std(axis=1, ddof=1) / math.sqrt(n)
    return special.stdtr(n - 1, -mean / se)


def rounds_to_decide(
    mean_log: float, sd_log: float, min_effect: float, confidence: float, limit: int = 1000
) -> int | None:
    """An estimate of the rounds a t-interval at `confidence` needs to clear the band at the observed mean and
    run-to-run spread (of per-round log ratios): the fewest rounds whose half-width leaves the whole interval
    beyond a band edge, or inside the band. None when more than `limit` (the mean sits at a band edge)."""
    if not (math.isfinite(mean_log) and math.isfinite(sd_log)) or sd_log <= 0:
        return None
    upper, lower = math.log1p(min_effect), math.log1p(-min_effect)
    if mean_log > upper:
        room = mean_log - upper
    elif mean_log < lower:
        room = lower - mean_log
    else:
        room = min(upper - mean_log, mean_log - lower)
    if room <= 0:
        return None
    n, half_widths = _unit_half_widths(float(confidence), limit)
    fits = half_widths * sd_log < room
    return int(n[np.argmax(fits)]) if fits.any() else None


@functools.lru_cache(maxsize=256)
def _unit_half_widths(confidence: float, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Rounds 2..limit and the half-width of a t-interval at `confidence` over that many rounds of unit SD (cached:
    a sweep's verdicts share a few confidences)."""
    n = np.arange(2, limit + 1)
    return n, special.stdtrit(n - 1, (1 + confidence) / 2) / np.sqrt(n)
