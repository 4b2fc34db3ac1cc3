"""The report quotes only numbers that are in the CSVs, and claims only what their intervals support.

`check_report` writes a sweep's report and checks it against the sweep's two CSVs: every citation in
`citations.json` against the cells or runs CSV (ratios between two cells recomputed from the runs), no
decimal number in report.md that cites nothing, the words faster/slower/winner only inside a citation
whose verdict says so, every row of the best-per-metric table (a winner beats every other cell beyond the
minimum effect, a tie lists exactly the cells the top one doesn't beat), and the plots open.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from results import stats
from results.report import write_report

WEIGHTS = "pretrained:DenseNet121_Weights.IMAGENET1K_V1"
DECIMAL = re.compile(r"(?<![\w.])\d[\d,]*\.\d+[x%]?(?![\w.])")
CLAIM_WORDS = re.compile(
    r"\b(faster|slower|fastest|slowest|winner|wins|no difference|equivalent|inconclusive)\b", re.IGNORECASE
)
CODE = re.compile(r"`[^`\n]*`")
VERDICT_WORDS = {"faster": "faster", "slower": "slower", "equivalent": "equivalent", "inconclusive": "inconclusive"}
NO_INTERVAL = "too few runs to tell"
NO_RUNS = "no usable runs to compare"
METRIC_COLUMNS = {
    "throughput": ("throughput_sps", True),
    "p50 latency": ("latency_ms_p50", False),
    "p99 latency": ("latency_ms_p99", False),
    "peak memory": ("memory_mb", False),
}
MEMORY_COLUMNS = ("peak_mem_allocated_mb", "process_mem_mb")
PLOTS = {"pareto.png", "throughput.png", "latency.png", "memory.png", "model_size.png", "speedup.png", "fidelity.png"}
RUN_COLUMNS = (
    "sweep_id", "run_id", "cell_id", "repeat", "status", "attempts", "tries", "worker", "model", "optimization",
    "batch_size", "image_size", "requested_device", "device", "device_name", "weights", "error_type", "error",
    "latency_ms_mean", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "throughput_sps", "iterations",
    "measure_seconds", "peak_mem_allocated_mb", "process_mem_mb", "model_size_mb", "model_size_compressed_mb",
    "params_total", "params_nonzero", "sparsity", "top1_agreement", "max_abs_error", "cosine_similarity",
    "gflops_per_sample", "host", "cpu_model", "cpu_threads", "torch_version", "torchvision_version",
    "python_version", "timer", "gpu_driver", "cuda_version", "cudnn_version", "tf32_cudnn", "started_at",
    "finished_at", "noise_cpu_wait_fraction", "noise_load_avg", "noise_gpu_sm_clock_mhz", "noise_gpu_other_processes",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------- the checker


def check_report(cells_csv: Path, runs_csv: Path, out_dir: Path, min_effect: float = 0.03) -> str:
    """Write the report and check it against the two CSVs; returns the markdown."""
    write_report(cells_csv, runs_csv, out_dir, min_effect)
    return verify_report(cells_csv, runs_csv, out_dir)


def verify_report(cells_csv: Path, runs_csv: Path, out_dir: Path) -> str:
    """Check the report already in `out_dir` against the two CSVs; returns the markdown."""
    report = (out_dir / "report.md").read_text()
    cells, runs = _cells(cells_csv), _runs(runs_csv)
    citations = json.loads((out_dir / "citations.json").read_text())
    assert citations, "the report quotes nothing"
    for c in citations:
        assert c["text"] in report, c
        CHECKS[c["kind"]](c, cells, runs)
    _check_no_stray_numbers(report, citations)
    _check_claim_words(report, citations)
    _check_best_tables(report, citations, cells, runs)
    for name in re.findall(r"\]\(([\w.]+\.png)\)", report):
        with Image.open(out_dir / name) as image:
            assert image.size[0] > 300, name
    return report


def _memory(frame: pd.DataFrame) -> pd.DataFrame:
    allocated, process = (frame.get(c, pd.Series(np.nan, index=frame.index)) for c in MEMORY_COLUMNS)
    return frame.assign(memory_mb=allocated.fillna(process))


def _cells(path: Path) -> pd.DataFrame:
    cells = _memory(pd.read_csv(path)).set_index("cell_id", drop=False)
    device = cells["device_name"].fillna(cells["device"])
    return cells.assign(group=cells["model"].astype(str) + " on " + device.astype(str))  # one best per model and device


def _runs(path: Path) -> pd.DataFrame:
    return _memory(pd.read_csv(path))


def _same(quoted: float | None, value: Any) -> bool:
    if quoted is None:
        return pd.isna(value)
    return not pd.isna(value) and quoted == pytest.approx(float(value), rel=1e-9)


def _interval(estimate: float | None, low: float | None, high: float | None) -> str:
    if estimate is None:
        return f"({NO_RUNS}, {NO_INTERVAL})"
    if low is None or high is None:
        return f"{estimate:.2f}x ({NO_INTERVAL})"
    return f"{estimate:.2f}x [{low:.2f}x, {high:.2f}x]"


def _check_value(c: dict, frame: pd.DataFrame) -> None:
    value = frame.loc[c["cell_id"], c["column"]]
    assert _same(c["value"], value), c
    assert c["text"] == f"{float(value) * c['scale']:,.{c['digits']}f}{c['suffix']}", c


def _check_cell_value(c: dict, cells: pd.DataFrame, runs: pd.DataFrame) -> None:
    _check_value(c, cells)


def _check_run_value(c: dict, cells: pd.DataFrame, runs: pd.DataFrame) -> None:
    _check_value(c, runs.set_index("run_id"))


def _check_speedup(c: dict, cells: pd.DataFrame, runs: pd.DataFrame) -> None:
    """The cells CSV's speedup, interval and verdict; the words match the verdict, the interval supports it."""
    row = cells.loc[c["cell_id"]]
    assert row["optimization"] != "baseline", c
    assert _same(c["value"], row["speedup"]) and _same(c["low"], row["speedup_ci_low"]), c
    assert _same(c["high"], row["speedup_ci_high"]), c
    assert c["claim"] == row["verdict"], c
    interval = _interval(c["value"], c["low"], c["high"])
    if c["low"] is None:
        assert c["claim"] == "inconclusive" and c["text"] == interval, c
        return
    assert c["text"] == f"{interval}: {VERDICT_WORDS[c['claim']]}", c
    ratio = stats.Ratio(c["value"], c["low"], c["high"], 0, "")
    assert stats.verdict(ratio, c["min_effect"]) == c["claim"], c


