"""Client benchmark at fleet scale: enqueue, `status` and `collect` of sweeps of 5,000 and 50,000 runs. Not a test.

A sweep of 50 runs is measured first: what `status` and `collect` cost whatever the size (starting Python, importing
pandas, scipy, celery, redis and rich, connecting, printing), the floor under the targets below.

For each size and broker (Redis; RabbitMQ with publisher confirms), with no worker online:
1. enqueue: `producer.sweep.create` (the producer's own path: validate the cells, save the manifest, send one
   message per run) of a sweep of `runs` runs (cells x 5 rounds of a small model); its rate in runs/s.
2. The queued messages are purged and every run gets a stored result, written as a worker stores it (Celery's
   SUCCESS meta holding the task contract's envelope around a cell row). The row is a real one, measured
   in-process at start-up (`worker.engine.run.run_cell`), its speed figures scaled per run so that the cells
   differ and some runs fail.
3. `python -m producer status` and `python -m results collect` on it, each a subprocess with torch unimportable
   (as on a client-only machine): wall time, and peak RSS from the child's rusage.

4. Footprint, for docs/scaling.md: Redis bytes per stored result and per manifest entry (`MEMORY USAGE`), broker
   bytes per queued message (Redis list), the collector's CPU seconds per run (rusage), and what one idle worker
   writes per minute (Redis `INFO commandstats` over a minute: its liveness beats and Celery's event heartbeats).

Targets (issue 22): status <= 1 s at 5,000 runs and <= 3 s at 50,000; collect <= 3 s and <= 20 s; enqueue
>= 3,000 runs/s on Redis and >= 2,000 runs/s on RabbitMQ. Results stay in Redis for both brokers, so status and
collect are measured once per size.

    python -m bench.bench_client [--sizes 50,5000,50000] [--brokers redis,rabbitmq] [--times 3]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from producer.sweep import SweepRequest, create
from shared import keys
from shared.celery_app import app, queue_lengths, use_services
from shared.connection import connect
from shared.contract import Envelope
from shared.services import private_rabbitmq, private_redis
from shared.spec import CellSpec
from tests.conftest import TINY_CELL_OPTIONS, service_env
from tests.system.test_client_without_torch import SITECUSTOMIZE

REPO = Path(__file__).resolve().parents[1]
OPTIMIZATIONS = ("baseline", "fp16", "bf16", "channels_last", "prune", "prune_structured", "dynamic_quant",
                 "torchscript", "compile", "aa_control")  # fmt: skip
ROUNDS = 5
FAILED_EVERY = 97  # every 97th run is stored as failed, as real sweeps have some
STORE_BATCH = 2_000  # results written per Redis pipeline
TARGET_SIZES = (5_000, 50_000)
TARGETS = {  # (runs, what) -> (limit, "<=" or ">=")
    (5_000, "status_s"): (1.0, "<="),
    (50_000, "status_s"): (3.0, "<="),
    (5_000, "collect_s"): (3.0, "<="),
    (50_000, "collect_s"): (20.0, "<="),
    ("redis", "enqueue_per_s"): (3_000.0, ">="),
    ("rabbitmq", "enqueue_per_s"): (2_000.0, ">="),
}


@dataclass(frozen=True)
class Timed:
    seconds: float
    peak_rss_mb: float
    cpu_seconds: float  # user + system


def request_for(runs: int) -> SweepRequest:
    cells = runs // ROUNDS
    batch_sizes = tuple(range(1, cells // len(OPTIMIZATIONS) + 1))
    return SweepRequest(OPTIMIZATIONS, batch_sizes, cell_options=TINY_CELL_OPTIONS, repeats=ROUNDS)


def measured_row() -> dict:
    """One real cell row: the tiny model's baseline, measured here."""
    from worker.engine.run import run_cell

    result = run_cell(CellSpec(optimization="baseline", batch_size=1, device="cpu", **TINY_CELL_OPTIONS))
    assert result.status == "ok", result.error
    return result.to_dict()


