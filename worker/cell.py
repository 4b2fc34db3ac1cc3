"""Run one cell and print its result as one JSON object: `python -m worker.cell --optimization fp16`.

The steps, in order (each reported through `on_progress` for the queue's progress display):
1. resolve the device; an optimization that can't run there makes the result `unsupported`;
2. loading: build the fp32 model on the device and record its outputs on a seeded probe batch;
3. optimizing: apply the optimization chain and make the first call (compilation happens here,
   timed as `prepare_seconds`), then read size, FLOPs and fidelity against the fp32 outputs;
4. warmup, then measuring: the timed phase of `shared.measure`, with memory and energy trackers.
Anything raised inside a cell becomes a `failed` result with `error_type` and `error`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator

import torch

from shared import measure
from shared.cli import OneLineParser, add_cell_arguments
from shared.environment import snapshot, utc_now
from shared.errors import OptbenchError
from shared.model_stats import fidelity, gflops_per_sample, probe_chunks, run_probe, size_stats
from shared.models import build_model
from shared.optimizations import REGISTRY, Prepared, apply_chain, parse_chain, preferred_device, unsupported_reason
from shared.result import CellResult
from shared.spec import CellSpec
from shared.trackers import CpuMemory, CudaMemory, GpuEnergy, nvml_handle

log = logging.getLogger("optbench.cell")

OnProgress = Callable[..., None]  # on_progress(phase, **details)


def run_cell(spec: CellSpec, on_progress: OnProgress | None = None) -> CellResult:
    """Measure one cell in this process. Never raises for a failure inside the cell."""
    report = on_progress or (lambda phase, **details: None)
    chain = parse_chain(spec.optimization)
    names = {opt.name for opt in chain}
    result = CellResult.for_spec(
        spec,
        prune_amount=spec.prune_amount if names & {"prune", "prune_structured"} else None,
        compile_mode=spec.compile_mode if "compile" in names else None,
        started_at=utc_now(),
    )
    try:
        _run(spec, chain, result, report)
    except Exception as exc:  # a failed cell is a result, not a crash
        log.exception("cell %s failed", spec.cell_id)
        result.update({"status": "failed", "error_type": error_type(exc), "error": one_line(exc)})
    result.finished_at = utc_now()
    return result


def _run(spec: CellSpec, chain: list, result: CellResult, report: OnProgress) -> None:
    cuda_available = torch.cuda.is_available()
    device_type = preferred_device(chain, cuda_available) if spec.device == "auto" else spec.device
    device = torch.device(device_type)
    handle = None
    if device_type == "cuda" and cuda_available:
        torch.backends.cudnn.benchmark = True
        handle = nvml_handle(device)
    result.update(snapshot(device, handle))
    reason = unsupported_reason(chain, device_type)
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
    energy = GpuEnergy(handle)

    def progress(phase: str, calls: int, seconds: float) -> None:
        report(phase, iterations=calls, elapsed=seconds)

    def call() -> object:
        return prepared.model(inputs)

    with torch.inference_mode():
        warmup = measure.warm_up(call, budget, timer, progress)
        memory.reset()
        energy.start()
        latency = measure.time_calls(call, budget, timer, progress)
        joules = energy.joules()
    result.update(latency.summary(spec.batch_size))
    result.update(memory.read())
    samples = latency.iterations * spec.batch_size
    result.update(
        {
            "status": "ok",
            "warmup_iterations": warmup.iterations,
            "warmup_seconds": warmup.seconds,
            "target_spread": budget.target_spread,
            "timer": timer.name,
            "energy_j_per_sample": joules / samples if joules is not None else None,
            "achieved_tflops": result.gflops_per_sample * result.throughput_sps / 1000.0,
        }
    )


def _prepare(
    spec: CellSpec, chain: list, device: torch.device, result: CellResult, report: OnProgress
) -> tuple[Prepared, torch.Tensor]:
    """Build, record fp32 probe outputs, optimize, make the first call, read size/FLOPs/fidelity."""
    report("loading")
    model, result.weights = build_model(spec.model, spec.weights, spec.seed)
    fp32 = Prepared(model.to(device), device)
    probe = [
        fp32.inputs(spec.batch_size, spec.image_size, seed=spec.seed + 1 + i)
        for i in range(probe_chunks(spec.batch_size))
    ]
    reference = run_probe(fp32.model, probe)

    report("optimizing")
    with _stopwatch() as apply_seconds:
        prepared, eager = apply_chain(chain, fp32, spec)
    inputs = prepared.inputs(spec.batch_size, spec.image_size, seed=spec.seed)
    with _stopwatch() as first_call_seconds, torch.inference_mode():
        prepared.model(inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    result.prepare_seconds = apply_seconds() + first_call_seconds()

    result.update(size_stats(eager.model))
    result.gflops_per_sample = gflops_per_sample(eager.model, eager.inputs(1, spec.image_size, seed=spec.seed))
    outputs = run_probe(
        prepared.model, [b.to(dtype=prepared.dtype, memory_format=prepared.memory_format) for b in probe]
    )
    result.update(fidelity(reference, outputs))
    return prepared, inputs


@contextlib.contextmanager
def _stopwatch() -> Iterator[Callable[[], float]]:
    start = time.perf_counter()
    end: list[float] = []
    yield lambda: end[0] - start
    end.append(time.perf_counter())


def error_type(exc: BaseException) -> str:
    text = str(exc).lower()
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text:
        return "out_of_memory"
    return type(exc).__name__


def one_line(exc: BaseException, limit: int = 500) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:limit]


# --- command line -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m worker.cell",
        description="Measure one (model, optimization, batch size) cell and print its result as JSON.",
    )
    parser.add_argument(
        "--optimization", default="baseline", help=f"one of {', '.join(REGISTRY)}, or several joined with +"
    )
    parser.add_argument("--batch-size", type=int, default=1)
    add_cell_arguments(parser)
    parser.add_argument("--list", action="store_true", help="list the optimizations and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    if args.pop("list"):
        for opt in REGISTRY.values():
            print(f"{opt.name:18} {opt.summary}")
        return 0
    try:
        spec = CellSpec(**args)
    except OptbenchError as exc:
        print(f"python -m worker.cell: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    with _stdout_to_stderr():
        result = run_cell(spec)
    print(json.dumps(result.to_dict()))
    return 0


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Keep stdout for the JSON alone, even against libraries that print or write to fd 1."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


if __name__ == "__main__":
    sys.exit(main())
