"""Every optimization through the real runner on the CPU, with tiny images and budgets."""

import json
import os
import subprocess
import sys

import pytest
import torch

from shared.catalogue import parse_chain
from shared.result import FIELD_NAMES
from shared.spec import CellSpec
from tests.conftest import REPO, tiny_spec
from worker.engine.environment import cpu_flags, effective_cpu_isa, hardware_cpu_isa, onednn_features
from worker.engine.model_stats import size_stats
from worker.engine.models import build_model
from worker.engine.run import error_type, run_cell
from worker.engine.transforms import Prepared, apply_chain

CONTRACT = [
    "model",
    "optimization",
    "batch_size",
    "image_size",
    "device",
    "device_name",
    "weights",
    "status",
    "error_type",
    "error",
    "latency_ms_mean",
    "latency_ms_std",
    "latency_ms_p50",
    "latency_ms_p90",
    "latency_ms_p99",
    "throughput_sps",
    "iterations",
    "measure_seconds",
    "prepare_seconds",
    "peak_mem_allocated_mb",
    "peak_mem_reserved_mb",
    "process_mem_mb",
    "model_size_mb",
    "model_size_compressed_mb",
    "params_total",
    "params_nonzero",
    "sparsity",
    "top1_agreement",
    "max_abs_error",
    "cosine_similarity",
    "gflops_per_sample",
    "energy_j_per_sample",
    "host",
    "torch_version",
    "started_at",
    "finished_at",
]


@pytest.fixture(scope="module")
def baseline():
    return run_cell(tiny_spec(optimization="baseline"))


def test_result_schema_keeps_the_user_facing_field_names():
    assert set(CONTRACT) <= set(FIELD_NAMES)


def test_baseline_is_measured_and_identical_to_the_fp32_reference(baseline):
    assert baseline.status == "ok", baseline.error
    assert (baseline.device, baseline.timer, baseline.weights) == ("cpu", "perf_counter_ns", "random(seed=0)")
    assert baseline.top1_agreement == 1.0 and baseline.max_abs_error == 0.0
    assert baseline.iterations >= 3 and baseline.measure_seconds > 0
    assert 0 < baseline.latency_ms_min <= baseline.latency_ms_p50 <= baseline.latency_ms_p99 <= baseline.latency_ms_max
    assert baseline.throughput_sequential_sps == pytest.approx(2 * 1000 / baseline.latency_ms_mean)
    # back to back: at least min_iters calls between one pair of timestamps
    assert baseline.throughput_iterations >= 3 and baseline.throughput_seconds > 0
    assert baseline.throughput_sps == pytest.approx(2 * baseline.throughput_iterations / baseline.throughput_seconds)
    assert baseline.achieved_tflops == pytest.approx(baseline.gflops_per_sample * baseline.throughput_sps / 1000)
    assert baseline.params_total == 7_978_856  # DenseNet-121
    # 5.67 GFLOP at 224 px scales with the pixel count; the classifier doesn't, hence the tolerance.
    assert baseline.gflops_per_sample == pytest.approx(5.67 * (32 / 224) ** 2, rel=0.1)
    assert baseline.process_mem_source == "cpu_peak_rss" and baseline.process_mem_mb > 0
    assert baseline.peak_mem_allocated_mb is None and baseline.energy_j_per_sample is None
    assert baseline.host and baseline.torch_version == torch.__version__ and baseline.cpu_threads >= 1
    assert baseline.started_at < baseline.finished_at


DISPATCH_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
ISA_FIELDS = "import json; from worker.engine.environment import cpu_isa_fields as f; print(json.dumps(f()))"
# A oneDNN convolution under verbose output before the fields are read: oneDNN's header, printed once, is gone.
ISA_FIELDS_AFTER_VERBOSE = (
    "import torch; from worker.engine.environment import _tiny_onednn_convolution as c\n"
    "with torch.backends.mkldnn.verbose(1): c()\n" + ISA_FIELDS
)