def store_results(client, backend, sweep, template: dict, seed: int = 0) -> None:
    """A stored result for every run of `sweep`, as a worker leaves it; the speed figures scaled per run."""
    rng = np.random.default_rng(seed)
    done = datetime.datetime.now(datetime.timezone.utc).isoformat()
    entries = list(sweep.runs.values())
    factors = rng.lognormal(0.0, 0.2, len(entries))
    with client.pipeline(transaction=False) as pipe:
        for index, (entry, factor) in enumerate(zip(entries, factors, strict=True)):
            row = {**template, **entry.spec, "status": "ok", "host": f"host{index % 16:02d}"}
            for name in ("throughput_sps", "throughput_sequential_sps"):
                row[name] = template[name] * factor
            for name in ("latency_ms_mean", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99"):
                row[name] = template[name] / factor
            if index % FAILED_EVERY == 0:
                row.update(status="failed", error_type="out_of_memory", error="CUDA out of memory (bench)")
                row.update({name: None for name in ("throughput_sps", "latency_ms_p50", "latency_ms_p99")})
            envelope = Envelope(sweep.id, entry.cell_id, entry.repeat, entry.attempts, f"optbench@host{index % 16:02d}",
                                row, tries=1)  # fmt: skip
            meta = {"status": "SUCCESS", "result": envelope.to_dict(), "traceback": None, "children": [],
                    "date_done": done, "task_id": entry.task_id}  # fmt: skip
            pipe.set(backend.get_key_for_task(entry.task_id), backend.encode(meta), ex=3600)
            if (index + 1) % STORE_BATCH == 0:
                pipe.execute()
        pipe.execute()


def purge() -> None:
    """Drop the messages nobody consumes."""
    with app.connection_for_write() as connection:
        for queue in (keys.CPU_QUEUE, keys.GPU_QUEUE):
            with contextlib.suppress(Exception):  # a queue that was never declared on RabbitMQ
                connection.default_channel.queue_purge(queue)


# Runs `python -m <argv>` in a child forked from this small interpreter and prints the child's rusage as JSON.
LAUNCHER = """
import json, os, sys, time
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-m", *sys.argv[1:]])
_, status, usage = os.wait4(pid, 0)
print(json.dumps({"seconds": time.perf_counter() - started, "code": os.waitstatus_to_exitcode(status),
                  "maxrss_kb": usage.ru_maxrss, "cpu_seconds": usage.ru_utime + usage.ru_stime}))
"""


def timed_cli(env: dict[str, str], *command: str) -> Timed:
    """Wall time, peak RSS and CPU time of `python -m <command>` as a child process.

    The child is forked by a small launcher, not by this benchmark: Linux keeps a process's peak RSS across
    exec, so a child forked from here would count this benchmark's own pages (torch is imported here)."""
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *command], env=env, capture_output=True, text=True,
                          cwd=REPO, timeout=600)  # fmt: skip
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    if measured["code"] != 0:
        raise RuntimeError(f"{' '.join(command)} exited {measured['code']}: {done.stderr[-2000:]}")
    return Timed(measured["seconds"], measured["maxrss_kb"] / 1024, measured["cpu_seconds"])


def memory_usage(client, keys_: list[bytes | str]) -> float:
    """Mean bytes Redis holds per key (exact: every element counted)."""
    return statistics.mean(client.memory_usage(key, samples=0) for key in keys_)


def queued_message_bytes(client) -> tuple[float, float]:
    """(mean serialized bytes of a queued message, Redis bytes per message of the queue list)."""
    length = client.llen(keys.CPU_QUEUE)
    sample = client.lrange(keys.CPU_QUEUE, 0, 199)
    return statistics.mean(len(m) for m in sample), client.memory_usage(keys.CPU_QUEUE, samples=0) / length


def idle_worker_writes(url: str, scratch: Path, seconds: float = 60.0) -> dict[str, float]:
    """Redis commands per minute that one idle worker (`python -m worker`, CPU only) causes, by command."""
    from tests.conftest import start_workers, stop_workers

    client = connect(url)
    worker = start_workers(app, url, scratch / "worker.log", "--host", "idle", CUDA_VISIBLE_DEVICES="")
    try:
        time.sleep(5)  # past start-up
        before = client.info("commandstats")
        time.sleep(seconds)
        after = client.info("commandstats")
    finally:
        stop_workers(worker)
    calls = {name: after[name]["calls"] - before.get(name, {}).get("calls", 0) for name in after}
    # The measurement's own INFO call is not the worker's.
    calls["cmdstat_info"] = calls.get("cmdstat_info", 0) - 1
    per_minute = {name.removeprefix("cmdstat_"): n * 60 / seconds for name, n in calls.items() if n > 0}
    return dict(sorted(per_minute.items(), key=lambda item: -item[1]))


