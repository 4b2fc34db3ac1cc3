"""scripts/gpu_check.py: its dry run here, its answer on a host without a GPU, and its judges and GPU
orchestration against synthetic cell results (the real ones need an H200)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from typing import Any

import pytest

from scripts import gpu_check
from tests.conftest import REPO
from worker.engine.gpus import Gpu

UUID = "GPU-0f1e2d3c-aaaa-bbbb-cccc-000000000001"
STATUSES = {"pass", "fail", "skipped"}


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "scripts/gpu_check.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict[str, Any]]:
    out = tmp_path_factory.mktemp("gpu_check")
    done = run_script("--out", str(out), "--dry-run")
    return done, json.loads((out / "gpu_check.json").read_text())


def test_the_dry_run_writes_its_json_and_exits_0(dry_run):
    done, report = dry_run
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["written"].endswith("gpu_check.json")
    assert report["dry_run"] is True and report["schema"] == 1
    assert {"started_at", "finished_at", "seconds", "environment", "summary", "checks", "cells"} <= set(report)


def test_the_dry_run_runs_one_cpu_cell_through_the_forked_path_and_skips_each_gpu_check_saying_why(dry_run):
    _, report = dry_run
    checks = {check["name"]: check for check in report["checks"]}
    assert list(checks) == ["forked_cell_path_on_cpu", *gpu_check.GPU_CHECKS]
    assert checks["forked_cell_path_on_cpu"]["status"] == "pass"
    cell = report["cells"]["dry_run_cpu_cell"]
    assert cell["status"] == "ok" and cell["cpu_cores"] and cell["throughput_iterations"] >= 1
    for name in gpu_check.GPU_CHECKS:
        assert checks[name]["status"] == "skipped" and "dry run" in checks[name]["reason"]
    for check in checks.values():
        assert check["status"] in STATUSES and check["expected"] == gpu_check.EXPECTED[check["name"]][1]
    summary = report["summary"]
    assert (summary["pass"], summary["fail"], summary["skipped"]) == (1, 0, len(gpu_check.GPU_CHECKS))


def test_every_issue_item_has_a_check():
    covered = {item for items, _ in gpu_check.EXPECTED.values() for item in items}
    assert covered == set(range(1, 13))


def test_the_environment_records_versions_tf32_defaults_and_the_core_plan(dry_run):
    _, report = dry_run
    env = report["environment"]
    assert env["torch"] and env["torchvision"] and env["python"]
    assert set(env["tf32_defaults"]) == {"tf32_cudnn", "tf32_matmul"}  # torch's defaults, before any cell
    assert set(env["extras"]) == {"pynvml", "torch_pruning", "celery", "torchao", "onnxruntime"}
    assert env["core_plan"] == {"gpu_worker": "not pinned", "cpu_worker": "not pinned"}


def test_without_a_gpu_and_without_dry_run_it_says_why_and_exits_2(tmp_path):
    done = run_script("--out", str(tmp_path))
    assert done.returncode == 2, done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["cells"] == {} and report["environment"]["no_gpu_reason"]
    assert {check["status"] for check in report["checks"]} == {"skipped"}
    assert {check["reason"] for check in report["checks"]} == {report["environment"]["no_gpu_reason"]}


# ------------------------------------------------------------------------------- synthetic results


TORCHAO = ("int8_weight_only", "int8_dynamic", "float8")


def cell(label: str, **fields: Any) -> dict[str, Any]:
    """A GPU cell as a healthy H200 would report it; `fields` override."""
    optimization = label.split("@")[0]
    base = {
        "status": "ok",
        "device": "cuda",
        "gpu_uuid": UUID,
        "process_mem_source": "nvml_process_incl_cuda_context",
        "tf32_cudnn": optimization == "tf32",
        "tf32_matmul": optimization == "tf32",
        "cosine_similarity": 1.0 if optimization == "baseline" else 0.99995,
        "max_abs_error": 0.0 if optimization == "baseline" else 2e-3,
        "latency_ms_p50": 8.0 if optimization == "tf32" else 10.0,
        "latency_ms_p99": 12.0,
        "throughput_sps": 130.0,
        "throughput_sequential_sps": 100.0,
        "throughput_iterations": 400,
        "energy_j_per_sample": 0.4,
        "energy_source": "nvml_total_energy_whole_gpu",
        "noise_gpu_sm_clock_mhz": 1980,
        "gpu_power_limit_w": 700.0,
        "noise_gpu_other_processes": 0,
        "noise_cpu_wait_fraction": 0.01,
        "cpu_cores": "0-7",
        "prune_round_to": 8 if "prune_structured" in optimization else None,
        "cuda_graph_pool_mb": 64.0 if "reduce-overhead" in optimization else 0.0,
        "peak_mem_allocated_mb": 120.0,
        "compute_capability": "9.0",
        "quantized_layers": "Conv2d 0/120, Linear 1/1" if optimization in TORCHAO else None,
        "execution_provider": "CUDAExecutionProvider" if optimization == "onnxruntime" else None,
    }
    if "prune_structured" in optimization:
        base["throughput_sps"] = 200.0
    return {**base, **fields}


def test_back_to_back_below_the_per_call_rate_fails():
    cells = {"a": cell("baseline@bs1"), "b": cell("baseline@bs16", throughput_sps=90.0)}
    verdict = gpu_check.judge_throughput(cells, ["a", "b"])
    assert not verdict.passed and "b: back to back / per call = 0.9" in verdict.reason
    assert gpu_check.judge_throughput(cells, ["a"]).observed["a"]["ratio"] == pytest.approx(1.3)


@pytest.mark.parametrize(
    ("fields", "mig", "passed"),
    [
        ({}, False, True),
        ({"energy_j_per_sample": 0.0}, False, False),  # the counter did not move, read as 0 J
        ({"energy_j_per_sample": None, "energy_source": "unavailable:counter_did_not_move"}, False, False),
        ({"energy_j_per_sample": None, "energy_source": "unavailable:mig_instance"}, True, True),
        ({}, True, False),  # a MIG cell must not report the whole GPU's energy
        ({"gpu_power_limit_w": None}, False, False),
    ],
)
def test_energy_judge(fields, mig, passed):
    assert gpu_check.judge_energy({"a": cell("baseline@bs1", **fields)}, ["a"], mig).passed is passed


def test_oom_passes_only_for_cudas_refusal():
    cuda = cell("oom", status="failed", error_type="out_of_memory", error="CUDA out of memory. Tried to allocate")
    host = cell("oom", status="failed", error_type="out_of_memory", error="[enforce fail] can't allocate memory")
    assert gpu_check.judge_oom({"oom": cuda}, "oom").passed
    assert not gpu_check.judge_oom({"oom": host}, "oom").passed


def test_a_baseline_with_tf32_on_is_not_strict_fp32():
    cells = {"b": cell("baseline@bs1"), "h": cell("fp16@bs1")}
    assert gpu_check.judge_strict_fp32(cells, ["b"], ["h"]).passed
    cells["b"] = cell("baseline@bs1", tf32_cudnn=True)
    assert "b ran with TF32 on" in gpu_check.judge_strict_fp32(cells, ["b"], ["h"]).reason


def test_tf32_must_differ_from_strict_fp32():
    cells = {"b": cell("baseline@bs16"), "t": cell("tf32@bs16")}
    verdict = gpu_check.judge_tf32(cells, "b", "t")
    assert verdict.passed and verdict.observed["speedup_p50"] == pytest.approx(1.25)
    cells["t"] = cell("tf32@bs16", max_abs_error=0.0)
    assert not gpu_check.judge_tf32(cells, "b", "t").passed


def test_compile_judge_wants_graph_pool_memory_and_fidelity():
    pairs = [("d", "r")]
    cells = {"d": cell("compile-default@bs1"), "r": cell("compile-reduce-overhead@bs1")}
    assert gpu_check.judge_compile(cells, pairs).passed
    cells["r"] = cell("compile-reduce-overhead@bs1", cuda_graph_pool_mb=0.0)
    assert "no CUDA-graph pool memory" in gpu_check.judge_compile(cells, pairs).reason
    cells["r"] = cell("x", status="failed", error_type="RuntimeError", error="accessing tensor output of CUDAGraphs")
    assert "CUDAGraphs" in gpu_check.judge_compile(cells, pairs).reason


def test_noise_judge_compares_p99_under_the_core_policy_with_quiet():
    cells = {"q": cell("q"), "e": cell("e", latency_ms_p99=40.0), "p": cell("p", latency_ms_p99=13.0)}
    verdict = gpu_check.judge_noise(cells, "q", "e", "p")
    assert verdict.passed and verdict.observed["p99_everywhere_over_quiet"] == pytest.approx(40 / 12)
    cells["p"] = cell("p", latency_ms_p99=20.0)
    assert not gpu_check.judge_noise(cells, "q", "e", "p").passed


def test_the_oom_batch_fits_the_host_but_not_an_h200():
    batch = gpu_check.gpu_oom_batch(141 * 10**9)
    assert 256 <= batch <= 300 and batch * 3 * 2048 * 2048 * 4 < 16 * 10**9


class SyntheticRunner(gpu_check.Runner):
    """The GPU run's orchestration with `cell` answering from `cell()` above instead of a GPU."""

    def __init__(self) -> None:
        super().__init__(budget_seconds=3600)
        self.specs: dict[str, dict[str, Any]] = {}

    def cell(self, label: str, **spec: Any) -> dict[str, Any]:
        self.specs[label] = spec
        if label == "oom":
            record = cell(label, status="failed", error_type="out_of_memory", error="CUDA out of memory.")
        else:
            record = cell(label if "@" in label else "x")
        self.cells[label] = record
        return record


