"""Soak benchmark: a sweep of >= 200 tiny cells over 2 worker groups, one killed (SIGKILL to its whole
process group) and restarted every few seconds. Reports cells completed, failed, lost, duplicate rows,
redelivered cells, wall time, and how long each killed run took to run again (on the other group, or
on the restarted one). Target: 0 lost, 0 duplicate rows. Not a test.

    python -m bench.bench_soak [--cells 200] [--kill-every 6] [--broker redis|rabbitmq]

On Redis the workers use the reliability tests' test-sized redelivery settings (visibility timeout
30 s: production's 70 min would take hours); on RabbitMQ they use production settings (no timeout
involved: RabbitMQ requeues a killed worker's cell when its connection closes).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from producer.sweep import SweepRequest, create
from results.collect import collect
from shared import manifest
from shared.celery_app import app, use_services
from shared.connection import connect
from shared.services import private_rabbitmq, private_redis
from shared.state import FINISHED, sweep_rows
from tests.conftest import TINY_CELL_OPTIONS, start_workers, stop_workers
from tests.system.test_reliability import FAST  # quick redelivery, as the reliability tests use


def running_again(meta: dict, victim: str) -> bool:
    """The run has been taken up again (or finished) by a worker other than the killed one."""
    worker = meta.get("worker") or ""
    return meta["status"] in ("STARTED", "PROGRESS", "SUCCESS") and not worker.endswith("@" + victim)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=200)
    parser.add_argument("--kill-every", type=float, default=6.0, help="seconds between two kills")
    parser.add_argument("--limit", type=float, default=900.0, help="give up after this many seconds")
    parser.add_argument("--broker", choices=("redis", "rabbitmq"), default="redis")
    args = parser.parse_args()
    batch_sizes = tuple(range(1, args.cells // 2 + 1))
    request = SweepRequest(
        ("baseline", "channels_last"), batch_sizes, cell_options={**TINY_CELL_OPTIONS, "min_iters": 1}, repeats=1
    )
    settings = FAST if args.broker == "redis" else {}
    recovery: list[float] = []  # seconds from a kill to its run running again
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as stack:
        scratch = Path(folder)
        url = stack.enter_context(private_redis(scratch / "redis"))
        broker = url if args.broker == "redis" else stack.enter_context(private_rabbitmq(scratch / "rabbitmq", 1800))
        use_services(url, broker)
        client = connect(url)

        def start(host: str):
            return start_workers(app, url, scratch / f"{host}.log", "--host", host, broker_url=broker, **settings)

        hosts = {h: start(h) for h in "ab"}
        started = time.monotonic()
        sweep = create(app, client, request, "cpu", ttl=3600)
        kills, victim, next_kill = 0, "a", started + args.kill_every
        waiting: dict[str, tuple[float, str, str]] = {}  # task id -> (killed at, victim, run id)
        try:
            while time.monotonic() - started < args.limit:
                rows = sweep_rows(app.backend, manifest.load(client, sweep.id))
                for task_id, (killed_at, host, _) in list(waiting.items()):
                    if running_again(app.backend.get_task_meta(task_id), host):
                        recovery.append(time.monotonic() - killed_at)
                        del waiting[task_id]
                if all(row["status"] in FINISHED for row in rows):
                    break
                if time.monotonic() >= next_kill:
                    on_victim = [r for r in rows if r["status"] == "running" and r["worker"] == f"cpu@{victim}"]
                    os.killpg(hosts[victim].pid, signal.SIGKILL)
                    killed_at = time.monotonic()
                    hosts[victim].wait()
                    for row in on_victim:
                        waiting[sweep.runs[row["run_id"]].task_id] = (killed_at, victim, row["run_id"])
                    kills += 1
                    hosts[victim] = start(victim)
                    victim = "b" if victim == "a" else "a"
                    next_kill = time.monotonic() + args.kill_every
                time.sleep(0.2)
            wall = time.monotonic() - started
            frame = pd.read_csv(collect(app.backend, manifest.load(client, sweep.id), scratch, False).runs)
        finally:
            for process in hosts.values():
                stop_workers(process)
    statuses = Counter(frame["status"])
    duplicates = int(frame["run_id"].duplicated().sum())
    unfinished = Counter(row["status"] for row in rows if row["status"] not in FINISHED)
    lost = sum(unfinished.values())
    if wall >= args.limit:  # still queued or running when the limit stopped the benchmark: not lost
        lost_text = f"{lost} unfinished when the {args.limit:g} s limit stopped it ({dict(unfinished)})"
    else:
        lost_text = f"{lost} lost"
    redelivered = int((frame["tries"].fillna(1) > 1).sum())
    where = "test-sized redelivery settings" if settings else "production settings"
    print(
        f"{args.broker} ({where}): {len(sweep.runs)} cells (one run each), {kills} worker kills (SIGKILL to a "
        f"whole group, then restart): {statuses['ok']} ok, {statuses['failed']} failed, {lost_text}, "
        f"{duplicates} duplicate rows, {redelivered} redelivered after a kill, wall {wall:.0f} s"
    )
    if recovery:
        p50, p95 = np.percentile(recovery, [50, 95])
        print(
            f"  kill -> running again: p50 {p50:.1f} s, p95 {p95:.1f} s, max {max(recovery):.1f} s "
            f"over {len(recovery)} runs killed mid-cell ({len(waiting)} never seen running again)"
        )
    for _, row in frame[frame["status"] == "failed"].iterrows():
        print(f"  failed {row['run_id']}: {row['error_type']}: {row['error']}")


if __name__ == "__main__":
    main()