def enqueue_rate(client, runs: int) -> tuple[float, object]:
    """Runs per second of `create`, checked: the broker holds one message per run afterwards."""
    started = time.perf_counter()
    sweep = create(app, client, request_for(runs), "cpu", ttl=3600)
    rate = len(sweep.runs) / (time.perf_counter() - started)
    queued = queue_lengths({keys.CPU_QUEUE})[keys.CPU_QUEUE]
    assert queued == len(sweep.runs), f"{queued} messages queued for {len(sweep.runs)} runs"
    return rate, sweep


def verdict(key: tuple, value: float) -> str:
    if key not in TARGETS:
        return ""
    limit, sense = TARGETS[key]
    met = value <= limit if sense == "<=" else value >= limit
    return f"(target {sense} {limit:,g}: {'met' if met else 'NOT MET'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="50,5000,50000", help="runs per sweep, comma-separated")
    parser.add_argument("--brokers", default="redis,rabbitmq")
    parser.add_argument("--times", type=int, default=3, help="wall times of status and collect per size (median)")
    parser.add_argument("--no-worker", action="store_true", help="skip the idle worker's minute of writes")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    footprint_runs = next((n for n in sizes if n >= TARGET_SIZES[0]), sizes[-1])  # a hash of 50 is packed smaller
    template = measured_row()
    lines = []
    footprint: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as stack:
        scratch = Path(folder)
        url = stack.enter_context(private_redis(scratch / "redis"))
        blocker = scratch / "no_torch"
        blocker.mkdir()
        (blocker / "sitecustomize.py").write_text(SITECUSTOMIZE)
        for broker_name in args.brokers.split(","):
            broker = url
            if broker_name == "rabbitmq":
                broker = stack.enter_context(private_rabbitmq(scratch / "rabbitmq", 1800))
            use_services(url, broker)
            client = connect(url)
            for runs in sizes:
                rate, sweep = enqueue_rate(client, runs)
                if broker_name == "redis" and runs == footprint_runs:
                    footprint["message_bytes"], footprint["queue_bytes_per_message"] = queued_message_bytes(client)
                purge()
                target = verdict((broker_name, "enqueue_per_s"), rate) if runs in TARGET_SIZES else "(no target)"
                lines.append(f"{broker_name:<9} enqueue {runs:>6,} runs: {rate:>7,.0f} runs/s {target}")
                print(lines[-1], flush=True)
                if broker_name != args.brokers.split(",")[0]:
                    client.delete(keys.sweep(sweep.id))
                    continue
                store_results(client, app.backend, sweep, template)
                if runs == footprint_runs:
                    tasks = [app.backend.get_key_for_task(e.task_id) for e in list(sweep.runs.values())[:500]]
                    footprint["result_bytes"] = memory_usage(client, tasks)
                    footprint["manifest_bytes_per_run"] = memory_usage(client, [keys.sweep(sweep.id)]) / runs
                env = service_env(url, broker, OPTBENCH_RESULTS_DIR=str(scratch / "results"))
                env["PYTHONPATH"] = os.pathsep.join([str(blocker), str(REPO)])
                for command, what in ((("producer", "status"), "status_s"), (("results", "collect"), "collect_s")):
                    timings = [timed_cli(env, *command, "--sweep", sweep.id) for _ in range(args.times)]
                    seconds = statistics.median(t.seconds for t in timings)
                    cpu = statistics.median(t.cpu_seconds for t in timings)
                    footprint[f"{what}_cpu_ms_per_run_at_{runs}"] = cpu / runs * 1e3
                    rss = max(t.peak_rss_mb for t in timings)
                    target = verdict((runs, what), seconds)
                    lines.append(f"{'':<9} {' '.join(command):<16} {runs:>6,} runs: {seconds:>6.2f} s "
                                 f"(median of {args.times}), peak RSS {rss:,.0f} MB {target}")  # fmt: skip
                    print(lines[-1], flush=True)
                client.delete(keys.sweep(sweep.id))
        use_services(url, url)  # the idle worker on a Redis broker: its event heartbeats are Redis commands too
        writes = idle_worker_writes(url, scratch) if not args.no_worker else {}
    print("\nsummary (no worker online; results in Redis; status and collect as torch-free subprocesses):")
    print("\n".join(lines))
    print("\nfootprint (docs/scaling.md):")
    for name, value in footprint.items():
        print(f"  {name}: {value:,.2f}")
    if writes:
        print("  one idle worker, Redis commands per minute: " + ", ".join(f"{k} {v:.0f}" for k, v in writes.items()))


if __name__ == "__main__":
    main()
