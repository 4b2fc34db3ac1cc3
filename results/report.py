"""The report of a sweep: `report.md`, PNG plots and `citations.json`, written from the sweep's two CSVs.

The cells CSV (`results/<sweep>.csv`, `results.stats.aggregate`'s rows) holds each cell's representative
values, their intervals and its verdict against the baseline; the runs CSV (`results/<sweep>_runs.csv`)
holds every run's values, from which the best-per-metric table compares two cells run by run.

The report speaks only of what is significant. A cell is called faster or slower than the baseline only
where the cells CSV's verdict says so, with the interval beside it; a cell is named best for a metric
only when its interval against each other cell lies wholly beyond the minimum effect, else the cells
it cannot be told from share a tie.

Every number the report quotes goes through `Citations`, which records in `citations.json` where it came
from: a cell and column of the cells CSV, a run and column of the runs CSV, a cell's speedup over the
baseline with its interval and verdict, or a comparison of two cells' runs with its interval and the
claim made from it. A test checks each against the CSVs, and that no sentence claims more than its
citation supports. Sentences are built from the data: nothing is fixed text standing in for a finding.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle

from results import stats
from results.stats import numeric
from shared.state import UNFINISHED

BASELINE = stats.BASELINE
AA_CONTROL = "aa_control"  # the baseline again as its own cell: what noise alone calls on this host
CONFIDENCE = 0.95  # of every interval the report quotes (the cells CSV's intervals are aggregate's default)
FIDELITY_TOLERANCE = 1e-3  # max |logit error| below which an optimization counts as numerically identical
MAX_ERROR_CHARS = 300
OPTIONAL_COLUMNS = (
    "device", "device_name", "weights", "error_type", "error", "model_size_mb", "model_size_compressed_mb",
    "top1_agreement", "max_abs_error", "cosine_similarity", "iterations", "measure_seconds",
    "noise_cpu_wait_fraction", "noise_cpu_steal_fraction", "noise_load_avg", "noise_gpu_other_processes",
    "quantized_layers", "calibration", "execution_provider", "onnx_opset",
)  # fmt: skip


@dataclass(frozen=True)
class Metric:
    column: str
    name: str
    unit: str
    higher_is_better: bool


METRICS = (
    Metric("throughput_sps", "throughput", "samples/s", True),
    Metric("latency_ms_p50", "p50 latency", "ms", False),
    Metric("latency_ms_p99", "p99 latency", "ms", False),
    Metric("memory_mb", "peak memory", "MiB", False),
)
METRIC_BY_NAME = {m.name: m for m in METRICS}
VERDICT_WORDS = {"faster": "faster", "slower": "slower", "no_difference": "no difference"}
NO_INTERVAL = "too few runs to tell"
NO_RUNS = "no usable runs to compare"


@dataclass(frozen=True)
class Citation:
    """One quoted number (or ratio with its interval), as printed, and where it came from."""

    text: str  # as printed in the report
    kind: str  # value (cells CSV) | run_value (runs CSV) | speedup (cells CSV) | comparison (runs CSV)
    cell_id: str  # the cell; for run_value the run id
    column: str
    value: float | None  # the value, or the ratio's estimate (None when there is none)
    digits: int = 2
    scale: float = 1.0  # printed value = value * scale (100 for a percentage)
    suffix: str = ""
    over_cell_id: str | None = None  # comparison: the other cell (the ratio > 1 favours cell_id)
    low: float | None = None
    high: float | None = None
    claim: str | None = None  # speedup: the verdict; comparison: "winner" or "tie"
    higher_is_better: bool | None = None  # comparison: the metric's orientation
    min_effect: float | None = None
    confidence: float | None = None


def number_text(value: float, digits: int = 2, scale: float = 1.0, suffix: str = "") -> str:
    return f"{value * scale:,.{digits}f}{suffix}"


def percent(fraction: float) -> str:
    """A parameter as a percentage, `0.03` -> `3%` (printed in code: it is a setting, not a finding)."""
    return f"{fraction * 100:g}%"


def interval_text(estimate: float | None, low: float | None, high: float | None) -> str:
    """`1.31x [1.22x, 1.40x]`, or the estimate alone when there is no interval (nothing without an estimate)."""
    if estimate is None:
        return f"({NO_RUNS}, {NO_INTERVAL})"
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{estimate:.2f}x ({NO_INTERVAL})"
    return f"{estimate:.2f}x [{low:.2f}x, {high:.2f}x]"


def verdict_text(estimate: float | None, low: float | None, high: float | None, verdict: str) -> str:
    """`1.31x [1.22x, 1.40x]: faster`; an interval-less ratio is never called anything."""
    interval = interval_text(estimate, low, high)
    return interval if interval.endswith(f"({NO_INTERVAL})") else f"{interval}: {VERDICT_WORDS[verdict]}"


def comparison_text(estimate: float | None, low: float | None, high: float | None, over_optimization: str) -> str:
    return f"{interval_text(estimate, low, high)} over `{over_optimization}`"


def _finite_or_none(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


class Citations:
    """Quotes numbers from the two CSVs and remembers each quote for `citations.json`."""

    def __init__(self, cells: pd.DataFrame, runs: pd.DataFrame, min_effect: float) -> None:
        self.cells, self.runs, self.min_effect = cells, runs.set_index("run_id", drop=False), min_effect
        self.items: list[Citation] = []

    def _add(self, citation: Citation) -> str:
        self.items.append(citation)
        return citation.text

    def quote(self, cell_id: str, column: str, digits: int = 2, scale: float = 1.0, suffix: str = "") -> str:
        value = float(self.cells.loc[cell_id, column])
        text = number_text(value, digits, scale, suffix)
        return self._add(Citation(text, "value", cell_id, column, value, digits, scale, suffix))

    def quote_run(self, run_id: str, column: str, digits: int = 2, scale: float = 1.0, suffix: str = "") -> str:
        value = float(self.runs.loc[run_id, column])
        text = number_text(value, digits, scale, suffix)
        return self._add(Citation(text, "run_value", run_id, column, value, digits, scale, suffix))

    def speedup(self, cell_id: str) -> str:
        """The cell's throughput over the baseline's, its interval and its verdict, from the cells CSV."""
        row = self.cells.loc[cell_id]
        estimate = _finite_or_none(row["speedup"])
        low, high = _finite_or_none(row["speedup_ci_low"]), _finite_or_none(row["speedup_ci_high"])
        claim = str(row["verdict"])
        text = verdict_text(estimate, low, high, claim)
        citation = Citation(
            text, "speedup", cell_id, "speedup", estimate, low=low, high=high, claim=claim,
            min_effect=self.min_effect, confidence=CONFIDENCE,
        )  # fmt: skip
        return self._add(citation)

    def comparison(self, cell_id: str, over: str, metric: Metric, ratio: stats.Ratio, claim: str) -> str:
        """A ratio of two cells' runs (> 1 favours `cell_id`) with the claim the report makes from it."""
        estimate, low, high = _finite_or_none(ratio.estimate), _finite_or_none(ratio.low), _finite_or_none(ratio.high)
        text = comparison_text(estimate, low, high, str(self.cells.loc[over, "optimization"]))
        citation = Citation(
            text, "comparison", cell_id, metric.column, estimate, over_cell_id=over, low=low, high=high,
            claim=claim, higher_is_better=metric.higher_is_better, min_effect=self.min_effect, confidence=CONFIDENCE,
        )  # fmt: skip
        return self._add(citation)


