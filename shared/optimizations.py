"""Optimizations: named transforms of a prepared model that compose left to right with `+`.

Each optimization is a small function from a `Prepared` (model + the dtype, memory format and
device its inputs must have) to a new `Prepared`. The registry at the bottom is the one list of
what exists. `parse_chain("fp16+channels_last")` validates a name; `unsupported_reason` says why a
chain can't run on a device, so that a cell reports `unsupported` instead of running elsewhere.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils import prune

from shared.errors import OptbenchError
from shared.models import make_inputs

if TYPE_CHECKING:
    from shared.spec import CellSpec


@dataclass(frozen=True)
class Prepared:
    """A model ready to run and the form its inputs must take."""

    model: nn.Module
    device: torch.device
    dtype: torch.dtype = torch.float32
    memory_format: torch.memory_format = torch.contiguous_format

    def inputs(self, batch_size: int, image_size: int, seed: int) -> torch.Tensor:
        return make_inputs(
            batch_size,
            image_size,
            device=self.device,
            dtype=self.dtype,
            memory_format=self.memory_format,
            seed=seed,
        )


@dataclass(frozen=True)
class Optimization:
    name: str
    apply: Callable[[Prepared, CellSpec], Prepared]
    summary: str
    devices: tuple[str, ...] = ("cpu", "cuda")
    # Sets the numeric format of weights and activations; a chain holds at most one.
    sets_precision: bool = False
    # Wraps the model in a graph (TorchScript, torch.compile) that hides its modules and tensors;
    # it must come last, and size and FLOPs are read from the model before it.
    opaque: bool = False


def _baseline(prepared: Prepared, spec: CellSpec) -> Prepared:
    return prepared


def _to_dtype(dtype: torch.dtype) -> Callable[[Prepared, CellSpec], Prepared]:
    def apply(prepared: Prepared, spec: CellSpec) -> Prepared:
        return replace(prepared, model=prepared.model.to(dtype), dtype=dtype)

    return apply


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
    is checked before and after.
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
    with _quiet_deprecations():
        model = torch.ao.quantization.quantize_dynamic(prepared.model, {nn.Linear}, dtype=torch.qint8)
    return replace(prepared, model=model)


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


REGISTRY: dict[str, Optimization] = {
    opt.name: opt
    for opt in [
        Optimization("baseline", _baseline, "fp32 eager, eval() and inference_mode"),
        Optimization("fp16", _to_dtype(torch.float16), "model and inputs cast to float16", sets_precision=True),
        Optimization("bf16", _to_dtype(torch.bfloat16), "model and inputs cast to bfloat16", sets_precision=True),
        Optimization("channels_last", _channels_last, "NHWC memory format for model and inputs"),
        Optimization("prune", _prune_unstructured, "L1 unstructured pruning of conv/linear weights (zeros)"),
        Optimization("prune_structured", _prune_structured, "conv channels removed (torch-pruning, L1)"),
        Optimization(
            "dynamic_quant",
            _dynamic_quant,
            "nn.Linear int8 dynamic quantization (CPU only)",
            devices=("cpu",),
            sets_precision=True,
        ),
        Optimization("torchscript", _torchscript, "torch.jit.script + torch.jit.freeze", opaque=True),
        Optimization("compile", _compile, "torch.compile (mode from --compile-mode)", opaque=True),
    ]
}


def parse_chain(text: str) -> list[Optimization]:
    """`fp16+channels_last` -> the two optimizations, after checking the chain makes sense."""
    if not isinstance(text, str) or not text.strip():
        raise OptbenchError(f"optimization must be a non-empty name such as baseline (got {text!r})")
    names = [part.strip() for part in text.split("+")]
    unknown = [name for name in names if name not in REGISTRY]
    if unknown:
        raise OptbenchError(f"unknown optimization {unknown[0]!r}: valid names are {', '.join(REGISTRY)} (join with +)")
    if len(set(names)) != len(names):
        raise OptbenchError(f"optimization {text!r} names the same step twice")
    chain = [REGISTRY[name] for name in names]
    precisions = [opt.name for opt in chain if opt.sets_precision]
    if len(precisions) > 1:
        raise OptbenchError(f"optimization {text!r} sets the precision twice ({' and '.join(precisions)})")
    if any(opt.opaque for opt in chain[:-1]):
        raise OptbenchError(f"in {text!r}, torchscript or compile must be the last step")
    if "baseline" in names and len(names) > 1:
        raise OptbenchError(f"baseline is the plain fp32 model and can't be combined ({text!r})")
    return chain


def preferred_device(chain: list[Optimization], cuda_available: bool) -> str:
    """The device `--device auto` resolves to: CUDA when present and every step runs there, else CPU."""
    if cuda_available and all("cuda" in opt.devices for opt in chain):
        return "cuda"
    return "cpu"


def unsupported_reason(chain: list[Optimization], device: str) -> str | None:
    for opt in chain:
        if device not in opt.devices:
            return f"{opt.name} runs on {' and '.join(opt.devices)} only, not on {device}"
    return None


def apply_chain(chain: list[Optimization], prepared: Prepared, spec: CellSpec) -> tuple[Prepared, Prepared]:
    """Apply the steps in order. Returns (final, eager): `eager` is the model before an opaque step."""
    eager = prepared
    for opt in chain:
        prepared = opt.apply(prepared, spec)
        if not opt.opaque:
            eager = prepared
    return prepared, eager
