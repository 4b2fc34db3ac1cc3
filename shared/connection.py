"""Connecting to Redis with errors a person can act on (host and port named, password never)."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import redis

from shared.config import host_and_port
from shared.errors import OptbenchError

log = logging.getLogger(__name__)
LOOPBACK = ("localhost", "127.0.0.1", "::1")


def connect(url: str, timeout: float = 5.0) -> redis.Redis:
    """A connected client, or OptbenchError saying why not."""
    where = host_and_port(url)
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        client.ping()
    except redis.AuthenticationError:
        raise OptbenchError(f"Redis at {where} refused the password in OPTBENCH_REDIS_URL") from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc):
            raise OptbenchError(f"Redis at {where} needs a password: put it in OPTBENCH_REDIS_URL") from None
        raise OptbenchError(f"Redis at {where} answered with an error: {exc}") from None
    except (redis.ConnectionError, redis.TimeoutError, ValueError) as exc:
        reason = str(exc).replace(url, "<url>").split(".")[0]
        raise OptbenchError(f"can't reach Redis at {where} ({reason}); set OPTBENCH_REDIS_URL") from None
    parts = urlsplit(url)
    if parts.password is None and parts.hostname not in LOOPBACK:
        log.warning("Redis at %s has no password: anyone who reaches it can run tasks on the workers", where)
    return client
