"""Where and when, without torch: UTC timestamps and the host name a result records."""

from __future__ import annotations

import datetime
import socket

from shared import config


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def host_name() -> str:
    """The host a result says it ran on: OPTBENCH_HOST (set by `python -m worker --host`), else the hostname."""
    return config.worker_host() or socket.gethostname()
