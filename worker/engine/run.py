"""One cell, start to end, in this process: `run_cell(spec)` returns its `CellResult`.

The steps, in order (each reported through `on_progress` for the queue's progress display):
1. resolve the device; an optimization that can't run there makes the result `unsupported`;
2. loading: build the fp32 model on the device and record its outputs on a seeded probe batch;
3. optimizing: apply the optimization chain and make the first call (compilation happens here,
   timed as `prepare_seconds`), then read size, FLOPs and fidelity against the fp32 outputs (and, where
   the optimization has a reference model, the reference's fidelity and the kernels' against it);
   A later run of the same cell on this host reuses these (worker/engine/facts.py): only timing and memory vary;
4. warmup, then measuring: the timed phase of `worker.engine.measure`, with memory and energy trackers,
   then throughput: the back-to-back phase;
5. reference: an eager fp32 copy of the baseline model, built now (so the memory figures are the optimized
   model's alone), timed in alternating blocks with the optimized model (`measure.time_against_reference`): the
   per-run ratio that verdicts read (results/verdicts.py). Not for the baseline itself, a step that changes
   process-wide settings (tf32), or slow calls (`reference_skipped`).
Every cell first pins itself to its CPU cores (OPTBENCH_CPU_CORES) and sets fp32 math to strict IEEE
(no TF32), so the baseline and the fidelity reference are true fp32; only the `tf32` step relaxes it.
Anything raised inside a cell becomes a `failed` result with `error_type` and `error`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from shared.catalogue import Optimization, parse_chain, preferred_device, unsupported_reason
from shared.environment import utc_now
from shared.errors import one_line
from shared.result import CellResult
from shared.spec import CellSpec
from worker.engine import facts, measure
from worker.engine.environment import pin_cpu_cores, snapshot
from worker.engine.model_stats import (
    fidelity,
    gflops_per_sample,
    probe_chunks,
    run_probe,
    serialized_size,
    size_stats,
)
from worker.engine.models import ModelError, build_model
from worker.engine.precision import set_tf32, tf32_flags
from worker.engine.trackers import CpuMemory, CudaMemory, GpuEnergy, Noise, nvml_handle
from worker.engine.transforms import SETTINGS, NotApplicable, Prepared, StepFailed, apply_chain, unsupported_here

log = logging.getLogger("optbench.cell")

OnProgress = Callable[..., None]  # on_progress(phase, **details)


def run_cell(spec: CellSpec, on_progress: OnProgress | None = None) -> CellResult:
    """Measure one cell in this process. Never raises for a failure inside the cell."""
    report = on_progress or (lambda phase, **details: None)
    chain = parse_chain(spec.optimization)
    result = CellResult.for_spec(spec, **recorded_knobs(spec, chain), started_at=utc_now())
    try:
        _run(spec, chain, result, report)
    except Exception as exc:  # a failed cell is a result, not a crash
        log.exception("cell %s failed", spec.cell_id)
        cause = exc.cause if isinstance(exc, StepFailed) else exc
        if isinstance(cause, NotApplicable):
            result.update({"status": "unsupported", "error_type": "unsupported_for_model", "error": failure_text(exc)})
        else:
            result.update({"status": "failed", "error_type": error_type(cause), "error": failure_text(exc)})
    result.finished_at = utc_now()
    return result


def recorded_knobs(spec: CellSpec, chain: list[Optimization]) -> dict[str, Any]:
    """The settings the chain's steps record in its row (their catalogue `knobs`): the spec's, or the engine's."""
    return {knob: SETTINGS[knob] if knob in SETTINGS else getattr(spec, knob) for opt in chain for knob in opt.knobs}


