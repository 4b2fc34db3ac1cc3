"""worker.gpu_check: its dry run here, its answer on a host without a GPU, its list of checks (each judge
on good and bad synthetic results, the time estimates against a lent machine's budget), and the GPU
run's orchestration against synthetic cell results (the real ones need an H200)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import REPO
from worker.gpu_check import __main__ as cli
from worker.gpu_check import checks as gpu_checks
from worker.gpu_check import judges, run
from worker.gpu_check.checks import BY_NAME, CHECKS, GPU_CHECKS, Host

UUID = "GPU-0f1e2d3c-aaaa-bbbb-cccc-000000000001"
STATUSES = {"pass", "fail", "skipped"}
GPU_NAMES = [check.name for check in GPU_CHECKS]


def run_module(*args: str, script: bool = False) -> subprocess.CompletedProcess:
    entry = ["scripts/gpu_check.py"] if script else ["-m", "worker.gpu_check"]
    return subprocess.run([sys.executable, *entry, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict[str, Any]]:
    out = tmp_path_factory.mktemp("gpu_check")
    done = run_module("--out", str(out), "--dry-run")
    return done, json.loads((out / "gpu_check.json").read_text())


def test_the_dry_run_writes_its_json_and_exits_0(dry_run):
    done, report = dry_run
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["written"].endswith("gpu_check.json")
    assert report["dry_run"] is True and report["schema"] == cli.SCHEMA == 2
    assert {"started_at", "finished_at", "seconds", "environment", "summary", "checks", "cells"} <= set(report)


def test_the_dry_run_runs_one_cpu_cell_through_the_forked_path_and_skips_each_gpu_check_saying_why(dry_run):
    _, report = dry_run
    checks = {check["name"]: check for check in report["checks"]}
    assert list(checks) == ["forked_cell_path_on_cpu", *GPU_NAMES] == [check.name for check in CHECKS]
    assert checks["forked_cell_path_on_cpu"]["status"] == "pass"
    cell = report["cells"]["dry_run_cpu_cell"]
    assert cell["status"] == "ok" and cell["cpu_cores"] and cell["throughput_iterations"] >= 1
    for name in GPU_NAMES:
        assert checks[name]["status"] == "skipped" and "dry run" in checks[name]["reason"]
    for check in checks.values():
        assert check["status"] in STATUSES and check["expected"] == BY_NAME[check["name"]].expects
        assert check["cells"] == BY_NAME[check["name"]].labels
    summary = report["summary"]
    assert (summary["pass"], summary["fail"], summary["skipped"]) == (1, 0, len(GPU_NAMES))


def test_the_environment_records_versions_tf32_defaults_and_the_core_plan(dry_run):
    _, report = dry_run
    env = report["environment"]
    assert env["torch"] and env["torchvision"] and env["python"]
    assert set(env["tf32_defaults"]) == {"tf32_cudnn", "tf32_matmul"}  # torch's defaults, before any cell
    assert set(env["extras"]) == {"pynvml", "torch_pruning", "celery", "torchao", "onnxruntime"}
    assert env["core_plan"] == {"gpu_worker": "not pinned", "cpu_worker": "not pinned"}


def test_without_a_gpu_and_without_dry_run_it_says_why_on_one_line_and_exits_2(tmp_path):
    done = run_module("--out", str(tmp_path), script=True)  # the README's command, through scripts/
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("gpu_check: no GPU checked: ")
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["cells"] == {} and report["environment"]["no_gpu_reason"]
    assert [check["name"] for check in report["checks"]] == GPU_NAMES
    assert {check["status"] for check in report["checks"]} == {"skipped"}
    assert {check["reason"] for check in report["checks"]} == {report["environment"]["no_gpu_reason"]}
    assert report["environment"]["no_gpu_reason"] in done.stderr


def test_list_prints_one_line_per_check_and_runs_nothing():
    done = run_module("--list", script=True)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines[:-1]] == [check.name for check in CHECKS]
    assert lines[1].split("\t")[1:4] == ["about 60 s", "needs gpu", "6 cells"]
    assert lines[-1].startswith(f"GPU checks: about {sum(c.estimate_s for c in GPU_CHECKS):.0f} s")
    assert not done.stderr


def test_without_out_it_says_so(monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    with pytest.raises(SystemExit) as exited:
        cli.parse_args([])
    assert exited.value.code == 2


# ------------------------------------------------------------------------------------ the list


def test_every_check_has_a_unique_name_and_every_cell_one_check_that_runs_it():
    assert len({check.name for check in CHECKS}) == len(CHECKS)
    run_labels = [cell.label for check in CHECKS for cell in check.cells]
    assert len(set(run_labels)) == len(run_labels)
    for i, check in enumerate(CHECKS):  # a check reads only cells an earlier check runs
        earlier = {cell.label for other in CHECKS[:i] for cell in other.cells}
        assert set(check.reads) <= earlier, check.name
        assert check.labels and check.expects and set(check.needs) <= set(gpu_checks.MISSING)


def test_the_time_estimates_fit_a_lent_machines_device_time():
    total = sum(check.estimate_s for check in GPU_CHECKS)
    assert all(check.estimate_s >= 0 for check in CHECKS)
    assert total <= gpu_checks.DEFAULT_BUDGET_SECONDS <= gpu_checks.DEVICE_SECONDS - gpu_checks.STARTUP_SECONDS


def test_checks_that_need_a_gpu_are_the_gpu_checks_and_the_cpu_check_comes_first():
    assert CHECKS[0].name == "forked_cell_path_on_cpu" and CHECKS[0].needs == ()
    assert CHECKS[1:] == GPU_CHECKS


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
    if label == "oom":
        base.update(status="failed", error_type="out_of_memory", error="CUDA out of memory. Tried to allocate")
    return {**base, **fields}


H200 = Host(
    gpu_uuid=UUID,
    memory_total_bytes=141 * 10**9,
    extras={"torch_pruning": "1.6.1", "torchao": "0.18.0"},
    cpu_worker_cores=(8, 9),
)


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.name)
def test_every_judge_passes_healthy_cells_and_fails_broken_ones(check):
    healthy = {label: cell(label) for label in check.labels}
    verdict = check.judge(healthy, H200)
    assert verdict.passed, verdict.reason
    broken = {label: cell(label, status="failed", error_type="RuntimeError", error="boom") for label in check.labels}
    verdict = check.judge(broken, H200)
    assert not verdict.passed and verdict.reason


def test_back_to_back_below_the_per_call_rate_fails():
    cells = {"a": cell("baseline@bs1"), "b": cell("baseline@bs16", throughput_sps=90.0)}
    verdict = judges.judge_throughput(cells, ["a", "b"])
    assert not verdict.passed and "b: back to back / per call = 0.9" in verdict.reason
    assert judges.judge_throughput(cells, ["a"]).observed["a"]["ratio"] == pytest.approx(1.3)


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
    assert judges.judge_energy({"a": cell("baseline@bs1", **fields)}, ["a"], mig).passed is passed


def test_oom_passes_only_for_cudas_refusal():
    cuda = cell("oom", status="failed", error_type="out_of_memory", error="CUDA out of memory. Tried to allocate")
    host = cell("oom", status="failed", error_type="out_of_memory", error="[enforce fail] can't allocate memory")
    assert judges.judge_oom({"oom": cuda}, "oom").passed
    assert not judges.judge_oom({"oom": host}, "oom").passed


def test_a_baseline_with_tf32_on_is_not_strict_fp32():
    cells = {"b": cell("baseline@bs1"), "h": cell("fp16@bs1")}
    assert judges.judge_strict_fp32(cells, ["b"], ["h"]).passed
    cells["b"] = cell("baseline@bs1", tf32_cudnn=True)
    assert "b ran with TF32 on" in judges.judge_strict_fp32(cells, ["b"], ["h"]).reason


def test_tf32_must_differ_from_strict_fp32():
    cells = {"b": cell("baseline@bs16"), "t": cell("tf32@bs16")}
    verdict = judges.judge_tf32(cells, "b", "t")
    assert verdict.passed and verdict.observed["speedup_p50"] == pytest.approx(1.25)
    cells["t"] = cell("tf32@bs16", max_abs_error=0.0)
    assert not judges.judge_tf32(cells, "b", "t").passed


def test_compile_judge_wants_graph_pool_memory_and_fidelity():
    pairs = [("d", "r")]
    cells = {"d": cell("compile-default@bs1"), "r": cell("compile-reduce-overhead@bs1")}
    assert judges.judge_compile(cells, pairs).passed
    cells["r"] = cell("compile-reduce-overhead@bs1", cuda_graph_pool_mb=0.0)
    assert "no CUDA-graph pool memory" in judges.judge_compile(cells, pairs).reason
    cells["r"] = cell("x", status="failed", error_type="RuntimeError", error="accessing tensor output of CUDAGraphs")
    assert "CUDAGraphs" in judges.judge_compile(cells, pairs).reason


def test_compile_judge_judges_the_pairs_that_ran_and_lists_the_others():
    cells = {"d1": cell("compile-default@bs1"), "r1": cell("compile-reduce-overhead@bs1")}
    verdict = judges.judge_compile(cells, [("d1", "r1"), ("d16", "r16")])
    assert verdict.passed and verdict.observed["not_run_for_time"] == [("d16", "r16")]
    assert not judges.judge_compile({}, [("d1", "r1")]).passed


def test_noise_judge_compares_p99_under_the_core_policy_with_quiet():
    cells = {"q": cell("q"), "e": cell("e", latency_ms_p99=40.0), "p": cell("p", latency_ms_p99=13.0)}
    verdict = judges.judge_noise(cells, "q", "e", "p")
    assert verdict.passed and verdict.observed["p99_everywhere_over_quiet"] == pytest.approx(40 / 12)
    cells["p"] = cell("p", latency_ms_p99=20.0)
    assert not judges.judge_noise(cells, "q", "e", "p").passed


def test_the_oom_batch_fits_the_host_but_not_an_h200():
    batch = gpu_checks.gpu_oom_batch(141 * 10**9)
    assert 256 <= batch <= 300 and batch * 3 * 2048 * 2048 * 4 < 16 * 10**9


QUANT_CELLS = ["baseline@bs64", "int8_weight_only@bs64", "int8_dynamic@bs64", "float8@bs64", "onnxruntime@bs64"]


def quant_verdict(**overrides: dict[str, Any]) -> judges.Verdict:
    cells = {label: cell(label, **overrides.get(label.split("@")[0], {})) for label in QUANT_CELLS}
    return judges.judge_quantized(cells, QUANT_CELLS[0], QUANT_CELLS[1:3], QUANT_CELLS[3], QUANT_CELLS[4])


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


# --------------------------------------------------------------------------- the run, synthetic


class SyntheticRunner(run.Runner):
    """The GPU run's orchestration with `cell` answering from `cell()` above instead of a GPU."""

    def __init__(self, budget_seconds: float = 3600) -> None:
        super().__init__(budget_seconds)
        self.specs: dict[str, dict[str, Any]] = {}

    def cell(self, label: str, **spec: Any) -> dict[str, Any]:
        self.specs[label] = spec
        self.cells[label] = cell(label if "@" in label or label == "oom" else "x")
        return self.cells[label]


