"""results.recommend: constraints (hold, may hold, broken), ties named, losers explained, random weights refused."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from results import stats
from results.recommend import BROKEN, HOLDS, MAY_HOLD, NOT_JUDGED, Constraints, main, recommend

ROUNDS = 6


def runs_of(cells: dict[str, dict], weights: str = "synthetic", seed: int = 3) -> pd.DataFrame:
    """Runs of cells at batch size `bs`: `tp` throughput, `p99` latency (x a per-run factor), fidelity, memory.

    Each cell's runs vary by `spread` (lognormal) around its values; every round shares a drift."""
    rng = np.random.default_rng(seed)
    drift = rng.lognormal(0, 0.05, ROUNDS)
    rows = []
    for name, c in cells.items():
        optimization, batch = name.split("@bs")
        for r in range(ROUNDS):
            noise = rng.lognormal(0, c.get("spread", 0.01))
            rows.append({
                "sweep_id": "s", "cell_id": name, "run_id": f"{name}#{r + 1}", "repeat": r + 1, "status": "ok",
                "model": "resnet18", "optimization": optimization, "batch_size": int(batch), "image_size": 64,
                "device": "cpu", "device_name": "cpu-x", "weights": weights,
                "throughput_sps": c["tp"] * drift[r] * noise, "latency_ms_p50": 0.9 * c["p99"] / drift[r] * noise,
                "latency_ms_p99": c["p99"] / drift[r] * noise, "process_mem_mb": c.get("mem", 500.0),
                "model_size_mb": c.get("size", 40.0), "cosine_similarity": c.get("cos", 1.0),
                "top1_agreement": c.get("top1", 1.0),
            })  # fmt: skip
    return pd.DataFrame(rows)


def answer(cells: dict[str, dict], constraints: Constraints, weights: str = "synthetic"):
    runs = runs_of(cells, weights)
    table = stats.aggregate(runs).set_index("cell_id", drop=False)
    return recommend(table, runs, constraints), table


CELLS = {
    "baseline@bs1": {"tp": 100.0, "p99": 12.0},
    "fp16@bs1": {"tp": 180.0, "p99": 7.0, "cos": 0.9995},
    "channels_last@bs1": {"tp": 181.0, "p99": 7.0},  # can't be told from fp16 at 1% noise: a tie
    "int8_static@bs1": {"tp": 300.0, "p99": 4.0, "cos": 0.98, "size": 10.0},  # fastest, but outputs drift
    "prune@bs1": {"tp": 90.0, "p99": 13.0, "mem": 900.0},
}


def test_the_fastest_cell_within_fidelity_is_recommended_and_ties_are_named():
    result, _ = answer(CELLS, Constraints())
    assert result.recommended == "channels_last@bs1"  # the higher median of the two that tie
    assert [t.cell_id for t in result.ties] == ["fp16@bs1"]
    assert result.ties[0].verdict in ("equivalent", "inconclusive")
    losses = {loss.cell_id: loss for loss in result.losses}
    assert losses["int8_static@bs1"].reason == "constraint"
    (check,) = losses["int8_static@bs1"].checks
    assert (check.name, check.state, check.value, check.limit) == ("cosine similarity", BROKEN, 0.98, 0.999)
    for loser in ("baseline@bs1", "prune@bs1"):
        assert losses[loser].reason == "objective" and losses[loser].verdict == "faster"
        assert losses[loser].ratio.low > 1.03
    assert result.confidence == pytest.approx(1 - 0.05 / 3)  # three comparisons with the recommended cell


def test_a_latency_budget_holds_by_the_worse_end_of_its_interval():
    cells = {**CELLS, "fp16@bs1": {"tp": 180.0, "p99": 9.9, "spread": 0.08}, "channels_last@bs1": {"tp": 150, "p99": 8}}
    result, table = answer(cells, Constraints(max_latency_p99_ms=10.0, min_cosine=None))
    assert table.loc["fp16@bs1", "latency_ms_p99"] < 10 < table.loc["fp16@bs1", "latency_ms_p99_ci_high"]
    fp16 = next(loss for loss in result.losses if loss.cell_id == "fp16@bs1")
    assert [(c.name, c.state) for c in fp16.checks] == [("p99 latency", MAY_HOLD)]
    assert fp16.checks[0].median_column == "latency_ms_p99"
    assert result.recommended == "int8_static@bs1"  # no fidelity constraint now
    broken = {loss.cell_id for loss in result.losses if any(c.state == BROKEN for c in loss.checks)}
    assert broken == {"baseline@bs1", "prune@bs1"}


