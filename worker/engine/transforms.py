"""How each optimization prepares a model: named transforms that compose left to right with `+`.

Each transform is a small function from a `Prepared` (model + the dtype, memory format and device
its inputs must have) to a new `Prepared`. Which optimizations exist, how they compose and where
they run is the catalogue's (`shared/catalogue.py`); `TRANSFORMS` maps each of its names to code.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import platform
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.utils import prune

from worker.engine import onnx_runtime, quantize
from worker.engine.environment import effective_cpu_isa
from worker.engine.models import make_inputs
from worker.engine.precision import capability_shortfall, set_tf32

if TYPE_CHECKING:
    from shared.catalogue import Optimization
    from shared.spec import CellSpec

# Structured pruning keeps channel counts that are multiples of this: fp16/bf16 tensor-core kernels
# (cuDNN, cuBLAS) need multiples of 8, and an odd count falls back to slower kernels.
PRUNE_ROUND_TO = 8
# int8_static's calibration set: this many seeded normal samples (in batches of the cell's batch size),
# from seeds apart from the timed, probe and `synthetic` weights' inputs.
CALIBRATION_SAMPLES = 32
CALIBRATION_SEED_OFFSET = 2000
# Steps that need tensor cores of a minimum CUDA compute capability, and what their refusal says.
MIN_CAPABILITY = {
    "tf32": ((8, 0), "tf32 needs compute capability 8.0 (Ampere) or newer"),
    "float8": ((8, 9), "float8 needs compute capability 8.9 or newer (H100, H200, L4, RTX 40 and newer)"),
}
# What each optimization imports beyond torch, and the pinned requirement to install (pyproject's worker extra).
PACKAGES: dict[str, tuple[tuple[str, str], ...]] = {
    **{
        name: (("torchao", "torchao==0.18.0"),)
        for name in ("int8_weight_only", "int8_dynamic", "float8", "int8_static")
    },
    "onnxruntime": (
        ("onnxruntime", "onnxruntime==1.31.1"),
        ("onnx", "onnx==1.23.2"),
        ("onnxscript", "onnxscript==0.7.2"),
    ),
}


@dataclass(frozen=True)
class Prepared:
    """A model ready to run and the form its inputs must take."""

    model: nn.Module
    device: torch.device
    dtype: torch.dtype = torch.float32
    memory_format: torch.memory_format = torch.contiguous_format
    # What is stored when it isn't the eager model's state dict (the int8 graph, the ONNX file): its size is
    # the row's model size.
    artifact: nn.Module | bytes | None = None
    # Result fields a step records about itself (execution provider, opset, calibration set, quantized layers).
    fields: dict[str, Any] = field(default_factory=dict)
    # The model whose arithmetic `model`'s kernels implement, where one exists (int8_static: the converted graph
    # run eagerly): fidelity is then also split into the reference's error and the kernels' (`run._prepare`).
    reference: nn.Module | None = None

    def inputs(self, batch_size: int, image_size: int, seed: int) -> torch.Tensor:
        return make_inputs(
            batch_size,
            image_size,
            device=self.device,
            dtype=self.dtype,
            memory_format=self.memory_format,
            seed=seed,
        )


def _baseline(prepared: Prepared, spec: CellSpec) -> Prepared:
    return prepared


def _to_dtype(dtype: torch.dtype) -> Callable[[Prepared, CellSpec], Prepared]:
    def apply(prepared: Prepared, spec: CellSpec) -> Prepared:
        return replace(prepared, model=prepared.model.to(dtype), dtype=dtype)

    return apply


def _tf32(prepared: Prepared, spec: CellSpec) -> Prepared:
    """Let fp32 convolutions and matmuls use TF32 (tensor cores, Ampere+); the model stays fp32.

    The fp32 reference was recorded before, in strict fp32, so fidelity shows what TF32 costs. On the
    CPU this is torch's matmul precision `high`, which oneDNN honours only where the CPU has it.
    """
    set_tf32(True)
    return prepared


def _channels_last(prepared: Prepared, spec: CellSpec) -> Prepared:
    model = prepared.model.to(memory_format=torch.channels_last)
    return replace(prepared, model=model, memory_format=torch.channels_last)


def _prune_unstructured(prepared: Prepared, spec: CellSpec) -> Prepared:
    """L1 unstructured pruning per conv/linear weight, made permanent: no weight_orig/weight_mask left."""
    for module in prepared.model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            prune.l1_unstructured(module, "weight", amount=spec.prune_amount)
            prune.remove(module, "weight")
    return prepared


def _prune_structured(prepared: Prepared, spec: CellSpec) -> Prepared:
    """Remove whole conv channels (L1 magnitude) with torch-pruning, which follows DenseNet's concats.

    Linear layers keep their outputs so the model still predicts the same classes; the output shape
    is checked before and after. Kept channel counts are rounded down to multiples of PRUNE_ROUND_TO.
    """
    import torch_pruning

    model = prepared.model
    example = prepared.inputs(1, spec.image_size, seed=spec.seed)
    with torch.no_grad():
        shape_before = model(example).shape
    pruner = torch_pruning.pruner.MagnitudePruner(
        model,
        example,
        importance=torch_pruning.importance.MagnitudeImportance(p=1),
        pruning_ratio=spec.prune_amount,
        ignored_layers=[m for m in model.modules() if isinstance(m, nn.Linear)],
        round_to=PRUNE_ROUND_TO,
    )
    pruner.step()
    model.eval()
    with torch.no_grad():
        shape_after = model(example).shape
    if shape_after != shape_before:
        raise RuntimeError(f"structured pruning changed the output shape {shape_before} -> {shape_after}")
    return prepared


def _dynamic_quant(prepared: Prepared, spec: CellSpec) -> Prepared:
    """int8 weights for nn.Linear, activations quantized on the fly: CPU (fbgemm/x86) kernels only."""
    layers = quantize.layer_counts(prepared.model)
    with _quiet_deprecations():
        model = torch.ao.quantization.quantize_dynamic(prepared.model, {nn.Linear}, dtype=torch.qint8)
    quantized = Counter("Linear" for m in model.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear))
    return _with_fields(replace(prepared, model=model), quantized_layers=quantize.coverage(quantized, layers))


def _torchao(optimization: str) -> Callable[[Prepared, CellSpec], Prepared]:
    """torchao's quantize_ of nn.Linear: int8_weight_only, int8_dynamic or float8 (`quantize.TORCHAO_CONFIGS`)."""

    def apply(prepared: Prepared, spec: CellSpec) -> Prepared:
        then_compiled = "compile" in spec.optimization.split("+")
        layers = quantize.torchao_quantize(prepared.model, optimization, tune_inductor=then_compiled)
        return _with_fields(prepared, quantized_layers=layers)

    return apply


