"""The Celery app, which the producer, the collector, Flower and the worker all use.

The broker (where a cell's message waits) is OPTBENCH_BROKER_URL: the Redis (default) or RabbitMQ
(`amqp://`, what a fleet should use: it requeues a lost worker's cell within seconds, see README).
Results, the manifest and delivery counters always live in the Redis (OPTBENCH_REDIS_URL).
JSON only, one unacknowledged cell per worker. Importing it needs no torch: the task itself
(`worker/tasks.py`) is imported only by workers (`include`). Start workers with `python -m worker`
(one per GPU); `celery -A shared.celery_app worker` is what it runs.
"""

from __future__ import annotations

import os

from celery import Celery
from celery.app.amqp import AMQP

from shared import config, keys

settings = config.load()


class ShadowNamedEvents(AMQP):
    """Task messages whose `task-sent` event carries the task's shadow name too (`optbench.run_cell <run>
    [<sweep>]`), as the worker's `task-received` event does: Flower keeps the name of whichever event
    reaches it last, so with Celery's default (the plain task name in `task-sent`) a run's name in
    Flower depended on the order the two events arrived in."""

    def as_task_v2(self, *args, **kwargs):
        message = super().as_task_v2(*args, **kwargs)
        shadow = message.headers.get("shadow")
        if shadow and message.sent_event is not None:
            message.sent_event["name"] = shadow
        return message


app = Celery(
    "optbench",
    broker=settings.broker_url,
    backend=settings.redis_url,
    include=["worker.tasks"],
    amqp=ShadowNamedEvents,
)
app.conf.update(
    # Pickle can run code on whoever reads it: only JSON crosses the broker and the backend.
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    # A cell is acknowledged when it is done, and a worker holds one cell at a time.
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    # A cell whose worker process is lost is not re-queued by Celery itself: the cell's own process
    # crashing is caught by the worker and stored as a failed result (see worker/isolation.py).
    task_reject_on_worker_lost=False,
    worker_cancel_long_running_tasks_on_connection_loss=True,
    # States and events for `producer status` and Flower.
    task_track_started=True,
    result_extended=True,
    worker_send_task_events=True,
    task_send_sent_event=True,
    result_expires=settings.result_expires,
    result_backend_transport_options={"visibility_timeout": settings.visibility_timeout},
    # Survive a Redis restart: reconnect to the broker, and retry storing a result until it lands.
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,
    result_backend_always_retry=True,
    result_backend_max_retries=120,
    task_default_queue=keys.CPU_QUEUE,
    worker_hijack_root_logger=False,
)


def broker_settings(kind: str) -> dict:
    """What each broker needs so that a lost worker's cell runs again, and a long cell runs once."""
    if kind == "rabbitmq":
        return {
            # RabbitMQ requeues a consumer's unacknowledged cell the moment its connection closes (worker
            # killed, host rebooted). A host that hangs or is cut off keeps its TCP connection open: AMQP
            # heartbeats find it, and RabbitMQ closes the connection after about two missed ones (~20 s).
            "broker_heartbeat": settings.broker_heartbeat,
            # Queues and messages survive a RabbitMQ restart (Celery's defaults, stated): durable queues,
            # persistent messages. The server's `consumer_timeout` must exceed the cell time limit
            # (`config.consumer_timeout`; set in docker-compose.yml and by `services.private_rabbitmq`).
            "task_create_missing_queues": True,
            "task_default_delivery_mode": "persistent",
            "broker_transport_options": {"confirm_publish": True},  # a sent cell is on the broker, or send fails
        }
    return {
        # The Redis transport has no connection-bound ownership: it redelivers an unacknowledged cell
        # after the visibility timeout, which must exceed the longest cell (so ~72 min by default).
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": settings.unacked_restore_interval,
            "unacked_restore_throttle": settings.unacked_restore_throttle,
            "unacked_mutex_expire": settings.unacked_mutex_expire,
        },
    }


app.conf.update(broker_settings(config.broker_kind(settings.broker_url)))


# What this worker is pinned to, for Flower's worker view (Config tab) and /api/workers?refresh=1.
app.conf.optbench_gpu = os.environ.get("OPTBENCH_GPU", "none (CPU worker)")


def use_services(redis_url: str, broker_url: str | None = None) -> None:
    """Point this process's app at another Redis and broker (the producer does, after starting private ones).

    Without `broker_url` the Redis is the broker too."""
    broker_url = broker_url or redis_url
    app.conf.update(broker_url=broker_url, result_backend=redis_url, **broker_settings(config.broker_kind(broker_url)))
    # Celery keeps its broker connections in pools, and its result backend per thread, made on first
    # use: drop them, so that the next send and the next read use the new broker and Redis.
    app._pool = None
    app.amqp._producer_pool = None
    app._local.__dict__.pop("backend", None)


def queue_lengths(names: set[str]) -> dict[str, int]:
    """How many messages wait in each queue, on either broker (a queue that doesn't exist holds none)."""
    from kombu.exceptions import ChannelError

    lengths = {}
    with app.connection_for_read() as connection:
        for name in sorted(names):
            channel = connection.channel()  # a failed passive declare closes its AMQP channel
            try:
                lengths[name] = channel.queue_declare(queue=name, passive=True).message_count
            except (ChannelError, *connection.channel_errors):
                lengths[name] = 0
            finally:
                channel.close()
    return lengths
