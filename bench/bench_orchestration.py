"""Benchmark: what the queue adds to a cell, from enqueue to a stored result.

Starts a private redis-server and `python -m worker` (one CPU worker), then sends tiny cells one at a
time (each waits for the previous, so no queueing time is counted) and reports per cell:
- overhead vs timed work: enqueue -> stored result, minus the cell's prepare + warm-up + measure;
  this still contains building the model, the fp32 probe, size/FLOPs/fidelity (the cell's own work);
- overhead vs the whole cell: enqueue -> stored result, minus the cell's started_at -> finished_at,
  i.e. the queue, the fork from the forkserver, the pipe and the result write alone.
Not a test: figures depend on the machine. Target: overhead at most 0.5 s per cell.

    python bench/bench_orchestration.py [--cells 10]
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path

import numpy as np

from producer.sweep import SweepRequest, create
from shared.connection import connect
from shared.services import local_workers, private_redis
from shared.spec import CellSpec

CELL = CellSpec(
    model="mobilenet_v3_small",
    image_size=32,
    batch_size=1,
    device="cpu",
    warmup_iters=1,
    warmup_seconds=0.0,
    min_iters=3,
    min_seconds=0.0,
)


def seconds(iso: str) -> float:
    return datetime.datetime.fromisoformat(iso).replace(tzinfo=datetime.timezone.utc).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch, private_redis(Path(scratch) / "redis") as url:
        from shared.celery_app import app, use_services

        use_services(url)
        with local_workers(app, url, Path(scratch) / "worker.log"):
            vs_timed, vs_cell = [], []
            client = connect(url)
            options = {k: v for k, v in CELL.to_dict().items() if k not in ("optimization", "batch_size", "device")}
            request = SweepRequest(("baseline",), (CELL.batch_size,), cell_options=options, repeats=1)
            for index in range(args.cells + 1):  # the first cell warms the forkserver's imports: dropped
                sent = time.time()
                sweep = create(app, client, request, "cpu", ttl=3600)  # a one-run sweep: manifest, then enqueue
                [run] = sweep.runs.values()
                task = app.AsyncResult(run.task_id)
                result = task.get(timeout=300)["result"]
                assert result["status"] == "ok", result
                stored = app.backend.get_task_meta(task.id)["date_done"]
                end_to_end = seconds(stored) - sent if isinstance(stored, str) else stored.timestamp() - sent
                timed = result["prepare_seconds"] + result["warmup_seconds"] + result["measure_seconds"]
                whole = seconds(result["finished_at"]) - seconds(result["started_at"])
                if index:
                    vs_timed.append(end_to_end - timed)
                    vs_cell.append(end_to_end - whole)
    for label, values in (("vs timed work", vs_timed), ("vs whole cell", vs_cell)):
        p50, p90 = np.percentile(values, [50, 90])
        print(
            f"overhead {label:14}: p50 {p50:.3f} s, p90 {p90:.3f} s, max {max(values):.3f} s over {len(values)} cells"
        )
    print(f"cell: {CELL.model} {CELL.image_size}px bs{CELL.batch_size} on the CPU worker; target <= 0.5 s")


if __name__ == "__main__":
    main()
