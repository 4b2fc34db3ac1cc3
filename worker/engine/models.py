"""Models and inputs: a model spec built (torchvision, timm or a factory), its weights, and seeded synthetic batches."""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torchvision
from torch import nn

from shared.errors import OptbenchError, one_line
from shared.models import FILE, MODULE, TIMM, TIMM_REQUIREMENT, TORCHVISION, ModelSpec, check_input_shape, shape_text
from worker.engine import facts

if TYPE_CHECKING:
    from shared.spec import CellSpec

log = logging.getLogger(__name__)

# `synthetic` weights: BatchNorm statistics re-estimated on this many seeded normal samples, in batches
# of SYNTHETIC_BATCH, from seeds apart from the timed, probe and calibration inputs'.
SYNTHETIC_SAMPLES = 8
SYNTHETIC_BATCH = 8
SYNTHETIC_SEED_OFFSET = 1000


class ModelError(OptbenchError):
    """The model can't be built or run on its input here: a failed cell's `error_type` is `model_error`."""


@dataclass
class BuiltModel:
    """The fp32 model in eval mode on the CPU, what it was built from, and the shape of one input sample."""

    model: nn.Module
    weights: str  # which weights it holds: `pretrained:...`, `random(seed=0)`, `synthetic(...)`, `file:... sha256:...`
    sample_shape: tuple[int, ...]  # one sample's input shape, (3, image_size, image_size) unless declared
    source: str  # `torchvision 0.29.1`, `timm 1.0.31`, `module pkg.mod (/path/mod.py, dist pkg 0.1.0)`, `file /path.py`
    sha256: str  # of the source file of the model's code: a fleet with different model code measures other models
    output: str  # what fidelity compares: `tensor`, or the first tensor of a tuple or dict, e.g. `dict['logits'] of 2`

    def fields(self) -> dict[str, Any]:
        """The row's model fields."""
        return {
            "weights": self.weights,
            "input_shape": shape_text(self.sample_shape),
            "model_source": self.source,
            "model_sha256": self.sha256,
            "model_params": sum(p.numel() for p in self.model.parameters()),
            "model_output": self.output,
        }


def cached_checkpoint(name: str) -> tuple[object, str] | None:
    """The default pretrained weights enum and its file when it already lies in the torch hub cache."""
    try:
        default = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, AttributeError):
        return None
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(default.url))
    return (default, path) if os.path.isfile(path) else None


def build_model(spec: CellSpec, run_once: bool | None = None) -> BuiltModel:
    """The cell's fp32 model in eval mode on the CPU, checked to run on one sample of its input shape.

    weights: `auto` (torchvision's pretrained checkpoint if it is in the hub cache, else `synthetic`; a
    factory's model as the factory builds it, which may load its own weights; never downloads), `pretrained`
    (torchvision or timm download it if needed), `random`, `synthetic` (random init whose BatchNorm
    statistics are re-estimated at the input shape, see `reestimate_batchnorm`), or a state-dict path.
    Random init is seeded, so `random(seed=0)` is the same model on every host. A model that can't be
    built, or fails on its input, raises ModelError in one line.

    `run_once`: run the model on one sample first, to check its input shape and find its output's first tensor.
    By default only where that can be in doubt: a factory's model, or a zoo model given kwargs or an input
    shape (a torchvision or timm classifier in eval mode returns one tensor at any image size).
    """
    model_spec = spec.model_spec
    builder, source, code_file = _builder(model_spec)
    torch.manual_seed(spec.seed)
    weights = spec.weights
    pretrained = weights == "pretrained" or (
        weights == "auto" and model_spec.kind == TORCHVISION and cached_checkpoint(model_spec.name)
    )
    try:
        model = builder(pretrained, spec.model_kwargs)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"model {model_spec.text} does not build: {type(exc).__name__}: {one_line(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {model_spec.text} returned a {type(model).__name__}, not a torch.nn.Module")
    model.eval()
    label = f"pretrained:{_pretrained_name(model_spec, model)}" if pretrained else f"random(seed={spec.seed})"
    factory_made = weights == "auto" and model_spec.kind in (MODULE, FILE)
    if factory_made:  # its own weights, perhaps trained: left as built
        label = f"as built by the factory (torch seed {spec.seed})"
    sample_shape = spec.input_shape or _declared_shape(builder) or (3, spec.image_size, spec.image_size)
    if run_once is None:
        run_once = not model_spec.is_zoo or bool(spec.model_kwargs) or spec.input_shape is not None
    model, output = first_tensor_output(model, model_spec.text, sample_shape) if run_once else (model, "tensor")
    if weights == "synthetic" or (weights == "auto" and not (pretrained or factory_made)):
        key = facts.key_of(kind="bn", model=model_spec.text, kwargs=spec.model_kwargs, shape=sample_shape,
                           seed=spec.seed, code=sha256_of(code_file), samples=SYNTHETIC_SAMPLES)  # fmt: skip
        layers = synthetic_batchnorm(model, sample_shape, spec.seed + SYNTHETIC_SEED_OFFSET, key)
        label = f"synthetic(seed={spec.seed}, bn_stats={SYNTHETIC_SAMPLES} samples at {shape_text(sample_shape)})"
        label += "" if layers else ", no BatchNorm"
    elif weights not in ("auto", "pretrained", "random"):
        state = torch.load(weights, map_location="cpu", weights_only=True)
        target = model.model if isinstance(model, FirstTensor) else model
        try:
            target.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelError(f"weights {weights} don't fit model {model_spec.text}: {one_line(exc, 300)}") from None
        label = f"file:{os.path.abspath(weights)} sha256:{sha256_of(weights)[:12]}"
    log.info("built %s (%s) with %s weights", model_spec.text, source, label)
    return BuiltModel(model.eval(), label, tuple(sample_shape), source, sha256_of(code_file), output)


