"""Fleet benchmark: the queue at scale, on each broker (Redis, RabbitMQ). Not a test.

1. Makespan: 16 worker processes (`python -m worker --host wNN`, one CPU worker each, as on 16 hosts)
   and a sweep of 400 fixed-duration cells (the test-only `sleep:<s>` cell, which goes through the
   whole path: queue, forkserver fork, pipe, result store, but sleeps instead of measuring).
   ideal makespan = ceil(cells / workers) x duration; efficiency = ideal / measured (first enqueue to
   last result stored); orchestration overhead per cell = (measured - ideal) x workers / cells.
2. A 5,000-cell sweep with no worker online: the enqueue rate of `create` (manifest + messages), and
   the wall time of `python -m producer status` and `python -m results collect` on it.

    python -m bench.bench_fleet [--workers 16] [--cells 400] [--duration 5] [--brokers redis,rabbitmq]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from celery import Celery

from producer.sweep import SweepRequest, create, plan
from shared import keys, manifest
from shared.celery_app import app, queue_lengths, use_services
from shared.connection import connect
from shared.services import private_rabbitmq, private_redis
from shared.state import FINISHED, sweep_rows
from tests.conftest import TINY_CELL_OPTIONS, service_env, start_workers, stop_workers

BIG_SWEEP_CELLS = 5_000
OPTIMIZATIONS = ("baseline", "channels_last", "prune", "bf16", "fp16")


def request_for(cells: int) -> SweepRequest:
    batch_sizes = tuple(range(1, cells // len(OPTIMIZATIONS) + 1))
    return SweepRequest(OPTIMIZATIONS, batch_sizes, cell_options=TINY_CELL_OPTIONS, repeats=1)


def stored_at(meta: dict) -> float:
    done = meta["date_done"]
    when = datetime.datetime.fromisoformat(done) if isinstance(done, str) else done
    return when.replace(tzinfo=when.tzinfo or datetime.timezone.utc).timestamp()


def makespan(app: Celery, client, workers: int, cells: int, duration: float, scratch: Path, url: str, broker: str):
    """Start the workers, run the fixed-duration sweep, stop the workers; (measured makespan, ok, failed)."""
    hosts = []
    try:
        for index in range(workers):
            log = scratch / f"w{index:02d}.log"
            hosts.append(start_workers(app, url, log, "--host", f"w{index:02d}", broker_url=broker))
        time.sleep(10)  # every forkserver has imported torch before the clock starts
        request = request_for(cells)
        faults = {f"{cell.cell_id}#1": f"sleep:{duration:g}" for cell in plan(request, "cpu")}
        started = time.time()
        sweep = create(app, client, request, "cpu", ttl=3600, faults=faults)
        while True:
            rows = sweep_rows(app.backend, manifest.load(client, sweep.id))
            if all(row["status"] in FINISHED for row in rows):
                break
            time.sleep(0.5)
        last = max(stored_at(app.backend.get_task_meta(run.task_id)) for run in sweep.runs.values())
        statuses = [row["status"] for row in rows]
        return last - started, statuses.count("ok"), len(statuses) - statuses.count("ok")
    finally:
        for process in hosts:
            stop_workers(process)


def big_sweep(app: Celery, client, url: str, broker: str, scratch: Path) -> dict[str, float]:
    """Enqueue a 5,000-cell sweep with no worker online; time `create`, `status` and `collect`; purge it."""
    started = time.perf_counter()
    sweep = create(app, client, request_for(BIG_SWEEP_CELLS), "cpu", ttl=3600)
    enqueue = time.perf_counter() - started
    waiting = queue_lengths({keys.CPU_QUEUE})[keys.CPU_QUEUE]
    env = service_env(url, broker, OPTBENCH_RESULTS_DIR=str(scratch / "results"))
    timings = {"enqueue_s": enqueue, "cells_per_s": len(sweep.runs) / enqueue, "messages_waiting": waiting}
    for label, command in (("status_s", ["producer", "status"]), ("collect_s", ["results", "collect"])):
        began = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", *command, "--sweep", sweep.id], env=env, capture_output=True)
        timings[label] = time.perf_counter() - began
        assert done.returncode == 0, done.stderr.decode()[-2000:]
    with app.connection_for_write() as connection:
        connection.default_channel.queue_purge(keys.CPU_QUEUE)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--cells", type=int, default=400)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds each fixed-duration cell sleeps")
    parser.add_argument("--brokers", default="redis,rabbitmq")
    args = parser.parse_args()
    ideal = math.ceil(args.cells / args.workers) * args.duration
    lines = []
    for name in args.brokers.split(","):
        with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as stack:
            scratch = Path(folder)
            url = stack.enter_context(private_redis(scratch / "redis"))
            broker = stack.enter_context(private_rabbitmq(scratch / "rabbitmq", 1800)) if name == "rabbitmq" else url
            use_services(url, broker)  # the producer's own app and settings
            client = connect(url)
            measured, ok, failed = makespan(app, client, args.workers, args.cells, args.duration, scratch, url, broker)
            big = big_sweep(app, client, url, broker, scratch)
        lines.append(
            f"{name:<9} {args.workers} workers, {args.cells} cells of {args.duration:g} s: {ok} ok, {failed} not ok; "
            f"makespan {measured:.1f} s vs ideal {ideal:.0f} s = efficiency {ideal / measured:.1%}; "
            f"overhead {(measured - ideal) * args.workers / args.cells:.3f} s per cell | "
            f"{BIG_SWEEP_CELLS:,} cells: enqueue {big['enqueue_s']:.2f} s ({big['cells_per_s']:,.0f} cells/s, "
            f"{big['messages_waiting']:,} messages waiting), status {big['status_s']:.2f} s, "
            f"collect {big['collect_s']:.2f} s"
        )
        print(lines[-1], flush=True)


if __name__ == "__main__":
    main()
