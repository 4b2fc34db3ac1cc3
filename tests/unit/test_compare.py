"""results.compare: a sweep against itself, a 20% regression, and one-line errors on bad input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from results.compare import GEOMETRIC_MEAN, compare, main, regressions

CELLS = [("baseline", 1), ("fp16", 1), ("baseline", 8), ("fp16", 8)]


def sweep_runs(sweep_id: str, seed: int, scale: float = 1.0, repeats: int = 3, device_name: str = "H100"):
    """Runs of a small sweep: throughput with 2% lognormal run-to-run noise, p50 latency consistent with it."""
    rng = np.random.default_rng(seed)
    rows = []
    for repeat in range(1, repeats + 1):
        for optimization, batch in CELLS:
            throughput = scale * 100.0 * batch * (1.5 if optimization == "fp16" else 1.0) * rng.lognormal(0, 0.02)
            cell = f"{optimization}@bs{batch}"
            rows.append(
                {
                    "sweep_id": sweep_id,
                    "run_id": f"{cell}#{repeat}",
                    "cell_id": cell,
                    "repeat": repeat,
                    "status": "ok",
                    "model": "resnet18",
                    "optimization": optimization,
                    "batch_size": batch,
                    "image_size": 224,
                    "device_name": device_name,
                    "throughput_sps": throughput,
                    "latency_ms_p50": 1000.0 * batch / throughput,
                }
            )
    return pd.DataFrame(rows)


@pytest.fixture
def results_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("OPTBENCH_RESULTS_DIR", str(tmp_path))
    sweep_runs("a", seed=1).to_csv(tmp_path / "a_runs.csv", index=False)
    sweep_runs("b", seed=2, scale=0.8).to_csv(tmp_path / "b_runs.csv", index=False)
    return tmp_path


def test_a_sweep_against_itself_is_never_faster_or_slower():
    runs = sweep_runs("a", seed=1)
    table = compare(runs, runs)
    cells, summary = table.iloc[:-1], table.iloc[-1]
    assert cells["cell_id"].tolist() == ["baseline@bs1", "fp16@bs1", "baseline@bs8", "fp16@bs8"]
    # 3 runs a side at 2% noise: some intervals fit the ±3% band (equivalent), some are too wide to tell
    assert set(cells["throughput_verdict"]) <= {"equivalent", "inconclusive"}
    assert set(cells["latency_verdict"]) <= {"equivalent", "inconclusive"}
    assert cells["verdict_confidence"].tolist() == pytest.approx([1 - 0.05 / 4] * 4)  # 4 cells share the 5%
    assert cells["throughput_ratio"].to_numpy() == pytest.approx(1.0)
    assert (cells["throughput_ratio_ci_low"] < 1).all() and (cells["throughput_ratio_ci_high"] > 1).all()
    assert summary["cell_id"] == GEOMETRIC_MEAN
    assert summary["throughput_ratio"] == pytest.approx(1.0) and summary["latency_ratio"] == pytest.approx(1.0)
    assert summary["throughput_verdict"] == "equivalent"  # the same runs: a zero-width interval at 1
    assert regressions(table, 1) == []


def test_a_20_percent_lower_throughput_is_slower():
    a, b = sweep_runs("a", seed=1), sweep_runs("b", seed=2, scale=0.8, device_name="A100")
    b = pd.concat([b, b.iloc[[0]].assign(status="failed", throughput_sps=1.0)])  # failed runs don't count
    table = compare(a, b)
    cells, summary = table.iloc[:-1], table.iloc[-1]
    assert (cells["throughput_verdict"] == "slower").all()
    assert (cells["latency_verdict"] == "slower").all()  # B's latency is higher
    assert cells["throughput_ratio"].to_numpy() == pytest.approx(0.8, abs=0.05)
    assert cells["latency_ratio"].to_numpy() == pytest.approx(1.25, abs=0.08)
    assert (cells["latency_ratio_ci_low"] > 1).all()
    assert cells["runs_b"].tolist() == [3, 3, 3, 3]
    assert set(cells["device_name_a"]) == {"H100"} and set(cells["device_name_b"]) == {"A100"}
    assert summary["throughput_ratio"] == pytest.approx(0.8, abs=0.03)
    assert summary["throughput_ratio_ci_high"] < 0.9 and summary["throughput_verdict"] == "slower"
    assert regressions(table, 10) == cells["cell_id"].tolist()
    assert regressions(table, 30) == []


def test_only_shared_cells_are_compared():
    a = sweep_runs("a", seed=1)
    b = sweep_runs("b", seed=2)
    b = b[b["batch_size"] == 8]
    table = compare(a, b)
    assert table["cell_id"].tolist() == ["baseline@bs8", "fp16@bs8", GEOMETRIC_MEAN]


def test_a_single_shared_cell_has_no_interval_over_cells():
    a = sweep_runs("a", seed=1)
    table = compare(a, a[a["cell_id"] == "fp16@bs8"])
    assert table["cell_id"].tolist() == ["fp16@bs8", GEOMETRIC_MEAN]
    assert math.isnan(table.iloc[-1]["throughput_ratio_ci_low"])


def test_cli_fail_on_regression(results_dir, capsys):
    assert main(["a", "b", "--fail-on-regression", "10"]) == 1
    out = capsys.readouterr().out
    assert "regressions: throughput lower by more than 10% in baseline@bs1, fp16@bs1, baseline@bs8, fp16@bs8" in out
    assert main(["a", "b", "--fail-on-regression", "30"]) == 0
    assert main(["a", "b"]) == 0
    written = pd.read_csv(results_dir / "compare-a-b.csv")
    assert written["cell_id"].tolist()[-1] == GEOMETRIC_MEAN
    assert not [p for p in results_dir.iterdir() if p.name.endswith(".tmp")]


def test_cli_takes_csv_paths_and_writes_to_the_results_dir(tmp_path, results_dir, capsys):
    out_dir = tmp_path / "out"
    code = main([str(results_dir / "a_runs.csv"), str(results_dir / "a_runs.csv"), "--results-dir", str(out_dir)])
    assert code == 0
    assert (out_dir / "compare-a-a.csv").is_file()
    out = capsys.readouterr().out
    assert "equivalent" in out or "inconclusive" in out
    assert "faster" not in out and "slower" not in out


def test_an_inconclusive_cell_says_how_many_runs_would_decide_it(capsys):
    a = sweep_runs("a", seed=4)
    b = sweep_runs("b", seed=5, scale=1.04)  # a 4% change at 2% noise, 3 runs a side: too close to the 3% edge
    table = compare(a, b).iloc[:-1]
    needed = table.loc[table["throughput_verdict"] == "inconclusive", "throughput_runs_to_decide"].dropna()
    assert len(needed) and (needed > 3).all()  # none where the ratio sits on a band edge: no number of runs
    decided = table[table["throughput_verdict"].isin(["faster", "equivalent"])]
    assert decided["throughput_runs_to_decide"].isna().all()


def test_many_a_a_cells_make_a_false_call_in_at_most_5_percent_of_comparisons():
    """20 cells, both sweeps from one distribution (5% run-to-run noise, 5 runs a side): Bonferroni keeps the
    chance of any faster/slower among the 20 verdicts under the stated 5%."""
    rng = np.random.default_rng(17)
    cells = [f"c{i}" for i in range(20)]

    def runs(sweep_id: str) -> pd.DataFrame:
        values = rng.lognormal(np.log(100.0), 0.05, (5, len(cells)))
        return pd.DataFrame(
            [{"sweep_id": sweep_id, "cell_id": f"{c}@bs1", "status": "ok", "model": "m", "optimization": c,
              "batch_size": 1, "image_size": 224, "throughput_sps": values[r, i], "latency_ms_p50": 1e3 / values[r, i]}
             for r in range(5) for i, c in enumerate(cells)]
        )  # fmt: skip

    trials = 200
    any_false = sum(
        (compare(runs("a"), runs("b"), min_effect=0.0).iloc[:-1]["throughput_verdict"].isin(["faster", "slower"])).any()
        for _ in range(trials)
    )
    assert any_false / trials <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / trials)


def test_sweeps_on_different_cpu_instruction_sets_are_flagged(tmp_path, capsys):
    a = sweep_runs("a", seed=1).assign(cpu_isa="AVX512 vnni amx")
    b = sweep_runs("b", seed=2).assign(cpu_isa="AVX2")
    a.to_csv(tmp_path / "a_runs.csv", index=False)
    b.to_csv(tmp_path / "b_runs.csv", index=False)
    assert main(["a", "b", "--results-dir", str(tmp_path)]) == 0
    assert "warning: the sweeps ran on different CPU instruction sets (A: AVX512 vnni amx; B: AVX2)" in (
        capsys.readouterr().out
    )
    assert main(["a", "a", "--results-dir", str(tmp_path)]) == 0
    assert "instruction sets" not in capsys.readouterr().out


def test_python_m_results_dispatches_compare(results_dir):
    from results.__main__ import main as results_main

    assert results_main(["compare", "a", "b", "--fail-on-regression", "10"]) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["a", "missing"], "no runs CSV at {dir}/missing_runs.csv: `python -m results collect --sweep missing`"),
        (["a", "{dir}/nowhere.csv"], "no runs CSV at {dir}/nowhere.csv"),
        (["a", "b", "--fail-on-regression", "abc"], "--fail-on-regression wants a percentage in (0, 100)"),
        (["a", "b", "--fail-on-regression", "0"], "--fail-on-regression wants a percentage in (0, 100)"),
        (["a", "b", "--fail-on-regression", "100"], "--fail-on-regression wants a percentage in (0, 100)"),
        (["a", "other"], "share no cell"),
        (["a", "empty"], "cannot read"),
        (["a", "nokeys"], "lacks the columns"),
        (["a", "b", "--min-effect", "x"], "argument --min-effect"),
        (["a"], "the following arguments are required: b"),
    ],
)
def test_bad_input_exits_2_with_one_line(results_dir, capsys, argv, message):
    other = sweep_runs("other", seed=3).assign(model="resnet50")
    other.to_csv(results_dir / "other_runs.csv", index=False)
    (results_dir / "empty_runs.csv").write_text("")
    pd.DataFrame({"x": [1]}).to_csv(results_dir / "nokeys_runs.csv", index=False)
    argv = [arg.format(dir=results_dir) for arg in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m results compare: error: "), captured.err
    assert message.format(dir=results_dir) in lines[0]
    assert captured.out == ""