def _run_values(runs: pd.DataFrame, cells: pd.DataFrame, cell_id: str, column: str) -> pd.Series:
    return stats.run_series(runs[runs["cell_id"] == cell_id], column, cells.loc[cell_id, "device_name"])


def _recompute(cells: pd.DataFrame, runs: pd.DataFrame, top: str, other: str, column: str, higher: bool, c: dict):
    """The ratio of `top` over `other` from the runs CSV, > 1 favouring `top`, and its verdict."""
    a, b = _run_values(runs, cells, top, column), _run_values(runs, cells, other, column)
    ratio = stats.ratio_interval(a, b, c["confidence"]) if higher else stats.ratio_interval(b, a, c["confidence"])
    verdict = stats.verdict(ratio, c["min_effect"]) if cells.loc[top, "repeats_ok"] >= 2 else "inconclusive"
    return ratio, verdict


def _check_comparison(c: dict, cells: pd.DataFrame, runs: pd.DataFrame) -> None:
    """A ratio of two cells' runs, recomputed; a winner must beat the other beyond the minimum effect."""
    top, other = c["cell_id"], c["over_cell_id"]
    ratio, verdict = _recompute(cells, runs, top, other, c["column"], c["higher_is_better"], c)
    assert _same(c["value"], ratio.estimate), c
    assert _same(c["low"], ratio.low) and _same(c["high"], ratio.high), c
    assert c["text"] == f"{_interval(c['value'], c['low'], c['high'])} over `{cells.loc[other, 'optimization']}`", c
    assert c["claim"] in ("winner", "tie"), c
    assert (c["claim"] == "winner") == (verdict == "faster"), (c, verdict)


