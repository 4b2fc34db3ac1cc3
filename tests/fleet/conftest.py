"""`make fleet-test`: the fleet (tests/fleet/fleet.py) brought up once for the session and removed at the end,
also after a failure or Ctrl-C; its summary lines (build, image, each fault's recovery time) printed last."""

from __future__ import annotations

import contextlib
import secrets

import pytest

from tests.fleet import docker as d
from tests.fleet.fleet import LOGS, SUMMARY, WORKER_IMAGE, Fleet, bring_up, build, save_logs


@pytest.fixture(scope="session")
def fleet():
    d.ensure_tools()
    LOGS.mkdir(parents=True, exist_ok=True)
    fleet = Fleet(*(secrets.token_urlsafe(18) for _ in range(3)))
    with d.private_daemon(LOGS / "dockerd.log"):
        d.remove_labelled()  # what an earlier, interrupted run left
        try:
            build(fleet, d.base_image())
            size = int(d.docker("image", "inspect", "-f", "{{.Size}}", WORKER_IMAGE))
            seconds = fleet.build_seconds["worker"]
            SUMMARY.append(
                f"worker image {WORKER_IMAGE}: {size / 1e9:.2f} GB, built in {seconds:.0f} s"
                f"{' (from the build cache of an earlier run)' if seconds < 60 else ''}"
            )
            bring_up(fleet)
            from shared.celery_app import use_services

            use_services(fleet.redis_url, fleet.broker_url)
            yield fleet
        finally:
            with contextlib.suppress(Exception):
                save_logs()
            d.remove_labelled()
            d.prune_old_builds()


def pytest_terminal_summary(terminalreporter):
    if SUMMARY:
        terminalreporter.section("fleet-test")
        for line in SUMMARY:
            terminalreporter.write_line(line)
