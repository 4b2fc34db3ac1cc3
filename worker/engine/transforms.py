"""How each optimization prepares a model: named transforms that compose left to right with `+`.

Each transform is a small function from a `Prepared` (model + the dtype, memory format and device
its inputs must have) to a new `Prepared`, registered under its catalogue name with `@transform("fp16")`.
Everything else about an optimization (how it composes, where it runs, what it needs installed) is its
catalogue entry's (`shared/catalogue.py`), which `unsupported_here` reads.
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

from shared.catalogue import OPTIMIZATIONS, Optimization, pinned
from shared.models import shape_text
from worker.engine import onnx_runtime, quantize
from worker.engine.environment import effective_cpu_isa
from worker.engine.models import make_inputs
from worker.engine.precision import capability_shortfall, set_tf32

if TYPE_CHECKING:
    from shared.spec import CellSpec

# Structured pruning keeps channel counts that are multiples of this: fp16/bf16 tensor-core kernels
# (cuDNN, cuBLAS) need multiples of 8, and an odd count falls back to slower kernels.
PRUNE_ROUND_TO = 8
# int8_static's calibration set: this many seeded normal samples (in batches of the cell's batch size),
# from seeds apart from the timed, probe and `synthetic` weights' inputs.
CALIBRATION_SAMPLES = 32
CALIBRATION_SEED_OFFSET = 2000
# Engine constants that rows record (catalogue `knobs` that are not cell spec fields).
SETTINGS: dict[str, Any] = {"prune_round_to": PRUNE_ROUND_TO}


@dataclass(frozen=True)
class Prepared:
    """A model ready to run and the form its inputs must take."""

    model: nn.Module
    device: torch.device
    sample_shape: tuple[int, ...]  # one input sample's shape (`models.BuiltModel.sample_shape`)
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

    def inputs(self, batch_size: int, seed: int) -> torch.Tensor:
        return make_inputs(
            batch_size,
            self.sample_shape,
            device=self.device,
            dtype=self.dtype,
            memory_format=self.memory_format,
            seed=seed,
        )


Transform = Callable[[Prepared, "CellSpec"], Prepared]
# Why a step can't run on a device, beyond what its catalogue entry declares (None if it can).
Check = Callable[[torch.device], str | None]
# The code of each optimization in the catalogue, by name (a test keeps the two equal), and the extra checks.
TRANSFORMS: dict[str, Transform] = {}
CHECKS: dict[str, Check] = {}


def transform(name: str, check: Check | None = None) -> Callable[[Transform], Transform]:
    """Register the decorated function as the transform of the catalogue's optimization `name`.

    `check(device)`, when given, says why the step can't run on that device for a reason only code can find
    (which providers an installed runtime has); what the catalogue declares is checked from the catalogue.
    """
    if name not in OPTIMIZATIONS:
        raise KeyError(f"{name!r} is not in the catalogue (shared/catalogue.py): declare it there first")

    def register(function: Transform) -> Transform:
        if name in TRANSFORMS:
            raise ValueError(f"{name!r} has two transforms")
        TRANSFORMS[name] = function
        if check is not None:
            CHECKS[name] = check
        return function

    return register


@transform("baseline")
@transform("aa_control")  # the same model measured as another cell: an A/A test
def _baseline(prepared: Prepared, spec: CellSpec) -> Prepared:
    return prepared


def _to_dtype(dtype: torch.dtype) -> Callable[[Prepared, CellSpec], Prepared]:
    def apply(prepared: Prepared, spec: CellSpec) -> Prepared:
        return replace(prepared, model=prepared.model.to(dtype), dtype=dtype)

    return apply


transform("fp16")(_to_dtype(torch.float16))
transform("bf16")(_to_dtype(torch.bfloat16))


@transform("tf32")
def _tf32(prepared: Prepared, spec: CellSpec) -> Prepared:
    """Let fp32 convolutions and matmuls use TF32 (tensor cores, Ampere+); the model stays fp32.

    The fp32 reference was recorded before, in strict fp32, so fidelity shows what TF32 costs. On the
    CPU this is torch's matmul precision `high`, which oneDNN honours only where the CPU has it.
    """
    set_tf32(True)
    return prepared


@transform("channels_last")
def _channels_last(prepared: Prepared, spec: CellSpec) -> Prepared:
    model = prepared.model.to(memory_format=torch.channels_last)
    return replace(prepared, model=model, memory_format=torch.channels_last)


@transform("prune")
def _prune_unstructured(prepared: Prepared, spec: CellSpec) -> Prepared:
    """L1 unstructured pruning per conv/linear weight, made permanent: no weight_orig/weight_mask left."""
    for module in prepared.model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            prune.l1_unstructured(module, "weight", amount=spec.prune_amount)
            prune.remove(module, "weight")
    return prepared


@transform("prune_structured")
def _prune_structured(prepared: Prepared, spec: CellSpec) -> Prepared:
    """Remove whole conv channels (L1 magnitude) with torch-pruning, which follows DenseNet's concats.

    Linear layers keep their outputs so the model still predicts the same classes; the output shape
    is checked before and after. Kept channel counts are rounded down to multiples of PRUNE_ROUND_TO.
    """
    import torch_pruning

    model = prepared.model
    example = prepared.inputs(1, seed=spec.seed)
    with torch.no_grad():
        shape_before = model(example).shape
    params_before = sum(p.numel() for p in model.parameters())
    with warnings.catch_warnings():  # "unwrapped parameters" (a ViT's class token): said below when nothing is removed
        warnings.simplefilter("ignore", UserWarning)
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
    if sum(p.numel() for p in model.parameters()) == params_before:
        convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        listed = ", ".join(convs[:3]) + (f" and {len(convs) - 3} more" if len(convs) > 3 else "")
        raise NotApplicable(
            "removed no channel: it prunes Conv2d output channels and keeps every Linear layer "
            + (f"whole, and this model's Conv2d layers ({listed}) feed only layers it keeps" if convs else "whole, "
               "and this model has no Conv2d layer")
        )  # fmt: skip
    return prepared


@transform("dynamic_quant")
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


for _name in quantize.TORCHAO_CONFIGS:
    transform(_name)(_torchao(_name))


@transform("int8_static")
def _int8_static(prepared: Prepared, spec: CellSpec) -> Prepared:
    """PT2E static int8 calibrated on a seeded set, compiled by inductor (`quantize.int8_static`)."""
    batches = math.ceil(CALIBRATION_SAMPLES / spec.batch_size)
    seed = spec.seed + CALIBRATION_SEED_OFFSET
    calibration = [prepared.inputs(spec.batch_size, seed=seed + i) for i in range(batches)]
    reduce_range = quantize.wants_reduce_range(effective_cpu_isa())
    converted, compiled, layers = quantize.int8_static(prepared.model, calibration, reduce_range)
    described = f"normal(seed={seed}, samples={batches * spec.batch_size}, {shape_text(prepared.sample_shape)})"
    prepared = replace(prepared, model=compiled, artifact=converted, reference=converted)
    return _with_fields(prepared, calibration=described, quantized_layers=layers, reduce_range=reduce_range)


def _ort_cuda_unsupported_reason(device: torch.device) -> str | None:
    """On CUDA, ONNX Runtime needs the onnxruntime-gpu package (the same module, with the CUDA provider)."""
    if device.type != "cuda":
        return None
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return None
    version = pinned("onnxruntime").partition("==")[2]
    return (
        "onnxruntime on cuda needs onnxruntime-gpu, which is not installed here (the onnxruntime package has "
        f"the CPU provider only): install onnxruntime-gpu=={version} in place of onnxruntime"
    )


@transform("onnxruntime", check=_ort_cuda_unsupported_reason)
def _onnxruntime(prepared: Prepared, spec: CellSpec) -> Prepared:
    """Exported with torch.onnx.export (dynamo) at the cell's input shape, run by ONNX Runtime on this device."""
    example = prepared.inputs(spec.batch_size, seed=spec.seed)
    onnx_model, opset = onnx_runtime.export(prepared.model, example)
    session = onnx_runtime.OrtModel(onnx_model, example, threads=torch.get_num_threads())
    prepared = replace(prepared, model=session, artifact=onnx_model)
    return _with_fields(prepared, execution_provider=session.provider, onnx_opset=opset)


