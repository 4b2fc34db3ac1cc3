"""Models and inputs: a torchvision classifier by name, its weights, and seeded synthetic batches."""

from __future__ import annotations

import hashlib
import logging
import os

import torch
import torchvision
from torch import nn

log = logging.getLogger(__name__)

# `synthetic` weights: BatchNorm statistics re-estimated on this many seeded normal samples, in batches
# of SYNTHETIC_BATCH, from seeds apart from the timed, probe and calibration inputs'.
SYNTHETIC_SAMPLES = 16
SYNTHETIC_BATCH = 8
SYNTHETIC_SEED_OFFSET = 1000


def cached_checkpoint(name: str) -> tuple[object, str] | None:
    """The default pretrained weights enum and its file when it already lies in the torch hub cache."""
    try:
        default = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, AttributeError):
        return None
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(default.url))
    return (default, path) if os.path.isfile(path) else None


def build_model(name: str, weights: str, seed: int, image_size: int = 224) -> tuple[nn.Module, str]:
    """The fp32 model in eval mode on the CPU, and a label saying which weights it holds.

    weights: `auto` (the pretrained checkpoint if it is in the hub cache, else random init; never
    downloads), `pretrained` (torchvision downloads it if needed), `random`, `synthetic` (random
    init whose BatchNorm statistics are re-estimated at `image_size`, see `reestimate_batchnorm`),
    or a state-dict path. Random init is seeded, so `random(seed=0)` is the same model on every host.
    """
    torch.manual_seed(seed)
    if weights == "pretrained" or (weights == "auto" and cached_checkpoint(name)):
        enum = torchvision.models.get_model_weights(name).DEFAULT
        model = torchvision.models.get_model(name, weights=enum)
        label = f"pretrained:{enum}"
    elif weights in ("auto", "random"):
        model = torchvision.models.get_model(name, weights=None)
        label = f"random(seed={seed})"
    elif weights == "synthetic":
        model = torchvision.models.get_model(name, weights=None)
        reestimate_batchnorm(model, image_size, seed + SYNTHETIC_SEED_OFFSET)
        label = f"synthetic(seed={seed}, bn_stats={SYNTHETIC_SAMPLES} samples at {image_size} px)"
    else:
        model = torchvision.models.get_model(name, weights=None)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        label = f"file:{os.path.abspath(weights)} sha256:{_sha256(weights)[:12]}"
    log.info("built %s with %s weights", name, label)
    return model.eval(), label


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, image_size: int, seed: int) -> int:
    """Give every BatchNorm the mean and variance of its real inputs, as training leaves them.

    torchvision's init leaves running mean 0 and variance 1, which its activations don't have: they
    shrink or swell layer after layer, and the logits barely depend on the input (two different
    inputs give logits with cosine similarity 0.9999 on DenseNet-121 at 224 px), so fidelity says nothing.
    With the statistics re-estimated (a cumulative average over seeded normal batches), each layer's
    activations are normalized as in a trained checkpoint. Returns how many layers were re-estimated.
    """
    model.eval()  # dropout off: only the BatchNorm layers run in training mode
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over the batches
        layer.train()
    for start in range(0, SYNTHETIC_SAMPLES, SYNTHETIC_BATCH):
        model(make_inputs(SYNTHETIC_BATCH, image_size, device=torch.device("cpu"), seed=seed + start))
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
        layer.eval()
    return len(layers)


def make_inputs(
    batch_size: int,
    image_size: int,
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    memory_format: torch.memory_format = torch.contiguous_format,
    seed: int = 0,
) -> torch.Tensor:
    """A seeded normal batch (batch, 3, size, size), identical on every device, placed on `device`."""
    generator = torch.Generator().manual_seed(seed)
    batch = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
    return batch.to(device=device, dtype=dtype, memory_format=memory_format)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
