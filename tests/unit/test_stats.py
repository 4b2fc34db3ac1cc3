"""results.stats: intervals that cover a known truth, A/A without false calls, and the cell-row rules."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from results.runs import CONTENDED_WAIT_FRACTION
from results.sequential import Looks
from results.stats import (
    LEAD_COLUMNS,
    Ratio,
    aggregate,
    contended,
    numeric,
    ratio_interval,
    run_series,
    usable_runs,
    value_interval,
    verdict,
)

# --- simulation with known truth -------------------------------------------------------------------

DRAWS = 4000
TRUE_RATIO = 1.10


def simulate(rng: np.random.Generator, repeats: int, true_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Throughput of `repeats` runs of an optimization and of its baseline, for DRAWS independent sweeps.

    Each run's value is the median of 50 per-call samples (within-run noise, lognormal sigma 0.10),
    times a run effect (between-run noise, lognormal sigma 0.05), times a drift shared by both sides
    of a round (lognormal sigma 0.20: larger than the effects, so only pairing by round can cancel it).
    """
    shape = (DRAWS, repeats)
    drift = rng.normal(0.0, 0.20, shape)

    def side(scale: float) -> np.ndarray:
        run_effect = rng.normal(0.0, 0.05, shape)
        calls = np.exp(rng.normal(0.0, 0.10, (*shape, 50)))
        return scale * np.exp(drift + run_effect) * np.median(calls, axis=-1)

    return side(100.0 * true_ratio), side(100.0)


def intervals(numerator: np.ndarray, denominator: np.ndarray, paired: bool = True) -> list[Ratio]:
    index = np.arange(1, numerator.shape[1] + 1)
    return [
        ratio_interval(pd.Series(top, index=index), pd.Series(bottom, index=index), paired=paired)
        for top, bottom in zip(numerator, denominator, strict=True)
    ]


@pytest.mark.parametrize("repeats", [3, 5])
def test_intervals_cover_the_true_ratio_about_95_percent_of_the_time(repeats):
    rng = np.random.default_rng(20240 + repeats)
    ratios = intervals(*simulate(rng, repeats, TRUE_RATIO))
    assert {r.method for r in ratios} == {"paired_t_log"}
    coverage = np.mean([r.low <= TRUE_RATIO <= r.high for r in ratios])
    faster = np.mean([verdict(r) == "faster" for r in ratios])
    print(f"\nrepeats={repeats}: coverage of true ratio {TRUE_RATIO} = {coverage:.4f}; called faster {faster:.4f}")
    assert 0.93 <= coverage <= 0.97


@pytest.mark.parametrize("repeats", [3, 5])
def test_an_a_a_comparison_is_rarely_called_faster_or_slower(repeats):
    rng = np.random.default_rng(40480 + repeats)
    ratios = intervals(*simulate(rng, repeats, 1.0))
    coverage = np.mean([r.low <= 1.0 <= r.high for r in ratios])
    rates = {m: np.mean([verdict(r, m) in ("faster", "slower") for r in ratios]) for m in (0.03, 0.0)}
    print(
        f"\nA/A repeats={repeats}: coverage of 1 = {coverage:.4f}; false calls with min_effect 0.03 = "
        f"{rates[0.03]:.4f}, with min_effect 0 = {rates[0.0]:.4f}"
    )
    assert rates[0.03] <= 0.05
    # With no minimum effect a false call is exactly a miss of the interval: nominally 5%. Allow the
    # Monte Carlo error of DRAWS draws (3 standard errors) so that the bound tests the method, not the seed.
    assert rates[0.0] <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / DRAWS)
    assert 0.93 <= coverage <= 0.97


def test_pairing_by_round_cancels_drift_that_welch_cannot():
    rng = np.random.default_rng(7)
    numerator, denominator = simulate(rng, 5, TRUE_RATIO)
    paired = intervals(numerator[:300], denominator[:300])
    unpaired = intervals(numerator[:300], denominator[:300], paired=False)
    width = np.median([math.log(r.high / r.low) for r in paired])
    welch_width = np.median([math.log(r.high / r.low) for r in unpaired])
    assert {r.method for r in unpaired} == {"welch_t_log"}
    assert width < welch_width / 2


