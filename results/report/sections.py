"""The report's findings: its header and method, each cell against the baseline, the best cell per metric
and batch size, and what each optimization changed in the model's outputs.

Each section is a function of the measured cells (those of one device, for the findings) that returns its
markdown, quoting every number through `Citations`.
"""

from __future__ import annotations

import re

import pandas as pd

from results import stats
from results.ranking import METRICS, Ranking
from results.report.citations import CONFIDENCE, VERDICT_WORDS, Citations, percent, plain, span
from results.report.load import measured
from results.stats import numeric

BASELINE = stats.BASELINE
FIDELITY_TOLERANCE = 1e-3  # max |logit error| below which an optimization counts as numerically identical


# ---------------------------------------------------------------------------------------------- header


def header_section(cells: pd.DataFrame, runs: pd.DataFrame, min_effect: float) -> str:
    if cells.empty:
        return "# optbench report\n\nThe sweep has no cells."
    done = measured(cells)
    first = done.iloc[0] if len(done) else cells.iloc[0]
    names = done["device_name"].fillna(done["device"]).fillna("unknown device")
    devices = ", ".join(sorted({f"{d} ({n})" for d, n in zip(done["device"], names, strict=True)}))
    counts = runs["status"].value_counts().to_dict()
    repeats = pd.to_numeric(cells["repeats"])
    source = done if len(done) else cells
    models = [_model_text(rows.iloc[0]) for _, rows in source.groupby("model", sort=False)]
    return (
        f"# optbench report: sweep `{first['sweep_id']}`\n\n"
        f"{'Model' if len(models) == 1 else 'Models'} {'; '.join(models)}; "
        f"{len(cells)} cells of {span(repeats)} {_plural(repeats, 'run')} each, {len(runs)} runs in all "
        f"({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}), measured on {devices or 'no device'}.\n\n"
        f"{_method(cells, repeats, min_effect)}"
    )


def _model_text(row: pd.Series) -> str:
    """`resnet50` at its input shape (`3x224x224`, or the image size of an older CSV) with its weights."""
    shape = row["input_shape"] if pd.notna(row.get("input_shape")) else f"{int(row['image_size'])} px"
    return f"`{row['model']}` at {shape}, weights `{row['weights']}`"


def _plural(counts: pd.Series, noun: str) -> str:
    return noun if int(counts.max()) == 1 else f"{noun}s"


def _method(cells: pd.DataFrame, repeats: pd.Series, min_effect: float) -> str:
    if int(repeats.max()) < 2:
        return "Method: each cell ran once, so there are no intervals and no verdicts."
    methods = set(cells["speedup_method"].dropna()) - {""}
    unpaired = (
        " (Welch's t on the two sets of runs where fewer than two rounds pair up)" if "welch_t_log" in methods else ""
    )
    comparisons = numeric(cells, "comparisons").dropna()
    shared = (
        f"; the sweep's {round(CONFIDENCE * 100)}% holds for its {int(comparisons.max())} verdicts together "
        "(Bonferroni), spent over the looks of `--repeats auto` where it ran, so each verdict's interval is wider "
        "than a lone 95% one (`verdict_confidence` in the cells CSV)"
        if len(comparisons)
        else ""
    )
    return (
        f"Method: each cell ran {span(repeats)} times in fresh processes, interleaved round by round; intervals are "
        f"t-intervals on log ratios of run values paired by round{unpaired}{shared}. Verdicts against the band "
        f"`±{percent(min_effect)}`: `faster` or `slower` when the whole interval lies beyond it, `equivalent` when "
        "it lies inside, `inconclusive` when it crosses an edge (the data can't tell yet). A ratio above 1 favours the "
        "first cell."
    )


# ---------------------------------------------------------------------------------------------- against the baseline


def versus_baseline_section(on_device: pd.DataFrame, cite: Citations) -> str:
    lines = ["## Against the fp32 baseline", ""]
    if BASELINE not in set(on_device["optimization"]):
        return "\n".join([*lines, "No `baseline` cell has an ok run, so nothing is compared with it."])
    lines.append("Throughput over the baseline's at the same batch size, with its interval and verdict:")
    lines.append("")
    compared = []
    for optimization in sorted(set(on_device["optimization"]) - {BASELINE}):
        for cell, row in on_device[on_device["optimization"] == optimization].sort_values("batch_size").iterrows():
            base = _cell(BASELINE, int(row["batch_size"]), on_device)
            if base is None or pd.isna(row["speedup"]) or row["verdict"] not in VERDICT_WORDS:
                continue
            compared.append(_versus_line(str(cell), base, cite))
    lines += compared or ["No cell shares a batch size with a measured `baseline` cell."]
    return "\n".join(lines)