def test_a_gpu_run_on_healthy_results_passes_every_check(monkeypatch):
    monkeypatch.setattr(gpu_check, "cpu_load", lambda cores: contextlib.nullcontext())
    runner = SyntheticRunner()
    env = {"extras": {"torch_pruning": "1.6.1", "torchao": "0.18.0"}, "gpu_memory_total_bytes": 141 * 10**9}
    checks = gpu_check.gpu_checks(runner, Gpu(0, UUID, "NVIDIA H200"), env, cpu_worker_cores=[8, 9])
    assert [c.name for c in checks] == gpu_check.GPU_CHECKS
    assert {c.name: c.status for c in checks} == dict.fromkeys(gpu_check.GPU_CHECKS, "pass")
    assert runner.specs["oom"]["image_size"] == 2048 and runner.specs["oom"]["batch_size"] >= 256
    assert runner.specs["compile-reduce-overhead@bs16"] == {
        "optimization": "compile",
        "compile_mode": "reduce-overhead",
        "batch_size": 16,
    }


def test_a_gpu_run_skips_pruning_without_torch_pruning_and_the_core_check_without_spare_cores():
    runner = SyntheticRunner()
    env = {"extras": {"torch_pruning": None}, "gpu_memory_total_bytes": 80 * 10**9}
    checks = {c.name: c for c in gpu_check.gpu_checks(runner, Gpu(0, UUID, "NVIDIA H200"), env, None)}
    pruning = checks["prune_structured_fp16"]
    assert pruning.status == "skipped" and "torch-pruning" in pruning.reason
    assert checks["cpu_load_and_core_policy"].status == "skipped"
    torchao = checks["torchao_int8_float8_at_bs64"]
    assert torchao.status == "skipped" and "torchao" in torchao.reason