# --- ratio_interval, verdict, value_interval ---------------------------------------------------------


def test_paired_interval_is_a_t_interval_on_the_log_ratios_of_common_repeats():
    top = pd.Series([110.0, 95.0, 130.0, 500.0], index=[1, 2, 3, 4])
    bottom = pd.Series([100.0, 90.0, 115.0, 7.0], index=[1, 2, 3, 5])  # repeat 4 and 5: no partner
    ratio = ratio_interval(top, bottom)
    logs = np.log([1.10, 95 / 90, 130 / 115])
    low, high = scipy_stats.t.interval(0.95, 2, loc=logs.mean(), scale=logs.std(ddof=1) / math.sqrt(3))
    assert ratio.method == "paired_t_log" and ratio.n == 3
    assert ratio.estimate == pytest.approx(math.exp(logs.mean()))
    assert (ratio.low, ratio.high) == pytest.approx((math.exp(low), math.exp(high)))


def test_constant_ratio_gives_a_zero_width_interval():
    ratio = ratio_interval(pd.Series([2.0, 4.0, 8.0], index=[1, 2, 3]), pd.Series([1.0, 2.0, 4.0], index=[1, 2, 3]))
    assert (ratio.estimate, ratio.low, ratio.high, ratio.n) == pytest.approx((2.0, 2.0, 2.0, 3))


def test_welch_when_fewer_than_two_repeats_are_common():
    top = pd.Series([110.0, 95.0, 130.0], index=[1, 2, 3])
    bottom = pd.Series([100.0, 90.0, 80.0], index=[1, 4, 5])
    ratio = ratio_interval(top, bottom)
    expected = scipy_stats.ttest_ind(np.log(top), np.log(bottom), equal_var=False).confidence_interval(0.95)
    assert ratio.method == "welch_t_log" and ratio.n == 3
    assert ratio.estimate == pytest.approx(math.exp(np.log(top).mean() - np.log(bottom).mean()))
    assert (ratio.low, ratio.high) == pytest.approx((math.exp(expected.low), math.exp(expected.high)))


def test_paired_false_forces_welch_and_bad_values_are_dropped():
    top = pd.Series([110.0, 95.0, np.nan, 0.0, 120.0], index=[1, 2, 3, 4, 5])
    bottom = pd.Series([100.0, 90.0, 80.0, 70.0, 60.0], index=[1, 2, 3, 4, 5])
    assert ratio_interval(top, bottom, paired=False).method == "welch_t_log"
    assert ratio_interval(top, bottom).n == 3  # repeats 1, 2 and 5


def test_insufficient_runs_give_no_interval_and_are_inconclusive():
    ratio = ratio_interval(pd.Series([120.0], index=[1]), pd.Series([100.0, 90.0], index=[2, 3]))
    assert ratio.method == "insufficient_runs" and ratio.n == 1
    assert ratio.estimate == pytest.approx(120 / math.sqrt(9000))
    assert math.isnan(ratio.low) and math.isnan(ratio.high)
    assert verdict(ratio) == "inconclusive"
    empty = ratio_interval(pd.Series([], dtype=float), pd.Series([1.0, 2.0], index=[1, 2]))
    assert empty.method == "insufficient_runs" and math.isnan(empty.estimate)


@pytest.mark.parametrize(
    ("low", "high", "min_effect", "expected"),
    [
        (1.031, 1.2, 0.03, "faster"),
        (1.03, 1.2, 0.03, "inconclusive"),  # the whole interval must clear the minimum effect
        (1.01, 1.2, 0.03, "inconclusive"),
        (1.01, 1.2, 0.0, "faster"),
        (0.8, 0.969, 0.03, "slower"),
        (0.8, 0.97, 0.03, "inconclusive"),
        (0.8, 0.99, 0.0, "slower"),
        (0.9, 1.1, 0.0, "inconclusive"),
        (0.97, 1.03, 0.03, "equivalent"),  # the whole interval inside the band, edges included
        (0.971, 1.029, 0.03, "equivalent"),
        (0.969, 1.01, 0.03, "inconclusive"),  # crosses the lower edge
        (0.99, 1.031, 0.03, "inconclusive"),  # crosses the upper edge
        (1.0, 1.0, 0.0, "equivalent"),  # a zero band holds only a zero-width interval at 1
        (math.nan, math.nan, 0.03, "inconclusive"),  # no interval
    ],
)
def test_verdict_thresholds(low, high, min_effect, expected):
    assert verdict(Ratio((low + high) / 2, low, high, 3, "paired_t_log"), min_effect) == expected