CHECKS = {
    "value": _check_cell_value,
    "run_value": _check_run_value,
    "speedup": _check_speedup,
    "comparison": _check_comparison,
}


def _check_no_stray_numbers(report: str, citations: list[dict]) -> None:
    covered = np.zeros(len(report), dtype=bool)
    for text in {c["text"] for c in citations}:
        for match in re.finditer(re.escape(text), report):
            covered[match.start() : match.end()] = True
    visible = CODE.sub(lambda m: " " * len(m.group()), report)
    stray = [m.group() for m in DECIMAL.finditer(visible) if not covered[m.start() : m.end()].all()]
    assert not stray, f"numbers in the report that cite nothing: {stray}"


def _check_claim_words(report: str, citations: list[dict]) -> None:
    """Verdict words (faster, slower, equivalent, inconclusive) only inside a checked speedup citation."""
    rest = report
    for text in sorted({c["text"] for c in citations if c["kind"] == "speedup"}, key=len, reverse=True):
        rest = rest.replace(text, "")
    claims = [line for line in CODE.sub("", rest).splitlines() if CLAIM_WORDS.search(line)]
    assert not claims, f"claims without a citation that supports them: {claims}"


def _table_rows(report: str) -> list[list[str]]:
    rows, inside = [], False
    for line in report.splitlines():
        if line.startswith("| batch size | metric | best |"):
            inside = True
        elif inside and line.startswith("| ") and not line.startswith("| ---"):
            rows.append([part.strip() for part in line.strip("|").split(" | ")])
        elif not line.startswith("|"):
            inside = False
    return rows


def _check_best_tables(report: str, citations: list[dict], cells: pd.DataFrame, runs: pd.DataFrame) -> None:
    comparisons = [c for c in citations if c["kind"] == "comparison"]
    for batch, label, best, _, margin in _table_rows(report):
        column, higher = METRIC_COLUMNS[label.split(" (")[0]]
        if margin == "only cell":
            continue
        pieces = [
            [c for c in comparisons if c["text"] == p and c["column"] == column and _batch(cells, c) == int(batch)]
            for p in margin.split("; ")
        ]
        assert all(pieces), f"a ratio in the best table cites nothing: {margin}"
        cited = [matches[0] for matches in pieces]
        _check_best_row(best, cited, cells, runs, column, higher)


def _batch(cells: pd.DataFrame, c: dict) -> int:
    return int(cells.loc[c["cell_id"], "batch_size"])


def _check_best_row(best: str, cited: list[dict], cells: pd.DataFrame, runs: pd.DataFrame, column: str, higher: bool):
    top = cited[0]["cell_id"]
    row = cells.loc[top]
    rivals = cells[
        (cells["repeats_ok"] > 0)
        & (cells["batch_size"] == row["batch_size"])
        & (cells["group"] == row["group"])
        & cells[column].notna()
    ]
    ranked = rivals[column].sort_values(ascending=not higher, kind="stable").index
    assert ranked[0] == top, (best, list(ranked))
    unbeaten = {o for o in ranked[1:] if _recompute(cells, runs, top, o, column, higher, cited[0])[1] != "faster"}
    names = {cells.loc[c, "optimization"] for c in [top, *unbeaten]}
    if best.startswith("tie: "):
        assert {c["claim"] for c in cited} == {"tie"} and unbeaten, best
        assert set(re.findall(r"`([^`]+)`", best)) == names, (best, names)
        assert {c["over_cell_id"] for c in cited} == unbeaten, best
    else:
        assert [c["claim"] for c in cited] == ["winner"] and not unbeaten, (best, unbeaten)
        assert best == f"`{row['optimization']}`" and cited[0]["over_cell_id"] == ranked[1], best


