"""The report's first finding: what to ship under the default constraints, by the code of `results recommend`.

Every number goes through `Citations`: the recommended cell's median and each constraint's value are cells CSV
values, and each comparison with the recommended cell is a `comparison` citation whose claim (`winner`: the
recommended cell is better beyond the band; `tie`: it can't be told apart) a test recomputes from the runs.
Limits are settings, printed as code.
"""

from __future__ import annotations

import pandas as pd

from results.recommend import MAY_HOLD, NOT_JUDGED, UNITS, Check, Constraints, Loss, Recommendation
from results.report.citations import Citations
from results.stats import Verdict


def ship_section(answer: Recommendation, cite: Citations) -> str:
    """The recommendation for one group of cells (one model on one device), every number cited."""
    constraints = answer.constraints
    lines = ["## What to ship", ""]
    lines += [
        f"Constraints: `{constraints.describe()}` (the defaults of `python -m results recommend`, which takes "
        "others: a p99 latency budget, memory, model size, fidelity, one batch size).",
        "",
    ]
    lines += [f"Note: {note}." for note in answer.notes]
    if answer.notes:
        lines.append("")
    if answer.recommended is None:
        lines.append("No cell meets every constraint. Why each one misses:")
    else:
        lines += _recommended(answer, cite)
    lines += [_loss_line(loss, answer, cite) for loss in answer.losses]
    return "\n".join(lines)


def models_section(
    done: pd.DataFrame, answers: dict[str, Recommendation], cite: Citations, constraints: Constraints
) -> str:
    """A sweep of several models: the cell to ship for each model (and device), side by side, each against its
    own model's baseline (`answers`: the recommendation of each group)."""
    lines = [
        "## Best cell per model",
        "",
        f"What `python -m results recommend` ships for each model under `{constraints.describe()}`; each speedup is "
        "over the same model's baseline at the same batch size. Each model's own section follows.",
        "",
        "| model | parameters | GFLOPs per sample | input | ship | throughput (samples/s) | over its baseline |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for group in sorted(done["group"].unique()):
        on_device = done[done["group"] == group]
        answer = answers[group]
        first = str(on_device.index[0])
        size = cite.quote(first, "model_params", 0) if pd.notna(on_device["model_params"].iloc[0]) else "?"
        flops = cite.quote(first, "model_gflops", 3) if pd.notna(on_device["model_gflops"].iloc[0]) else "?"
        shape = on_device["input_shape"].iloc[0] if pd.notna(on_device["input_shape"].iloc[0]) else "?"
        if answer.recommended is None:
            lines.append(f"| {group} | {size} | {flops} | {shape} | no cell meets every constraint | | |")
            continue
        best = str(answer.recommended)
        row = on_device.loc[best]
        versus = (
            cite.speedup(best) if pd.notna(row["speedup"]) and row["optimization"] != "baseline" else "(the baseline)"
        )
        lines.append(
            f"| {group} | {size} | {flops} | {shape} | `{row['optimization']}` at batch {int(row['batch_size'])} | "
            f"{cite.quote(best, 'throughput_sps')} | {versus} |"
        )
    return "\n".join(lines)


def _recommended(answer: Recommendation, cite: Citations) -> list[str]:
    best, metric = str(answer.recommended), answer.objective
    digits = 2 if metric.higher_is_better else 3
    lines = [
        f"Ship `{best}`: {metric.name} {cite.quote(best, metric.column, digits)} {metric.unit} (median over its runs).",
        "",
    ]
    if answer.ties:
        lines.append(
            f"It can't be told apart on {metric.name} from these cells (ship any of them; `{best}` over each, "
            f"intervals at `{answer.confidence:.2%}`, shared like the verdicts):"
        )
        lines += [f"- `{tie.cell_id}`: {_comparison(best, tie, answer, cite)}" for tie in answer.ties]
        lines.append("")
    if answer.losses:
        lines.append("Every other cell, and why it lost:")
    return lines


def _comparison(best: str, loss: Loss, answer: Recommendation, cite: Citations) -> str:
    claim = "winner" if loss.verdict == str(Verdict.FASTER) else "tie"
    return cite.comparison(best, loss.cell_id, answer.objective, loss.ratio, claim, answer.confidence)


def _loss_line(loss: Loss, answer: Recommendation, cite: Citations) -> str:
    if loss.reason == "not_measured":
        return f"- `{loss.cell_id}`: not measured (`{loss.status}`)."
    if loss.reason == "objective":
        metric = answer.objective
        worse = "lower" if metric.higher_is_better else "higher"
        return (
            f"- `{loss.cell_id}`: {worse} {metric.name}: `{answer.recommended}` at "
            f"{_comparison(str(answer.recommended), loss, answer, cite)}."
        )
    return f"- `{loss.cell_id}`: " + "; ".join(_check_text(loss.cell_id, check, cite) for check in loss.checks) + "."


def _check_text(cell_id: str, check: Check, cite: Citations) -> str:
    sign = "<=" if check.name in UNITS else ">="  # upper limits carry a unit, fidelity floors none
    needs = f"needs `{sign} {check.limit:g}`"
    if check.state == NOT_JUDGED:
        return f"{check.name} not judged"
    if check.value is None:
        return f"{check.name} not measured, {needs}"
    digits = 4 if check.name in ("cosine similarity", "top-1 agreement") else 2
    value = cite.quote(cell_id, check.column, digits)
    if check.state == MAY_HOLD and check.median_column:
        median = cite.quote(cell_id, check.median_column, digits)
        return f"{check.name} may exceed the limit: its interval reaches {value}, its median {median}, {needs}"
    where = " on its worst run" if sign == ">=" else ""
    return f"{check.name} {value}{where}, {needs}"