def _int8_static(prepared: Prepared, spec: CellSpec) -> Prepared:
    """PT2E static int8 calibrated on a seeded set, compiled by inductor (`quantize.int8_static`)."""
    batches = math.ceil(CALIBRATION_SAMPLES / spec.batch_size)
    seed = spec.seed + CALIBRATION_SEED_OFFSET
    calibration = [prepared.inputs(spec.batch_size, spec.image_size, seed=seed + i) for i in range(batches)]
    reduce_range = quantize.wants_reduce_range(effective_cpu_isa())
    converted, compiled, layers = quantize.int8_static(prepared.model, calibration, reduce_range)
    described = f"normal(seed={seed}, samples={batches * spec.batch_size}, {spec.image_size} px)"
    prepared = replace(prepared, model=compiled, artifact=converted, reference=converted)
    return _with_fields(prepared, calibration=described, quantized_layers=layers, reduce_range=reduce_range)


def _onnxruntime(prepared: Prepared, spec: CellSpec) -> Prepared:
    """Exported with torch.onnx.export (dynamo) at the cell's input shape, run by ONNX Runtime on this device."""
    example = prepared.inputs(spec.batch_size, spec.image_size, seed=spec.seed)
    onnx_model, opset = onnx_runtime.export(prepared.model, example)
    session = onnx_runtime.OrtModel(onnx_model, example, threads=torch.get_num_threads())
    prepared = replace(prepared, model=session, artifact=onnx_model)
    return _with_fields(prepared, execution_provider=session.provider, onnx_opset=opset)