# ---------------------------------------------------------------------------------------------- synthetic sweeps


def run_row(optimization: str, batch_size: int, repeat: int, **values: Any) -> dict[str, Any]:
    cell = f"{optimization}@bs{batch_size}"
    row = {
        "sweep_id": "s1", "run_id": f"{cell}#{repeat}", "cell_id": cell, "repeat": repeat, "status": "ok",
        "attempts": 1, "tries": 1, "worker": "gpu@h1", "model": "densenet121", "optimization": optimization,
        "batch_size": batch_size, "image_size": 224, "requested_device": "cuda", "device": "cuda",
        "device_name": "NVIDIA H200", "weights": WEIGHTS, "iterations": 100, "measure_seconds": 1.5,
        "host": "h1", "torch_version": "2.11.0", "timer": "cuda_event", "noise_cpu_wait_fraction": 0.01,
        "noise_load_avg": 0.4, "noise_gpu_other_processes": 0,
    }  # fmt: skip
    row.update(values)
    return row


def measured_row(optimization: str, batch_size: int, repeat: int, throughput: float, **values: Any) -> dict:
    """An ok run: latency follows throughput; memory and fidelity are the optimization's."""
    fp16 = optimization == "fp16"
    return run_row(
        optimization, batch_size, repeat, throughput_sps=throughput,
        latency_ms_p50=1000 * batch_size / throughput, latency_ms_p99=1100 * batch_size / throughput,
        latency_ms_mean=1020 * batch_size / throughput, peak_mem_allocated_mb=100.0 * batch_size / (2 if fp16 else 1),
        model_size_mb=15.4 if fp16 else 30.8, model_size_compressed_mb=13.1 if fp16 else 27.1,
        top1_agreement=0.75 if fp16 else 1.0, max_abs_error=0.02 if fp16 else 0.0, cosine_similarity=0.999,
        **values,
    )  # fmt: skip


def write_sweep(runs: list[dict[str, Any]], directory: Path, min_effect: float = 0.03) -> tuple[Path, Path]:
    """The runs CSV and the cells CSV `results.stats.aggregate` makes of it."""
    frame = pd.DataFrame(runs, columns=list(RUN_COLUMNS))
    directory.mkdir(parents=True, exist_ok=True)
    runs_csv, cells_csv = directory / "s1_runs.csv", directory / "s1.csv"
    frame.to_csv(runs_csv, index=False)
    stats.aggregate(frame, min_effect=min_effect).to_csv(cells_csv, index=False)
    return cells_csv, runs_csv


# Throughput factor over the baseline per (optimization, batch size): fp16 only pays off at batch 8.
EFFECTS = {("baseline", 1): 1.0, ("baseline", 8): 1.0, ("aa_control", 1): 1.0, ("aa_control", 8): 1.0,
           ("fp16", 1): 1.0, ("fp16", 8): 1.3, ("prune", 1): 0.8, ("prune", 8): 0.8}  # fmt: skip
REPEATS = 5