def isa_fields_in_a_subprocess(code: str, **limits: str) -> dict:
    env = {**{k: v for k, v in os.environ.items() if k not in DISPATCH_LIMITS}, **limits}
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.splitlines()[-1])


def test_every_row_records_the_effective_and_the_hardware_cpu_isa(baseline):
    assert baseline.cpu_isa == str(effective_cpu_isa()) and baseline.onednn_isa
    assert baseline.cpu_isa_hardware == str(hardware_cpu_isa())
    if not any(os.environ.get(name) for name in DISPATCH_LIMITS):  # no limit: the kernels use what the CPU has
        assert baseline.cpu_isa == baseline.cpu_isa_hardware


@pytest.mark.parametrize(
    ("onednn", "features"),
    [  # oneDNN 3.12's words under each ONEDNN_MAX_CPU_ISA, on a Xeon with AMX
        ("Intel AVX2", ""),
        ("Intel AVX2 with Intel DL Boost", "vnni"),
        ("Intel AVX-512 with AVX512BW, AVX512VL, and AVX512DQ extensions", ""),
        ("Intel AVX-512 with Intel DL Boost", "vnni"),
        ("Intel AVX-512 with Intel DL Boost and bfloat16 support", "vnni avx512_bf16"),
        ("Intel AVX 10.1", "vnni avx512_bf16"),
        ("Intel AVX10.1 and Intel AMX with bfloat16 and 8-bit integer support", "vnni avx512_bf16 amx"),
    ],
)
def test_the_int8_and_bf16_features_are_read_from_onednns_own_words(onednn, features):
    found = onednn_features(onednn)
    assert " ".join(name for name, present in found.items() if present) == features