def _run(spec: CellSpec, chain: list, result: CellResult, report: OnProgress) -> None:
    result.cpu_cores = pin_cpu_cores()
    set_tf32(False)
    cuda_available = torch.cuda.is_available()
    device_type = preferred_device(chain, cuda_available) if spec.device == "auto" else spec.device
    device = torch.device(device_type)
    handle = None
    if device_type == "cuda" and cuda_available:
        torch.backends.cudnn.benchmark = True
        handle = nvml_handle(device)
    result.update(snapshot(device, handle))
    reason = unsupported_reason(chain, device_type) or unsupported_here(chain, device)
    if reason:
        result.update({"status": "unsupported", "error_type": "unsupported_on_device", "error": reason})
        return
    if device_type == "cuda" and not cuda_available:
        result.update({"error_type": "device_unavailable", "error": "CUDA is not available on this host"})
        return

    prepared, inputs = _prepare(spec, chain, device, result, report)
    gc.collect()
    if device_type == "cuda":
        torch.cuda.empty_cache()

    budget = measure.budget_for(
        device_type,
        warmup_iters=spec.warmup_iters,
        warmup_seconds=spec.warmup_seconds,
        min_iters=spec.min_iters,
        min_seconds=spec.min_seconds,
        target_spread=spec.target_spread,
        max_seconds=spec.max_seconds,
    )
    timer = measure.timer_for(device_type)
    memory = CudaMemory(device, handle) if device_type == "cuda" else CpuMemory()
    energy = GpuEnergy(handle, on_gpu=device_type == "cuda")
    noise = Noise(handle)

    def progress(phase: str, calls: int, seconds: float) -> None:
        report(phase, iterations=calls, elapsed=seconds)

    def call() -> object:
        return prepared.model(inputs)

    with torch.inference_mode():
        warmup = measure.warm_up(call, budget, timer, progress)
        memory.reset()
        energy.start()
        noise.start()
        latency = measure.time_calls(call, budget, timer, progress)
        energy_read = energy.read()
        back_to_back = measure.time_back_to_back(call, budget, latency, timer, progress)
        result.update(noise.read())  # both phases: throughput_sps, which verdicts use, is the back-to-back one
    result.update(latency.summary(spec.batch_size))
    result.update(back_to_back.summary(spec.batch_size))
    result.reduced_counts = measure.reduced_counts(warmup, latency, back_to_back)
    result.update(memory.read())  # before the reference exists: the memory figures are the optimized model's alone
    mean_ms = float(latency.samples_ms.mean())
    result.reference_status = reference_skipped(chain, budget.is_slow(mean_ms), mean_ms)
    if result.reference_status is None:
        report("reference")
        reference = build_model(spec).model.to(device)
        reference_inputs = Prepared(reference, device, prepared.sample_shape).inputs(spec.batch_size, seed=spec.seed)
        with torch.inference_mode():
            pairs = measure.time_against_reference(call, lambda: reference(reference_inputs), mean_ms, timer)
        result.update(pairs.summary())
        result.reference_status = REFERENCE_MEASURED
    samples = latency.iterations * spec.batch_size
    joules = energy_read["energy_j"]
    result.update(
        {
            "status": "ok",
            "warmup_iterations": warmup.iterations,
            "warmup_seconds": warmup.seconds,
            "target_spread": budget.target_spread,
            "timer": timer.name,
            "energy_j_per_sample": joules / samples if joules is not None else None,
            "energy_source": energy_read["energy_source"],
            "achieved_tflops": result.gflops_per_sample * result.throughput_sps / 1000.0,
        }
    )


REFERENCE_MEASURED = "measured"


def reference_skipped(chain: list[Optimization], slow: bool, mean_ms: float) -> str | None:
    """Why a run is not timed against an in-run eager fp32 reference (its verdict then pairs runs across
    processes), or None when it is."""
    if all(opt.name == "baseline" for opt in chain):
        return "none: the baseline is the reference"
    leaking = next((opt for opt in chain if opt.process_wide), None)
    if leaking is not None:
        return f"none: {leaking.name} {leaking.process_wide}, which a reference in the same process would inherit"
    if slow:
        return (
            f"none: calls of {mean_ms / 1000.0:.2f} s (>= {measure.SLOW_CALL_SECONDS:g} s) vary little between "
            "processes, and a reference would add as many slow calls"
        )
    return None