# ---------------------------------------------------------------------------------------------- loading


def with_memory(frame: pd.DataFrame) -> pd.DataFrame:
    """Add `memory_mb`: the GPU allocator's peak, or the process's peak RSS on a CPU."""
    return frame.assign(memory_mb=numeric(frame, "peak_mem_allocated_mb").fillna(numeric(frame, "process_mem_mb")))


def with_columns(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """Add the optional columns a CSV lacks (an older worker's), all missing."""
    return frame.assign(**{c: math.nan for c in columns if c not in frame.columns})


def load_cells(cells_csv: Path) -> pd.DataFrame:
    cells = with_columns(with_memory(pd.read_csv(cells_csv)), OPTIONAL_COLUMNS).set_index("cell_id", drop=False)
    device = cells["device_name"].fillna(cells["device"]).fillna("unknown device")
    return cells.assign(group=device.astype(str))


def load_runs(runs_csv: Path) -> pd.DataFrame:
    return with_columns(with_memory(pd.read_csv(runs_csv)), OPTIONAL_COLUMNS)


def run_values(runs: pd.DataFrame, cells: pd.DataFrame, cell_id: str, column: str) -> pd.Series:
    """A cell's usable runs' values of `column` on the cell's device name, indexed by round."""
    return stats.run_series(runs[runs["cell_id"] == cell_id], column, cells.loc[cell_id, "device_name"])


def measured(cells: pd.DataFrame) -> pd.DataFrame:
    """The cells with at least one ok run."""
    return cells[numeric(cells, "repeats_ok").fillna(0) > 0]


# ---------------------------------------------------------------------------------------------- the report


def write_report(cells_csv: Path, runs_csv: Path, out_dir: Path, min_effect: float = 0.03) -> Path:
    """Write report.md, the plots and citations.json into `out_dir`; returns the report's path."""
    cells, runs = load_cells(cells_csv), load_runs(runs_csv)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = measured(cells)
    cite = Citations(cells, runs, min_effect)
    plots = _plots(done, out_dir) if len(done) else []
    groups = sorted(done["group"].unique())
    findings = []
    for group in groups:  # a hardware comparison (`--gpu-model any`) gets one group per device
        on_device = done[done["group"] == group]
        rankings = rank_all(on_device, runs, min_effect)
        findings += [f"# On {group}" if len(groups) > 1 else ""]
        findings += [
            _versus_baseline(on_device, cite),
            _best(rankings, cite, min_effect),
            _fidelity(on_device, rankings, cite),
        ]
    sections = [
        _header(cells, runs, min_effect),
        *findings,
        _noise(done, runs, cite),
        _not_measured(runs),
        _environment(cells, runs),
        "## Plots\n\n" + "\n".join(f"![{title}]({name})" for name, title in plots) if plots else "",
    ]
    report = out_dir / "report.md"
    report.write_text("\n\n".join(part for part in sections if part) + "\n")
    (out_dir / "citations.json").write_text(json.dumps([asdict(c) for c in cite.items], indent=1))
    return report


def _span(values: pd.Series) -> str:
    low, high = int(values.min()), int(values.max())
    return f"{low}" if low == high else f"{low} to {high}"


def _header(cells: pd.DataFrame, runs: pd.DataFrame, min_effect: float) -> str:
    if cells.empty:
        return "# optbench report\n\nThe sweep has no cells."
    done = measured(cells)
    first = done.iloc[0] if len(done) else cells.iloc[0]
    devices = ", ".join(sorted({f"{d} ({n})" for d, n in zip(done["device"], done["group"], strict=True)}))
    counts = runs["status"].value_counts().to_dict()
    repeats = pd.to_numeric(cells["repeats"])
    return (
        f"# optbench report: sweep `{first['sweep_id']}`\n\n"
        f"Model `{first['model']}` at {int(first['image_size'])} px, weights `{first['weights']}`; "
        f"{len(cells)} cells of {_span(repeats)} {_plural(repeats, 'run')} each, {len(runs)} runs in all "
        f"({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}), measured on {devices or 'no device'}.\n\n"
        f"{_method(cells, repeats, min_effect)}"
    )


def _plural(counts: pd.Series, noun: str) -> str:
    return noun if int(counts.max()) == 1 else f"{noun}s"


def _method(cells: pd.DataFrame, repeats: pd.Series, min_effect: float) -> str:
    if int(repeats.max()) < 2:
        return "Method: each cell ran once, so there are no intervals and no verdicts."
    methods = set(cells["speedup_method"].dropna()) - {""}
    unpaired = (
        " (Welch's t on the two sets of runs where fewer than two rounds pair up)" if "welch_t_log" in methods else ""
    )
    return (
        f"Method: each cell ran {_span(repeats)} times in fresh processes, interleaved round by round; intervals are "
        f"{round(CONFIDENCE * 100)}% t-intervals on log ratios of run values paired by round{unpaired}; "
        f"a verdict needs its whole interval beyond `±{percent(min_effect)}`. A ratio above 1 favours the first cell."
    )


def _cell(optimization: str, batch_size: int, on_device: pd.DataFrame) -> str | None:
    match = on_device[(on_device["optimization"] == optimization) & (on_device["batch_size"] == batch_size)]
    return str(match.index[0]) if len(match) else None


def _runs_note(row: pd.Series) -> str:
    ok, asked = int(row["repeats_ok"]), int(row["repeats"])
    return "" if ok == asked else f"; {ok} of {asked} runs ok"


def _versus_baseline(on_device: pd.DataFrame, cite: Citations) -> str:
    lines = ["## Against the fp32 baseline", ""]
    if BASELINE not in set(on_device["optimization"]):
        return "\n".join([*lines, "No `baseline` cell has an ok run, so nothing is compared with it."])
    lines.append("Throughput over the baseline's at the same batch size, with its interval and verdict:")
    lines.append("")
    for optimization in sorted(set(on_device["optimization"]) - {BASELINE}):
        for cell, row in on_device[on_device["optimization"] == optimization].sort_values("batch_size").iterrows():
            base = _cell(BASELINE, int(row["batch_size"]), on_device)
            if base is None or pd.isna(row["speedup"]) or row["verdict"] not in VERDICT_WORDS:
                continue
            lines.append(_versus_line(str(cell), base, cite))
    if len(lines) == 4:
        lines.append("No cell shares a batch size with a measured `baseline` cell.")
    return "\n".join(lines)


def _versus_line(cell: str, base: str, cite: Citations) -> str:
    row = cite.cells.loc[cell]
    line = (
        f"- `{row['optimization']}` at batch {int(row['batch_size'])}: {cite.speedup(cell)} "
        f"({cite.quote(cell, 'throughput_sps')} vs {cite.quote(base, 'throughput_sps')} samples/s, "
        f"medians over runs{_runs_note(row)})."
    )
    extras = []
    if not (pd.isna(row["memory_mb"]) or pd.isna(cite.cells.loc[base, "memory_mb"])):
        extras.append(f"Peak memory {cite.quote(cell, 'memory_mb')} vs {cite.quote(base, 'memory_mb')} MiB")
    if not (pd.isna(row["model_size_mb"]) or pd.isna(row["model_size_compressed_mb"])):
        extras.append(
            f"model {cite.quote(cell, 'model_size_mb')} MiB dense, "
            f"{cite.quote(cell, 'model_size_compressed_mb')} MiB compressed"
        )
    return line + (f" {'; '.join(extras)}." if extras else "")


# ---------------------------------------------------------------------------------------------- best per metric


@dataclass(frozen=True)
class Edge:
    other: str
    ratio: stats.Ratio  # the top cell over `other`, > 1 favours the top cell
    verdict: str


@dataclass(frozen=True)
class Ranking:
    metric: Metric
    batch_size: int
    top: str
    edges: tuple[Edge, ...]  # the top cell against every other cell, runner-up first

    @property
    def tied(self) -> tuple[Edge, ...]:
        """The cells the top cell can't be told from: not beaten beyond the minimum effect."""
        return tuple(e for e in self.edges if e.verdict != "faster")

    @property
    def has_winner(self) -> bool:
        return bool(self.edges) and not self.tied


def oriented_ratio(better: pd.Series, worse: pd.Series, higher_is_better: bool, confidence: float) -> stats.Ratio:
    """`better` over `worse`, oriented so that a ratio > 1 favours `better`."""
    if higher_is_better:
        return stats.ratio_interval(better, worse, confidence)
    return stats.ratio_interval(worse, better, confidence)


def rank(candidates: pd.DataFrame, runs: pd.DataFrame, metric: Metric, min_effect: float) -> Ranking | None:
    values = numeric(candidates, metric.column).dropna()
    if values.empty:
        return None
    order = values.sort_values(ascending=not metric.higher_is_better, kind="stable").index
    top, edges = str(order[0]), []
    top_runs = run_values(runs, candidates, top, metric.column)
    for other in order[1:]:
        ratio = oriented_ratio(
            top_runs, run_values(runs, candidates, other, metric.column), metric.higher_is_better, CONFIDENCE
        )
        verdict = stats.verdict(ratio, min_effect) if int(candidates.loc[top, "repeats_ok"]) >= 2 else "no_difference"
        edges.append(Edge(str(other), ratio, verdict))
    return Ranking(metric, int(candidates.loc[top, "batch_size"]), top, tuple(edges))


def rank_all(on_device: pd.DataFrame, runs: pd.DataFrame, min_effect: float) -> list[Ranking]:
    rankings = []
    for batch_size in sorted(on_device["batch_size"].unique()):
        at_batch = on_device[on_device["batch_size"] == batch_size]
        rankings += [r for m in METRICS if (r := rank(at_batch, runs, m, min_effect)) is not None]
    return rankings


def _best(rankings: list[Ranking], cite: Citations, min_effect: float) -> str:
    lines = [
        "## Best per metric and batch size",
        "",
        f"A cell is named alone when its runs beat every other cell's beyond `±{percent(min_effect)}` over the whole "
        "interval (shown against the runner-up); otherwise the cells it can't be told from share a tie.",
        "",
        "| batch size | metric | best | value | ratio of the first over the others |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [_best_row(ranking, cite) for ranking in rankings]
    return "\n".join(lines)


def _best_row(ranking: Ranking, cite: Citations) -> str:
    metric, top = ranking.metric, ranking.top
    optimization = cite.cells.loc[top, "optimization"]
    label = f"{metric.name} ({metric.unit})"
    if not ranking.edges:
        return f"| {ranking.batch_size} | {label} | `{optimization}` | {cite.quote(top, metric.column)} | only cell |"
    if ranking.has_winner:
        runner_up = ranking.edges[0]
        margin = cite.comparison(top, runner_up.other, metric, runner_up.ratio, "winner")
        return f"| {ranking.batch_size} | {label} | `{optimization}` | {cite.quote(top, metric.column)} | {margin} |"
    members = [top] + [e.other for e in ranking.tied]
    names = ", ".join(f"`{cite.cells.loc[c, 'optimization']}`" for c in members)
    values = ", ".join(cite.quote(c, metric.column) for c in members)
    margins = "; ".join(cite.comparison(top, e.other, metric, e.ratio, "tie") for e in ranking.tied)
    return f"| {ranking.batch_size} | {label} | tie: {names} | {values} | {margins} |"


# ---------------------------------------------------------------------------------------------- fidelity


def _fidelity(on_device: pd.DataFrame, rankings: list[Ranking], cite: Citations) -> str:
    lines = ["## Fidelity against the fp32 model", ""]
    top_throughput = {r.top: r for r in rankings if r.metric.column == "throughput_sps" and r.has_winner}
    for cell, row in on_device.iterrows():
        changed = row["top1_agreement"] < 1.0
        drifted = row["max_abs_error"] > FIDELITY_TOLERANCE
        if not (changed or drifted):
            continue
        what = []
        if changed:
            what.append(f"agrees with the fp32 top-1 on {cite.quote(cell, 'top1_agreement')} of the probe")
        what.append(f"max logit error {cite.quote(cell, 'max_abs_error', 4)}")
        if not pd.isna(row["cosine_similarity"]):
            what.append(f"cosine similarity {cite.quote(cell, 'cosine_similarity', 4)}")
        note = ""
        if cell in top_throughput:
            edge = top_throughput[cell].edges[0]
            margin = cite.comparison(str(cell), edge.other, METRICS[0], edge.ratio, "winner")
            note = f" It has the top throughput at its batch size ({margin}): weigh that against these changes."
        lines.append(f"- `{cell}` {', '.join(what)} (worst over its runs).{note}")
    if len(lines) == 2:
        lines.append(
            f"Every measured cell matches the fp32 outputs (max logit error at most `{FIDELITY_TOLERANCE:g}`)."
        )
    lines += _how_quantized(on_device)
    weights = {str(w) for w in on_device["weights"].dropna()}
    if any(w.startswith("random") for w in weights):
        lines.append(
            "\nThese cells used random weights: their logits are nearly uniform, so top-1 agreement says "
            "little; measure with pretrained weights before trusting it."
        )
    if any(w.startswith("synthetic") for w in weights):
        lines.append(
            "\nThese cells used synthetic weights (random, BatchNorm statistics re-estimated on seeded inputs): "
            "the logits depend on the input, so cosine similarity and logit error measure what an optimization "
            "changes; the classifier is random, so top-1 agreement still says little."
        )
    return "\n".join(lines)


def _how_quantized(on_device: pd.DataFrame) -> list[str]:
    """Which layers each quantized cell touched, int8_static's calibration set, ONNX Runtime's provider."""
    lines = []
    for cell, row in on_device.iterrows():
        layers, calibration, provider = row["quantized_layers"], row["calibration"], row["execution_provider"]
        if isinstance(layers, str) and "Conv2d 0/" in layers:
            lines.append(
                f"- `{cell}` quantized `{layers}` layers: torchao's int8_weight_only, int8_dynamic and float8, "
                "like dynamic_quant, quantize nn.Linear only (in DenseNet-121, the classifier alone); its "
                "convolutions ran as in fp32."
            )
        elif isinstance(layers, str):
            lines.append(f"- `{cell}` quantized `{layers}` layers.")
        if isinstance(calibration, str):
            lines.append(f"- `{cell}` was calibrated on `{calibration}`, apart from the fidelity probe.")
        if isinstance(provider, str):
            lines.append(
                f"- `{cell}` ran on ONNX Runtime's `{provider}` (opset `{_plain(row['onnx_opset'])}`); its "
                "fidelity compares ONNX Runtime's logits with torch's fp32 ones."
            )
    return ["", "How the quantized and exported cells were made:", *lines] if lines else []


# ---------------------------------------------------------------------------------------------- noise


def _noise(done: pd.DataFrame, runs: pd.DataFrame, cite: Citations) -> str:
    lines = ["## Noise", ""]
    cv = numeric(done, "run_to_run_cv")
    noisy = cv[cv >= stats.HIGH_CV].sort_values(ascending=False)
    ok = runs[runs["status"] == "ok"]
    flagged = ok[stats.contended(ok).to_numpy()]
    if len(noisy):
        lines.append(
            f"Cells whose runs' throughput varied by `{percent(stats.HIGH_CV)}` or more (coefficient of variation):"
        )
        lines += [f"- `{c}`: {cite.quote(c, 'run_to_run_cv', 1, 100, '%')}" for c in noisy.index]
        lines.append("")
    if len(flagged):
        lines.append("Runs measured under contention (left out of every interval and verdict above):")
        lines += [_contended_line(run, cite) for _, run in flagged.iterrows()]
        lines.append("")
    lines += _noise_advice(noisy, flagged, cv, ok, cite)
    lines += _aa_controls(done, cite)
    return "\n".join(lines)


def _aa_controls(done: pd.DataFrame, cite: Citations) -> list[str]:
    """What each A/A control cell says: the same model measured as two cells should show no difference."""
    controls = done[(done["optimization"] == AA_CONTROL) & done["verdict"].isin(VERDICT_WORDS)]
    lines = []
    for cell, row in controls.sort_values("batch_size").iterrows():
        control = f"The A/A control `{cell}` (the baseline measured again as a cell of its own)"
        if row["verdict"] == "no_difference":
            lines.append(f"{control}: {cite.speedup(str(cell))}, as it should be.")
        else:
            lines.append(
                f"{control} differs from the baseline: {cite.speedup(str(cell))}. Noise or drift on "
                "this host alone made a verdict of that size: treat verdicts near it as unproven, and raise "
                "`--repeats` or `--min-effect`, or measure on a quieter host."
            )
    return ["", *lines] if lines else []


def _contended_line(run: pd.Series, cite: Citations) -> str:
    run_id, parts = str(run["run_id"]), []
    if not pd.isna(run.get("noise_cpu_wait_fraction")):
        waited = cite.quote_run(run_id, "noise_cpu_wait_fraction", 1, 100, "%")
        parts.append(f"waited for a CPU {waited} of its runnable time")
    if not pd.isna(run.get("noise_cpu_steal_fraction")):
        stolen = cite.quote_run(run_id, "noise_cpu_steal_fraction", 1, 100, "%")
        parts.append(f"its VM lost {stolen} of the host's CPU time to the hypervisor")
    if not pd.isna(run.get("noise_load_avg")):
        parts.append(f"load average {cite.quote_run(run_id, 'noise_load_avg')}")
    if not pd.isna(run.get("noise_gpu_other_processes")):
        parts.append(f"{cite.quote_run(run_id, 'noise_gpu_other_processes', 0)} other processes on its GPU")
    return f"- run `{run_id}`: {', '.join(parts)}"


def _noise_advice(
    noisy: pd.Series, flagged: pd.DataFrame, cv: pd.Series, ok: pd.DataFrame, cite: Citations
) -> list[str]:
    advice = []
    waits = numeric(flagged, "noise_cpu_wait_fraction")
    if (waits >= stats.CONTENDED_WAIT_FRACTION).any():
        advice.append(
            "Runs that waited for a CPU timed a busy host as much as the model: re-run their cells on a quiet "
            "host, or pin each worker to its own cores."
        )
    if (numeric(flagged, "noise_cpu_steal_fraction") >= stats.CONTENDED_STEAL_FRACTION).any():
        advice.append("Runs whose VM lost CPU time to its hypervisor (steal): measure on dedicated hardware.")
    shared = numeric(flagged, "noise_gpu_other_processes")
    if (shared >= 1).any():
        advice.append("Runs that shared their GPU with other processes: re-run them when nothing else uses the GPU.")
    quiet_noisy = [c for c in noisy.index if c not in set(flagged["cell_id"])]
    if quiet_noisy:
        names = ", ".join(f"`{c}`" for c in quiet_noisy)
        advice.append(f"Runs disagree without contention in {names}: raise `--repeats` to narrow their intervals.")
    if noisy.empty:
        advice.append(_quiet_summary(flagged, cv, ok, cite))
    return advice


def _quiet_summary(flagged: pd.DataFrame, cv: pd.Series, ok: pd.DataFrame, cite: Citations) -> str:
    recorded = [c for c in ("noise_cpu_wait_fraction", "noise_gpu_other_processes") if c in ok and ok[c].notna().any()]
    if not flagged.empty:
        contention = ""
    elif recorded:
        contention = (
            f"No run showed contention (none waited for a CPU `{percent(stats.CONTENDED_WAIT_FRACTION)}` of its "
            "runnable time or more, none lost that much to steal, none shared its GPU); "
        )
    else:
        contention = "No run recorded contention measurements, so contention can't be ruled out; "
    finite = cv.dropna()
    if finite.empty:
        return contention + "no cell has two ok runs, so run-to-run variation is unknown."
    worst = str(finite.idxmax())
    spread = cite.quote(worst, "run_to_run_cv", 1, 100, "%")
    sentence = f"the largest run-to-run variation of throughput was {spread} (`{worst}`)."
    return contention + sentence if contention else sentence[0].upper() + sentence[1:]


# ---------------------------------------------------------------------------------------------- the rest


def _reason(row: pd.Series) -> str:
    error = row.get("error")
    if not isinstance(error, str) or not error.strip():
        return "not finished" if row["status"] in UNFINISHED else "no reason recorded"
    text = " ".join(f"{row.get('error_type')}: {error}".split()).replace("`", "'")
    return f"`{text[:MAX_ERROR_CHARS]}{'...' if len(text) > MAX_ERROR_CHARS else ''}`"


def _not_measured(runs: pd.DataFrame) -> str:
    rest = runs[runs["status"] != "ok"]
    if rest.empty:
        return ""
    lines = ["## Runs without a measurement", ""]
    totals = runs["cell_id"].value_counts()
    keys = ["cell_id", "status", "error_type", "error"]
    for (cell, status, *_), group in rest.groupby(keys, sort=False, dropna=False):
        ids = "" if len(group) == totals[cell] else ": " + ", ".join(f"`{r}`" for r in group["run_id"])
        lines.append(f"- `{cell}`: {len(group)} of {totals[cell]} runs {status} ({_reason(group.iloc[0])}){ids}")
    return "\n".join(lines)


def _environment(cells: pd.DataFrame, runs: pd.DataFrame) -> str:
    lines = ["## Where and how it was measured", ""]
    for column, label in (
        ("device_name", "device"), ("host", "host"), ("gpu_driver", "GPU driver"), ("cuda_version", "CUDA"),
        ("cudnn_version", "cuDNN"), ("torch_version", "torch"), ("torchvision_version", "torchvision"),
        ("torchao_version", "torchao"), ("onnxruntime_version", "ONNX Runtime"), ("python_version", "Python"),
        ("cpu_model", "CPU"), ("cpu_threads", "CPU threads"), ("timer", "timer"),
        ("tf32_cudnn", "TF32 in cuDNN"),
    ):  # fmt: skip
        values = sorted({_plain(v) for v in runs[column].dropna()}) if column in runs else []
        if values:
            lines.append(f"- {label}: " + ", ".join(f"`{v}`" for v in values))
    if len(cells):
        lines.append(f"- runs per cell: `{_span(pd.to_numeric(cells['repeats']))}`, each in a fresh process")
    ok = runs[runs["status"] == "ok"]
    iterations = numeric(ok, "iterations").dropna()
    if len(iterations):
        seconds = numeric(ok, "measure_seconds").sum(min_count=1)
        timing = f" over `{seconds:,.0f}` s of timing" if not pd.isna(seconds) else ""
        lines.append(
            f"- timed calls: `{int(iterations.sum()):,}` in all{timing}; `{_span(iterations)}` per run, each timed "
            "alone after a warm-up; latency is per batch"
        )
    return "\n".join(lines)


def _plain(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


# ---------------------------------------------------------------------------------------------- plots


def _labelled(done: pd.DataFrame) -> pd.DataFrame:
    """Add `label`: the optimization, with its device when several devices took part."""
    several = done["group"].nunique() > 1
    label = done["optimization"] + (" (" + done["group"] + ")" if several else "")
    return done.assign(label=label)


Figure = tuple[plt.Figure, str, str] | None


def _pivot(done: pd.DataFrame, column: str, aggfunc: str = "first") -> pd.DataFrame:
    return done.pivot_table(index="batch_size", columns="label", values=column, aggfunc=aggfunc, dropna=False)


def _save(fig: plt.Figure, out_dir: Path, name: str, title: str, written: list[tuple[str, str]]) -> None:
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_dir / name, dpi=110)
    plt.close(fig)
    written.append((name, title))


def _lines(ax: plt.Axes, done: pd.DataFrame, column: str, ylabel: str, band: tuple[str, str] | None = None) -> None:
    """One line per label over batch size, with error bars from the `band` columns when given."""
    for label, rows in done.sort_values("batch_size").groupby("label", sort=True):
        values = pd.to_numeric(rows[column], errors="coerce")
        keep = values.notna().to_numpy()
        x, y = rows["batch_size"].to_numpy()[keep], values.to_numpy()[keep]
        if not len(x):
            continue
        yerr = None
        if band is not None:
            low = pd.to_numeric(rows[band[0]], errors="coerce").to_numpy()[keep]
            high = pd.to_numeric(rows[band[1]], errors="coerce").to_numpy()[keep]
            yerr = np.nan_to_num(np.clip(np.vstack([y - low, high - y]), 0, None))
        ax.errorbar(x, y, yerr=yerr, marker="o", capsize=3, label=label)
    sizes = sorted(done["batch_size"].unique())
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(b) for b in sizes])
    ax.minorticks_off()
    ax.set_xlabel("batch size")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def _plots(done: pd.DataFrame, out_dir: Path) -> list[tuple[str, str]]:
    done, written = _labelled(done), []
    for plot in (_throughput_plot, _latency_plot, _memory_plot, _size_plot, _speedup_plot, _fidelity_plot):
        figure = plot(done)
        if figure is not None:
            fig, name, title = figure
            _save(fig, out_dir, name, title, written)
    return written


