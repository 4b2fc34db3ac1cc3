"""The rest of the report: the runs that measured nothing and why, and where and how the sweep was measured."""

from __future__ import annotations

import pandas as pd

from results.report.citations import plain, span
from results.stats import numeric
from shared.state import UNFINISHED

MAX_ERROR_CHARS = 300


def _reason(row: pd.Series) -> str:
    error = row.get("error")
    if not isinstance(error, str) or not error.strip():
        return "not finished" if row["status"] in UNFINISHED else "no reason recorded"
    text = " ".join(f"{row.get('error_type')}: {error}".split()).replace("`", "'")
    return f"`{text[:MAX_ERROR_CHARS]}{'...' if len(text) > MAX_ERROR_CHARS else ''}`"


def not_measured_section(runs: pd.DataFrame) -> str:
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


def environment_section(cells: pd.DataFrame, runs: pd.DataFrame) -> str:
    lines = ["## Where and how it was measured", ""]
    for column, label in (
        ("device_name", "device"), ("host", "host"), ("gpu_driver", "GPU driver"), ("cuda_version", "CUDA"),
        ("cudnn_version", "cuDNN"), ("torch_version", "torch"), ("torchvision_version", "torchvision"),
        ("torchao_version", "torchao"), ("onnxruntime_version", "ONNX Runtime"), ("python_version", "Python"),
        ("cpu_model", "CPU"), ("cpu_isa", "CPU instruction set (effective)"),
        ("cpu_isa_hardware", "CPU instruction set (hardware)"), ("onednn_isa", "oneDNN ISA"),
        ("cpu_threads", "CPU threads"), ("timer", "timer"),
        ("tf32_cudnn", "TF32 in cuDNN"),
    ):  # fmt: skip
        values = sorted({plain(v) for v in runs[column].dropna()}) if column in runs else []
        if values:
            lines.append(f"- {label}: " + ", ".join(f"`{v}`" for v in values))
    if len(cells):
        lines.append(f"- runs per cell: `{span(pd.to_numeric(cells['repeats']))}`, each in a fresh process")
    ok = runs[runs["status"] == "ok"]
    iterations = numeric(ok, "iterations").dropna()
    if len(iterations):
        seconds = numeric(ok, "measure_seconds").sum(min_count=1)
        timing = f" over `{seconds:,.0f}` s of timing" if not pd.isna(seconds) else ""
        lines.append(
            f"- timed calls: `{int(iterations.sum()):,}` in all{timing}; `{span(iterations)}` per run, each timed "
            "alone after a warm-up; latency is per batch"
        )
    return "\n".join(lines)
