"""Client benchmark: the producer's start-up, `status` and enqueue rate, before the client/worker split and after.

The code before the split (commit 215f276) is checked out into a temporary git worktree and runs with
this venv; both trees talk to one private Redis with no workers, so nothing consumes what is enqueued
(the queued messages are deleted after each measurement). Not a test.

    python -m bench.bench_client [--times 5] [--enqueue-times 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from shared.connection import connect
from shared.processes import free_port
from shared.services import private_redis
from tests.system.test_client_without_torch import SITECUSTOMIZE

REPO = Path(__file__).resolve().parents[1]
BEFORE_SPLIT = "215f276"
OPTIMIZATIONS = (
    "baseline",
    "fp16",
    "bf16",
    "channels_last",
    "prune",
    "prune_structured",
    "dynamic_quant",
    "torchscript",
    "compile",
    "fp16+channels_last",
)
CELL_OPTIONS = {"model": "mobilenet_v3_small", "image_size": 32}
STATUS_CELLS, ENQUEUE_CELLS = 1_000, 5_000

# Runs in a tree's own interpreter: create one sweep of `cells` cpu cells, time `create` alone, print JSON.
CREATE_SWEEP = """
import importlib, json, sys, time
from producer.sweep import SweepRequest, create
from shared.connection import connect

