"""Benchmarking your own model: timm and factory models measured, the worker-side check before a sweep, a sweep of
two models end to end, and optimizations that don't fit a model failing in one line that names what failed."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from results import stats
from shared import keys, manifest
from shared.spec import CellSpec
from tests.conftest import REPO, TINY, TINY_SWEEP_ARGS, run_cli, running_workers, service_env
from tests.unit.test_report import check_report
from worker.engine.run import run_cell

pytestmark = pytest.mark.timeout(400)
EXAMPLE = REPO / "examples" / "tiny_model"
FILE_MODELS = REPO / "tests" / "fixtures" / "file_models.py"


def measure(model: str, optimization: str = "baseline", **options) -> dict:
    result = run_cell(
        CellSpec(model=model, optimization=optimization, batch_size=2, device="cpu", **{**TINY, **options})
    )
    row = result.to_dict()
    assert row["status"] in ("ok", "failed", "unsupported")
    return row


# ------------------------------------------------------------------------------------ each kind of model, measured


def test_a_timm_model_is_measured_and_its_row_says_which_timm_built_it():
    import timm

    row = measure("timm:resnet18", weights="synthetic")
    assert row["status"] == "ok", row["error"]
    assert row["model"] == "timm:resnet18" and row["model_source"] == f"timm {timm.__version__}"
    assert len(row["model_sha256"]) == 64 and row["input_shape"] == "3x32x32" and row["model_output"] == "tensor"
    assert row["model_params"] == sum(p.numel() for p in timm.create_model("resnet18").parameters())
    assert row["model_gflops"] == pytest.approx(row["gflops_per_sample"])  # the baseline runs the model as built


def test_a_factory_in_a_package_takes_its_kwargs_and_declared_input_shape(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import tiny_model

    row = measure("tiny_model:build", "channels_last", model_kwargs={"width": 8})
    assert row["status"] == "ok", row["error"]
    assert row["input_shape"] == "1x28x28"  # build.input_shape, not the 32 px image size
    assert json.loads(row["model_kwargs"]) == {"width": 8}
    assert row["model_params"] == sum(p.numel() for p in tiny_model.build(width=8).parameters())
    assert row["model_source"].startswith(f"module tiny_model ({EXAMPLE / 'tiny_model' / '__init__.py'}")
    assert row["top1_agreement"] == 1.0 and row["fidelity_samples"] == 8


def test_a_factory_in_a_file_returning_a_dict_is_compared_on_its_first_tensor():
    row = measure(f"{FILE_MODELS}:dict_output", input_shape=(3, 16, 16))
    assert row["status"] == "ok", row["error"]
    assert row["model_output"] == "dict['logits'] of 2" and row["input_shape"] == "3x16x16"
    assert row["model_source"] == f"file {FILE_MODELS}" and row["max_abs_error"] == 0.0
    exported = measure(f"{FILE_MODELS}:tuple_output", "onnxruntime")
    assert exported["status"] == "ok", exported["error"]
    assert exported["model_output"] == "tuple[0] of 2" and exported["cosine_similarity"] > 0.999


# --------------------------------------------------------------------------- optimizations on models they don't fit


def test_an_op_onnx_cant_export_fails_in_one_line_that_names_the_step_and_the_op():
    row = measure(f"{FILE_MODELS}:custom_op", "onnxruntime")
    assert (row["status"], row["error_type"]) == ("failed", "ConversionError")
    assert row["error"].startswith("onnxruntime: DispatchError: No ONNX function found for")
    assert "optbench_tests.scale" in row["error"]
    assert "\n" not in row["error"] and "Traceback" not in row["error"] and len(row["error"]) <= 500


def test_a_model_torch_export_cant_trace_fails_int8_static_naming_the_line():
    row = measure(f"{FILE_MODELS}:data_dependent", "int8_static")
    assert row["status"] == "failed" and row["error"].startswith("int8_static: ")
    assert "file_models.py" in row["error"] and "if features.sum() > 0" in row["error"] and "\n" not in row["error"]


def test_structured_pruning_of_an_attention_model_is_unsupported_naming_its_convolution():
    row = measure(f"{FILE_MODELS}:tiny_vit", "prune_structured")
    assert (row["status"], row["error_type"]) == ("unsupported", "unsupported_for_model")
    assert row["error"].startswith("prune_structured: removed no channel")
    assert "Conv2d layers (conv_proj) feed only layers it keeps" in row["error"]
    assert row["latency_ms_p50"] is None  # nothing was timed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([f"{FILE_MODELS}:broken"], "does not build: RuntimeError: this factory always fails"),
        ([f"{FILE_MODELS}:not_a_module"], "returned a str, not a torch.nn.Module"),
        ([f"{FILE_MODELS}:nowhere"], "has no function 'nowhere'"),
        (["missing/net.py:build"], "no file"),
        (["no_such_package.models:build"], "module no_such_package.models does not import on this worker"),
        (["resnet18", "--model-kwargs", '{"num_clases": 10}'], "unexpected keyword argument 'num_clases'"),
        (["resnet18", "--input-shape", "1,28,28"], "fails on one input of shape 1x28x28"),
    ],
)
def test_the_model_check_says_in_one_line_why_a_model_does_not_build(args, message, capsys):
    from worker.cell import main

    assert main(["--check-model", "--model", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m worker.cell: error: ") and message in err and "\n" not in err


# -------------------------------------------------------------------- sweeps: the check before, two models end to end


@pytest.fixture(scope="module")
def model_workers(app, redis_url, tmp_path_factory):
    """Workers that can import the example package, as after `pip install -e examples/tiny_model` on a host."""
    log = tmp_path_factory.mktemp("logs") / "worker.log"
    with running_workers(app, redis_url, log, PYTHONPATH=str(EXAMPLE)) as process:
        yield process


def sweep_args(models: str, *more: str) -> list[str]:
    args = list(TINY_SWEEP_ARGS)
    args[args.index("--model") + 1] = models
    return [*args, *more]


def optbench_keys(client) -> set[bytes]:
    return {key for key in client.keys("*") if key.startswith((b"optbench:sweep", b"celery-task-meta-"))}


def test_with_no_worker_online_a_sweep_of_a_factory_model_says_so_and_stops(tmp_path):
    from shared.services import private_redis

    with private_redis(tmp_path / "redis") as url:  # a Redis no worker listens to
        done = run_cli("producer", "sweep", *sweep_args("tiny_model:build"), env=service_env(url))
    assert done.returncode == 2 and done.stdout == ""
    assert "no online worker serves queue optbench.cpu to build model tiny_model:build" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (f"{FILE_MODELS}:broken", "does not build: RuntimeError: this factory always fails"),
        ("no_such_package.models:build", "module no_such_package.models does not import on this worker"),
    ],
)
def test_a_model_that_fails_on_the_worker_stops_the_sweep_before_anything_is_enqueued(
    model, message, app, redis_url, redis_client, model_workers, tmp_path
):
    before = optbench_keys(redis_client)
    done = run_cli(
        "producer", "sweep", *sweep_args(model), env=service_env(redis_url, OPTBENCH_RESULTS_DIR=str(tmp_path))
    )
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "checked on worker cpu@" in lines[0], done.stderr
    assert optbench_keys(redis_client) == before  # no sweep, no run, and the check's own result deleted
    assert redis_client.llen(keys.CPU_QUEUE) == 0


def test_a_sweep_of_two_models_compares_each_cell_with_its_own_models_baseline(
    app, redis_url, redis_client, model_workers, tmp_path
):
    env = service_env(redis_url, OPTBENCH_RESULTS_DIR=str(tmp_path))
    models = "mobilenet_v3_small,tiny_model:build"
    done = run_cli(
        "producer", "sweep", *sweep_args(models, "--optimizations", "baseline,channels_last", "--batch-sizes", "2",
                                         "--repeats", "2", "--wait"), env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "model tiny_model:build: built on cpu@" in done.stderr and "input 1x28x28" in done.stderr
    assert "4 cells x 2 runs = 8 runs on cpu" in done.stderr
    sweep_id = done.stdout.strip()

    cells = pd.read_csv(tmp_path / f"{sweep_id}.csv").set_index("cell_id")
    runs = pd.read_csv(tmp_path / f"{sweep_id}_runs.csv")
    assert sorted(cells.index) == sorted(
        f"{m}/{o}@bs2" for m in ("mobilenet_v3_small", "tiny_model:build") for o in ("baseline", "channels_last")
    )
    assert set(cells["status"]) == {"ok"}
    assert cells.loc["tiny_model:build/baseline@bs2", "input_shape"] == "1x28x28"
    assert cells.loc["mobilenet_v3_small/baseline@bs2", "input_shape"] == "3x32x32"
    for model in ("mobilenet_v3_small", "tiny_model:build"):
        own = runs[runs["model"] == model]
        optimized, baseline = (own[own["cell_id"] == f"{model}/{o}@bs2"] for o in ("channels_last", "baseline"))
        expected = stats.ratio_interval(stats.run_series(optimized, "throughput_sps"),
                                        stats.run_series(baseline, "throughput_sps"))  # fmt: skip
        between = cells.loc[f"{model}/channels_last@bs2", "speedup_between_processes"]  # the verdict: in-run
        assert between == pytest.approx(expected.estimate, nan_ok=True)
    # The sweep recorded what the worker built, and every run measured that code.
    checked = manifest.load(redis_client, sweep_id).spec["model_checks"]["tiny_model:build"]
    assert set(runs.loc[runs["model"] == "tiny_model:build", "model_sha256"]) == {checked["model_sha256"]}

    report = check_report(tmp_path / f"{sweep_id}.csv", tmp_path / f"{sweep_id}_runs.csv", tmp_path / "report")
    assert "## Best cell per model" in report
    assert "# mobilenet_v3_small on " in report and "# tiny_model:build on " in report
    assert "Models `mobilenet_v3_small` at 3x32x32" in report and "`tiny_model:build` at 1x28x28" in report


def test_weights_checked_by_a_worker_are_a_state_dict_that_fits(app, redis_url, redis_client, model_workers, tmp_path):
    """A state-dict file of another model is refused by the check too, before anything is enqueued."""
    path = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    done = run_cli("producer", "sweep", *sweep_args("resnet18", "--weights", str(path)), env=service_env(redis_url))
    assert done.returncode == 2 and f"weights {path} don't fit model resnet18" in done.stderr
