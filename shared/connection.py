"""Connecting to Redis and the broker with errors a person can act on (host and port named, password never)."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import redis

from shared.config import broker_kind, host_and_port
from shared.errors import OptbenchError

log = logging.getLogger(__name__)
LOOPBACK = ("localhost", "127.0.0.1", "::1")


def warn_if_exposed(url: str) -> bool:
    """Warn (and say so) when a Redis off this machine is used without a password."""
    parts = urlsplit(url)
    exposed = parts.password is None and parts.hostname not in LOOPBACK
    if exposed:
        log.warning(
            "Redis at %s has no password: anyone who reaches it can run tasks on the workers", host_and_port(url)
        )
    return exposed


def connect(url: str, timeout: float = 5.0) -> redis.Redis:
    """A connected client, or OptbenchError saying why not."""
    where = host_and_port(url)
    warn_if_exposed(url)
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        client.ping()
    except (redis.AuthenticationError, redis.ResponseError) as exc:
        if urlsplit(url).password is None and "auth" in str(exc).lower():
            raise OptbenchError(f"Redis at {where} needs a password: put it in OPTBENCH_REDIS_URL") from None
        if isinstance(exc, redis.AuthenticationError):
            raise OptbenchError(f"Redis at {where} refused the password in OPTBENCH_REDIS_URL") from None
        raise OptbenchError(f"Redis at {where} answered with an error: {exc}") from None
    except (redis.ConnectionError, redis.TimeoutError, ValueError) as exc:
        reason = str(exc).replace(url, "<url>").split(".")[0]
        raise OptbenchError(f"can't reach Redis at {where} ({reason}); set OPTBENCH_REDIS_URL") from None
    return client


def check_broker(url: str, timeout: float = 5.0) -> None:
    """Make sure the broker answers (and takes our credentials), or raise OptbenchError saying why not."""
    if broker_kind(url) == "redis":
        connect(url, timeout).close()
        return
    import amqp.exceptions
    import kombu

    where = host_and_port(url)
    parts = urlsplit(url)
    if parts.password is None and parts.hostname not in LOOPBACK:
        log.warning("RabbitMQ at %s: no password in OPTBENCH_BROKER_URL", where)
    connection = kombu.Connection(url, connect_timeout=timeout)
    try:
        connection.ensure_connection(max_retries=1, timeout=timeout)
    except amqp.exceptions.AccessRefused:
        raise OptbenchError(f"RabbitMQ at {where} refused the user or password in OPTBENCH_BROKER_URL") from None
    except amqp.exceptions.NotAllowed:
        raise OptbenchError(f"RabbitMQ at {where} refused access to the virtual host in OPTBENCH_BROKER_URL") from None
    except (OSError, kombu.exceptions.OperationalError) as exc:
        reason = " ".join(str(exc).replace(url, "<url>").split())[:120]
        raise OptbenchError(f"can't reach RabbitMQ at {where} ({reason}); set OPTBENCH_BROKER_URL") from None
    finally:
        connection.release()
