"""`python -m producer flower`: Flower against optbench's broker and Redis, with basic auth.

Credentials come from OPTBENCH_FLOWER_USER and OPTBENCH_FLOWER_PASSWORD (or Flower's own
FLOWER_BASIC_AUTH=user:password) and reach Flower through its environment, never its command line.
Without credentials Flower only listens on loopback, and its API answers 401 to everyone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from shared import config
from shared.connection import LOOPBACK
from shared.errors import OptbenchError
from shared.processes import stop_process


def basic_auth() -> str | None:
    user, password = config.flower_login()
    if user and password:
        return f"{user}:{password}"
    if user or password:
        raise OptbenchError("set both OPTBENCH_FLOWER_USER and OPTBENCH_FLOWER_PASSWORD, or neither")
    return os.environ.get("FLOWER_BASIC_AUTH") or None


def flower_command(address: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "shared.celery_app",
        "flower",
        f"--address={address}",
        f"--port={port}",
    ]


def run(redis_url: str, broker_url: str, address: str, port: int) -> int:
    """Run Flower in the foreground until it exits (Ctrl-C)."""
    auth = basic_auth()
    if auth is None and address not in LOOPBACK:
        raise OptbenchError(
            f"refusing to serve Flower on {address} without credentials: "
            "set OPTBENCH_FLOWER_USER and OPTBENCH_FLOWER_PASSWORD, or use --address 127.0.0.1"
        )
    env = config.env_with_services(redis_url, broker_url)
    if auth:
        env["FLOWER_BASIC_AUTH"] = auth
    process = subprocess.Popen(flower_command(address, port), env=env)

    def forward(signum: int, _frame: object) -> None:
        if process.poll() is None:
            process.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        return process.wait()
    finally:  # never leave Flower running behind us
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if process.poll() is None:
            stop_process(process, timeout=10)