def test_value_interval():
    values = pd.Series([100.0, 110.0, 105.0])
    logs = np.log(values)
    low, high = scipy_stats.t.interval(0.9, 2, loc=logs.mean(), scale=logs.std(ddof=1) / math.sqrt(3))
    assert value_interval(values, 0.9) == pytest.approx((math.exp(low), math.exp(high)))
    assert all(math.isnan(v) for v in value_interval(pd.Series([100.0, np.nan])))


def test_contended():
    runs = pd.DataFrame(
        {
            "noise_cpu_wait_fraction": [0.0, CONTENDED_WAIT_FRACTION - 0.01, CONTENDED_WAIT_FRACTION, np.nan, 0.0],
            "noise_gpu_other_processes": [0, 0, 0, 1, np.nan],
        }
    )
    assert contended(runs).tolist() == [False, False, True, True, False]
    assert contended(pd.DataFrame({"x": [1, 2]})).tolist() == [False, False]


# --- aggregate ----------------------------------------------------------------------------------------


def run(cell: str, repeat: int, throughput: float = 100.0, **fields) -> dict:
    optimization, batch = cell.split("@bs")
    return {
        "sweep_id": "s1",
        "run_id": f"{cell}#{repeat}",
        "cell_id": cell,
        "repeat": repeat,
        "status": "ok",
        "attempts": 1,
        "worker": "w1",
        "model": "resnet18",
        "optimization": optimization,
        "batch_size": int(batch),
        "image_size": 224,
        "device": "cuda",
        "device_name": "H100",
        "error_type": None,
        "error": None,
        "throughput_sps": throughput,
        "latency_ms_p50": 1000.0 * int(batch) / throughput,
        "host": "h1",
        **fields,
    }


def cells_of(rows: list[dict], **kwargs) -> pd.DataFrame:
    return aggregate(pd.DataFrame(rows), **kwargs).set_index("cell_id", drop=False)


def test_columns_and_cell_order():
    rows = [run("fp16@bs1", 1, extra="x"), run("baseline@bs1", 1, extra="y"), run("fp16@bs1", 2, extra="z")]
    table = aggregate(pd.DataFrame(rows))
    assert table["cell_id"].tolist() == ["fp16@bs1", "baseline@bs1"]
    assert tuple(table.columns[: len(LEAD_COLUMNS)]) == LEAD_COLUMNS
    assert "run_id" not in table.columns and "repeat" not in table.columns
    assert table["extra"].tolist() == ["x", "y"]  # unknown columns: the first ok run's value
    assert table.columns[-1] == "verdict" and "contended_runs" in table.columns  # no noise columns: no crash
    assert table["contended_runs"].tolist() == [0, 0]
    assert table["repeats"].tolist() == [2, 1]


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        (["ok", "ok", "ok"], "ok"),
        (["ok", "running", "failed"], "running"),
        (["ok", "queued", "failed"], "queued"),
        (["queued", "running"], "running"),
        (["unsupported", "unsupported"], "unsupported"),
        (["unsupported", "ok"], "failed"),
        (["ok", "failed", "ok"], "failed"),
    ],
)
def test_cell_status(statuses, expected):
    rows = [run("fp16@bs1", i + 1, status=status) for i, status in enumerate(statuses)]
    assert aggregate(pd.DataFrame(rows))["status"].tolist() == [expected]


