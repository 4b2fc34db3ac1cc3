"""`python -m worker`: one Celery worker per visible GPU, plus one CPU worker; stops them all on exit.

GPUs are listed through NVML, which (unlike torch.cuda) does not initialize CUDA. Each GPU worker
sees only its GPU (CUDA_VISIBLE_DEVICES=<its UUID>, CUDA_DEVICE_ORDER=PCI_BUS_ID), consumes the
`optbench.gpu` queue and its model's queue (e.g. `optbench.gpu.nvidia-h200`) one cell at a time and
is named `gpu<index>@<host>`; the CPU worker (`cpu@<host>`) consumes the `optbench.cpu` queue:
CPU-only cells such as dynamic_quant, and every cell of a CPU sweep.

A GPU in MIG mode is listed as its MIG instances: one worker per instance, `gpu<index>-mig<slot>`,
pinned by its `MIG-` UUID, on the queue of its profile (e.g. `optbench.gpu.nvidia-h200-mig-1g-18gb`).
On a host with GPUs each GPU worker gets its own CPU cores and the CPU worker the rest
(`worker/engine/cores.py`), passed to the worker's cells in OPTBENCH_CPU_CORES.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys

from shared import keys
from shared.config import GPU_ENV, HOST_ENV, load, redact
from shared.connection import check_broker, connect
from shared.errors import OptbenchError
from worker.engine.cores import CORES_ENV, format_cores, plan_cores
from worker.engine.gpus import Gpu, visible_gpus

log = logging.getLogger("optbench.worker")


def worker_commands(
    gpus: list[Gpu], host: str, cpu_worker: bool, loglevel: str, cores: list[int] | None = None
) -> list[tuple[list[str], dict]]:
    """The `celery worker` command line and extra environment of each worker to start.

    `cores`: the CPU cores to split between the workers (default: this process's affinity).
    """

    def command(name: str, queue: str) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", "shared.celery_app", "worker",
            "--pool", "threads", "--concurrency", "1", "--queues", queue,
            "--hostname", f"{name}@{host}", "--loglevel", loglevel, "--without-gossip",
        ]  # fmt: skip

    with_cpu_worker = cpu_worker or not gpus
    plan = plan_cores(sorted(os.sched_getaffinity(0)) if cores is None else cores, len(gpus), with_cpu_worker)

    def pinned(worker_cores: list[int] | None) -> dict[str, str]:
        return {CORES_ENV: format_cores(worker_cores) if worker_cores else ""}  # "": not pinned

    workers = [
        (
            command(gpu.worker_name, f"{keys.GPU_QUEUE},{keys.gpu_model_queue(gpu.name)}"),
            {
                "CUDA_VISIBLE_DEVICES": gpu.uuid,
                "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                GPU_ENV: f"index {gpu.index}, {gpu.name}, {gpu.uuid}",
                **pinned(worker_cores),
            },
        )
        for gpu, worker_cores in zip(gpus, plan.gpu, strict=True)
    ]
    if with_cpu_worker:
        workers.append((command("cpu", keys.CPU_QUEUE), {"CUDA_VISIBLE_DEVICES": "", **pinned(plan.cpu)}))
    return [(cmd, {**extra, HOST_ENV: host}) for cmd, extra in workers]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=socket.gethostname(), help="host part of the worker names")
    parser.add_argument("--no-cpu-worker", action="store_true", help="on a GPU host, start GPU workers only")
    parser.add_argument("--loglevel", default="INFO")
    parser.add_argument("--ping", action="store_true", help="exit 0 if this host's workers answer (healthcheck)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.ping:
        return 0 if ping_host(args.host) else 1

    settings = load()
    try:
        connect(settings.redis_url).close()
        check_broker(settings.broker_url)
    except OptbenchError as exc:
        print(f"python -m worker: error: {exc}", file=sys.stderr)
        return 2
    gpus = visible_gpus()
    log.info(
        "broker %s; results in %s; GPUs: %s",
        redact(settings.broker_url),
        redact(settings.redis_url),
        ", ".join(g.name for g in gpus) or "none",
    )
    commands = worker_commands(gpus, args.host, not args.no_cpu_worker, args.loglevel)
    for cmd, extra in commands:
        log.info("%s: CPU cores %s", cmd[cmd.index("--hostname") + 1], extra[CORES_ENV] or "all (not pinned)")
    children = [subprocess.Popen(cmd, env={**os.environ, **extra}) for cmd, extra in commands]

    def stop(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    codes = [child.wait() for child in children]
    return max(codes, default=0)


def ping_host(host: str) -> bool:
    from shared.celery_app import app

    replies = app.control.ping(timeout=10.0)
    return any(name.endswith(f"@{host}") for reply in replies for name in reply)


if __name__ == "__main__":
    sys.exit(main())
