"""The report of a sweep: `report.md` and PNG plots, written from the sweep's CSV alone.

Every number the report quotes goes through `Citations.quote`, which records where it came from
(cell and column, or the two cells of a ratio) in `citations.json` beside the report, so a test can
check each quoted number against the CSV. Sentences are built from the data: nothing in the
report is fixed text standing in for a finding.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

BASELINE = "baseline"
LOWER_IS_BETTER = {"latency_ms_p50": True, "latency_ms_p99": True, "memory_mb": True, "throughput_sps": False}
METRIC_NAMES = {
    "throughput_sps": ("throughput", "samples/s"),
    "latency_ms_p50": ("p50 latency", "ms"),
    "latency_ms_p99": ("p99 latency", "ms"),
    "memory_mb": ("peak memory", "MiB"),
}
FIDELITY_TOLERANCE = 1e-3  # max |logit error| below which an optimization counts as numerically identical


@dataclass(frozen=True)
class Citation:
    text: str  # as printed in the report
    cell_id: str
    column: str
    value: float
    over_cell_id: str | None = None  # for a ratio: the denominator's cell (same column)


class Citations:
    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame, self.items = frame, []

    def quote(self, cell_id: str, column: str, digits: int = 2) -> str:
        value = float(self.frame.loc[cell_id, column])
        text = f"{value:,.{digits}f}"
        self.items.append(Citation(text, cell_id, column, value))
        return text

    def ratio(self, cell_id: str, over: str, column: str) -> str:
        value = float(self.frame.loc[cell_id, column]) / float(self.frame.loc[over, column])
        text = f"{value:.2f}x"
        self.items.append(Citation(text, cell_id, column, value, over_cell_id=over))
        return text


def load(csv_path: Path) -> pd.DataFrame:
    frame = pd.read_csv(csv_path).set_index("cell_id", drop=False)
    frame["memory_mb"] = frame["peak_mem_allocated_mb"].fillna(frame["process_mem_mb"])
    return frame


def write_report(csv_path: Path, out_dir: Path) -> Path:
    """Write report.md, the plots and citations.json into `out_dir`; returns the report's path."""
    frame = load(csv_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    ok = frame[frame["status"] == "ok"]
    cite = Citations(frame)
    plots = _plots(ok, out_dir) if len(ok) else []
    devices = sorted(ok["device_name"].dropna().unique())
    findings = []
    for device in devices:  # a hardware comparison (`--gpu-model any`) gets one group per device
        on_device = ok[ok["device_name"] == device]
        findings += [f"# On {device}" if len(devices) > 1 else ""]
        findings += [_best(on_device, cite), _versus_baseline(on_device, cite), _fidelity(on_device, cite)]
    sections = [
        _header(frame, ok),
        *findings,
        _not_ok(frame),
        _environment(frame),
        "## Plots\n\n" + "\n".join(f"![{title}]({name})" for name, title in plots) if plots else "",
    ]
    report = out_dir / "report.md"
    report.write_text("\n\n".join(part for part in sections if part) + "\n")
    (out_dir / "citations.json").write_text(json.dumps([asdict(c) for c in cite.items], indent=1))
    return report


def _header(frame: pd.DataFrame, ok: pd.DataFrame) -> str:
    first = frame.iloc[0]
    devices = ", ".join(sorted({f"{d} ({n})" for d, n in zip(ok["device"], ok["device_name"], strict=True)}))
    counts = frame["status"].value_counts().to_dict()
    return (
        f"# optbench report: sweep `{first['sweep_id']}`\n\n"
        f"Model `{first['model']}` at {int(first['image_size'])} px, weights `{first['weights']}`; "
        f"{len(frame)} cells ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}), "
        f"measured on {devices or 'no device'}."
    )


def _metric_table(ok: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {
        metric: ok.pivot_table(index="batch_size", columns="optimization", values=metric) for metric in METRIC_NAMES
    }


def _cell(optimization: str, batch_size: int) -> str:
    return f"{optimization}@bs{batch_size}"


def _best(ok: pd.DataFrame, cite: Citations) -> str:
    lines = ["## Best optimization per metric and batch size", ""]
    header = "| batch size | " + " | ".join(f"{name} ({unit})" for name, unit in METRIC_NAMES.values()) + " |"
    lines += [header, "|" + " --- |" * (len(METRIC_NAMES) + 1)]
    tables = _metric_table(ok)
    for batch_size in sorted(ok["batch_size"].unique()):
        row = [str(batch_size)]
        for metric, table in tables.items():
            values = table.loc[batch_size].dropna()
            if values.empty:
                row.append("")
                continue
            best = values.idxmin() if LOWER_IS_BETTER[metric] else values.idxmax()
            row.append(f"{best}: {cite.quote(_cell(best, batch_size), metric)}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _versus_baseline(ok: pd.DataFrame, cite: Citations) -> str:
    lines = ["## Against the fp32 baseline", ""]
    if BASELINE not in set(ok["optimization"]):
        return "\n".join([*lines, "No `baseline` cell succeeded, so nothing is compared with it."])
    for optimization in sorted(set(ok["optimization"]) - {BASELINE}):
        for batch_size in sorted(ok[ok["optimization"] == optimization]["batch_size"]):
            cell, base = _cell(optimization, batch_size), _cell(BASELINE, batch_size)
            if base not in ok.index:
                continue
            speed = cite.ratio(cell, base, "throughput_sps")
            faster = ok.loc[cell, "throughput_sps"] >= ok.loc[base, "throughput_sps"]
            memory = cite.ratio(cell, base, "memory_mb")
            lines.append(
                f"- `{optimization}` at batch {batch_size}: {cite.quote(cell, 'throughput_sps')} vs "
                f"{cite.quote(base, 'throughput_sps')} samples/s, {speed} the baseline's throughput "
                f"({'faster' if faster else 'slower'}); peak memory {cite.quote(cell, 'memory_mb')} vs "
                f"{cite.quote(base, 'memory_mb')} MiB ({memory}); model {cite.quote(cell, 'model_size_mb')} MiB "
                f"dense, {cite.quote(cell, 'model_size_compressed_mb')} MiB compressed."
            )
    return "\n".join(lines)


def _fidelity(ok: pd.DataFrame, cite: Citations) -> str:
    lines = ["## Fidelity against the fp32 model", ""]
    fastest = {
        ok[ok["batch_size"] == b]["throughput_sps"].idxmax() for b in ok["batch_size"].unique()
    }  # the fastest cell at each batch size
    for cell in ok.index:
        row = ok.loc[cell]
        changed = row["top1_agreement"] < 1.0
        drifted = row["max_abs_error"] > FIDELITY_TOLERANCE
        if not (changed or drifted):
            continue
        what = []
        if changed:
            what.append(f"agrees with the fp32 top-1 on {cite.quote(cell, 'top1_agreement')} of the probe")
        what.append(f"max logit error {cite.quote(cell, 'max_abs_error', 4)}")
        what.append(f"cosine similarity {cite.quote(cell, 'cosine_similarity', 4)}")
        note = " It is the fastest cell at its batch size: weigh that against these changes." if cell in fastest else ""
        lines.append(f"- `{cell}` {', '.join(what)}.{note}")
    if len(lines) == 2:
        lines.append(
            f"Every successful cell matches the fp32 outputs (max logit error at most `{FIDELITY_TOLERANCE:g}`)."
        )
    weights = set(ok["weights"].dropna())
    if any(w.startswith("random") for w in weights):
        lines.append(
            "\nThese cells used random weights: their logits are nearly uniform, so top-1 agreement says "
            "little; measure with pretrained weights before trusting it."
        )
    return "\n".join(lines)


def _not_ok(frame: pd.DataFrame) -> str:
    rest = frame[frame["status"] != "ok"]
    if rest.empty:
        return ""
    lines = ["## Cells without a measurement", ""]
    for cell, row in rest.iterrows():
        reason = f"{row['error_type']}: {row['error']}" if isinstance(row.get("error"), str) else "not finished"
        lines.append(f"- `{cell}` is {row['status']} ({reason})")
    return "\n".join(lines)


def _environment(frame: pd.DataFrame) -> str:
    lines = ["## Where and how it was measured", ""]
    for column, label in (
        ("device_name", "device"), ("host", "host"), ("gpu_driver", "GPU driver"), ("cuda_version", "CUDA"),
        ("cudnn_version", "cuDNN"), ("torch_version", "torch"), ("torchvision_version", "torchvision"),
        ("python_version", "Python"), ("cpu_model", "CPU"), ("cpu_threads", "CPU threads"), ("timer", "timer"),
        ("tf32_cudnn", "TF32 in cuDNN"),
    ):  # fmt: skip
        values = sorted({_plain(v) for v in frame[column].dropna()})
        if values:
            lines.append(f"- {label}: " + ", ".join(f"`{v}`" for v in values))
    ok = frame[frame["status"] == "ok"]
    if len(ok):
        lines.append(
            f"- timed calls per cell: `{int(ok['iterations'].min())}` to `{int(ok['iterations'].max())}`, "
            "each timed alone after a warm-up; latency is per batch"
        )
    return "\n".join(lines)


def _plain(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _plots(ok: pd.DataFrame, out_dir: Path) -> list[tuple[str, str]]:
    tables = _metric_table(ok)
    written = []

    def save(fig, name: str, title: str) -> None:
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        written.append((name, title))

    def lines(ax, table: pd.DataFrame, ylabel: str) -> None:
        for optimization in table.columns:
            series = table[optimization].dropna()
            ax.plot(series.index, series.values, marker="o", label=optimization)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(table.index), [str(b) for b in table.index])
        ax.minorticks_off()
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines(ax, tables["throughput_sps"], "samples/s")
    save(fig, "throughput.png", "Throughput vs batch size")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    lines(axes[0], tables["latency_ms_p50"], "p50 latency (ms per batch, log)")
    lines(axes[1], tables["latency_ms_p99"], "p99 latency (ms per batch, log)")
    for ax in axes:
        ax.set_yscale("log")  # optimizations can differ by orders of magnitude (fp16 on a CPU)
    save(fig, "latency.png", "Latency vs batch size")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines(ax, tables["memory_mb"], "peak memory (MiB; GPU allocator, or CPU peak RSS)")
    save(fig, "memory.png", "Peak memory vs batch size")

    sizes = ok.groupby("optimization")[["model_size_mb", "model_size_compressed_mb"]].first()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    positions = np.arange(len(sizes))
    ax.bar(positions - 0.2, sizes["model_size_mb"], 0.4, label="dense (torch.save)")
    ax.bar(positions + 0.2, sizes["model_size_compressed_mb"], 0.4, label="zlib-compressed")
    ax.set_xticks(positions, sizes.index, rotation=30, ha="right")
    ax.set_ylabel("MiB")
    ax.legend()
    save(fig, "model_size.png", "Model size per optimization")

    if BASELINE in tables["throughput_sps"].columns:
        speedup = tables["throughput_sps"].div(tables["throughput_sps"][BASELINE], axis=0).T
        fig, ax = plt.subplots(figsize=(7, 0.6 * len(speedup) + 1.8))
        image = ax.imshow(speedup.values, cmap="RdYlGn", vmin=0, vmax=max(2.0, np.nanmax(speedup.values)))
        ax.set_xticks(range(len(speedup.columns)), speedup.columns)
        ax.set_yticks(range(len(speedup.index)), speedup.index)
        ax.set_xlabel("batch size")
        for (i, j), value in np.ndenumerate(speedup.values):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.2f}x", ha="center", va="center", fontsize="small")
        fig.colorbar(image, ax=ax, label="throughput / baseline")
        save(fig, "speedup.png", "Speedup over baseline")

    fidelity = ok.groupby("optimization")[["top1_agreement", "cosine_similarity", "max_abs_error"]].min()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    fidelity[["top1_agreement", "cosine_similarity"]].plot.bar(ax=axes[0], ylim=(0, 1.05), rot=30)
    axes[0].set_ylabel("worst over batch sizes")
    fidelity["max_abs_error"].plot.bar(ax=axes[1], logy=True, rot=30, color="tab:red")
    axes[1].set_ylabel("max |logit - fp32 logit| (log)")
    save(fig, "fidelity.png", "Fidelity against the fp32 model")
    return written