def test_failed_runs_text_error_columns_and_ok_only_statistics():
    rows = [
        run("fp16@bs1", 1, throughput=100.0, attempts=1),
        run("fp16@bs1", 2, throughput=np.nan, status="failed", error_type="oom", error="CUDA out of memory"),
        run("fp16@bs1", 3, throughput=120.0, attempts=2),
        run("fp16@bs1", 4, throughput=np.nan, status="unsupported", error_type="unsupported", error="no GPU"),
        run("fp16@bs1", 5, throughput=np.nan, status="queued"),
    ]
    cell = aggregate(pd.DataFrame(rows)).iloc[0]
    assert cell["status"] == "queued"
    assert cell["failed_runs"] == "fp16@bs1#2: oom: CUDA out of memory; fp16@bs1#4: unsupported: no GPU"
    assert (cell["error_type"], cell["error"]) == ("oom", "CUDA out of memory")
    assert (cell["repeats"], cell["repeats_ok"], cell["attempts"]) == (5, 2, 2)
    assert cell["throughput_sps"] == pytest.approx(110.0)
    assert cell["run_to_run_cv"] == pytest.approx(np.std([100.0, 120.0], ddof=1) / 110.0)
    assert cell["throughput_ci_low"] < 100.0 < 120.0 < cell["throughput_ci_high"]
    ok_cell = aggregate(pd.DataFrame([run("fp16@bs1", 1)])).iloc[0]
    assert ok_cell["failed_runs"] == "" and math.isnan(ok_cell["run_to_run_cv"])


def test_median_sum_worst_and_first_rules():
    rows = [
        run("fp16@bs1", i + 1, throughput=t, iterations=100, measure_seconds=2.0, peak_mem_allocated_mb=m,
            top1_agreement=a, cosine_similarity=c, max_abs_error=e, noise_load_avg=load, worker=w, host=h)
        for i, (t, m, a, c, e, load, w, h) in enumerate([
            (100.0, 50.0, 0.99, 0.999, 0.01, 1.0, "w1", "hb"),
            (90.0, 70.0, 0.97, 0.998, 0.03, 3.0, "w2", "ha"),
            (130.0, 60.0, 0.98, 0.997, 0.02, 2.0, "w3", "hb"),
        ])
    ]  # fmt: skip
    rows.append(run("fp16@bs1", 4, throughput=1.0, status="failed", iterations=7, top1_agreement=0.0, host="hz"))
    cell = aggregate(pd.DataFrame(rows)).iloc[0]
    assert cell["throughput_sps"] == 100.0 and cell["peak_mem_allocated_mb"] == 60.0
    assert cell["latency_ms_p50"] == pytest.approx(10.0) and cell["noise_load_avg"] == 2.0
    assert cell["iterations"] == 300 and cell["measure_seconds"] == pytest.approx(6.0)
    assert (cell["top1_agreement"], cell["cosine_similarity"], cell["max_abs_error"]) == (0.97, 0.997, 0.03)
    assert cell["worker"] == "w1" and cell["hosts"] == "ha,hb"


def test_first_run_values_when_no_run_is_ok():
    rows = [run("fp16@bs1", 1, status="failed", worker="w9", error_type="oom", error="boom", iterations=5)]
    cell = aggregate(pd.DataFrame(rows)).iloc[0]
    assert cell["status"] == "failed" and cell["worker"] == "w9"
    assert math.isnan(cell["throughput_sps"]) and math.isnan(cell["iterations"])
    assert math.isnan(cell["throughput_ci_low"]) and cell["hosts"] == ""


def test_contended_runs_are_counted():
    rows = [
        run("fp16@bs1", 1, noise_cpu_wait_fraction=0.2),
        run("fp16@bs1", 2, noise_cpu_wait_fraction=0.0, noise_gpu_other_processes=2),
        run("fp16@bs1", 3, noise_cpu_wait_fraction=0.01, noise_gpu_other_processes=0),
    ]
    assert aggregate(pd.DataFrame(rows))["contended_runs"].tolist() == [2]


