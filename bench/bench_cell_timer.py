"""Benchmark: does the cell runner's p50 agree with torch.utils.benchmark on the same model?

Runs, in one process and interleaved (runner, Timer, runner, Timer), the baseline DenseNet-121 at
batch 1 through `worker.cell.run_cell` and through `torch.utils.benchmark.Timer.blocked_autorange`
(with the same thread count; Timer defaults to one thread). Prints both medians and their ratio;
the target is a ratio within 5% of 1. Not a test: timings depend on the machine.

    python bench/bench_cell_timer.py [--model densenet121] [--image-size 224] [--seconds 10]
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import torch
from torch.utils import benchmark

from shared.spec import CellSpec
from worker.engine.models import build_model, make_inputs
from worker.engine.run import run_cell


def torch_benchmark_median_ms(model_name: str, image_size: int, seconds: float) -> float:
    model = build_model(CellSpec(model=model_name, image_size=image_size)).model
    inputs = make_inputs(1, image_size, device=torch.device("cpu"))

    @torch.inference_mode()
    def forward() -> None:
        model(inputs)

    for _ in range(3):  # the same warm-up the runner gives its CPU cells
        forward()
    timer = benchmark.Timer(stmt="forward()", globals={"forward": forward}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=seconds).median * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="densenet121")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    spec = CellSpec(model=args.model, image_size=args.image_size, batch_size=1, device="cpu", min_seconds=args.seconds)

    runner, reference = [], []
    for round_ in range(1, args.rounds + 1):
        result = run_cell(spec)
        assert result.status == "ok", result.error
        runner.append(result.latency_ms_p50)
        reference.append(torch_benchmark_median_ms(args.model, args.image_size, args.seconds))
        print(
            f"round {round_}: runner p50 {runner[-1]:.2f} ms ({result.iterations} calls, "
            f"{result.measure_seconds:.1f} s) | torch.utils.benchmark median {reference[-1]:.2f} ms "
            f"| ratio {runner[-1] / reference[-1]:.3f}"
        )
    ratio = float(np.median(np.array(runner) / np.array(reference)))  # per round: robust to drift
    verdict = "within" if abs(ratio - 1) <= 0.05 else "OUTSIDE"
    print(
        f"{args.model} bs1 {args.image_size}px on {result.device_name}, {torch.get_num_threads()} threads: "
        f"median runner/torch.utils.benchmark p50 ratio {ratio:.3f} ({verdict} the 5% target)"
    )


if __name__ == "__main__":
    main()
