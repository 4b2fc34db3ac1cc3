"""The report's PNG plots: throughput, latency, memory and model size over batch size, the speedup over
the baseline as a heat map (cells without a significant difference greyed and hatched), and fidelity.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle

from results.recommend import DEFAULT_MIN_COSINE
from results.report.citations import CONFIDENCE
from results.stats import numeric


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


def write_plots(done: pd.DataFrame, out_dir: Path) -> list[tuple[str, str]]:
    """Write each plot that has something to show into `out_dir`; returns their file names and titles."""
    done, written = _labelled(done), []
    plots = (_pareto_plot, _throughput_plot, _latency_plot, _memory_plot, _size_plot, _speedup_plot, _fidelity_plot)
    for plot in plots:
        figure = plot(done)
        if figure is not None:
            fig, name, title = figure
            _save(fig, out_dir, name, title, written)
    return written


def pareto_front(throughput: np.ndarray, p99: np.ndarray) -> np.ndarray:
    """Which points no other point beats on both throughput (higher) and p99 latency (lower)."""
    front = np.ones(len(throughput), dtype=bool)
    for i in range(len(throughput)):
        better = (throughput >= throughput[i]) & (p99 <= p99[i]) & ((throughput > throughput[i]) | (p99 < p99[i]))
        front[i] = not better.any()
    return front


def _pareto_plot(done: pd.DataFrame) -> Figure:
    """Throughput against p99 latency, one point per cell with its intervals; the frontier; fidelity misses."""
    points = done[numeric(done, "throughput_sps").notna() & numeric(done, "latency_ms_p99").notna()]
    if points.empty:
        return None
    x, y = numeric(points, "throughput_sps").to_numpy(), numeric(points, "latency_ms_p99").to_numpy()

    def err(column: str, centre: np.ndarray) -> np.ndarray:
        low, high = numeric(points, f"{column}_ci_low").to_numpy(), numeric(points, f"{column}_ci_high").to_numpy()
        return np.nan_to_num(np.clip(np.vstack([centre - low, high - centre]), 0, None))

    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.errorbar(x, y, xerr=err("throughput", x), yerr=err("latency_ms_p99", y), fmt="o", capsize=3, color="tab:blue",
                ecolor="lightsteelblue", label="cell (median; bars: intervals over runs)")  # fmt: skip
    front = pareto_front(x, y)
    order = np.argsort(x[front])
    ax.plot(x[front][order], y[front][order], "--", color="tab:green", label="frontier: nothing beats it on both")
    cosine = numeric(points, "cosine_similarity").to_numpy()
    missed = cosine < DEFAULT_MIN_COSINE
    if missed.any():
        ax.scatter(x[missed], y[missed], marker="x", s=120, color="tab:red",
                   label=f"fidelity below the default cosine {DEFAULT_MIN_COSINE:g}")  # fmt: skip
    for label, xi, yi in zip(points["label"].astype(str) + "@bs" + points["batch_size"].astype(str), x, y, strict=True):
        ax.annotate(label, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("throughput (samples/s, log)")
    ax.set_ylabel("p99 latency (ms per batch, log)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig, "pareto.png", "Throughput against p99 latency (up-left is worse; the frontier is what to choose from)"


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
