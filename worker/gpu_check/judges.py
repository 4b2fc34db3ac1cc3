"""The GPU check's judges: pure functions from cell results (`CellResult.to_dict()`, by label) to a verdict.

Each takes the cells and the labels it judges, so it can be tried on synthetic results; `checks.py`
binds them to their labels. No torch, no NVML.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Cells = dict[str, dict[str, Any]]  # label -> result (CellResult.to_dict())


@dataclass
class Verdict:
    """Whether a check passed, the numbers behind it, and why it failed."""

    passed: bool
    observed: dict[str, Any]
    reason: str | None = None


def ok(cell: dict[str, Any] | None) -> bool:
    return cell is not None and cell.get("status") == "ok"


def not_ok(cells: Cells, labels: list[str]) -> str | None:
    """A reason naming the cells that did not produce `ok` (or did not run), or None."""
    bad = []
    for label in labels:
        cell = cells.get(label)
        if cell is None:
            bad.append(f"{label}: did not run")
        elif not ok(cell):
            bad.append(f"{label}: {cell.get('status')}: {cell.get('error_type')}: {cell.get('error')}")
    return "; ".join(bad) or None


def picked(cells: Cells, labels: list[str]) -> Cells:
    """The cells among `labels` that ran ok."""
    return {label: cells[label] for label in labels if ok(cells.get(label))}


def _verdict(observed: dict[str, Any], problems: list[str]) -> Verdict:
    return Verdict(not problems, observed, "; ".join(problems) or None)


def judge_forked_cpu_cell(cells: Cells, label: str) -> Verdict:
    """The tiny CPU cell came back ok through the forked path and recorded its cores and throughput."""
    cell = cells.get(label, {})
    keys = ("status", "error", "device", "cpu_cores", "cpu_threads", "throughput_sps", "throughput_sequential_sps",
            "throughput_iterations")  # fmt: skip
    observed = {k: cell.get(k) for k in keys}
    passed = ok(cell) and bool(cell.get("cpu_cores")) and (cell.get("throughput_iterations") or 0) >= 1
    return Verdict(passed, observed, None if passed else "the forked CPU cell did not come back ok")


def judge_cells_run(cells: Cells, labels: list[str], uuid: str | None) -> Verdict:
    """Every cell is ok on the pinned GPU (a TypeError on NVML memory would fail them)."""
    reason = not_ok(cells, labels)
    wrong = [label for label, cell in picked(cells, labels).items() if cell.get("gpu_uuid") != uuid]
    observed: dict[str, Any] = {label: cells.get(label, {}).get("status") for label in labels}
    observed["on_other_gpu"] = wrong
    return Verdict(
        reason is None and not wrong, observed, reason or (f"ran on another GPU: {wrong}" if wrong else None)
    )


def judge_nvml_lists_cells(cells: Cells, labels: list[str]) -> Verdict:
    """NVML lists each cell's process, so process_mem_mb is a number."""
    sources = {label: cell.get("process_mem_source") for label, cell in picked(cells, labels).items()}
    listed = bool(sources) and all(source == "nvml_process_incl_cuda_context" for source in sources.values())
    return Verdict(listed, {"process_mem_source": sources}, None if listed else "NVML did not list every cell")


def judge_strict_fp32(cells: Cells, baselines: list[str], halves: list[str]) -> Verdict:
    """The baseline is strict fp32 (no TF32; identical to the reference); fp16 is close to it."""
    observed: dict[str, Any] = {}
    problems = [reason] if (reason := not_ok(cells, baselines + halves)) else []
    for label, cell in picked(cells, baselines).items():
        observed[label] = {k: cell.get(k) for k in ("tf32_cudnn", "tf32_matmul", "max_abs_error", "cosine_similarity")}
        if cell.get("tf32_cudnn") or cell.get("tf32_matmul"):
            problems.append(f"{label} ran with TF32 on")
        if (cell.get("cosine_similarity") or 0) < 0.99999:
            problems.append(f"{label} differs from the fp32 reference")
    for label, cell in picked(cells, halves).items():
        cosine = cell.get("cosine_similarity")
        observed[label] = {"cosine_similarity": cosine, "max_abs_error": cell.get("max_abs_error")}
        if cosine is None or cosine < 0.99:
            problems.append(f"{label} cosine {cosine} < 0.99 against strict fp32")
    return _verdict(observed, problems)


