"""The fleet test's Docker: the tools it needs, a private daemon, the local base image and the `docker` CLI.

The daemon is our own (its data root, exec root and socket under STATE and RUN_ROOT), so the test never touches
a Docker the machine already runs; it is stopped at the end. Its images and build cache stay in STATE between
runs (a second run builds from cache); containers, networks and volumes are removed by the test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from shared.processes import stop_process, wait_for

# docker.io's own client, not another one on PATH: it speaks BuildKit (build secrets) with its daemon.
DOCKER = os.environ.get("OPTBENCH_FLEET_DOCKER", "/usr/bin/docker")
STATE = Path(os.environ.get("OPTBENCH_FLEET_STATE", "/var/lib/optbench-fleet"))
RUN_ROOT = Path("/run/optbench-fleet")
SOCKET = RUN_ROOT / "docker.sock"
KEEP_BUILD_CACHE = "20GB"  # enough for the current images' layers: a rerun builds from cache
LABEL = "optbench.fleet-test"  # on every container, network and volume the test makes
# The base of the test's images (CPU only; real fleets keep Dockerfile.gpu's CUDA base): Debian bookworm, pulled,
# or made here by debootstrap when no registry answers.
CONFIGURED_BASE = os.environ.get("OPTBENCH_FLEET_BASE", "debian:bookworm-slim")
LOCAL_BASE = "optbench-fleet-base:bookworm"
# What the test needs, and the Debian package that brings it.
TOOLS = {"dockerd": "docker.io", DOCKER: "docker.io", "debootstrap": "debootstrap"}


def ensure_tools() -> None:
    """Install the Debian packages of missing tools, saying so (needs root and Debian's package archive)."""
    missing = sorted({package for tool, package in TOOLS.items() if shutil.which(tool) is None})
    if not missing:
        return
    print(f"fleet-test: installing {', '.join(missing)} (apt-get)", flush=True)
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "DEBIAN_FRONTEND":
                              "noninteractive"})  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()[-1000:]}")


def env() -> dict[str, str]:
    return {**os.environ, "DOCKER_HOST": f"unix://{SOCKET}", "DOCKER_BUILDKIT": "1"}


def docker(*args: str, check: bool = True, timeout: float = 300) -> str:
    """`docker ARGS` against the private daemon; its standard output, stripped. Raises with stderr on failure."""
    done = subprocess.run([DOCKER, *args], env=env(), capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout.strip()


def _stop_pid(pid_file: Path) -> None:
    """Stop a daemon an earlier, interrupted run left behind (its pid file says which)."""
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 15)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return
    for _ in range(300):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


@contextlib.contextmanager
def private_daemon(log_path: Path) -> Iterator[None]:
    """A dockerd of our own for the block; stopped (its containers with it) when the block ends."""
    RUN_ROOT.mkdir(parents=True, exist_ok=True)
    STATE.mkdir(parents=True, exist_ok=True)
    pid_file = RUN_ROOT / "dockerd.pid"
    _stop_pid(pid_file)
    command = [
        "dockerd", "--data-root", str(STATE / "docker"), "--exec-root", str(RUN_ROOT / "exec"),
        "--pidfile", str(pid_file), "--host", f"unix://{SOCKET}",
    ]  # fmt: skip
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(_daemon_answers, 60, f"dockerd (log: {log_path})", process)
        yield
    finally:
        stop_process(process, timeout=60)  # SIGTERM: dockerd stops its containers, then itself


def _daemon_answers() -> bool:
    return subprocess.run([DOCKER, "info"], env=env(), capture_output=True).returncode == 0


def pip_cert() -> str | None:
    """The CA bundle pip is configured with here (PIP_CERT, or pip's `cert` setting), if any."""
    cert = os.environ.get("PIP_CERT")
    if not cert:
        done = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.cert"], capture_output=True,
                              text=True)  # fmt: skip
        cert = done.stdout.strip() if done.returncode == 0 else ""
    return cert if cert and Path(cert).is_file() else None


def has_image(name: str) -> bool:
    return subprocess.run([DOCKER, "image", "inspect", name], env=env(), capture_output=True).returncode == 0


def base_image() -> str:
    """The base of the test's images: CONFIGURED_BASE if it is here or can be pulled, else a local Debian bookworm
    (debootstrap --variant=minbase, then `docker import`), made once and kept."""
    if has_image(CONFIGURED_BASE):
        return CONFIGURED_BASE
    pulled = subprocess.run([DOCKER, "pull", "-q", CONFIGURED_BASE], env=env(), capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    if pulled.returncode == 0:
        return CONFIGURED_BASE
    reason = (pulled.stderr.strip().splitlines() or ["no reason given"])[-1]
    made = has_image(LOCAL_BASE)
    print(f"fleet-test: can't pull {CONFIGURED_BASE} ({reason}); "
          f"{'using' if made else 'making (debootstrap, ~1 min)'} {LOCAL_BASE}", flush=True)  # fmt: skip
    if not made:
        with tempfile.TemporaryDirectory(prefix="optbench-base-") as root:
            subprocess.run(["debootstrap", "--variant=minbase", "bookworm", root], check=True, capture_output=True)
            tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
            subprocess.run([DOCKER, "import", "-", LOCAL_BASE], env=env(), stdin=tar.stdout, check=True,
                           capture_output=True)  # fmt: skip
            tar.wait()
    return LOCAL_BASE


def remove_labelled() -> None:
    """Remove every container, network and volume the test made (by label), running or not."""
    for kind, listing in (("container", ["ps", "-aq"]), ("network", ["network", "ls", "-q"]),
                          ("volume", ["volume", "ls", "-q"])):  # fmt: skip
        names = docker(*listing, "--filter", f"label={LABEL}", check=False).split()
        if names:
            docker(kind, "rm", *(["-f"] if kind == "container" else []), *names, check=False, timeout=120)


def prune_old_builds() -> None:
    """Bound the daemon's disk: images no tag names any more and build cache past KEEP_BUILD_CACHE (each change of
    pyproject.toml or Dockerfile.gpu leaves ~14 GB of layers behind)."""
    docker("image", "prune", "-f", check=False, timeout=600)
    docker("builder", "prune", "-f", "--keep-storage", KEEP_BUILD_CACHE, check=False, timeout=600)
