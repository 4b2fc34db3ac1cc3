"""What a model is, apart from how fast it runs: size on disk, parameters, FLOPs and fidelity."""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from shared.result import MIB

FIDELITY_MIN_SAMPLES = 8
# zlib's run-length strategy: it shows what pruning's zeros save about as level 6 does (DenseNet-121 with half its
# conv weights zeroed: 19.6 MB, against 18.3 MB at level 6) in 0.5 s rather than 3 s of every run on a CPU.
ZLIB_STRATEGY = zlib.Z_RLE


def weight_tensors(model: nn.Module) -> Iterator[torch.Tensor]:
    """Parameters, plus the packed int8 weights that quantized modules keep outside parameters()."""
    yield from model.parameters()
    for module in model.modules():
        if isinstance(module, torch.ao.nn.quantized.Linear):
            yield module.weight()
            if module.bias() is not None:
                yield module.bias()


def size_stats(model: nn.Module) -> dict[str, float | int]:
    """Serialized state-dict size (dense and zlib-compressed) and (non-zero) parameter counts."""
    total = nonzero = 0
    for tensor in weight_tensors(model):
        values = _plain(tensor)
        total += values.numel()
        nonzero += int(torch.count_nonzero(values))
    return {
        **serialized_size(model),
        "params_total": total,
        "params_nonzero": nonzero,
        "sparsity": 1.0 - nonzero / total if total else 0.0,
    }


def serialized_size(stored: nn.Module | bytes) -> dict[str, float]:
    """Bytes on disk, dense and zlib-compressed (ZLIB_STRATEGY): a model's `torch.save(state_dict)`, or a file's
    bytes."""
    if isinstance(stored, nn.Module):
        buffer = io.BytesIO()
        torch.save(stored.state_dict(), buffer)
        stored = buffer.getvalue()
    return {
        "model_size_mb": len(stored) / MIB,
        "model_size_compressed_mb": _compressed_bytes(stored) / MIB,
    }


def _compressed_bytes(data: bytes) -> int:
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, zlib.MAX_WBITS, 8, ZLIB_STRATEGY)
    return len(compressor.compress(data)) + len(compressor.flush())


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """A quantized tensor (torch.ao's, or a torchao tensor subclass such as Int8Tensor) as the values it holds."""
    if tensor.is_quantized or type(tensor) not in (torch.Tensor, nn.Parameter):
        return tensor.dequantize()
    return tensor


def gflops_per_sample(model: nn.Module, one_sample: torch.Tensor) -> float:
    """FLOPs of one forward pass on one sample, counted by torch.utils.flop_counter (a MAC is 2 FLOPs)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(one_sample)
    return counter.get_total_flops() / 1e9


def probe_chunks(batch_size: int) -> int:
    """How many batches of `batch_size` make the fidelity probe (at least FIDELITY_MIN_SAMPLES samples)."""
    return math.ceil(FIDELITY_MIN_SAMPLES / batch_size)


@torch.inference_mode()
def run_probe(model: nn.Module, batches: list[torch.Tensor]) -> torch.Tensor:
    """The model's outputs over the probe batches as one fp32 tensor.

    Each output is copied before the next call: under CUDA graphs (torch.compile `reduce-overhead`)
    a call returns the graph's static output buffer, which the next replay overwrites, and
    `.float()` of an fp32 tensor is the same tensor, not a copy.
    """
    return torch.cat([model(batch).float().clone() for batch in batches])


def fidelity(reference: torch.Tensor, outputs: torch.Tensor) -> dict[str, float | int]:
    """How far the optimized outputs are from the fp32 model's on the same inputs."""
    reference, outputs = reference.float().cpu(), outputs.float().cpu()
    agreement = (reference.argmax(dim=1) == outputs.argmax(dim=1)).float().mean()
    cosine = nn.functional.cosine_similarity(reference, outputs, dim=1).mean()
    return {
        "top1_agreement": float(agreement),
        "max_abs_error": float((reference - outputs).abs().max()),
        "cosine_similarity": float(cosine),
        "fidelity_samples": reference.shape[0],
    }