def judge_tf32(cells: Cells, baseline: str, tf32: str) -> Verdict:
    """The tf32 cell runs with TF32 on and differs from strict fp32 more than the baseline does."""
    if reason := not_ok(cells, [baseline, tf32]):
        return Verdict(False, {}, reason)
    base, fast = cells[baseline], cells[tf32]
    keys = ("tf32_cudnn", "latency_ms_p50", "max_abs_error", "cosine_similarity")
    observed: dict[str, Any] = {"baseline": {k: base.get(k) for k in keys}, "tf32": {k: fast.get(k) for k in keys}}
    if base.get("latency_ms_p50") and fast.get("latency_ms_p50"):
        observed["speedup_p50"] = base["latency_ms_p50"] / fast["latency_ms_p50"]
    problems = []
    if not (fast.get("tf32_cudnn") and fast.get("tf32_matmul")):
        problems.append("the tf32 cell did not run with TF32 on")
    if base.get("tf32_cudnn") or base.get("tf32_matmul"):
        problems.append("the baseline ran with TF32 on")
    if (fast.get("max_abs_error") or 0) <= (base.get("max_abs_error") or 0):
        problems.append("tf32's outputs are no further from strict fp32 than the baseline's")
    return _verdict(observed, problems)


def judge_throughput(cells: Cells, labels: list[str]) -> Verdict:
    """Back-to-back throughput is at least 0.97x the per-call (sequential) rate at every batch size."""
    observed: dict[str, Any] = {}
    problems = [reason] if (reason := not_ok(cells, labels)) else []
    for label, cell in picked(cells, labels).items():
        seq, b2b = cell.get("throughput_sequential_sps"), cell.get("throughput_sps")
        ratio = b2b / seq if seq and b2b else None
        observed[label] = {"sequential_sps": seq, "back_to_back_sps": b2b, "ratio": ratio,
                           "back_to_back_iterations": cell.get("throughput_iterations")}  # fmt: skip
        if ratio is None or ratio < 0.97:
            problems.append(f"{label}: back to back / per call = {ratio}")
    return _verdict(observed, problems)


def judge_energy(cells: Cells, labels: list[str], mig: bool) -> Verdict:
    """Energy per sample is positive over the timed phase, or null with a reason (on MIG: null)."""
    observed: dict[str, Any] = {}
    problems = [reason] if (reason := not_ok(cells, labels)) else []
    for label, cell in picked(cells, labels).items():
        joules, source = cell.get("energy_j_per_sample"), cell.get("energy_source")
        observed[label] = {"energy_j_per_sample": joules, "energy_source": source,
                           "sm_clock_mhz": cell.get("noise_gpu_sm_clock_mhz"),
                           "power_limit_w": cell.get("gpu_power_limit_w"),
                           "other_processes": cell.get("noise_gpu_other_processes")}  # fmt: skip
        if mig and (joules is not None or source != "unavailable:mig_instance"):
            problems.append(f"{label}: a MIG cell reported energy {joules} ({source})")
        if not mig and not (joules and joules > 0):
            problems.append(f"{label}: energy {joules} over the timed phase ({source})")
        if cell.get("gpu_power_limit_w") is None or cell.get("noise_gpu_sm_clock_mhz") is None:
            problems.append(f"{label}: SM clock or power limit not recorded")
    return _verdict(observed, problems)


def judge_oom(cells: Cells, label: str) -> Verdict:
    """Too large a batch is a CUDA OOM, reported as `out_of_memory`."""
    cell = cells.get(label, {})
    observed = {k: cell.get(k) for k in ("status", "error_type", "error", "batch_size", "image_size")}
    passed = cell.get("error_type") == "out_of_memory" and "CUDA out of memory" in (cell.get("error") or "")
    return Verdict(passed, observed, None if passed else "not a CUDA out-of-memory failure")


def judge_pruned_fp16(cells: Cells, pruned: str, plain: str) -> Verdict:
    """Channels rounded to 8, and pruned fp16 at least as fast as fp16."""
    if reason := not_ok(cells, [pruned, plain]):
        return Verdict(False, {}, reason)
    a, b = cells[pruned], cells[plain]
    observed = {
        "prune_round_to": a.get("prune_round_to"),
        "params_total": a.get("params_total"),
        "throughput_sps": a.get("throughput_sps"),
        "fp16_throughput_sps": b.get("throughput_sps"),
        "speedup": a["throughput_sps"] / b["throughput_sps"],
        "cosine_similarity": a.get("cosine_similarity"),
    }
    problems = []
    if a.get("prune_round_to") != 8:
        problems.append("channels not rounded to multiples of 8")
    if observed["speedup"] < 1.0:
        problems.append(f"pruned fp16 is slower than fp16 ({observed['speedup']:.2f}x)")
    return _verdict(observed, problems)


def judge_noise(cells: Cells, quiet: str, everywhere: str, policy: str) -> Verdict:
    """With the CPU load kept off the GPU worker's cores, batch-1 p99 stays within 25% of quiet."""
    if reason := not_ok(cells, [quiet, everywhere, policy]):
        return Verdict(False, {}, reason)
    fields = ("latency_ms_p50", "latency_ms_p99", "noise_cpu_wait_fraction", "cpu_cores")
    observed: dict[str, Any] = {
        label: {k: cells[label].get(k) for k in fields} for label in (quiet, everywhere, policy)
    }
    ratio = cells[policy]["latency_ms_p99"] / cells[quiet]["latency_ms_p99"]
    observed["p99_policy_over_quiet"] = ratio
    observed["p99_everywhere_over_quiet"] = cells[everywhere]["latency_ms_p99"] / cells[quiet]["latency_ms_p99"]
    return Verdict(ratio <= 1.25, observed, None if ratio <= 1.25 else f"p99 rose {ratio:.2f}x under the policy")