def test_speedup_against_the_baseline_of_the_same_batch_size_and_device():
    rows = []
    for repeat, drift in [(1, 1.0), (2, 0.8), (3, 1.2)]:
        rows += [
            run("baseline@bs1", repeat, 100.0 * drift),
            run("fp16@bs1", repeat, 150.0 * drift),
            run("baseline@bs8", repeat, 400.0 * drift),
            run("fp16@bs8", repeat, 400.0 * drift * (1.01 if repeat == 2 else 0.99)),
            run("int8@bs4", repeat, 50.0),  # no baseline at batch size 4
            run("baseline@bs1", repeat, 10.0, cell_id="baseline@bs1/cpu", device="cpu", device_name=None),
            run("fp16@bs1", repeat, 12.0, cell_id="fp16@bs1/A100", device_name="A100"),  # no A100 baseline
        ]
    cells = cells_of(rows)
    assert cells.loc["fp16@bs1", "speedup"] == pytest.approx(1.5)
    assert cells.loc["fp16@bs1", "speedup_ci_low"] == pytest.approx(1.5)  # drift cancels exactly
    assert (cells.loc["fp16@bs1", "speedup_method"], cells.loc["fp16@bs1", "verdict"]) == ("paired_t_log", "faster")
    assert cells.loc["fp16@bs8", "speedup"] == pytest.approx(1.0, abs=0.01)
    # ±1% between rounds, 3 rounds: the interval at 97.5% (2 verdicts share 5%) is wider than the ±3% band
    assert cells.loc["fp16@bs8", "verdict"] == "inconclusive"
    assert cells.loc["fp16@bs8", "comparisons"] == 2
    assert cells.loc["fp16@bs8", "verdict_confidence"] == pytest.approx(0.975)
    assert cells.loc["fp16@bs8", "rounds_to_decide"] > 3
    for cell_id in ("baseline@bs1", "baseline@bs8", "baseline@bs1/cpu", "int8@bs4", "fp16@bs1/A100"):
        assert math.isnan(cells.loc[cell_id, "speedup"]), cell_id
        assert cells.loc[cell_id, "verdict"] == "" and cells.loc[cell_id, "speedup_method"] == "", cell_id


def test_speedup_falls_back_to_welch_and_only_uses_ok_runs():
    rows = [
        run("baseline@bs1", 1, 100.0),
        run("baseline@bs1", 2, 101.0),
        run("baseline@bs1", 3, 99.0, status="failed"),
        run("fp16@bs1", 1, 200.0, status="failed"),
        run("fp16@bs1", 3, 150.0),
        run("fp16@bs1", 4, 152.0),
    ]
    cells = cells_of(rows, min_effect=0.0)
    assert cells.loc["fp16@bs1", "speedup_method"] == "welch_t_log"
    assert cells.loc["fp16@bs1", "speedup"] == pytest.approx(math.sqrt(150 * 152) / math.sqrt(100 * 101))
    assert cells.loc["fp16@bs1", "verdict"] == "faster"


def test_empty_runs():
    table = aggregate(pd.DataFrame(columns=["sweep_id", "cell_id", "status", "throughput_sps"]))
    assert table.empty and "verdict" in table.columns


def test_contended_runs_are_left_out_of_intervals_and_verdicts():
    quiet = [run("baseline@bs1", r, 100.0 + r) for r in (1, 2, 3)]
    quiet += [run("fp16@bs1", r, 150.0 + r) for r in (1, 2)]
    busy = run("fp16@bs1", 3, 5.0, noise_cpu_wait_fraction=0.4)  # 30x slower under a noisy neighbour
    cell = cells_of([*quiet, busy]).loc["fp16@bs1"]
    assert (cell["contended_runs"], cell["runs_used"]) == (1, 2)
    assert cell["throughput_sps"] == pytest.approx(151.5)  # the median of the usable runs only
    assert cell["speedup"] == pytest.approx(math.sqrt(151 / 101 * 152 / 102)) and cell["verdict"] == "faster"


def test_a_rerun_cell_pairs_only_with_runs_rerun_with_it():
    base = [run("baseline@bs1", r, 100.0 + r) for r in (1, 2, 3)]
    rerun = [run("fp16@bs1", r, 150.0 + r, attempts=2) for r in (1, 2, 3)]  # measured later: not the same rounds
    assert cells_of(base + rerun).loc["fp16@bs1", "speedup_method"] == "welch_t_log"
    both = [{**row, "attempts": 2} for row in base] + rerun  # re-run together: rounds again
    assert cells_of(both).loc["fp16@bs1", "speedup_method"] == "paired_t_log"


