"""Verdicts from in-run reference ratios on this VM's real noise: the family-wise false-call rate of all-A/A
sweeps and the power for a true 1.20x effect, simulated from a real runs CSV.

`tests/fixtures/in_run_runs_amd_epyc.csv` holds real runs (`python -m bench.bench_in_run_ratio`, a 2-core AMD EPYC
VM with AVX-512): per cell, the per-run `reference_ratio`. Each simulated cell draws its runs' log ratios from the
spread of one real cell of the same batch size (heteroscedastic: TorchScript's in-run ratio varies
five times more between processes than the A/A cell's), so strata mix noisy and quiet cells as a real sweep does;
the verdicts are the product's (`results.stats.aggregate`), look by look as `--repeats auto` takes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from results.sequential import Looks
from results.stats import aggregate

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "in_run_runs_amd_epyc.csv"
SWEEPS = 300
CELLS_PER_BATCH = 5  # 10 compared cells: the default CPU sweep's size
LOOKS = Looks(3, 5)  # what the default 300 s budget plans on this VM (docs/statistics.md)


def residuals() -> dict[int, list[float]]:
    """Per batch size, each real compared cell's SD of its per-run log ratio (each simulated run draws a normal log
    ratio at one of these SDs: resampling 3 real values would repeat one value in 1 sweep of 9, a spread of zero)."""
    runs = pd.read_csv(FIXTURE)
    compared = runs[runs["reference_status"] == "measured"]
    out: dict[int, list[np.ndarray]] = {}
    for (batch, _), cell in compared.groupby(["batch_size", "optimization"]):
        logs = np.log(cell["reference_ratio"].to_numpy(dtype=float))
        out.setdefault(int(batch), []).append(float(logs.std(ddof=1)))
    return out


def sweep_runs(rng: np.random.Generator, noise: dict[int, list[float]], effects: dict[str, float]) -> pd.DataFrame:
    """One simulated sweep's runs (LOOKS.last rounds): a baseline per batch size and CELLS_PER_BATCH compared cells."""
    rows = []
    for batch, pools in noise.items():
        for round_ in range(1, LOOKS.last + 1):
            rows.append(_row(f"baseline@bs{batch}", "baseline", batch, round_, None))
        for k in range(CELLS_PER_BATCH):
            cell = f"opt{k}@bs{batch}"
            draws = rng.normal(0.0, pools[k % len(pools)], size=LOOKS.last) + np.log(effects.get(cell, 1.0))
            rows += [_row(cell, f"opt{k}", batch, r + 1, float(np.exp(d))) for r, d in enumerate(draws)]
    return pd.DataFrame(rows)


def _row(cell: str, optimization: str, batch: int, round_: int, ratio: float | None) -> dict:
    return {
        "sweep_id": "sim", "run_id": f"{cell}#{round_}", "cell_id": cell, "repeat": round_, "status": "ok",
        "attempts": 1, "optimization": optimization, "model": "densenet121", "batch_size": batch, "image_size": 224,
        "device": "cpu", "device_name": "cpu", "throughput_sps": 20.0 * (ratio or 1.0),
        "reference_status": "measured" if ratio else "none: the baseline is the reference", "reference_ratio": ratio,
    }  # fmt: skip


def sequential_verdicts(runs: pd.DataFrame) -> dict[str, str]:
    """Each compared cell's verdict where `--repeats auto` stops it: the first look that decides it, else the last
    (decided cells' rounds stay in the pooled fit, as in a real sweep)."""
    final: dict[str, str] = {}
    for rounds in LOOKS.rounds:
        cells = aggregate(runs[runs["repeat"] <= rounds], looks=LOOKS)
        for cell, called in zip(cells["cell_id"], cells["verdict"], strict=True):
            if called and cell not in final and (called != "inconclusive" or rounds == LOOKS.last):
                final[cell] = called
    return final


@pytest.mark.xfail(
    strict=True,
    reason="issue 31, open: 21 of 300 (7%) with seed 31; the per-stratum F check at 2 df per cell misses strata that "
    "mix a noisy cell (TorchScript, SD 0.08-0.11) with quiet ones (SD 0.01-0.03)",
)
def test_all_aa_sweeps_on_real_noise_make_a_false_call_in_at_most_5_percent():
    rng, noise = np.random.default_rng(31), residuals()
    false = sum(
        any(v in ("faster", "slower") for v in sequential_verdicts(sweep_runs(rng, noise, {})).values())
        for _ in range(SWEEPS)
    )
    assert false / SWEEPS <= 0.05, f"family-wise false calls in {false} of {SWEEPS} A/A sweeps"


def test_a_true_1_2x_effect_on_a_quiet_cell_is_called_faster_within_the_budgets_rounds():
    rng, noise = np.random.default_rng(32), residuals()
    effect_cell = "opt1@bs1"  # draws from a quiet real cell (the residual pools are sorted by optimization name)
    hits = sum(
        sequential_verdicts(sweep_runs(rng, noise, {effect_cell: 1.20}))[effect_cell] == "faster" for _ in range(SWEEPS)
    )
    assert hits / SWEEPS >= 0.80, f"1.20x called faster in {hits} of {SWEEPS} sweeps"
