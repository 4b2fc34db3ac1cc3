"""The report quotes only numbers that are in the CSV (or ratios of two of them), and its plots open."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from results.collect import COLUMNS, write_csv
from results.report import write_report

WEIGHTS = "pretrained:DenseNet121_Weights.IMAGENET1K_V1"
DECIMAL = re.compile(r"(?<![\w.])\d[\d,]*\.\d+x?(?![\w.])")


def check_report(csv_path: Path, out_dir: Path) -> str:
    """Write the report and check every quoted number against the CSV; returns the markdown."""
    report = write_report(csv_path, out_dir).read_text()
    frame = pd.read_csv(csv_path).set_index("cell_id")
    frame["memory_mb"] = frame["peak_mem_allocated_mb"].fillna(frame["process_mem_mb"])
    citations = json.loads((out_dir / "citations.json").read_text())
    assert citations, "the report quotes nothing"
    for c in citations:
        value = frame.loc[c["cell_id"], c["column"]]
        if c["over_cell_id"]:
            value = value / frame.loc[c["over_cell_id"], c["column"]]
        assert c["value"] == pytest.approx(value, rel=1e-12), c
        digits = len(c["text"].rstrip("x").split(".")[1])
        assert c["text"].replace(",", "").rstrip("x") == f"{value:.{digits}f}", c
        assert c["text"] in report
    outside_code = re.sub(r"`[^`]*`", "", report)
    quoted = {c["text"] for c in citations}
    stray = [n for n in DECIMAL.findall(outside_code) if n not in quoted]
    assert not stray, f"numbers in the report that cite nothing: {stray}"
    for name in re.findall(r"\]\(([\w.]+\.png)\)", report):
        with Image.open(out_dir / name) as image:
            assert image.size[0] > 300
    return report


def synthetic_csv(path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for optimization, speed, agreement in (("baseline", 1.0, 1.0), ("fp16", 2.5, 0.75), ("prune", 0.9, 1.0)):
        for batch_size in (1, 8):
            throughput = 100 * speed * batch_size**0.5 * rng.uniform(0.95, 1.05)
            rows.append({
                "sweep_id": "s1", "cell_id": f"{optimization}@bs{batch_size}", "status": "ok", "attempts": 1,
                "model": "densenet121", "optimization": optimization, "batch_size": batch_size, "image_size": 224,
                "device": "cuda", "device_name": "NVIDIA H200", "weights": WEIGHTS,
                "throughput_sps": throughput, "latency_ms_p50": 1000 * batch_size / throughput,
                "latency_ms_p99": 1100 * batch_size / throughput, "peak_mem_allocated_mb": 100.0 * batch_size / speed,
                "model_size_mb": 30.8 / (2 if optimization == "fp16" else 1), "model_size_compressed_mb": 27.1,
                "top1_agreement": agreement, "max_abs_error": 0.0 if optimization == "baseline" else 0.02,
                "cosine_similarity": 0.999, "iterations": 100, "torch_version": "2.11.0", "timer": "cuda_event",
            })  # fmt: skip
    rows.append({"sweep_id": "s1", "cell_id": "dynamic_quant@bs1", "status": "unsupported", "attempts": 1,
                 "optimization": "dynamic_quant", "batch_size": 1, "error_type": "unsupported_on_device",
                 "error": "dynamic_quant runs on cpu only, not on cuda"})  # fmt: skip
    write_csv(pd.DataFrame(rows, columns=list(COLUMNS)), path)
    return path


def test_every_number_in_the_report_is_a_csv_value_or_a_ratio_of_two(tmp_path):
    report = check_report(synthetic_csv(tmp_path / "s1.csv"), tmp_path / "s1")
    assert "| 8 | fp16: " in report  # fp16 is fastest at batch 8 in this data
    assert "`fp16@bs8` agrees with the fp32 top-1 on 0.75 of the probe" in report
    assert "It is the fastest cell at its batch size" in report
    assert "`dynamic_quant@bs1` is unsupported (unsupported_on_device: dynamic_quant runs on cpu only" in report
    assert "random weights" not in report
    assert {p.name for p in (tmp_path / "s1").glob("*.png")} == {
        "throughput.png",
        "latency.png",
        "memory.png",
        "model_size.png",
        "speedup.png",
        "fidelity.png",
    }