def judge_quantized(cells: Cells, baseline: str, quantized: list[str], float8: str, onnx: str) -> Verdict:
    """torchao int8 ok on the GPU; float8 ok from compute capability 8.9, else unsupported naming 8.9.

    No speed-up is asked for: in DenseNet-121 the classifier is the only nn.Linear (0.04% of its FLOPs),
    so the throughput ratios are recorded, not judged. onnxruntime is ok with the CUDA provider, or
    unsupported naming onnxruntime-gpu when only the CPU package is installed.
    """
    problems = [reason] if (reason := not_ok(cells, [baseline, *quantized])) else []
    base = cells.get(baseline, {})
    observed: dict[str, Any] = {}
    for label in [*quantized, float8, onnx]:
        cell = cells.get(label, {})
        keys = ("status", "error", "cosine_similarity", "quantized_layers", "execution_provider", "throughput_sps")
        observed[label] = {k: cell.get(k) for k in keys}
        if ok(cell) and base.get("throughput_sps"):
            observed[label]["throughput_over_baseline"] = cell["throughput_sps"] / base["throughput_sps"]
        if ok(cell) and (cell.get("cosine_similarity") or 0) < 0.99:
            problems.append(f"{label}: cosine {cell.get('cosine_similarity')} < 0.99 against fp32")
        if ok(cell) and label != onnx and "Linear 1/1" not in str(cell.get("quantized_layers")):
            problems.append(f"{label}: the classifier was not quantized ({cell.get('quantized_layers')})")
    capability = str(base.get("compute_capability") or cells.get(float8, {}).get("compute_capability") or "0.0")
    f8 = cells.get(float8, {})
    if tuple(int(part) for part in capability.split(".")) >= (8, 9):
        if not ok(f8):
            problems.append(f"{float8}: {f8.get('status')} on compute capability {capability}: {f8.get('error')}")
    elif f8.get("status") != "unsupported" or "8.9" not in str(f8.get("error")):
        problems.append(f"{float8}: on compute capability {capability} it should be unsupported naming 8.9")
    runtime = cells.get(onnx, {})
    if not (ok(runtime) and runtime.get("execution_provider") == "CUDAExecutionProvider") and not (
        runtime.get("status") == "unsupported" and "onnxruntime-gpu" in str(runtime.get("error"))
    ):
        problems.append(f"{onnx}: {runtime.get('status')}: {runtime.get('error')}")
    observed["compute_capability"] = capability
    return _verdict(observed, problems)


def judge_compile(cells: Cells, pairs: list[tuple[str, str]]) -> Verdict:
    """reduce-overhead cells (CUDA graphs) keep fidelity and report graph-pool memory, counted in the peak.

    Only the (default, reduce-overhead) pairs whose cells both ran are judged; the others are listed
    under `not_run_for_time` (the run stops starting compile cells when the time budget runs low).
    """
    done = [pair for pair in pairs if pair[0] in cells and pair[1] in cells]
    problems = [reason] if (reason := not_ok(cells, [label for pair in done for label in pair])) else []
    observed: dict[str, Any] = {"not_run_for_time": [pair for pair in pairs if pair not in done]}
    if not done:
        problems.append("no compile cells ran")
    for default, graphs in done:
        if not (ok(cells.get(default)) and ok(cells.get(graphs))):
            continue
        a, b = cells[default], cells[graphs]
        observed[graphs] = {
            "cosine_similarity": b.get("cosine_similarity"),
            "cuda_graph_pool_mb": b.get("cuda_graph_pool_mb"),
            "peak_mem_allocated_mb": b.get("peak_mem_allocated_mb"),
            "default_peak_mem_allocated_mb": a.get("peak_mem_allocated_mb"),
            "p50_default_ms": a.get("latency_ms_p50"),
            "p50_reduce_overhead_ms": b.get("latency_ms_p50"),
        }
        if (b.get("cosine_similarity") or 0) < 0.9999 or (a.get("cosine_similarity") or 0) < 0.9999:
            problems.append(f"{graphs}: fidelity against strict fp32 below 0.9999")
        if not b.get("cuda_graph_pool_mb"):
            problems.append(f"{graphs}: no CUDA-graph pool memory reported")
        elif (b.get("peak_mem_allocated_mb") or 0) < 0.5 * (a.get("peak_mem_allocated_mb") or 0):
            problems.append(f"{graphs}: peak memory leaves out the graphs' activations")
    return _verdict(observed, problems)