def _cell(optimization: str, batch_size: int, on_device: pd.DataFrame) -> str | None:
    match = on_device[(on_device["optimization"] == optimization) & (on_device["batch_size"] == batch_size)]
    return str(match.index[0]) if len(match) else None


def _runs_note(row: pd.Series) -> str:
    ok, asked = int(row["repeats_ok"]), int(row["repeats"])
    return "" if ok == asked else f"; {ok} of {asked} runs ok"


def _versus_line(cell: str, base: str, cite: Citations) -> str:
    row = cite.cells.loc[cell]
    line = (
        f"- `{row['optimization']}` at batch {int(row['batch_size'])}: {cite.speedup(cell)} "
        f"({cite.quote(cell, 'throughput_sps')} vs {cite.quote(base, 'throughput_sps')} samples/s, "
        f"medians over runs{_runs_note(row)})."
    )
    if row["verdict"] == "inconclusive" and pd.notna(row.get("rounds_to_decide")):
        line += (
            f" About {int(row['rounds_to_decide'])} rounds would likely decide it at the runs' observed spread "
            "(an estimate)."
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


def best_section(rankings: list[Ranking], cite: Citations, min_effect: float) -> str:
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


def fidelity_section(on_device: pd.DataFrame, rankings: list[Ranking], cite: Citations) -> str:
    lines = ["## Fidelity against the fp32 model", ""]
    top_throughput = {r.top: r for r in rankings if r.metric.column == "throughput_sps" and r.has_winner}
    changes = []
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
        changes.append(f"- `{cell}` {', '.join(what)} (worst over its runs).{note}")
    lines += changes or [
        f"Every measured cell matches the fp32 outputs (max logit error at most `{FIDELITY_TOLERANCE:g}`)."
    ]
    lines += _fidelity_split(on_device, cite)
    lines += how_quantized(on_device)
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


def _fidelity_split(on_device: pd.DataFrame, cite: Citations) -> list[str]:
    """For cells with a reference model (int8_static: the converted graph run eagerly), how much of the change is
    the quantization's and how much the kernels'."""
    lines = []
    for cell, row in on_device.iterrows():
        if pd.isna(row.get("quant_cosine_similarity")) or pd.isna(row.get("kernel_cosine_similarity")):
            continue
        reduced = row.get("reduce_range")
        activations = (
            f"; activations quantized with `reduce_range={plain(reduced)}` (7-bit where oneDNN has no VNNI)"
            if pd.notna(reduced)
            else ""
        )
        lines.append(
            f"- `{cell}`: quantization error, the reference int8 model against fp32: cosine "
            f"{cite.quote(str(cell), 'quant_cosine_similarity', 4)}; kernel error, the compiled kernels against "
            f"that reference: cosine {cite.quote(str(cell), 'kernel_cosine_similarity', 4)} (worst runs)"
            f"{activations}."
        )
    return ["", "Where the quantized cells' error comes from:", *lines] if lines else []


def how_quantized(on_device: pd.DataFrame) -> list[str]:
    """Which layers each quantized cell touched, int8_static's calibration set, ONNX Runtime's provider."""
    lines = []
    for cell, row in on_device.iterrows():
        layers, calibration, provider = row["quantized_layers"], row["calibration"], row["execution_provider"]
        if isinstance(layers, str) and (untouched := re.search(r"Conv2d 0/(\d+)", layers)):
            lines.append(
                f"- `{cell}` quantized `{layers}` layers: torchao's int8_weight_only, int8_dynamic and float8, "
                f"like dynamic_quant, quantize nn.Linear only; none of this model's `{untouched[1]}` convolutions "
                "was quantized, so they ran as in fp32."
            )
        elif isinstance(layers, str):
            lines.append(f"- `{cell}` quantized `{layers}` layers.")
        if isinstance(calibration, str):
            lines.append(f"- `{cell}` was calibrated on `{calibration}`, apart from the fidelity probe.")
        if isinstance(provider, str):
            lines.append(
                f"- `{cell}` ran on ONNX Runtime's `{provider}` (opset `{plain(row['onnx_opset'])}`); its "
                "fidelity compares ONNX Runtime's logits with torch's fp32 ones."
            )
    return ["", "How the quantized and exported cells were made:", *lines] if lines else []
