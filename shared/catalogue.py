"""What can be asked for, known without torch: model names, optimizations, how they compose, where they run.

The client (producer, collector) validates a sweep from this catalogue alone; the worker maps each
optimization name to its transform (`worker/engine/transforms.py`). A test keeps `MODELS` equal to
torchvision's list for the pinned torchvision, and `OPTIMIZATIONS` equal to the engine's transforms.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from shared.errors import OptbenchError

# torchvision.models.list_models(module=torchvision.models) for torchvision 0.29.1 (the pinned version).
MODELS: tuple[str, ...] = (
    "alexnet",
    "convnext_base",
    "convnext_large",
    "convnext_small",
    "convnext_tiny",
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_b4",
    "efficientnet_b5",
    "efficientnet_b6",
    "efficientnet_b7",
    "efficientnet_v2_l",
    "efficientnet_v2_m",
    "efficientnet_v2_s",
    "googlenet",
    "inception_v3",
    "maxvit_t",
    "mnasnet0_5",
    "mnasnet0_75",
    "mnasnet1_0",
    "mnasnet1_3",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "regnet_x_16gf",
    "regnet_x_1_6gf",
    "regnet_x_32gf",
    "regnet_x_3_2gf",
    "regnet_x_400mf",
    "regnet_x_800mf",
    "regnet_x_8gf",
    "regnet_y_128gf",
    "regnet_y_16gf",
    "regnet_y_1_6gf",
    "regnet_y_32gf",
    "regnet_y_3_2gf",
    "regnet_y_400mf",
    "regnet_y_800mf",
    "regnet_y_8gf",
    "resnet101",
    "resnet152",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "resnext50_32x4d",
    "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_5",
    "shufflenet_v2_x2_0",
    "squeezenet1_0",
    "squeezenet1_1",
    "swin_b",
    "swin_s",
    "swin_t",
    "swin_v2_b",
    "swin_v2_s",
    "swin_v2_t",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
    "vit_b_16",
    "vit_b_32",
    "vit_h_14",
    "vit_l_16",
    "vit_l_32",
    "wide_resnet101_2",
    "wide_resnet50_2",
)


def check_model_name(name: str) -> None:
    if name not in MODELS:
        close = difflib.get_close_matches(str(name), MODELS, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise OptbenchError(
            f"unknown model {name!r}: {hint}use a torchvision classification model such as densenet121, "
            "resnet50 or mobilenet_v3_large (`python -m producer list` lists them)"
        )


@dataclass(frozen=True)
class Optimization:
    name: str
    summary: str
    devices: tuple[str, ...] = ("cpu", "cuda")
    # Sets the numeric format of weights and activations; a chain holds at most one.
    sets_precision: bool = False
    # Wraps the model in a graph (TorchScript, torch.compile) that hides its modules and tensors;
    # it must come last, and size and FLOPs are read from the model before it.
    opaque: bool = False


OPTIMIZATIONS: dict[str, Optimization] = {
    opt.name: opt
    for opt in [
        Optimization("baseline", "fp32 eager, eval() and inference_mode"),
        Optimization("fp16", "model and inputs cast to float16", sets_precision=True),
        Optimization("bf16", "model and inputs cast to bfloat16", sets_precision=True),
        # tf32 is the math of fp32 convolutions and matmuls, so it counts as the chain's precision:
        # with fp16/bf16 (no fp32 ops left) or dynamic_quant it would be a label without effect.
        Optimization("tf32", "fp32 model, convs and matmuls in TF32 (Ampere+ tensor cores)", sets_precision=True),
        Optimization("channels_last", "NHWC memory format for model and inputs"),
        Optimization("prune", "L1 unstructured pruning of conv/linear weights (zeros)"),
        Optimization("prune_structured", "conv channels removed (torch-pruning, L1)"),
        Optimization(
            "dynamic_quant", "nn.Linear int8 dynamic quantization (CPU only)", devices=("cpu",), sets_precision=True
        ),
        Optimization("torchscript", "torch.jit.script + torch.jit.freeze", opaque=True),
        Optimization("compile", "torch.compile (mode from --compile-mode)", opaque=True),
    ]
}


def normalize(text: str) -> str:
    """The canonical name of a chain: `" fp16 + channels_last "` -> `fp16+channels_last` (validated)."""
    return "+".join(opt.name for opt in parse_chain(text))


def parse_chain(text: str) -> list[Optimization]:
    """`fp16+channels_last` -> the two optimizations, after checking the chain makes sense."""
    if not isinstance(text, str) or not text.strip():
        raise OptbenchError(f"optimization must be a non-empty name such as baseline (got {text!r})")
    names = [part.strip() for part in text.split("+")]
    unknown = [name for name in names if name not in OPTIMIZATIONS]
    if unknown:
        valid = ", ".join(OPTIMIZATIONS)
        raise OptbenchError(f"unknown optimization {unknown[0]!r}: valid names are {valid} (join with +)")
    if len(set(names)) != len(names):
        raise OptbenchError(f"optimization {text!r} names the same step twice")
    chain = [OPTIMIZATIONS[name] for name in names]
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