app_module, url, cells, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
optimizations, cell_options = json.loads(sys.argv[5]), json.loads(sys.argv[6])
celery = importlib.import_module(app_module)
(getattr(celery, "use_services", None) or celery.use_redis)(url)  # renamed after the split
client = connect(url)
extra = {"repeats": repeats} if repeats else {}  # the code before the split has one run per cell
batch_sizes = tuple(range(1, cells // len(optimizations) + 1))
request = SweepRequest(tuple(optimizations), batch_sizes, "cpu", None, None, cell_options, **extra)
started = time.perf_counter()
sweep = create(celery.app, client, request, "cpu", 3600)
seconds = time.perf_counter() - started
queues = ("cpu", "gpu", "optbench.cpu", "optbench.gpu")  # queue names before and after they were prefixed
print(json.dumps({"id": sweep.id, "messages": sum(client.llen(q) for q in queues), "seconds": seconds}))
"""


@dataclass(frozen=True)
class Tree:
    """A checkout of the code and how to run its client."""

    label: str
    root: Path
    app_module: str  # where its Celery app lives
    repeats: int  # runs per cell passed to SweepRequest; 0: the API has no repeats
    blocker: Path | None = None  # a folder whose sitecustomize makes torch unimportable
    enqueue: bool = True  # time `create` of a 5,000-cell sweep

    def env(self, url: str) -> dict[str, str]:
        path = [str(self.blocker)] if self.blocker else []
        return {**os.environ, "OPTBENCH_REDIS_URL": url, "PYTHONPATH": os.pathsep.join([*path, str(self.root)])}

    def run(self, url: str, *args: str) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [sys.executable, *args], cwd=self.root, env=self.env(url), capture_output=True, text=True, timeout=600
        )
        if done.returncode != 0:
            raise RuntimeError(f"{self.label}: {' '.join(args[:4])} exited {done.returncode}: {done.stderr[-2000:]}")
        return done


@dataclass
class Row:
    tree: Tree
    help_s: list[float]
    status_s: list[float]
    enqueue: list[dict] = field(default_factory=list)  # per try: {"id", "cells", "messages", "seconds"}


@contextlib.contextmanager
def worktree(commit: str) -> Iterator[Path]:
    """The repository at `commit` in a temporary detached worktree, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="optbench-before-split-") as scratch:
        path = Path(scratch) / "tree"
        git = ["git", "-C", str(REPO), "worktree"]
        subprocess.run([*git, "add", "--detach", str(path), commit], check=True, capture_output=True)
        try:
            yield path
        finally:
            subprocess.run([*git, "remove", "--force", str(path)], check=True, capture_output=True)


def drop_queued(url: str) -> None:
    """Delete the messages nobody consumes (and their priority sub-lists, if any)."""
    client = connect(url)
    try:
        patterns = ("cpu*", "gpu*", "optbench.cpu*", "optbench.gpu*")
        keys = [key for pattern in patterns for key in client.scan_iter(match=pattern)]
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def create_sweep(tree: Tree, url: str, cells: int) -> dict:
    args = [tree.app_module, url, str(cells), str(tree.repeats), json.dumps(OPTIMIZATIONS), json.dumps(CELL_OPTIONS)]
    result = json.loads(tree.run(url, "-c", CREATE_SWEEP, *args).stdout.strip().splitlines()[-1])
    drop_queued(url)
    return {**result, "cells": cells}


def wall(tree: Tree, url: str, *args: str) -> float:
    started = time.perf_counter()
    tree.run(url, "-m", "producer", *args)
    return time.perf_counter() - started


def measure(trees: list[Tree], url: str, times: int, enqueue_times: int) -> list[Row]:
    """Interleaved across trees, so that a noisy neighbour lands on each alike."""
    sweeps = {tree.label: create_sweep(tree, url, STATUS_CELLS)["id"] for tree in trees}
    rows = {tree.label: Row(tree, [], []) for tree in trees}
    for _ in range(times):
        for tree in trees:
            rows[tree.label].help_s.append(wall(tree, url, "status", "--help"))
            rows[tree.label].status_s.append(wall(tree, url, "status", "--sweep", sweeps[tree.label]))
    for _ in range(enqueue_times):
        for tree in (tree for tree in trees if tree.enqueue):
            rows[tree.label].enqueue.append(create_sweep(tree, url, ENQUEUE_CELLS))
    return list(rows.values())


def print_table(rows: list[Row], times: int, enqueue_times: int) -> None:
    header = (
        f"{'code':<38} {'status --help':>14} {'status, 1,000 cells':>20} "
        f"{'enqueue 5,000 cells':>20} {'cells/s':>9} {'messages/s':>11}"
    )
    print(
        f"median of {times} wall times (enqueue: of {enqueue_times}, `create` alone); "
        "one private Redis, no workers; queued messages deleted after each"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        help_s, status_s = statistics.median(row.help_s), statistics.median(row.status_s)
        if row.enqueue:
            seconds, e = statistics.median(e["seconds"] for e in row.enqueue), row.enqueue[0]
            enqueue = f"{seconds:>18.2f} s {e['cells'] / seconds:>9,.0f} {e['messages'] / seconds:>11,.0f}"
        else:
            enqueue = f"{'-':>20} {'-':>9} {'-':>11}"
        print(f"{row.tree.label:<38} {help_s:>12.2f} s {status_s:>18.2f} s {enqueue}")
    print(
        "note: after the split, `status` of a sweep with queued runs asks the workers which queues they serve "
        "(up to 1 s with none online)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--times", type=int, default=5, help="wall times per command (median)")
    parser.add_argument("--enqueue-times", type=int, default=3, help="5,000-cell sweeps per tree (median)")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as scratch,
        worktree(BEFORE_SPLIT) as before,
        private_redis(Path(scratch) / "redis", port=free_port()) as url,
    ):
        blocker = Path(scratch) / "no_torch"
        blocker.mkdir()
        (blocker / "sitecustomize.py").write_text(SITECUSTOMIZE)
        trees = [
            Tree(f"before split ({BEFORE_SPLIT}), 1 run/cell", before, "worker.app", 0),
            Tree("after split, repeats=1", REPO, "shared.celery_app", 1),
            Tree("after split, repeats=1, torch blocked", REPO, "shared.celery_app", 1, blocker, enqueue=False),
            Tree("after split, repeats=3 (default)", REPO, "shared.celery_app", 3),
        ]
        rows = measure(trees, url, args.times, args.enqueue_times)
    print_table(rows, args.times, args.enqueue_times)


if __name__ == "__main__":
    main()