def _with_fields(prepared: Prepared, **fields: Any) -> Prepared:
    return replace(prepared, fields={**prepared.fields, **fields})


@transform("torchscript")
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


@transform("compile")
def _compile(prepared: Prepared, spec: CellSpec) -> Prepared:
    mode = None if spec.compile_mode == "default" else spec.compile_mode
    return replace(prepared, model=torch.compile(prepared.model, mode=mode))


class NotApplicable(Exception):
    """A step that does not apply to this model (nothing for it to change): the cell is `unsupported`, with why."""


class StepFailed(Exception):
    """A step of the chain raised `cause`: the row's error names the step (`run.failure_text`)."""

    def __init__(self, step: str, cause: Exception) -> None:
        super().__init__(f"{step}: {cause}")
        self.step, self.cause = step, cause


def apply_chain(chain: list[Optimization], prepared: Prepared, spec: CellSpec) -> tuple[Prepared, Prepared]:
    """Apply the steps in order. Returns (final, eager): `eager` is the model before an opaque step.
    A step that raises raises StepFailed, naming it."""
    eager = prepared
    for opt in chain:
        try:
            prepared = TRANSFORMS[opt.name](prepared, spec)
        except Exception as exc:
            raise StepFailed(opt.name, exc) from exc
        if not opt.opaque:
            eager = prepared
    return prepared, eager


def unsupported_here(chain: list[Optimization], device: torch.device) -> str | None:
    """Why the chain can't run on this device or with these packages, beyond the catalogue's (None if it can).

    In this order, each over the whole chain: a missing package, a GPU below the step's compute capability,
    a CPU of another architecture, then the steps' own checks (`transform(name, check=...)`).
    """
    for opt in chain:
        if missing := missing_package(opt.name):
            return f"{opt.name} needs {missing.partition('==')[0]}, which is not installed here: install {missing}"
    for opt in chain:
        if opt.min_capability and (
            reason := capability_shortfall(device, opt.min_capability, opt.capability_shortfall_text())
        ):
            return reason
    for opt in chain:
        if reason := opt.architecture_refusal(platform.machine()):
            return reason
    for opt in chain:
        if opt.name in CHECKS and (reason := CHECKS[opt.name](device)):
            return reason
    return None


def missing_package(optimization: str) -> str | None:
    """The pinned requirement of the first package `optimization` needs that can't be imported here."""
    for requirement in OPTIMIZATIONS[optimization].packages:
        try:
            importlib.import_module(requirement.partition("==")[0].replace("-", "_"))
        except ImportError:
            return requirement
    return None