def sweep_runs() -> list[dict[str, Any]]:
    """Runs of a sweep with a real effect, an A/A control, a contended run, a failed and an unsupported cell."""
    rng = np.random.default_rng(7)
    drift = 1 + rng.uniform(-0.03, 0.03, REPEATS + 1)  # each round shares its drift
    rows = []
    for repeat in range(1, REPEATS + 1):
        for (optimization, batch_size), effect in EFFECTS.items():
            throughput = 100 * batch_size**0.5 * effect * drift[repeat] * rng.lognormal(0, 0.01)
            if (optimization, batch_size, repeat) == ("prune", 8, 3):
                rows.append(measured_row(optimization, batch_size, repeat, throughput * 0.7,
                                         noise_cpu_wait_fraction=0.35, noise_load_avg=6.2))  # fmt: skip
            elif (optimization, batch_size, repeat) == ("fp16", 1, 4):
                rows.append(run_row(optimization, batch_size, repeat, status="failed", error_type="crashed",
                                    error="worker process exited with status 3"))  # fmt: skip
            else:
                rows.append(measured_row(optimization, batch_size, repeat, throughput))
        rows.append(run_row("dynamic_quant", 1, repeat, status="unsupported", error_type="unsupported_on_device",
                            error="dynamic_quant runs on cpu only, not on cuda", device_name=None))  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, Path, Path, str]:
    directory = tmp_path_factory.mktemp("sweep")
    cells_csv, runs_csv = write_sweep(sweep_runs(), directory)
    report = check_report(cells_csv, runs_csv, directory / "s1")
    return cells_csv, runs_csv, directory / "s1", report


def line_of(report: str, start: str) -> str:
    matches = [line for line in report.splitlines() if line.startswith(start)]
    assert len(matches) == 1, (start, matches)
    return matches[0]


# ---------------------------------------------------------------------------------------------- tests


def test_a_real_effect_is_called_faster_with_its_interval(sweep):
    cells_csv, _, _, report = sweep
    row = pd.read_csv(cells_csv).set_index("cell_id").loc["fp16@bs8"]
    assert row["verdict"] == "faster"
    expected = f"{row['speedup']:.2f}x [{row['speedup_ci_low']:.2f}x, {row['speedup_ci_high']:.2f}x]: faster"
    assert line_of(report, "- `fp16` at batch 8: ").startswith(f"- `fp16` at batch 8: {expected} (")
    assert re.search(r"- `prune` at batch 1: 0\.\d\dx \[0\.\d\dx, 0\.\d\dx\]: slower", report)


def test_the_a_a_control_and_a_null_effect_are_never_faster_or_slower(sweep):
    _, _, _, report = sweep
    for start in ("- `aa_control` at batch 1: ", "- `aa_control` at batch 8: ", "- `fp16` at batch 1: "):
        assert re.match(
            r"- `\w+` at batch \d: \d\.\d\dx \[\d\.\d\dx, \d\.\d\dx\]: (equivalent|inconclusive) \(",
            line_of(report, start),
        )


def test_the_noise_section_reads_the_a_a_controls(sweep, tmp_path):
    _, _, _, report = sweep
    noise = report.split("## Noise")[1].split("\n## ")[0]
    line = line_of(noise, "The A/A control `aa_control@bs1` (the baseline measured again as a cell of its own): ")
    assert re.search(r": \d\.\d\dx \[\d\.\d\dx, \d\.\d\dx\]: equivalent, as it should be\.$", line)
    # A host that biases one of two identical cells by 10%: the control says so, and what to do.
    biased = [
        {**row, "throughput_sps": row["throughput_sps"] * 1.10} if row["optimization"] == "aa_control" else row
        for row in sweep_runs()
    ]
    report = check_report(*write_sweep(biased, tmp_path), tmp_path / "report")
    control = "The A/A control `aa_control@bs8` (the baseline measured again as a cell of its own)"
    line = line_of(report, f"{control} differs")
    assert re.search(r"baseline: 1\.\d\dx \[1\.\d\dx, 1\.\d\dx\]: faster\. Noise or drift on this host", line)
    assert "raise `--repeats` or `--min-effect`" in line


def test_the_best_table_names_a_winner_only_when_it_beats_every_other_cell(sweep):
    _, _, _, report = sweep
    throughput_1 = line_of(report, "| 1 | throughput (samples/s) |")
    assert "| tie: " in throughput_1 and all(f"`{o}`" in throughput_1 for o in ("baseline", "aa_control", "fp16"))
    assert "`prune`" not in throughput_1  # 20% slower: beaten, so not in the tie
    assert line_of(report, "| 8 | throughput (samples/s) |").startswith("| 8 | throughput (samples/s) | `fp16` | ")
    assert line_of(report, "| 8 | peak memory (MiB) |").startswith("| 8 | peak memory (MiB) | `fp16` | 400.00 | ")