def _with_fields(prepared: Prepared, **fields: Any) -> Prepared:
    return replace(prepared, fields={**prepared.fields, **fields})


def _torchscript(prepared: Prepared, spec: CellSpec) -> Prepared:
    with _quiet_deprecations():
        model = torch.jit.freeze(torch.jit.script(prepared.model.eval()))
    return replace(prepared, model=model)


@contextlib.contextmanager
def _quiet_deprecations() -> Iterator[None]:
    """torch.ao.quantization and TorchScript warn that they are deprecated (see README); keep it out of results."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        yield


def _compile(prepared: Prepared, spec: CellSpec) -> Prepared:
    mode = None if spec.compile_mode == "default" else spec.compile_mode
    return replace(prepared, model=torch.compile(prepared.model, mode=mode))


# The transform of each optimization in the catalogue (`shared/catalogue.py`), by name.
TRANSFORMS: dict[str, Callable[[Prepared, CellSpec], Prepared]] = {
    "baseline": _baseline,
    "aa_control": _baseline,  # the same model measured as another cell: an A/A test
    "tf32": _tf32,
    "fp16": _to_dtype(torch.float16),
    "bf16": _to_dtype(torch.bfloat16),
    "channels_last": _channels_last,
    "prune": _prune_unstructured,
    "prune_structured": _prune_structured,
    "dynamic_quant": _dynamic_quant,
    **{name: _torchao(name) for name in quantize.TORCHAO_CONFIGS},
    "int8_static": _int8_static,
    "onnxruntime": _onnxruntime,
    "torchscript": _torchscript,
    "compile": _compile,
}


def apply_chain(chain: list[Optimization], prepared: Prepared, spec: CellSpec) -> tuple[Prepared, Prepared]:
    """Apply the steps in order. Returns (final, eager): `eager` is the model before an opaque step."""
    eager = prepared
    for opt in chain:
        prepared = TRANSFORMS[opt.name](prepared, spec)
        if not opt.opaque:
            eager = prepared
    return prepared, eager


def unsupported_here(chain: list[Optimization], device: torch.device) -> str | None:
    """Why the chain can't run on this device or with these packages, beyond the catalogue's (None if it can)."""
    names = [opt.name for opt in chain]
    for name in names:
        missing = missing_package(name)
        if missing:
            return f"{name} needs {missing.partition('==')[0]}, which is not installed here: install {missing}"
    for name in names:
        if name in MIN_CAPABILITY and (reason := capability_shortfall(device, *MIN_CAPABILITY[name])):
            return reason
    if "int8_static" in names and platform.machine().lower() not in ("x86_64", "amd64"):
        return f"int8_static uses the X86InductorQuantizer's oneDNN kernels: x86-64 only, not {platform.machine()}"
    if "onnxruntime" in names and device.type == "cuda":
        return _ort_cuda_unsupported_reason()
    return None


def missing_package(optimization: str) -> str | None:
    """The pinned requirement of the first package `optimization` needs that can't be imported here."""
    for module, requirement in PACKAGES.get(optimization, ()):
        try:
            importlib.import_module(module)
        except ImportError:
            return requirement
    return None


def _ort_cuda_unsupported_reason() -> str | None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return None
    return (
        "onnxruntime on cuda needs onnxruntime-gpu, which is not installed here (the onnxruntime package has "
        "the CPU provider only): install onnxruntime-gpu==1.31.1 in place of onnxruntime"
    )