Builder = Callable[[bool, dict[str, Any]], nn.Module]  # builder(pretrained, kwargs)


def _builder(model: ModelSpec) -> tuple[Builder, str, str]:
    """How to build the model, where its code comes from (for the row), and its code's file (for the hash)."""
    if model.kind == TORCHVISION:
        function = torchvision.models.get_model_builder(model.name)

        def build_torchvision(pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
            weights = torchvision.models.get_model_weights(model.name).DEFAULT if pretrained else None
            return torchvision.models.get_model(model.name, weights=weights, **kwargs)

        return build_torchvision, f"torchvision {torchvision.__version__}", inspect.getsourcefile(function)
    if model.kind == TIMM:
        try:
            import timm
        except ImportError:
            raise ModelError(f"timm models need timm on the worker: pip install {TIMM_REQUIREMENT}") from None
        entrypoint = timm.models.model_entrypoint(model.name.split(".")[0])

        def build_timm(pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
            return timm.create_model(model.name, pretrained=pretrained, **kwargs)

        return build_timm, f"timm {timm.__version__}", inspect.getsourcefile(entrypoint)
    factory, source, path = _factory(model)

    def build_factory(pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
        return factory(**kwargs)

    build_factory.input_shape = getattr(factory, "input_shape", None)  # type: ignore[attr-defined]
    return build_factory, source, path


def _factory(model: ModelSpec) -> tuple[Callable[..., Any], str, str]:
    """The factory function of a module or file spec, a description of its source, and its file."""
    if model.kind == MODULE:
        try:
            module = importlib.import_module(model.name)
        except ImportError as exc:
            raise ModelError(
                f"model {model.text}: module {model.name} does not import on this worker ({one_line(exc, 200)}): "
                "install its package on every worker (pip install -e PATH)"
            ) from None
        path = inspect.getsourcefile(module) or ""
        dist = _distribution(model.name)
        source = f"module {model.name} ({path}{', ' + dist if dist else ''})"
    else:
        path = os.path.abspath(model.name)
        if not os.path.isfile(path):
            raise ModelError(f"model {model.text}: no file {path} on this worker")
        name = f"optbench_model_{sha256_of(path)[:12]}"  # the same file's code is loaded once per process
        module = sys.modules.get(name)
        if module is None:
            loader = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(loader)
            sys.modules[name] = module  # dataclasses and pickling look their module up by name
            loader.loader.exec_module(module)
        source = f"file {path}"
    factory = getattr(module, model.factory, None)
    if not callable(factory):
        raise ModelError(f"model {model.text}: {model.name} has no function {model.factory!r}")
    return factory, source, path


def _distribution(module: str) -> str | None:
    """`dist 1.2.0`: the installed distribution that provides `module`'s top-level package, if any."""
    top = module.split(".")[0]
    for dist in importlib.metadata.packages_distributions().get(top, []):
        return f"{dist} {importlib.metadata.version(dist)}"
    return None


def _declared_shape(builder: Builder) -> tuple[int, ...] | None:
    """A factory's `input_shape` attribute: the shape of one sample it takes (`build.input_shape = (1, 28, 28)`)."""
    declared = getattr(builder, "input_shape", None)
    return None if declared is None else check_input_shape(tuple(declared))


def _pretrained_name(model: ModelSpec, built: nn.Module) -> str:
    if model.kind == TORCHVISION:
        return str(torchvision.models.get_model_weights(model.name).DEFAULT)
    config = getattr(built, "pretrained_cfg", None) or {}
    return f"timm {model.name}" + (f".{config['tag']}" if config.get("tag") else "")


class FirstTensor(nn.Module):
    """A model whose output is a tuple or dict, reduced to its first tensor: what is timed, compared and exported."""

    def __init__(self, model: nn.Module, key: int | str) -> None:
        super().__init__()
        self.model = model
        self.key = key

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)[self.key]


@torch.no_grad()
def first_tensor_output(model: nn.Module, text: str, sample_shape: tuple[int, ...]) -> tuple[nn.Module, str]:
    """Run the model once on a sample; a tuple or dict output is reduced to its first entry, which must be a tensor.

    Returns the model to measure and what its output was (`tensor`, `tuple[0] of 3`, `dict['logits'] of 2`)."""
    try:
        output = model(make_inputs(1, sample_shape, device=torch.device("cpu")))
    except Exception as exc:
        raise ModelError(
            f"model {text} fails on one input of shape {shape_text(sample_shape)}: {type(exc).__name__}: "
            f"{one_line(exc, 300)} (set --input-shape, or the factory's input_shape)"
        ) from None
    if isinstance(output, torch.Tensor):
        return model, "tensor"
    if isinstance(output, (tuple, list)) and output:
        key: int | str = 0
        described = f"{type(output).__name__}[0] of {len(output)}"
    elif isinstance(output, dict) and output:
        key = next(iter(output))
        described = f"dict[{key!r}] of {len(output)}"
    else:
        raise ModelError(f"model {text} returns {type(output).__name__}: optbench measures models returning tensors")
    if not isinstance(output[key], torch.Tensor):
        raise ModelError(
            f"model {text} returns a {described} whose first entry is a {type(output[key]).__name__}, not a tensor"
        )
    return FirstTensor(model, key).eval(), described


def synthetic_batchnorm(model: nn.Module, sample_shape: tuple[int, ...], seed: int, key: str) -> int:
    """`reestimate_batchnorm`, or the statistics it gave before for the same model, shape and seed (`key`), from the
    worker's cache (worker/engine/facts.py). Returns how many layers hold re-estimated statistics."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    names = ("running_mean", "running_var", "num_batches_tracked")
    stored = facts.load_state(key)
    fits = stored is not None and all(
        f"{layer}.{name}" in stored and stored[f"{layer}.{name}"].shape == getattr(module, name).shape
        for layer, module in layers.items()
        for name in names
    )
    if fits:
        for layer, module in layers.items():
            for name in names:
                getattr(module, name).copy_(stored[f"{layer}.{name}"])
        return len(layers)
    count = reestimate_batchnorm(model, sample_shape, seed)
    facts.save_state(key, {f"{layer}.{name}": getattr(m, name) for layer, m in layers.items() for name in names})
    return count


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, sample_shape: tuple[int, ...] | int, seed: int) -> int:
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
        model(make_inputs(SYNTHETIC_BATCH, sample_shape, device=torch.device("cpu"), seed=seed + start))
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
        layer.eval()
    return len(layers)


def make_inputs(
    batch_size: int,
    sample_shape: tuple[int, ...] | int,
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    memory_format: torch.memory_format = torch.contiguous_format,
    seed: int = 0,
) -> torch.Tensor:
    """A seeded normal batch (batch, *sample_shape), identical on every device, placed on `device`.

    An int sample shape is an image size: (3, size, size). A channels-last memory format applies to 4-d batches."""
    shape = (3, sample_shape, sample_shape) if isinstance(sample_shape, int) else tuple(sample_shape)
    generator = torch.Generator().manual_seed(seed)
    batch = torch.randn(batch_size, *shape, generator=generator)
    if batch.dim() != 4:
        memory_format = torch.contiguous_format
    return batch.to(device=device, dtype=dtype, memory_format=memory_format)


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
