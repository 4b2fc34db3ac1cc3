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
    # Wraps the model in a graph (TorchScript, torch.compile) or hands it to another runtime (an
    # exported int8 graph, ONNX Runtime) that hides its modules and tensors: it must come last, and
    # parameters and FLOPs are read from the model before it (size too, unless the step measures
    # its own artifact).
    opaque: bool = False
    # The only steps that may come before it (None: any). Other runtimes and exporters take a plain
    # torch model: no tensor subclasses, quantized modules or memory-format tricks.
    only_after: tuple[str, ...] | None = None
    # What it needs of the device beyond its type, said when it can't run (e.g. a compute capability).
    hardware: str = ""


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
        Optimization("int8_weight_only", "torchao int8 weights of nn.Linear, fp32 activations", sets_precision=True),
        Optimization(
            "int8_dynamic", "torchao int8 weights and per-token int8 activations of nn.Linear", sets_precision=True
        ),
        Optimization(
            "float8",
            "torchao float8 weights and activations of nn.Linear (CUDA, compute capability 8.9+)",
            devices=("cuda",),
            sets_precision=True,
            hardware="compute capability 8.9+: H100, H200, L4, RTX 40 and newer",
        ),
        Optimization(
            "int8_static",
            "PT2E static int8 of convs and linears (X86InductorQuantizer, calibrated), run by inductor",
            devices=("cpu",),
            sets_precision=True,
            opaque=True,
            only_after=("prune", "prune_structured"),
        ),
        Optimization(
            "onnxruntime",
            "torch.onnx.export (dynamo) run by ONNX Runtime (CPU provider; CUDA with onnxruntime-gpu)",
            opaque=True,
            only_after=("prune", "prune_structured", "fp16"),
        ),
        Optimization(
            "torchscript",
            "torch.jit.script + torch.jit.freeze",
            opaque=True,
            only_after=("fp16", "bf16", "tf32", "channels_last", "prune", "prune_structured", "dynamic_quant"),
        ),
        Optimization("compile", "torch.compile (mode from --compile-mode)", opaque=True),
        # The baseline again, as a cell of its own: its verdict against the baseline is an A/A test of the host.
        Optimization("aa_control", "the baseline measured again as its own cell (A/A control: expect no difference)"),
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
    for opt in chain[:-1]:
        if opt.opaque:
            raise OptbenchError(f"in {text!r}, {opt.name} must be the last step")
    for position, opt in enumerate(chain):
        if opt.only_after is None:
            continue
        wrong = [step.name for step in chain[:position] if step.name not in opt.only_after]
        if wrong:
            allowed = ", ".join(opt.only_after)
            raise OptbenchError(f"in {text!r}, {opt.name} can't follow {wrong[0]}: only {allowed} may come before it")
    for plain in ("baseline", "aa_control"):
        if plain in names and len(names) > 1:
            raise OptbenchError(f"{plain} is the plain fp32 model and can't be combined ({text!r})")
    return chain


def preferred_device(chain: list[Optimization], cuda_available: bool) -> str:
    """The device `--device auto` resolves to: CUDA when present and every step runs there, else CPU."""
    if cuda_available and all("cuda" in opt.devices for opt in chain):
        return "cuda"
    return "cpu"


def unsupported_reason(chain: list[Optimization], device: str) -> str | None:
    for opt in chain:
        if device not in opt.devices:
            needs = f" ({opt.hardware})" if opt.hardware else ""
            return f"{opt.name} runs on {' and '.join(opt.devices)}{needs} only, not on {device}"
    return None
