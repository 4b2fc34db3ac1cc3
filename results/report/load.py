"""Reading a sweep's two CSVs for the report: the optional columns an older worker's CSV lacks, and memory."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from results.stats import legacy_verdict, numeric
from shared.config import DEFAULT_MIN_EFFECT

OPTIONAL_COLUMNS = (
    "device", "device_name", "weights", "error_type", "error", "model_size_mb", "model_size_compressed_mb",
    "top1_agreement", "max_abs_error", "cosine_similarity", "iterations", "measure_seconds",
    "noise_cpu_wait_fraction", "noise_cpu_steal_fraction", "noise_load_avg", "noise_gpu_other_processes",
    "quantized_layers", "calibration", "execution_provider", "onnx_opset", "verdict_confidence", "comparisons",
    "rounds_to_decide", "latency_ms_p99", "cpu_isa", "quant_cosine_similarity", "kernel_cosine_similarity",
    "reduce_range", "input_shape", "model_source", "model_sha256", "model_params", "model_gflops", "model_output",
)  # fmt: skip


def with_memory(frame: pd.DataFrame) -> pd.DataFrame:
    """Add `memory_mb`: the GPU allocator's peak, or the process's peak RSS on a CPU."""
    return frame.assign(memory_mb=numeric(frame, "peak_mem_allocated_mb").fillna(numeric(frame, "process_mem_mb")))


def with_columns(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """Add the optional columns a CSV lacks (an older worker's), all missing."""
    return frame.assign(**{c: math.nan for c in columns if c not in frame.columns})


def load_cells(cells_csv: Path, min_effect: float = DEFAULT_MIN_EFFECT) -> pd.DataFrame:
    """The cells CSV indexed by cell id, with `group`: the device the cell ran on, by name where known, and in a
    sweep of several models the model too (`resnet50 on cpu`): verdicts and rankings stay within a group. An
    older CSV's `no_difference` verdicts become `equivalent` or `inconclusive` from their intervals."""
    cells = with_columns(with_memory(pd.read_csv(cells_csv)), OPTIONAL_COLUMNS).set_index("cell_id", drop=False)
    if "verdict" in cells.columns:
        lows, highs = numeric(cells, "speedup_ci_low"), numeric(cells, "speedup_ci_high")
        verdicts = [
            legacy_verdict(v, lo, hi, min_effect) for v, lo, hi in zip(cells["verdict"], lows, highs, strict=True)
        ]
        cells = cells.assign(verdict=verdicts)
    device = cells["device_name"].fillna(cells["device"]).fillna("unknown device").astype(str)
    if cells["model"].nunique() > 1:
        device = cells["model"].astype(str) + " on " + device
    return cells.assign(group=device)


def load_runs(runs_csv: Path) -> pd.DataFrame:
    return with_columns(with_memory(pd.read_csv(runs_csv)), OPTIONAL_COLUMNS)


def measured(cells: pd.DataFrame) -> pd.DataFrame:
    """The cells with at least one ok run."""
    return cells[numeric(cells, "repeats_ok").fillna(0) > 0]
