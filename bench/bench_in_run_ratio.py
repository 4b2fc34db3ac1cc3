"""Benchmark: what the in-run reference buys. Per optimization and batch size, in fresh processes (rounds):

1. the *effect* as a long in-process ABAB timing measures it: the optimized model and an eager fp32 copy in
   alternating blocks (`--pairs` pairs of `--block-seconds`) in one process, the ratio of their rates;
2. the product's runs (`worker.engine.run.run_cell`, one fresh process each): the baseline cell's run and the
   optimized cell's run of the same round, their cross-process throughput ratio, and the optimized run's
   in-run `reference_ratio`.

Prints per cell the median in-process effect and its range over processes, and the SD over rounds of the log
cross-process ratio and of the log in-run ratio (the noise each verdict method sees), and writes the runs as a
CSV (`--csv`) that `tests/fixtures/` keeps as real noise. Not a test: timings depend on the machine.

    python -m bench.bench_in_run_ratio [--optimizations torchscript,prune,dynamic_quant,aa_control]
        [--batch-sizes 1,4] [--rounds 6] [--pairs 10] [--block-seconds 0.5] [--csv runs.csv]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pandas as pd

CHILD = "child"


def child(optimization: str, batch_size: int, pairs: int, block_seconds: float) -> dict:
    """One fresh process: the long ABAB effect, then (in another fresh process each) the product's runs."""
    import torch

    from shared.catalogue import parse_chain
    from shared.spec import CellSpec
    from worker.engine import measure
    from worker.engine.environment import pin_cpu_cores
    from worker.engine.models import build_model
    from worker.engine.transforms import Prepared, apply_chain

    pin_cpu_cores()
    spec = CellSpec(optimization=optimization, batch_size=batch_size)
    device = torch.device("cpu")
    built = build_model(spec)
    prepared, _ = apply_chain(parse_chain(optimization), Prepared(built.model, device, built.sample_shape), spec)
    reference = build_model(spec).model
    inputs = prepared.inputs(batch_size, seed=0)
    reference_inputs = Prepared(reference, device, built.sample_shape).inputs(batch_size, seed=0)
    timer = measure.CpuTimer()
    with torch.inference_mode():
        optimized_ms = float(np.median([timer.time_ms(lambda: prepared.model(inputs)) for _ in range(5)]))
        result = measure.time_against_reference(
            lambda: prepared.model(inputs),
            lambda: reference(reference_inputs),
            optimized_ms,
            timer,
            pairs,
            block_seconds,
        )
    return result.summary()


def run(optimization: str, batch_size: int) -> dict:
    """The product's run of one cell in a fresh process (`python -m worker.cell`)."""
    command = [sys.executable, "-m", "worker.cell", "--optimization", optimization, "--batch-size", str(batch_size)]
    row = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    if row["status"] != "ok":
        raise SystemExit(f"{optimization}@bs{batch_size}: {row['status']}: {row['error']}")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizations", default="torchscript,prune,dynamic_quant,aa_control")
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--block-seconds", type=float, default=0.5)
    parser.add_argument("--csv", help="write the runs here")
    args = parser.parse_args()
    optimizations, batch_sizes = args.optimizations.split(","), [int(b) for b in args.batch_sizes.split(",")]
    rows = []
    for round_ in range(1, args.rounds + 1):
        for batch_size in batch_sizes:
            base = run("baseline", batch_size)
            rows.append({**base, "repeat": round_})
            for optimization in optimizations:
                command = [sys.executable, "-m", "bench.bench_in_run_ratio", CHILD, optimization, str(batch_size),
                           str(args.pairs), str(args.block_seconds)]  # fmt: skip
                effect = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
                measured = run(optimization, batch_size)
                cross = measured["throughput_sps"] / base["throughput_sps"]
                rows.append({**measured, "repeat": round_, "abab_effect": effect["reference_ratio"],
                             "abab_pair_sd": effect["reference_pair_sd"], "cross_process_ratio": cross})  # fmt: skip
                print(f"round {round_} {optimization}@bs{batch_size}: ABAB {effect['reference_ratio']:.3f}x, "
                      f"in-run {measured['reference_ratio']:.3f}x, cross-process {cross:.3f}x", flush=True)  # fmt: skip
    frame = pd.DataFrame(rows)
    if args.csv:
        frame.to_csv(args.csv, index=False)
    compared = frame[frame["optimization"] != "baseline"]
    print(f"\n{'cell':24} {'ABAB effect [range]':26} {'SD log in-run':>14} {'SD log cross-process':>21}")
    for (optimization, batch_size), cell in compared.groupby(["optimization", "batch_size"], sort=False):
        effect, in_run = cell["abab_effect"], np.log(cell["reference_ratio"])
        cross = np.log(cell["cross_process_ratio"])
        name = f"{optimization}@bs{batch_size}"
        spread = f"{effect.median():.3f}x [{effect.min():.3f}, {effect.max():.3f}]"
        print(f"{name:24} {spread:26} {in_run.std(ddof=1):>14.3f} {cross.std(ddof=1):>21.3f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == CHILD:
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))))
    else:
        main()
