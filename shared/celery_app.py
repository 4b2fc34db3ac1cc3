"""The Celery app, which the producer, the collector, Flower and the worker all use.

Redis as broker and result backend, JSON only, one unacknowledged cell per worker. Importing it
needs no torch: the task itself (`worker/tasks.py`) is imported only by workers (`include`).
Start workers with `python -m worker` (one per GPU); `celery -A shared.celery_app worker` is what it runs.
"""

from __future__ import annotations

import os

from celery import Celery

from shared import config

settings = config.load()

app = Celery("optbench", broker=settings.redis_url, backend=settings.redis_url, include=["worker.tasks"])
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
    # Redis redelivers an unacknowledged cell after this long: longer than the longest cell.
    broker_transport_options={
        "visibility_timeout": settings.visibility_timeout,
        "unacked_restore_interval": settings.unacked_restore_interval,
        "unacked_restore_throttle": settings.unacked_restore_throttle,
        "unacked_mutex_expire": settings.unacked_mutex_expire,
    },
    result_backend_transport_options={"visibility_timeout": settings.visibility_timeout},
    # Survive a Redis restart: reconnect to the broker, and retry storing a result until it lands.
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,
    result_backend_always_retry=True,
    result_backend_max_retries=120,
    task_default_queue="cpu",
    worker_hijack_root_logger=False,
)


# What this worker is pinned to, for Flower's worker view (Config tab) and /api/workers?refresh=1.
app.conf.optbench_gpu = os.environ.get("OPTBENCH_GPU", "none (CPU worker)")


def use_redis(url: str) -> None:
    """Point this process's app at another Redis (the producer does, after starting a private one)."""
    app.conf.update(broker_url=url, result_backend=url)
