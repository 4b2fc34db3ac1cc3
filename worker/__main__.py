"""`python -m worker`: one Celery worker per visible GPU, plus one CPU worker; stops them all on exit.

GPUs are listed through NVML, which (unlike torch.cuda) does not initialize CUDA. Each GPU worker
sees only its GPU (CUDA_VISIBLE_DEVICES=<its UUID>, CUDA_DEVICE_ORDER=PCI_BUS_ID), consumes the
`gpu` queue and its model's queue (e.g. `gpu.nvidia-h200`) one cell at a time and is named
`gpu<index>@<host>`; the CPU worker (`cpu@<host>`)
consumes the `cpu` queue: CPU-only cells such as dynamic_quant, and every cell of a CPU sweep.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass

from shared import keys
from shared.config import load, redact
from shared.connection import connect
from shared.errors import OptbenchError

log = logging.getLogger("optbench.worker")


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str


def visible_gpus() -> list[Gpu]:
    """GPUs NVML sees, restricted to CUDA_VISIBLE_DEVICES (indices or UUIDs) when it is set."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # no driver, no NVML: a CPU-only host
        log.info("no NVIDIA GPU found (%s)", exc)
        return []
    gpus = []
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        uuid, name = pynvml.nvmlDeviceGetUUID(handle), pynvml.nvmlDeviceGetName(handle)
        gpus.append(Gpu(index, _text(uuid), _text(name)))
    wanted = os.environ.get("CUDA_VISIBLE_DEVICES")
    if wanted is not None:
        allowed = {item.strip() for item in wanted.split(",") if item.strip()}
        gpus = [gpu for gpu in gpus if str(gpu.index) in allowed or gpu.uuid in allowed]
    return gpus


def worker_commands(gpus: list[Gpu], host: str, cpu_worker: bool, loglevel: str) -> list[tuple[list[str], dict]]:
    """The `celery worker` command line and extra environment of each worker to start."""

    def command(name: str, queue: str) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", "worker.app", "worker",
            "--pool", "threads", "--concurrency", "1", "--queues", queue,
            "--hostname", f"{name}@{host}", "--loglevel", loglevel, "--without-gossip",
        ]  # fmt: skip

    workers = [
        (
            command(f"gpu{gpu.index}", f"{keys.GPU_QUEUE},{keys.gpu_model_queue(gpu.name)}"),
            {
                "CUDA_VISIBLE_DEVICES": gpu.uuid,
                "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                "OPTBENCH_GPU": f"index {gpu.index}, {gpu.name}, {gpu.uuid}",
            },
        )
        for gpu in gpus
    ]
    if cpu_worker or not gpus:
        workers.append((command("cpu", keys.CPU_QUEUE), {"CUDA_VISIBLE_DEVICES": ""}))
    return [(cmd, {**extra, "OPTBENCH_HOST": host}) for cmd, extra in workers]


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

    url = load().redis_url
    try:
        connect(url).close()
    except OptbenchError as exc:
        print(f"python -m worker: error: {exc}", file=sys.stderr)
        return 2
    gpus = visible_gpus()
    log.info("broker %s; GPUs: %s", redact(url), ", ".join(g.name for g in gpus) or "none")
    children = [
        subprocess.Popen(cmd, env={**os.environ, **extra})
        for cmd, extra in worker_commands(gpus, args.host, not args.no_cpu_worker, args.loglevel)
    ]

    def stop(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    codes = [child.wait() for child in children]
    return max(codes, default=0)


def ping_host(host: str) -> bool:
    from worker.app import app

    replies = app.control.ping(timeout=10.0)
    return any(name.endswith(f"@{host}") for reply in replies for name in reply)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


if __name__ == "__main__":
    sys.exit(main())