def random_sweep(seed: int, cells: int = 60, rounds: int = 5) -> pd.DataFrame:
    """Runs of a messy sweep: failed, queued, running and unsupported runs, contended runs, NaN throughput, two
    device names, re-runs, a model without a baseline at one batch size."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(cells):
        optimization = ("baseline", "fp16", "prune", "aa_control", "bf16")[c % 5]
        batch, model = 1 + (c // 5) % 3, f"m{c // 15}"
        if model == "m3" and batch == 3 and optimization == "baseline":
            continue  # its cells have nothing to compare with
        for r in range(1, rounds + 1):
            status = "unsupported" if c % 13 == 5 else str(rng.choice(["ok"] * 8 + ["failed", "queued", "running"]))
            ok = status == "ok"
            throughput = float(rng.lognormal(3, 0.2)) if ok and rng.random() > 0.05 else (math.nan if ok else None)
            rows.append({
                "sweep_id": "s", "run_id": f"{model}/{optimization}@bs{batch}#{r}",
                "cell_id": f"{model}/{optimization}@bs{batch}", "repeat": r, "status": status,
                "attempts": int(rng.choice([1, 1, 1, 2])), "model": model, "optimization": optimization,
                "batch_size": batch, "image_size": 32, "device": "cpu",
                "device_name": str(rng.choice(["A", "A", "A", "B"])) if ok else None,
                "host": rng.choice(["h1", "h2", None]), "throughput_sps": throughput,
                "latency_ms_p50": 1000 / throughput if throughput else None,
                "noise_cpu_wait_fraction": float(rng.choice([0.0, 0.01, 0.2])) if ok else None,
                "iterations": 10, "top1_agreement": float(rng.random()), "max_abs_error": float(rng.random()),
                "error_type": None if ok or status in ("queued", "running") else "boom", "error": None,
            })  # fmt: skip
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", range(5))
def test_aggregate_of_a_messy_sweep_follows_the_per_cell_definitions(seed):
    """`aggregate` works on all cells at once; each cell row must still be what the per-cell definitions give:
    `ratio_interval` of the two cells' `run_series` at the row's confidence, `value_interval` of its usable runs,
    medians, sums and worst values over them."""
    runs = random_sweep(seed)
    cells = aggregate(runs, looks=Looks.auto(10)).set_index("cell_id")
    assert list(cells.index) == list(dict.fromkeys(runs["cell_id"]))
    compared = 0
    for cell_id, row in cells.iterrows():
        mine = runs[runs["cell_id"] == cell_id]
        used = usable_runs(mine)
        source = used if len(used) else mine[mine["status"] == "ok"]
        assert (row["repeats"], row["runs_used"]) == (len(mine), len(used))
        assert row["throughput_sps"] == pytest.approx(source["throughput_sps"].median(), nan_ok=True)
        assert row["iterations"] == pytest.approx(source["iterations"].sum(min_count=1), nan_ok=True)
        assert row["top1_agreement"] == pytest.approx(source["top1_agreement"].min(), nan_ok=True)
        low, high = value_interval(numeric(used, "throughput_sps"), 0.95)
        assert (row["throughput_ci_low"], row["throughput_ci_high"]) == pytest.approx((low, high), nan_ok=True)
        same = (cells["optimization"] == "baseline") & (cells["model"] == row["model"])
        device = "" if pd.isna(row["device_name"]) else row["device_name"]
        same &= (cells["batch_size"] == row["batch_size"]) & (cells["device_name"].fillna("") == device)
        if row["optimization"] == "baseline" or not same.any():  # its baseline ran on the other device, or none did
            assert row["verdict"] == ""
            continue
        base = runs[runs["cell_id"] == cells.index[same][-1]]
        compared += 1
        device = row["device_name"]
        mine_series, base_series = (run_series(r, "throughput_sps", device) for r in (mine, base))
        expected = ratio_interval(mine_series, base_series, row["verdict_confidence"])
        assert row["speedup_method"] == expected.method
        got = (row["speedup"], row["speedup_ci_low"], row["speedup_ci_high"])
        assert got == pytest.approx((expected.estimate, expected.low, expected.high), rel=1e-9, nan_ok=True)
        assert row["verdict"] == str(verdict(expected))
    assert compared == cells["comparisons"].max() >= 10
