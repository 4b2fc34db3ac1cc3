"""How each optimization prepares a model: named transforms that compose left to right with `+`.

Each transform is a small function from a `Prepared` (model + the dtype, memory format and device
its inputs must have) to a new `Prepared`. Which optimizations exist, how they compose and where
they run is the catalogue's (`shared/catalogue.py`); `TRANSFORMS` maps each of its names to code.
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

from worker.engine.models import make_inputs
from worker.engine.precision import set_tf32, tf32_unsupported_reason

if TYPE_CHECKING:
    from shared.catalogue import Optimization
    from shared.spec import CellSpec

# Structured pruning keeps channel counts that are multiples of this: fp16/bf16 tensor-core kernels
# (cuDNN, cuBLAS) need multiples of 8, and an odd count falls back to slower kernels.
PRUNE_ROUND_TO = 8


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


# The transform of each optimization in the catalogue (`shared/catalogue.py`), by name.
TRANSFORMS: dict[str, Callable[[Prepared, CellSpec], Prepared]] = {
    "baseline": _baseline,
    "tf32": _tf32,
    "fp16": _to_dtype(torch.float16),
    "bf16": _to_dtype(torch.bfloat16),
    "channels_last": _channels_last,
    "prune": _prune_unstructured,
    "prune_structured": _prune_structured,
    "dynamic_quant": _dynamic_quant,
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
    """Why the chain can't run on this particular device, beyond the catalogue's device types (None if it can)."""
    if any(opt.name == "tf32" for opt in chain):
        return tf32_unsupported_reason(device)
    return None