QUANT_CELLS = ["baseline@bs64", "int8_weight_only@bs64", "int8_dynamic@bs64", "float8@bs64", "onnxruntime@bs64"]


def quant_verdict(**overrides: dict[str, Any]) -> gpu_check.Verdict:
    cells = {label: cell(label, **overrides.get(label.split("@")[0], {})) for label in QUANT_CELLS}
    return gpu_check.judge_quantized(cells, QUANT_CELLS[0], QUANT_CELLS[1:3], QUANT_CELLS[3], QUANT_CELLS[4])


def test_float8_must_run_from_compute_capability_8_9_and_be_unsupported_below():
    assert quant_verdict().passed
    a100 = {"compute_capability": "8.0"}
    refused = {**a100, "status": "unsupported", "error": "float8 needs compute capability 8.9 or newer"}
    assert quant_verdict(baseline=a100, float8=refused).passed
    assert not quant_verdict(baseline=a100).passed  # float8 "ok" on an A100 would be a silent fallback
    assert not quant_verdict(float8={"status": "unsupported", "error": "float8 needs 8.9"}).passed


def test_onnxruntime_on_the_gpu_runs_on_the_cuda_provider_or_names_the_missing_package():
    missing = {"status": "unsupported", "error": "onnxruntime on cuda needs onnxruntime-gpu"}
    assert quant_verdict(onnxruntime=missing).passed
    assert not quant_verdict(onnxruntime={"execution_provider": "CPUExecutionProvider"}).passed
    assert not quant_verdict(int8_dynamic={"quantized_layers": "Conv2d 0/120, Linear 0/1"}).passed