def _prepare(
    spec: CellSpec, chain: list, device: torch.device, result: CellResult, report: OnProgress
) -> tuple[Prepared, torch.Tensor]:
    """Build, optimize, make the first call; read size/FLOPs/fidelity against the fp32 probe outputs, or reuse what
    an earlier run of the same cell on this host measured of them (worker/engine/facts.py)."""
    report("loading")
    built = build_model(spec)
    result.update(built.fields())
    fp32 = Prepared(built.model.to(device), device, built.sample_shape)
    key = facts.cell_key(spec.to_dict(), result.to_dict())
    known = facts.load_facts(key)
    if known is None:
        probe = [fp32.inputs(spec.batch_size, seed=spec.seed + 1 + i) for i in range(probe_chunks(spec.batch_size))]
        reference = run_probe(fp32.model, probe)
        result.model_gflops = gflops_per_sample(fp32.model, fp32.inputs(1, seed=spec.seed))  # before steps change it

    report("optimizing")
    with _stopwatch() as apply_seconds:
        prepared, eager = apply_chain(chain, fp32, spec)
    if device.type == "cuda":
        result.update(tf32_flags())  # as the timed calls run: the `tf32` step changes them
    inputs = prepared.inputs(spec.batch_size, seed=spec.seed)
    with _stopwatch() as first_call_seconds, torch.inference_mode():
        prepared.model(inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    result.prepare_seconds = apply_seconds() + first_call_seconds()
    result.update(prepared.fields)
    if known is not None:
        result.update(known)
        return prepared, inputs

    result.update(size_stats(eager.model))
    if prepared.artifact is not None:  # the int8 graph or the ONNX file: what is stored is not the eager model
        result.update(serialized_size(prepared.artifact))
    result.gflops_per_sample = gflops_per_sample(eager.model, eager.inputs(1, seed=spec.seed))
    probe = [b.to(dtype=prepared.dtype, memory_format=prepared.memory_format) for b in probe]
    outputs = run_probe(prepared.model, probe)
    result.update(fidelity(reference, outputs))
    if prepared.reference is not None:  # the error split: the quantization's, then the kernels'
        quantized = run_probe(prepared.reference, probe)
        result.update(split_fidelity("quant_", fidelity(reference, quantized)))
        result.update(split_fidelity("kernel_", fidelity(quantized, outputs)))
    result.facts_source = "measured"
    facts.save_facts(key, result.to_dict(), measured=f"{result.started_at} on {result.host}")
    return prepared, inputs


def split_fidelity(prefix: str, measured: dict[str, float | int]) -> dict[str, float | int]:
    """`fidelity`'s figures under `prefix` (`quant_`, `kernel_`); the sample count is the row's `fidelity_samples`."""
    return {prefix + name: value for name, value in measured.items() if name != "fidelity_samples"}


@contextlib.contextmanager
def _stopwatch() -> Iterator[Callable[[], float]]:
    start = time.perf_counter()
    end: list[float] = []
    yield lambda: end[0] - start
    end.append(time.perf_counter())


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
# torch.onnx's errors open with fixed advice and end with `## Exception summary`: the first exception there
# names what failed (the op with no ONNX function, the expression torch.export could not trace).
EXCEPTION_SUMMARY = re.compile(r"## Exception summary\s*<class '(?:[\w.]+\.)?(?P<type>\w+)'>: (?P<message>[^\n]*)")
# torch.export's errors end with the model's line that raised: `File "net.py", line 83, in forward`, then its code.
RAISING_CALL = re.compile(
    r'The following call raised this error:\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<function>\w+)\n'
    r"\s*(?P<code>[^\n]*)"
)


def failure_text(exc: BaseException) -> str:
    """A failed cell's `error`: one line that names the step (`onnxruntime: ...`), what failed in it, and where
    in the model's code when the error says."""
    step = f"{exc.step}: " if isinstance(exc, StepFailed) else ""
    cause = exc.cause if isinstance(exc, StepFailed) else exc
    text = ANSI_ESCAPE.sub("", str(cause))
    if summary := EXCEPTION_SUMMARY.search(text):
        text = f"{summary['type']}: {summary['message']}"
        if where := RAISING_CALL.search(str(cause)):
            place = f"{os.path.basename(where['file'])}:{where['line']} in {where['function']}"
            text += f" (raised at {place}: {where['code'].strip()})"
    return one_line(step + text)


# cuBLAS, cuDNN, cuFFT, cuSOLVER, cuSPARSE failing to allocate their workspace: also out of GPU memory.
LIBRARY_ALLOC_FAILED = re.compile(r"\b[A-Z]+(?:_STATUS)?_ALLOC_FAILED\b")


def error_type(exc: BaseException) -> str:
    text = str(exc)
    lower = text.lower()
    if isinstance(exc, ModelError):
        return "model_error"
    if (
        isinstance(exc, torch.cuda.OutOfMemoryError)
        or "out of memory" in lower
        or "can't allocate memory" in lower
        or LIBRARY_ALLOC_FAILED.search(text)
    ):
        return "out_of_memory"
    return type(exc).__name__