def test_fidelity_and_the_top_throughput_note(sweep):
    _, _, _, report = sweep
    fp16_8 = line_of(report, "- `fp16@bs8` agrees with the fp32 top-1 on 0.75 of the probe")
    assert "It has the top throughput at its batch size (1.29x [" in fp16_8
    assert "top throughput" not in line_of(report, "- `fp16@bs1` agrees")  # a tie at batch 1: no such note
    assert "random weights" not in report


def test_the_noise_section_names_the_contended_run_and_what_to_do(sweep):
    _, _, _, report = sweep
    noise = report.split("## Noise")[1].split("\n## ")[0]
    # The run that ran on a busy host is named and left out, so prune@bs8's remaining runs agree.
    assert "Runs measured under contention (left out of every interval and verdict above):" in noise
    assert "- `prune@bs8`: " not in noise
    assert "- run `prune@bs8#3`: waited for a CPU 35.0% of its runnable time, load average 6.20, 0 other" in noise
    assert "quiet host" in noise and "pin each worker" in noise


def test_runs_without_a_measurement_and_the_environment(sweep):
    _, _, out_dir, report = sweep
    assert "- `fp16@bs1`: 1 of 5 runs failed (`crashed: worker process exited with status 3`): `fp16@bs1#4`" in report
    assert "- `dynamic_quant@bs1`: 5 of 5 runs unsupported (`unsupported_on_device: dynamic_quant runs" in report
    assert "each cell ran 5 times in fresh processes, interleaved round by round" in report
    assert "- timed calls: `3,900` in all over `58` s of timing" in report
    assert {p.name for p in out_dir.glob("*.png")} == PLOTS


def test_a_cell_with_one_ok_run_cannot_win(tmp_path):
    rows = [measured_row("baseline", 4, r, 100.0 * (1 + 0.01 * r)) for r in (1, 2, 3)]
    rows += [measured_row("fp16", 4, 1, 200.0)]
    rows += [run_row("fp16", 4, r, status="failed", error_type="oom", error="out of memory") for r in (2, 3)]
    cells_csv, runs_csv = write_sweep(rows, tmp_path)
    report = check_report(cells_csv, runs_csv, tmp_path / "s1")
    assert line_of(report, "- `fp16` at batch 4: ").startswith(f"- `fp16` at batch 4: 1.96x ({NO_INTERVAL}) (")
    assert line_of(report, "| 4 | throughput (samples/s) |").startswith("| 4 | throughput (samples/s) | tie: `fp16`")
    assert "No run showed contention" in report


def test_each_device_of_a_hardware_comparison_gets_its_own_findings(tmp_path):
    rows = []
    for device, speed in (("NVIDIA H200", 2.0), ("NVIDIA A100", 1.0)):
        for repeat in (1, 2, 3):
            for optimization, effect in (("baseline", 1.0), ("fp16", 1.5)):
                row = measured_row(optimization, 4, repeat, 100 * speed * effect * (1 + 0.01 * repeat))
                cell = f"{optimization}@bs4@{device.split()[-1].lower()}"
                rows.append({**row, "device_name": device, "cell_id": cell, "run_id": f"{cell}#{repeat}"})
    rows += [run_row("torchscript", 4, 1, status="queued"), run_row("torchscript", 4, 2, status="running")]
    cells_csv, runs_csv = write_sweep(rows, tmp_path)
    report = check_report(cells_csv, runs_csv, tmp_path / "s1")
    assert report.index("# On NVIDIA A100") < report.index("# On NVIDIA H200")
    assert report.count("- `fp16` at batch 4: 1.50x [1.50x, 1.50x]: faster (") == 2
    assert report.count("| 4 | throughput (samples/s) | `fp16` | ") == 2
    assert "- `torchscript@bs4`: 1 of 2 runs queued (not finished): `torchscript@bs4#1`" in report