def _throughput_plot(done: pd.DataFrame) -> Figure:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    band = ("throughput_ci_low", "throughput_ci_high")
    _lines(ax, done, "throughput_sps", f"samples/s (median; bars: {CONFIDENCE:.0%} interval)", band)
    return fig, "throughput.png", "Throughput vs batch size"


def _latency_plot(done: pd.DataFrame) -> Figure:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    band = ("latency_ms_p50_ci_low", "latency_ms_p50_ci_high")
    _lines(axes[0], done, "latency_ms_p50", f"p50 latency (ms per batch, log; bars: {CONFIDENCE:.0%} interval)", band)
    _lines(axes[1], done, "latency_ms_p99", "p99 latency (ms per batch, log; median over runs)")
    for ax in axes:
        ax.set_yscale("log")  # optimizations can differ by orders of magnitude (fp16 on a CPU)
    return fig, "latency.png", "Latency vs batch size"


def _memory_plot(done: pd.DataFrame) -> Figure:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _lines(ax, done, "memory_mb", "peak memory (MiB; GPU allocator, or CPU peak RSS)")
    return fig, "memory.png", "Peak memory vs batch size"


def _size_plot(done: pd.DataFrame) -> Figure:
    sizes = done.groupby("label")[["model_size_mb", "model_size_compressed_mb"]].first()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    positions = np.arange(len(sizes))
    ax.bar(positions - 0.2, sizes["model_size_mb"], 0.4, label="dense (torch.save)")
    ax.bar(positions + 0.2, sizes["model_size_compressed_mb"], 0.4, label="zlib-compressed")
    ax.set_xticks(positions, sizes.index, rotation=30, ha="right")
    ax.set_ylabel("MiB")
    ax.legend()
    return fig, "model_size.png", "Model size per optimization"


