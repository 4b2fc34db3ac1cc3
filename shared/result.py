"""The result of one cell: the one schema whose field names are the CSV columns (no torch import).

Units: latency in milliseconds per batch, throughput in samples per second, memory and sizes in
MiB (2**20 bytes), energy in joules, times in seconds, timestamps in UTC ISO 8601.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

MIB = 2**20  # bytes in the MiB of every `_mb` field


class Status(str, Enum):
    """A run's status: a result's (ok, failed, unsupported), or, before it has one, where it stands."""

    OK = "ok"
    FAILED = "failed"
    UNSUPPORTED = "unsupported"  # the optimization can't run on this device: said, never run elsewhere
    QUEUED = "queued"
    RUNNING = "running"
    LOST = "lost"  # running on a worker that stopped beating; the broker hands it to another

    def __str__(self) -> str:
        return self.value


STATUSES = (Status.OK.value, Status.FAILED.value, Status.UNSUPPORTED.value)


@dataclass
class CellResult:
    # What was asked
    model: str
    optimization: str
    batch_size: int
    image_size: int
    requested_device: str
    model_kwargs: str | None = None  # the builder's keyword arguments as JSON, null when none
    # Where it ran and whether it worked
    device: str | None = None
    device_name: str | None = None
    weights: str | None = None
    # The model as built, before any optimization (worker/engine/models.py): one sample's shape (`3x224x224`),
    # where its code came from and the SHA-256 of its source file (the collector refuses a cell measured with
    # different code), its parameters and GFLOPs per sample, and which output fidelity compares
    input_shape: str | None = None
    model_source: str | None = None
    model_sha256: str | None = None
    model_params: int | None = None
    model_gflops: float | None = None
    model_output: str | None = None  # `tensor`, or the first tensor of a tuple or dict: `dict['logits'] of 2`
    status: str = Status.FAILED.value
    error_type: str | None = None
    error: str | None = None
    # Latency and throughput of the timed phase
    latency_ms_mean: float | None = None
    latency_ms_std: float | None = None
    latency_ms_min: float | None = None
    latency_ms_p50: float | None = None
    latency_ms_p90: float | None = None
    latency_ms_p99: float | None = None
    latency_ms_max: float | None = None
    latency_spread: float | None = None
    throughput_sps: float | None = None  # back to back (worker/engine/measure.py)
    throughput_sequential_sps: float | None = None  # batch_size / mean per-call latency
    throughput_iterations: int | None = None
    throughput_seconds: float | None = None
    iterations: int | None = None
    measure_seconds: float | None = None
    warmup_iterations: int | None = None
    warmup_seconds: float | None = None
    target_spread: float | None = None
    stability_reached: bool | None = None
    # Why the call counts are below the budget's: calls of 0.5 s or more are counted, not timed for seconds
    # (worker/engine/measure.py), e.g. `calls of 4.62 s (>= 0.5 s) counted, ...: 2 warm-up, 3 timed, 3 back-to-back`
    reduced_counts: str | None = None
    # The in-run reference (worker/engine/measure.py, `time_against_reference`): the optimized model's calls per
    # second over an eager fp32 copy's in the same process, alternating blocks; > 1 is faster. What verdicts read
    # (results/verdicts.py). `reference_status` is `measured`, or `none: why` (then verdicts pair runs across
    # processes); `reference_pair_sd` is the SD of the pairs' log ratios within the run
    reference_status: str | None = None
    reference_ratio: float | None = None
    reference_pair_sd: float | None = None
    reference_pairs: int | None = None
    reference_seconds: float | None = None
    timer: str | None = None
    prepare_seconds: float | None = None
    # Memory
    peak_mem_allocated_mb: float | None = None
    peak_mem_reserved_mb: float | None = None
    process_mem_mb: float | None = None
    process_mem_source: str | None = None
    cuda_graph_pool_mb: float | None = None
    # Model size
    model_size_mb: float | None = None
    model_size_compressed_mb: float | None = None
    params_total: int | None = None
    params_nonzero: int | None = None
    sparsity: float | None = None
    # Fidelity against the fp32 model on the same device
    top1_agreement: float | None = None
    max_abs_error: float | None = None
    cosine_similarity: float | None = None
    fidelity_samples: int | None = None
    # Fidelity, sizes and FLOPs are the same in every run of a cell: `measured` by this run, or `cached: measured
    # <started_at> on <host> (key ...)`, an earlier run's on this host with the same model, weights and code
    facts_source: str | None = None
    # Fidelity split where the optimization has a reference model (int8_static: the converted int8 graph run
    # eagerly, quantize/dequantize in fp32; null for the others): `quant_` is the reference against the fp32
    # model (the quantization's error), `kernel_` the measured model against the reference (the kernels' error)
    quant_top1_agreement: float | None = None
    quant_max_abs_error: float | None = None
    quant_cosine_similarity: float | None = None
    kernel_top1_agreement: float | None = None
    kernel_max_abs_error: float | None = None
    kernel_cosine_similarity: float | None = None
    # What else the machine was doing during the timed phase (see worker/engine/trackers.py, `Noise`)
    noise_cpu_wait_fraction: float | None = None
    noise_cpu_steal_fraction: float | None = None
    noise_load_avg: float | None = None
    noise_gpu_sm_clock_mhz: float | None = None
    noise_gpu_other_processes: int | None = None
    gpu_power_limit_w: float | None = None
    # Work and energy
    gflops_per_sample: float | None = None
    achieved_tflops: float | None = None
    energy_j_per_sample: float | None = None
    energy_source: str | None = None
    # Knobs that change what was measured
    prune_amount: float | None = None
    prune_round_to: int | None = None
    compile_mode: str | None = None
    seed: int | None = None
    # What the quantizing and runtime steps did (null for the others)
    quantized_layers: str | None = None  # quantized out of all Conv2d/Linear layers: `Conv2d 0/120, Linear 1/1`
    calibration: str | None = None  # int8_static's calibration set: `normal(seed=2000, samples=32, 224 px)`
    reduce_range: bool | None = None  # int8_static: activations in 7 bits (0-127), chosen where oneDNN has no VNNI
    execution_provider: str | None = None  # onnxruntime: CPUExecutionProvider or CUDAExecutionProvider
    onnx_opset: int | None = None
    # Environment
    host: str | None = None
    gpu_uuid: str | None = None
    gpu_driver: str | None = None
    cuda_version: str | None = None
    cudnn_version: int | None = None
    compute_capability: str | None = None
    tf32_matmul: bool | None = None
    tf32_cudnn: bool | None = None
    cudnn_benchmark: bool | None = None
    cpu_model: str | None = None
    # The CPU's instruction-set level and int8/bf16 features, `AVX512 vnni avx512_bf16 amx` or `AVX2`: torch's CPU
    # capability, then VNNI, AVX-512 BF16 and AMX where the kernels use them. `cpu_isa` is the effective one (what
    # ATen, inductor and oneDNN dispatch to, after ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA); `cpu_isa_hardware`
    # what /proc/cpuinfo says the CPU has (it differs only under such a limit); `onednn_isa` oneDNN's own words
    cpu_isa: str | None = None
    cpu_isa_hardware: str | None = None
    onednn_isa: str | None = None  # `Intel AVX2`, as oneDNN's verbose header says it; null without oneDNN
    cpu_threads: int | None = None
    cpu_cores: str | None = None
    torch_version: str | None = None
    torchvision_version: str | None = None
    torchao_version: str | None = None  # null when not installed
    onnxruntime_version: str | None = None  # onnxruntime or onnxruntime-gpu; null when not installed
    python_version: str | None = None
    started_at: str | None = None
    finished_at: str | None = None

    @classmethod
    def for_spec(cls, spec: Any, **fields: Any) -> CellResult:
        """A result for `spec` (a CellSpec): what was asked, plus `fields`."""
        asked = {
            "model": spec.model,
            "optimization": spec.optimization,
            "batch_size": spec.batch_size,
            "image_size": spec.image_size,
            "requested_device": spec.device,
            "model_kwargs": json.dumps(spec.model_kwargs, sort_keys=True) if spec.model_kwargs else None,
            "seed": spec.seed,
        }
        return cls(**asked, **fields)

    @classmethod
    def failed(cls, asked: Any, error_type: str, error: str, **fields: Any) -> CellResult:
        """A failed result for `asked`: a CellSpec, or the spec dict a task carried (possibly invalid)."""
        if hasattr(asked, "cell_id"):  # a CellSpec
            result = cls.for_spec(asked)
        else:  # whatever a task carried: keep what can be read of it
            fields_ = asked if isinstance(asked, dict) else {}
            known = {name: fields_.get(name) for name in ("model", "optimization", "batch_size", "image_size", "seed")}
            result = cls(**{**known, "requested_device": fields_.get("device")})
        result.update({"status": Status.FAILED.value, "error_type": error_type, "error": error, **fields})
        return result

    def update(self, values: dict[str, Any]) -> None:
        for name, value in values.items():
            if name not in FIELD_NAMES:
                raise KeyError(f"CellResult has no field {name!r}")
            setattr(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: non-finite floats become None."""
        return {
            name: None if isinstance(value, float) and not math.isfinite(value) else value
            for name, value in dataclasses.asdict(self).items()
        }


FIELD_NAMES: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(CellResult))