def test_one_run_per_cell_gives_no_interval_and_no_verdict(tmp_path):
    rows = [measured_row(o, b, 1, 100 * e * b) for o, e in (("baseline", 1.0), ("fp16", 1.4)) for b in (1, 2)]
    frame = pd.DataFrame(rows, columns=[c for c in RUN_COLUMNS if not c.startswith("noise_")])  # older workers
    (tmp_path / "s1").mkdir()
    frame.to_csv(tmp_path / "runs.csv", index=False)
    stats.aggregate(frame).to_csv(tmp_path / "cells.csv", index=False)
    report = check_report(tmp_path / "cells.csv", tmp_path / "runs.csv", tmp_path / "s1")
    assert "each cell ran once, so there are no intervals and no verdicts" in report
    assert f"- `fp16` at batch 2: 1.40x ({NO_INTERVAL}) (" in report
    assert line_of(report, "| 2 | peak memory (MiB) |").startswith(
        "| 2 | peak memory (MiB) | tie: `fp16`, `baseline` |"
    )
    assert "contention can't be ruled out; no cell has two ok runs" in report


@pytest.mark.parametrize(
    "tamper",
    [
        lambda md, cites: (md.replace(": equivalent", ": faster", 1), cites),
        lambda md, cites: (md.replace("## Noise", "`fp16` is faster than the rest.\n\n## Noise"), cites),
        lambda md, cites: (md.replace("## Noise", "Throughput rose by 12.50 samples/s.\n\n## Noise"), cites),
        lambda md, cites: (md, [{**c, "claim": "winner"} if c["claim"] == "tie" else c for c in cites]),
    ],
    ids=["verdict-word", "uncited-claim", "uncited-number", "tie-called-winner"],
)
def test_the_checker_catches_a_report_that_claims_too_much(sweep, tmp_path, tamper):
    cells_csv, runs_csv, out_dir, report = sweep
    markdown, citations = tamper(report, json.loads((out_dir / "citations.json").read_text()))
    (tmp_path / "report.md").write_text(markdown)
    (tmp_path / "citations.json").write_text(json.dumps(citations))
    with pytest.raises(AssertionError):
        verify_report(cells_csv, runs_csv, tmp_path)


def test_no_nan_is_quoted(sweep):
    _, _, out_dir, report = sweep
    assert "nan" not in report.lower().replace("nanos", "")
    assert all(not math.isnan(c["value"]) for c in json.loads((out_dir / "citations.json").read_text()))


def test_a_quantized_cell_splits_its_error_into_the_quantization_and_the_kernels(tmp_path):
    columns = (*RUN_COLUMNS, "quant_cosine_similarity", "kernel_cosine_similarity", "reduce_range", "cpu_isa")
    rows = []
    for repeat in range(1, 4):
        rows.append(measured_row("baseline", 1, repeat, 100.0 + repeat, cpu_isa="AVX2"))
        rows.append(
            measured_row(
                "int8_static", 1, repeat, 150.0 + repeat, cpu_isa="AVX2", reduce_range=True,
                quant_cosine_similarity=0.99 - repeat / 1000, kernel_cosine_similarity=0.995,
            )
        )  # fmt: skip
    frame = pd.DataFrame(rows, columns=list(columns))
    runs_csv, cells_csv = tmp_path / "s1_runs.csv", tmp_path / "s1.csv"
    frame.to_csv(runs_csv, index=False)
    stats.aggregate(frame).to_csv(cells_csv, index=False)
    report = check_report(cells_csv, runs_csv, tmp_path / "s1")
    line = line_of(report, "- `int8_static@bs1`: quantization error")
    assert "cosine 0.9870; kernel error" in line  # the worst run's
    assert "cosine 0.9950 (worst runs); activations quantized with `reduce_range=True`" in line
    assert "- CPU instruction set (effective): `AVX2`" in report