def test_a_gpu_run_on_healthy_results_passes_every_check(monkeypatch):
    loads = []
    monkeypatch.setattr(run, "cpu_load", lambda cores: loads.append(cores) or contextlib.nullcontext())
    runner = SyntheticRunner()
    results = run.run_checks(runner, GPU_CHECKS, H200)
    assert [r.name for r in results] == GPU_NAMES
    assert {r.name: r.status for r in results} == dict.fromkeys(GPU_NAMES, "pass")
    assert runner.specs["oom"]["image_size"] == 2048 and runner.specs["oom"]["batch_size"] >= 256
    assert runner.specs["compile-reduce-overhead@bs16"] == {
        "optimization": "compile",
        "compile_mode": "reduce-overhead",
        "batch_size": 16,
    }
    assert loads[1] == [8, 9] and len(loads) == 2  # every core, then the CPU worker's cores only
    assert run.summary(results) == {"pass": len(GPU_NAMES), "fail": 0, "skipped": 0, "failed": []}


def test_a_gpu_run_skips_pruning_without_torch_pruning_and_the_core_check_without_spare_cores():
    runner = SyntheticRunner()
    host = Host(gpu_uuid=UUID, memory_total_bytes=80 * 10**9, extras={"torch_pruning": None})
    results = {r.name: r for r in run.run_checks(runner, GPU_CHECKS, host)}
    pruning = results["prune_structured_fp16"]
    assert pruning.status == "skipped" and "torch-pruning" in pruning.reason
    assert results["cpu_load_and_core_policy"].status == "skipped"
    torchao = results["torchao_int8_float8_at_bs64"]
    assert torchao.status == "skipped" and "torchao" in torchao.reason
    assert not {"fp16@bs64", "quiet@bs1", "baseline@bs64"} & set(runner.specs)


