"""Deployment: the Docker files validate, GPU models get their own queues, and two hosts share a sweep."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from producer.sweep import SweepRequest, create, gpu_queue_for
from results.collect import collect
from shared import keys, manifest
from shared.errors import OptbenchError
from tests.conftest import REPO, TINY_CELL_OPTIONS, running_workers, wait_for_sweep
from worker.__main__ import Gpu, worker_commands

BIN = Path(sys.executable).parent


def test_dockerfile_passes_hadolint():
    done = subprocess.run([BIN / "hadolint", "Dockerfile.gpu"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def final_stage(dockerfile: str) -> str:
    """The instructions after the last FROM, continuation lines joined."""
    joined = dockerfile.replace("\\\n", " ")
    return joined[joined.rindex("\nFROM ") :]


def test_the_final_image_has_a_c_compiler_and_python_headers_for_triton():
    stage = final_stage((REPO / "Dockerfile.gpu").read_text())
    installs = " ".join(line for line in stage.splitlines() if "apt-get install" in line).split()
    assert {"gcc", "libc6-dev", "python3-dev"} <= set(installs), installs  # or compile cells fail at run time


def test_the_image_installs_the_worker_side_not_only_the_client():
    # `pip install .` is the torch-free client: a worker image needs the `worker` extra.
    installs = [line for line in (REPO / "Dockerfile.gpu").read_text().splitlines() if "pip install" in line]
    assert any("'.[worker]'" in line for line in installs), installs


def test_the_worker_shares_the_host_pid_namespace_so_nvml_lists_its_cells():
    from ruamel.yaml import YAML  # check-jsonschema's YAML parser

    compose = YAML(typ="safe").load((REPO / "docker-compose.yml").read_text())
    assert compose["services"]["worker"]["pid"] == "host"


def test_the_fleet_uses_a_pinned_rabbitmq_with_a_consumer_timeout_above_the_cell_limit():
    from ruamel.yaml import YAML

    from shared.config import consumer_timeout

    compose = YAML(typ="safe").load((REPO / "docker-compose.yml").read_text())
    rabbitmq = compose["services"]["rabbitmq"]
    assert rabbitmq["image"].split(":")[1][0].isdigit()  # a version, not `latest`
    assert rabbitmq["healthcheck"]["test"] and "rabbitmq-data:/var/lib/rabbitmq" in rabbitmq["volumes"]
    assert rabbitmq["ports"] == ["${RABBITMQ_BIND:-127.0.0.1}:5672:5672"]  # loopback unless told otherwise
    assert "${RABBITMQ_PASSWORD:?" in rabbitmq["environment"]["RABBITMQ_DEFAULT_PASS"]
    erl_args = rabbitmq["environment"]["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]
    assert erl_args == "-rabbit consumer_timeout ${RABBITMQ_CONSUMER_TIMEOUT_MS:-4200000}"
    assert consumer_timeout(1800) * 1000 == 4200000 > 1800 * 1000  # the default cell time limit
    for name in ("worker", "flower", "producer"):
        service = compose["services"][name]
        assert service["environment"]["OPTBENCH_BROKER_URL"].startswith("amqp://optbench:${RABBITMQ_PASSWORD:?")
        assert service["depends_on"]["rabbitmq"]["condition"] == "service_healthy"


def test_compose_file_matches_the_compose_spec():
    done = subprocess.run(
        [BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_env_file_with_secrets_is_ignored_and_an_example_is_shipped():
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO)
    assert ignored.returncode == 0 and (REPO / ".env.example").is_file()


def test_each_gpu_worker_serves_the_gpu_queue_and_its_models_queue():
    gpus = [Gpu(0, "GPU-aaa", "NVIDIA H200"), Gpu(1, "GPU-bbb", "NVIDIA A100-SXM4-80GB")]
    commands = worker_commands(gpus, "node7", cpu_worker=True, loglevel="INFO")
    queues = [cmd[cmd.index("--queues") + 1] for cmd, _ in commands]
    assert queues == [
        "optbench.gpu,optbench.gpu.nvidia-h200",
        "optbench.gpu,optbench.gpu.nvidia-a100-sxm4-80gb",
        "optbench.cpu",
    ]
    names = [cmd[cmd.index("--hostname") + 1] for cmd, _ in commands]
    assert names == ["gpu0@node7", "gpu1@node7", "cpu@node7"]
    assert commands[1][1]["CUDA_VISIBLE_DEVICES"] == "GPU-bbb" and commands[2][1]["CUDA_VISIBLE_DEVICES"] == ""
    assert {env["OPTBENCH_HOST"] for _, env in commands} == {"node7"}


def test_a_sweep_is_pinned_to_one_gpu_model_unless_a_comparison_is_asked_for():
    h200, a100 = keys.gpu_model_queue("NVIDIA H200"), keys.gpu_model_queue("NVIDIA A100")
    assert gpu_queue_for(None, {h200}) == h200
    assert gpu_queue_for("NVIDIA H200", {h200, a100}) == h200
    assert gpu_queue_for("any", {h200, a100}) == keys.GPU_QUEUE == "optbench.gpu"
    with pytest.raises(OptbenchError, match="several GPU models are online"):
        gpu_queue_for(None, {h200, a100})
    with pytest.raises(OptbenchError, match="no online worker has a 'RTX 4090' GPU"):
        gpu_queue_for("RTX 4090", {h200})


def test_two_hosts_share_one_sweep_and_each_cell_runs_once(app, redis_client, redis_url, tmp_path):
    request = SweepRequest(
        ("baseline", "channels_last"), (1, 2, 3), cell_options={**TINY_CELL_OPTIONS, "min_seconds": 1.0}, repeats=1
    )
    with (
        running_workers(app, redis_url, tmp_path / "a.log", "--host", "host-a"),
        running_workers(app, redis_url, tmp_path / "b.log", "--host", "host-b"),
    ):
        sweep = create(app, redis_client, request, "cpu", ttl=3600)
        wait_for_sweep(app, redis_client, sweep.id)
    frame = collect(app.backend, manifest.load(redis_client, sweep.id), tmp_path, False).frame
    assert len(frame) == 6 and frame["cell_id"].is_unique and set(frame["status"]) == {"ok"}
    assert set(frame["host"]) == {"host-a", "host-b"}  # both hosts took cells
    assert (frame["worker"] == "cpu@" + frame["host"]).all()
    assert (frame["tries"] == 1).all()
    written = pd.read_csv(tmp_path / f"{sweep.id}.csv")
    assert sorted(written["host"].unique()) == ["host-a", "host-b"]  # the CSV records where each ran