@pytest.mark.skipif(not {"avx2", "fma"} <= (cpu_flags() or set()), reason="limiting dispatch to AVX2 needs AVX2")
def test_the_cpu_isa_is_the_one_the_dispatch_limits_leave():
    limited = isa_fields_in_a_subprocess(ISA_FIELDS, ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    assert limited == {"cpu_isa": "AVX2", "cpu_isa_hardware": str(hardware_cpu_isa()), "onednn_isa": "Intel AVX2"}
    # oneDNN's header is printed once per process: read after verbose output, it comes from a fresh interpreter
    assert isa_fields_in_a_subprocess(ISA_FIELDS_AFTER_VERBOSE, ONEDNN_MAX_CPU_ISA="AVX2")["onednn_isa"] == "Intel AVX2"


def test_prune_keeps_dense_size_shrinks_compressed_size_and_reaches_the_sparsity(baseline):
    pruned = run_cell(tiny_spec(optimization="prune"))
    assert pruned.status == "ok", pruned.error
    assert pruned.model_size_mb == pytest.approx(baseline.model_size_mb, rel=0.01)
    assert pruned.model_size_compressed_mb < 0.8 * baseline.model_size_compressed_mb
    assert pruned.sparsity == pytest.approx(0.5, abs=0.02)
    assert pruned.prune_amount == 0.5


def test_prune_leaves_no_masks_or_original_weights_in_the_state_dict():
    spec = tiny_spec(optimization="prune", prune_amount=0.3)
    built = build_model(spec)
    final, _ = apply_chain(parse_chain("prune"), Prepared(built.model, torch.device("cpu"), built.sample_shape), spec)
    keys = final.model.state_dict().keys()
    assert not [k for k in keys if k.endswith(("_orig", "_mask"))]
    assert size_stats(final.model)["sparsity"] == pytest.approx(0.3, abs=0.02)


def test_the_aa_control_measures_exactly_the_baseline_model(baseline):
    result = run_cell(tiny_spec(optimization="aa_control"))
    assert result.status == "ok", result.error
    assert result.optimization == "aa_control"
    assert (result.top1_agreement, result.max_abs_error) == (1.0, 0.0)
    for same in ("params_total", "params_nonzero", "model_size_mb", "gflops_per_sample"):
        assert getattr(result, same) == getattr(baseline, same), same


def test_structured_pruning_removes_parameters_and_keeps_the_output_shape(baseline):
    result = run_cell(tiny_spec(optimization="prune_structured"))
    assert result.status == "ok", result.error
    assert result.params_total < 0.5 * baseline.params_total
    assert result.model_size_mb < 0.5 * baseline.model_size_mb
    assert result.gflops_per_sample < baseline.gflops_per_sample
    assert result.fidelity_samples == 8  # the probe ran through the pruned model: shape unchanged


def test_structured_pruning_keeps_channel_counts_multiples_of_8_for_tensor_cores(baseline):
    spec = tiny_spec(model="resnet18", optimization="prune_structured", prune_amount=0.3)  # 64 * 0.7 = 44.8
    built = build_model(spec)
    final, _ = apply_chain(
        parse_chain(spec.optimization), Prepared(built.model, torch.device("cpu"), built.sample_shape), spec
    )
    convs = [m for m in final.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].out_channels < 64  # pruned
    assert [c.out_channels for c in convs if c.out_channels % 8] == []
    assert [c.in_channels for c in convs[1:] if c.in_channels % 8] == []  # the first takes the 3 image channels
    assert final.model.fc.in_features % 8 == 0
    assert run_cell(spec).prune_round_to == 8 and baseline.prune_round_to is None


def test_dynamic_quant_runs_on_the_cpu_and_shrinks_the_model(baseline):
    result = run_cell(tiny_spec(optimization="dynamic_quant"))
    assert result.status == "ok", result.error
    assert result.device == "cpu"
    assert result.model_size_mb < baseline.model_size_mb - 2  # 1024x1000 fp32 -> int8
    assert result.params_total == baseline.params_total
    assert result.cosine_similarity > 0.99


def test_dynamic_quant_on_cuda_is_unsupported_not_moved_to_the_cpu():
    result = run_cell(tiny_spec(optimization="dynamic_quant", device="cuda"))
    assert (result.status, result.device, result.error_type) == ("unsupported", "cuda", "unsupported_on_device")
    assert result.error == "dynamic_quant runs on cpu only, not on cuda"
    assert result.latency_ms_p50 is None and result.host


@pytest.mark.parametrize("optimization", ["fp16", "bf16", "channels_last", "bf16+channels_last"])
def test_precision_and_layout_run_on_the_cpu_and_report_their_numerics(optimization, baseline):
    result = run_cell(tiny_spec(optimization=optimization))
    assert result.status == "ok", result.error
    assert result.device == "cpu" and result.latency_ms_p50 > 0
    halves = optimization != "channels_last"
    expected_size = baseline.model_size_mb / 2 if halves else baseline.model_size_mb
    assert result.model_size_mb == pytest.approx(expected_size, rel=0.02)
    assert result.top1_agreement == 1.0
    assert 0 < result.max_abs_error < (0.1 if halves else 1e-4)


def test_torchscript_reports_preparation_apart_from_latency(baseline):
    result = run_cell(tiny_spec(optimization="torchscript"))
    assert result.status == "ok", result.error
    assert result.model_size_mb == baseline.model_size_mb
    assert result.max_abs_error < 1e-4
    assert result.prepare_seconds > result.latency_ms_min / 1000  # min: robust to a busy neighbour


def test_torch_compile_runs_and_its_compile_time_is_preparation():
    result = run_cell(tiny_spec(model="resnet18", optimization="compile"))
    assert result.status == "ok", result.error
    assert result.compile_mode == "default"
    assert result.max_abs_error < 1e-3
    assert result.prepare_seconds > 20 * result.latency_ms_min / 1000


def test_cuda_requested_on_a_host_without_one_is_a_failed_result():
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    result = run_cell(tiny_spec(device="cuda"))
    assert (result.status, result.error_type) == ("failed", "device_unavailable")


def test_an_exception_inside_the_cell_becomes_a_failed_result(tmp_path):
    wrong = tmp_path / "resnet18.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), wrong)
    result = run_cell(tiny_spec(weights=str(wrong)))
    assert (result.status, result.error_type) == ("failed", "model_error")
    assert f"weights {wrong} don't fit model densenet121" in result.error and "state_dict" in result.error
    assert "\n" not in result.error
    assert result.finished_at and result.latency_ms_p50 is None


def test_running_out_of_memory_is_reported_as_out_of_memory():
    # 4096 x 3 x 2048 x 2048 fp32 is ~206 GB: the allocator refuses it at once (no overcommit).
    with open("/proc/sys/vm/overcommit_memory") as handle:
        if handle.read().strip() == "1":
            pytest.skip("overcommit_memory=1 would let the allocation through")
    result = run_cell(tiny_spec(batch_size=4096, image_size=2048))
    assert (result.status, result.error_type) == ("failed", "out_of_memory")


def test_cuda_out_of_memory_is_classified_without_a_gpu():
    assert error_type(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")) == "out_of_memory"
    assert error_type(ValueError("bad")) == "ValueError"


@pytest.mark.parametrize(
    "message",
    [
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
        "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
        "cuFFT error: CUFFT_ALLOC_FAILED",
    ],
)
def test_cuda_library_allocation_failures_are_out_of_memory(message):
    assert error_type(RuntimeError(message)) == "out_of_memory"


def test_other_cuda_library_errors_keep_their_class():
    assert error_type(RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED")) == "RuntimeError"
    assert error_type(RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED")) == "RuntimeError"


def test_a_state_dict_file_is_loaded_and_named_with_its_hash(tmp_path):
    model = build_model(CellSpec(weights="random", seed=7)).model
    path = tmp_path / "densenet.pt"
    torch.save(model.state_dict(), path)
    loaded = build_model(CellSpec(weights=str(path), seed=0))
    assert loaded.weights.startswith(f"file:{path} sha256:")
    assert torch.equal(loaded.model.classifier.weight, model.classifier.weight)


def test_auto_weights_never_download_and_use_the_hub_cache_when_present(tmp_path, monkeypatch):
    from worker.engine import models

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    assert models.cached_checkpoint("densenet121") is None
    assert build_model(CellSpec(weights="auto", seed=0, image_size=32)).weights.startswith("synthetic(seed=0,")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "densenet121-a639ec97.pth").write_bytes(b"")
    enum, path = models.cached_checkpoint("densenet121")
    assert str(enum) == "DenseNet121_Weights.IMAGENET1K_V1" and path.endswith("densenet121-a639ec97.pth")


@pytest.mark.gpu
@pytest.mark.parametrize("optimization", ["baseline", "fp16"])
def test_gpu_cells_use_cuda_events_and_report_allocator_and_nvml_memory(optimization):
    result = run_cell(tiny_spec(optimization=optimization, device="cuda", batch_size=8, min_iters=20))
    assert result.status == "ok", result.error
    assert (result.device, result.timer) == ("cuda", "cuda_event")
    assert result.peak_mem_allocated_mb > 0 and result.peak_mem_reserved_mb >= result.peak_mem_allocated_mb
    assert result.device_name and result.gpu_uuid.startswith("GPU-") and result.cudnn_benchmark is True
    if result.process_mem_source:
        assert result.process_mem_mb > result.peak_mem_reserved_mb  # NVML adds the CUDA context


@pytest.mark.gpu
def test_gpu_out_of_memory_is_a_real_cuda_oom_and_a_failed_result():
    from worker.gpu_check.checks import gpu_oom_batch  # the batch the GPU check uses (tested in test_gpu_check.py)

    batch = gpu_oom_batch(torch.cuda.get_device_properties(0).total_memory)
    model = build_model(CellSpec(weights="random")).model.cuda()
    inputs = torch.randn(batch, 3, 2048, 2048).cuda()  # fits: the activations don't
    with pytest.raises(torch.cuda.OutOfMemoryError), torch.inference_mode():
        model(inputs)
    del model, inputs
    torch.cuda.empty_cache()
    result = run_cell(tiny_spec(device="cuda", batch_size=batch, image_size=2048))
    assert (result.status, result.error_type) == ("failed", "out_of_memory")
    assert "CUDA out of memory" in result.error  # CUDA's refusal, not the host allocator's
