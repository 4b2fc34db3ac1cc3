"""Soak benchmark: a sweep of >= 200 tiny cells over 2 worker groups, one killed (SIGKILL) and
restarted every few seconds. Reports cells completed, failed, lost, duplicate rows, redelivered
cells and wall time. Target: 0 lost, 0 duplicate rows. Not a test.

    python -m tests.bench.bench_soak [--cells 200] [--kill-every 6]
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path

import pandas as pd
from celery import Celery

from producer.sweep import SweepRequest, create
from results.collect import collect
from shared import manifest
from shared.connection import connect
from shared.services import private_redis
from shared.state import FINISHED, sweep_rows
from tests.conftest import TINY_CELL_OPTIONS, start_workers, stop_workers
from tests.test_reliability import FAST  # quick redelivery, as the reliability tests use


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=200)
    parser.add_argument("--kill-every", type=float, default=6.0, help="seconds between two kills")
    parser.add_argument("--limit", type=float, default=900.0, help="give up after this many seconds")
    args = parser.parse_args()
    batch_sizes = tuple(range(1, args.cells // 2 + 1))
    request = SweepRequest(
        ("baseline", "channels_last"), batch_sizes, cell_options={**TINY_CELL_OPTIONS, "min_iters": 1}, repeats=1
    )
    with tempfile.TemporaryDirectory() as scratch, private_redis(Path(scratch) / "redis") as url:
        app, client = Celery(broker=url, backend=url), connect(url)
        hosts = {h: start_workers(app, url, Path(scratch) / f"{h}.log", "--host", h, **FAST) for h in "ab"}
        started = time.monotonic()
        sweep = create(app, client, request, "cpu", ttl=3600)
        kills, victim, next_kill = 0, "a", started + args.kill_every
        try:
            while time.monotonic() - started < args.limit:
                rows = sweep_rows(app.backend, manifest.load(client, sweep.id))
                if all(row["status"] in FINISHED for row in rows):
                    break
                if time.monotonic() >= next_kill:
                    os.killpg(hosts[victim].pid, signal.SIGKILL)
                    hosts[victim].wait()
                    kills += 1
                    hosts[victim] = start_workers(app, url, Path(scratch) / f"{victim}.log", "--host", victim, **FAST)
                    victim = "b" if victim == "a" else "a"
                    next_kill = time.monotonic() + args.kill_every
                time.sleep(0.5)
            wall = time.monotonic() - started
            frame = pd.read_csv(collect(app.backend, manifest.load(client, sweep.id), Path(scratch), False).runs)
        finally:
            for process in hosts.values():
                stop_workers(process)
    statuses = Counter(frame["status"])
    duplicates = int(frame["run_id"].duplicated().sum())
    lost = len(sweep.runs) - sum(statuses[s] for s in FINISHED)
    redelivered = int((frame["tries"].fillna(1) > 1).sum())
    print(
        f"{len(sweep.runs)} cells (one run each), {kills} worker kills (SIGKILL to a whole group, then restart): "
        f"{statuses['ok']} ok, {statuses['failed']} failed, {lost} lost, {duplicates} duplicate rows, "
        f"{redelivered} redelivered after a kill, wall {wall:.0f} s"
    )
    for _, row in frame[frame["status"] == "failed"].iterrows():
        print(f"  failed {row['run_id']}: {row['error_type']}: {row['error']}")


if __name__ == "__main__":
    main()