def test_checks_that_read_cells_of_a_check_skipped_for_time_are_skipped_naming_it():
    runner = SyntheticRunner(budget_seconds=30)  # under the first GPU check's 60 s
    results = {r.name: r for r in run.run_checks(runner, GPU_CHECKS, H200)}
    first = results["cells_run_on_the_pinned_gpu"]
    assert first.status == "skipped" and first.reason.startswith("time budget")
    for name in ("nvml_lists_the_cell_process", "back_to_back_throughput", "tf32_vs_strict_fp32"):
        assert results[name].status == "skipped" and "cells_run_on_the_pinned_gpu" in results[name].reason
    assert results["compile_with_cuda_graphs"].status == "skipped" and not runner.cells


def test_compile_cells_stop_when_under_a_minute_is_left():
    runner = SyntheticRunner(budget_seconds=50)
    compile_now = dataclasses.replace(BY_NAME["compile_with_cuda_graphs"], estimate_s=0)
    [result] = run.run_checks(runner, [compile_now], H200)
    assert (result.status, result.reason) == ("skipped", "time budget spent before compile-default@bs1")


def test_a_check_that_breaks_is_a_failed_check_saying_what_broke():
    def broken(cells, host):
        raise KeyError("latency_ms_p99")

    check = dataclasses.replace(BY_NAME["real_cuda_oom"], judge=broken)
    [result] = run.run_checks(SyntheticRunner(), [check], H200)
    assert result.status == "fail" and result.reason == "KeyError: 'latency_ms_p99'"