def _speedup_plot(done: pd.DataFrame) -> Figure:
    rated = done[numeric(done, "speedup").notna()]
    if rated.empty:
        return None
    speedup, low, high = (_pivot(rated, c).T for c in ("speedup", "speedup_ci_low", "speedup_ci_high"))
    verdicts = _pivot(rated, "verdict").T.reindex_like(speedup)
    neutral = (verdicts != "faster") & (verdicts != "slower")
    fig, ax = plt.subplots(figsize=(1.4 * len(speedup.columns) + 3.5, 0.7 * len(speedup) + 1.8))
    values = speedup.to_numpy(dtype=float)
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="whitesmoke")
    shown = np.ma.masked_where(neutral.to_numpy() | np.isnan(values), values)
    image = ax.imshow(shown, cmap=cmap, vmin=0, vmax=max(2.0, float(np.nanmax(values))), aspect="auto")
    ax.set_xticks(range(len(speedup.columns)), [str(b) for b in speedup.columns])
    ax.set_yticks(range(len(speedup.index)), speedup.index)
    ax.set_xlabel("batch size")
    for (i, j), value in np.ndenumerate(values):
        if np.isnan(value):
            continue
        is_neutral = bool(neutral.iat[i, j])
        if is_neutral:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//", edgecolor="silver", lw=0))
        ax.text(j, i, _heat_label(value, low.iat[i, j], high.iat[i, j]), ha="center", va="center",
                fontsize="small", color="dimgrey" if is_neutral else "black")  # fmt: skip
    fig.colorbar(image, ax=ax, label="throughput / baseline")
    return fig, "speedup.png", "Speedup over baseline (grey, hatched: no significant difference)"


def _heat_label(value: float, low: float, high: float) -> str:
    if pd.isna(low) or pd.isna(high):
        return f"{value:.2f}x\n(no interval)"
    return f"{value:.2f}x\n[{low:.2f}, {high:.2f}]"


def _fidelity_plot(done: pd.DataFrame) -> Figure:
    fidelity = done.groupby("label")[["top1_agreement", "cosine_similarity", "max_abs_error"]].min()
    if fidelity.isna().all().all():
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    fidelity[["top1_agreement", "cosine_similarity"]].plot.bar(ax=axes[0], ylim=(0, 1.05), rot=30)
    axes[0].set_ylabel("worst over batch sizes and runs")
    fidelity["max_abs_error"].plot.bar(ax=axes[1], logy=True, rot=30, color="tab:red")
    axes[1].set_ylabel("max |logit - fp32 logit| (log)")
    return fig, "fidelity.png", "Fidelity against the fp32 model"