def test_memory_and_model_size_constraints():
    result, _ = answer(CELLS, Constraints(max_memory_mb=600, max_model_mb=20, min_cosine=None))
    assert result.recommended == "int8_static@bs1"
    result, _ = answer(CELLS, Constraints(max_memory_mb=600, max_model_mb=50))
    prune = next(loss for loss in result.losses if loss.cell_id == "prune@bs1")
    assert [(c.name, c.state) for c in prune.checks] == [("peak memory", BROKEN)]


@pytest.mark.parametrize("weights", ["random", "random(seed=0)"])  # the keyword, and what a row records
def test_with_random_weights_fidelity_is_not_judged_and_says_so(weights):
    result, _ = answer(CELLS, Constraints(min_top1_agreement=0.99), weights=weights)
    assert result.recommended == "int8_static@bs1"
    assert result.notes and "not judged" in result.notes[0] and "random weights" in result.notes[0]
    assert all(c.state == NOT_JUDGED for loss in result.losses for c in loss.checks if "cos" in c.name)


def test_no_cell_meets_the_constraints():
    result, _ = answer(CELLS, Constraints(max_latency_p99_ms=1.0))
    assert result.recommended is None and not result.ties
    assert {loss.reason for loss in result.losses} == {"constraint"}


def test_the_objective_can_be_a_latency_and_a_batch_size_can_be_required():
    cells = {**CELLS, "fp16@bs8": {"tp": 400.0, "p99": 30.0, "cos": 0.9995}}
    result, _ = answer(cells, Constraints(objective="latency_p99"))
    assert result.recommended == "channels_last@bs1" or "channels_last@bs1" in [t.cell_id for t in result.ties]
    result, _ = answer(cells, Constraints(batch_size=8))
    assert result.recommended == "fp16@bs8" and not result.losses and not result.ties


def test_one_cell_that_holds_only_on_its_median_is_never_recommended():
    result, _ = answer(
        {"baseline@bs1": {"tp": 100.0, "p99": 9.8, "spread": 0.08}}, Constraints(max_latency_p99_ms=10.0)
    )
    assert result.recommended is None and result.losses[0].checks[0].state == MAY_HOLD


def test_holds_state_when_comfortably_inside():
    result, _ = answer({"baseline@bs1": {"tp": 100.0, "p99": 5.0}}, Constraints(max_latency_p99_ms=10.0))
    assert result.recommended == "baseline@bs1" and HOLDS == "holds"


@pytest.fixture
def sweep_dir(tmp_path):
    runs = runs_of(CELLS)
    runs.to_csv(tmp_path / "20261202-120000-abcd_runs.csv", index=False)
    stats.aggregate(runs).to_csv(tmp_path / "20261202-120000-abcd.csv", index=False)
    return tmp_path


def test_cli_prints_the_answer_and_json(sweep_dir, capsys):
    assert main(["--results-dir", str(sweep_dir)]) == 0  # the newest sweep in the folder
    out = capsys.readouterr().out
    assert "recommended: channels_last@bs1" in out and "can't be told from it" in out
    assert "int8_static@bs1: cosine similarity 0.98: needs >= 0.999 (broken)" in out
    assert main(["--results-dir", str(sweep_dir), "--json", "--max-model-mb", "20", "--min-cosine", "0.9"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["cpu-x"]["recommended"] == "int8_static@bs1"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nosuch"], "no CSV at"),
        (["--min-cosine", "1.5"], "min-cosine must be in [0, 1]"),
        (["--max-latency-p99-ms", "-1"], "max-latency-p99-ms must be a positive number"),
        (["--objective", "speed"], "argument --objective: invalid choice"),
        (["--batch-size", "64"], "has no cell at batch size 64"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(sweep_dir, capsys, argv, message):
    assert main(["--results-dir", str(sweep_dir), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m results recommend: error: ") and message in err[0], err
