"""The Celery app, which the producer, the collector, Flower and the worker all use.

The broker (where a cell's message waits) is OPTBENCH_BROKER_URL: the Redis (default) or RabbitMQ
(`amqp://`, what a fleet should use: it requeues a lost worker's cell within seconds, see README).
Results, the manifest and delivery counters always live in the Redis (OPTBENCH_REDIS_URL).
JSON only, one unacknowledged cell per worker. Importing it needs no torch: the task itself
(`worker/tasks.py`) is imported only by workers (`include`). Start workers with `python -m worker`
(one per GPU); `celery -A shared.celery_app worker` is what it runs.
"""

from __future__ import annotations

import threading

from celery import Celery
from celery.app import backends
from celery.app.amqp import AMQP
from kombu import pools

from shared import config, keys

settings = config.load()


class OptbenchAMQP(AMQP):
    """Celery's messaging, whose producers come from the pool of the broker the app is configured with now
    (kombu keeps one pool per broker), not the first one it used: see `OptbenchCelery`."""

    @property
    def producer_pool(self):
        producers = pools.producers[self.app.connection_for_write()]
        producers.limit = self.app.pool.limit
        return producers


class OptbenchCelery(Celery):
    """A Celery app whose broker connections and result backend follow its configuration: after
    `app.conf.update(broker_url=..., result_backend=...)` (see `use_services`) the next message goes to the
    new broker and the next read or write of a result to the new Redis. Celery's own app makes both on
    first use and keeps them; this one asks kombu for the pool of the configured broker (one per broker,
    made once) and keeps one result backend per thread (as Celery does) for the configured URL."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.thread_backends = threading.local()  # .current: (result_backend URL, its backend) of this thread

    @property
    def pool(self):
        pools.set_limit(self.conf.broker_pool_limit)
        return pools.connections[self.connection_for_write()]

    @property
    def backend(self):
        url = self.conf.result_backend
        current = getattr(self.thread_backends, "current", None)
        if current is None or current[0] != url:
            backend_class, backend_url = backends.by_url(url, self.loader)
            current = self.thread_backends.current = (url, backend_class(app=self, url=backend_url))
        return current[1]


app = OptbenchCelery(
    "optbench",
    broker=settings.broker_url,
    backend=settings.redis_url,
    include=["worker.tasks"],
    amqp=OptbenchAMQP,
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
    # No `task-sent` event per message: it doubled the cost of each enqueue, and a 50,000-run sweep would load
    # Flower with 50,000 of them. Flower shows a run from the moment a worker receives it; `status` the queued.
    task_send_sent_event=False,
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
app.conf.optbench_gpu = config.worker_gpu()


def use_services(redis_url: str, broker_url: str | None = None) -> None:
    """Point this process's app at another Redis and broker (the producer does, after starting private ones):
    the next message sent and the next result read use them (`OptbenchCelery`).

    Without `broker_url` the Redis is the broker too."""
    broker_url = broker_url or redis_url
    app.conf.update(broker_url=broker_url, result_backend=redis_url, **broker_settings(config.broker_kind(broker_url)))


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
