"""Generic helpers for the processes optbench starts (Redis, RabbitMQ, workers, Flower): a free port, waiting
for one to come up, stopping one or its whole process group, and files only their owner may read."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from shared.errors import OptbenchError


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(check: Callable[[], object], timeout: float, what: str, process: subprocess.Popen) -> None:
    """Call `check` until it returns something true (an OptbenchError counts as not yet); OptbenchError if
    `process` exits first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise OptbenchError(f"{what} exited with status {process.returncode} while starting")
        try:
            if check():
                return
        except OptbenchError:
            pass
        time.sleep(0.2)
    raise OptbenchError(f"{what} did not come up within {timeout:g} s")


def stop_process(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stop_group(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM to the process group `process` leads (started with `start_new_session`), then SIGKILL to the
    group if `process` has not exited within `timeout` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def write_private(path: Path, text: str) -> None:
    """Write `text` into a file only its owner may read (created with mode 600 before anything is in it)."""
    path.touch(mode=0o600)
    path.write_text(text)
