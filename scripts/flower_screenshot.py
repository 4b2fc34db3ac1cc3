"""Screenshot Flower's dashboard during a sweep with headless Chromium (Debian's `chromium` package).

Starts a private Redis, local workers and Flower (loopback, no credentials needed there), sends a
small sweep, and while its cells run saves PNGs of Flower's workers page and tasks page.

    python -m scripts.flower_screenshot [--out results/screenshots]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from producer.sweep import SweepRequest, create
from shared.connection import connect
from shared.processes import free_port, stop_process
from shared.services import local_workers, private_redis

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
    "--window-size=1400,900", "--virtual-time-budget=5000",
]  # fmt: skip
CELLS = {"model": "mobilenet_v3_small", "image_size": 32, "min_seconds": 4.0}


def screenshot(url: str, path: Path, profile: str) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("chromium is not installed (apt-get install chromium)")
    subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={path}", url],
        check=True,
        capture_output=True,
        timeout=120,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/screenshots"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch, private_redis(Path(scratch) / "redis") as url:
        from shared.celery_app import app, use_services

        use_services(url)
        with local_workers(app, url, Path(scratch) / "worker.log"):
            port = free_port()
            flower = subprocess.Popen(
                [sys.executable, "-m", "producer", "flower", "--port", str(port)],
                env={**os.environ, "OPTBENCH_REDIS_URL": url},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                base = f"http://127.0.0.1:{port}"
                _wait_until_up(base + "/healthcheck")
                request = SweepRequest(("baseline", "channels_last", "fp16"), (1, 2), cell_options=CELLS, repeats=1)
                sweep = create(app, connect(url), request, "cpu", ttl=3600)
                time.sleep(6)  # a cell or two done, one running, the rest queued
                for page, name in (("/workers", "flower_workers.png"), ("/tasks", "flower_tasks.png")):
                    screenshot(base + page, args.out / name, str(Path(scratch) / "chromium"))
                    print(f"wrote {args.out / name} (sweep {sweep.id} running)")
                app.control.purge()
            finally:
                stop_process(flower, timeout=20)


def _wait_until_up(url: str) -> None:
    for _ in range(120):
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"Flower did not answer at {url}")


if __name__ == "__main__":
    main()
