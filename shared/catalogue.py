"""What can be asked for, known without torch: model names, optimizations, how they compose, where they run.

The client (producer, collector) validates a sweep from this catalogue alone. Each optimization is declared
once, here: its summary, devices, compute capability, CPU architecture, packages and their pins, its place in
a chain, the settings and fields its rows record. The worker registers only its code by name
(`worker/engine/transforms.py`) and reads the rest from here, as do `producer list`, the report and `make docs`
(docs/optimizations.md's table). Tests keep `MODELS` equal to torchvision's list for the pinned torchvision,
`OPTIMIZATIONS` equal to the engine's transforms, the pins equal to pyproject.toml's and the docs' table fresh.
"""

from __future__ import annotations

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


# The CPU architectures an optimization may be limited to, as `platform.machine()` names them (lower case).
ARCHITECTURES: dict[str, tuple[str, ...]] = {"x86-64": ("x86_64", "amd64")}


@dataclass(frozen=True)
class Optimization:
    """One optimization: all the client, the worker's checks, the report and the docs know of it.

    The worker registers only its code, by name (`@transform` in `worker/engine/transforms.py`), and reads
    the rest from here; `make docs` writes docs/optimizations.md's table from these entries.
    """

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
    # The plain fp32 model (the baseline and its A/A control): it stands alone.
    alone: bool = False
    # The only steps that may come before it (None: any), besides those whose `may_precede` names it. Other
    # runtimes and exporters take a plain torch model: no tensor subclasses, quantized modules or memory-format
    # tricks.
    may_follow: tuple[str, ...] | None = None
    # Steps with a `may_follow` list that this one may come before all the same: a step says where it fits
    # without an edit to the later step.
    may_precede: tuple[str, ...] = ()
    # The CUDA compute capability it needs, the GPUs that have it, and what a GPU below it is told
    # ({name}, {capability} and {gpus} are filled in).
    min_capability: tuple[int, int] | None = None
    gpus: str = ""
    capability_refusal: str = "{name} needs compute capability {capability} or newer ({gpus})"
    # The CPU architecture its kernels exist for (a key of ARCHITECTURES; "": any), and why.
    architecture: str = ""
    architecture_why: str = ""
    # What it imports beyond torch: pinned requirements, each equal to its line in pyproject.toml's `worker`
    # extra (a test checks it). The module imported is the requirement's name, `-` read as `_`.
    packages: tuple[str, ...] = ()
    # Cell settings its rows record (spec fields such as prune_amount, or engine constants); rows of chains
    # without it leave them empty.
    knobs: tuple[str, ...] = ()
    # Result fields its transform adds to the row.
    records: tuple[str, ...] = ()
    # What it changes for the whole process, if anything (`sets TF32 math process-wide`): an eager fp32 reference
    # in the same process would inherit it, so its runs are compared across processes (worker/engine/run.py).
    process_wide: str = ""

    @property
    def capability(self) -> str:
        """`8.9`: the minimum compute capability as written (empty when it needs none)."""
        return ".".join(map(str, self.min_capability)) if self.min_capability else ""

    @property
    def hardware(self) -> str:
        """What it needs of a CUDA device beyond its type, said when it can't run there."""
        return f"compute capability {self.capability}+: {self.gpus}" if self.min_capability else ""

    def capability_shortfall_text(self) -> str:
        """What a GPU below `min_capability` is told (this GPU's capability is added after it)."""
        return self.capability_refusal.format(name=self.name, capability=self.capability, gpus=self.gpus)

    def architecture_refusal(self, machine: str) -> str | None:
        """Why it can't run on a CPU whose `platform.machine()` is `machine`; None when it can."""
        if not self.architecture or machine.lower() in ARCHITECTURES[self.architecture]:
            return None
        return f"{self.name} {self.architecture_why}: {self.architecture} only, not {machine}"

    def runs_on(self) -> str:
        """`cpu, cuda`, `cuda with compute capability 8.9+ (H100, ...)`, `cpu (x86-64)`: where it runs."""
        where = []
        for device in self.devices:
            if device == "cuda" and self.min_capability:
                where.append(f"cuda with compute capability {self.capability}+ ({self.gpus})")
            elif device == "cpu" and self.architecture:
                where.append(f"cpu ({self.architecture})")
            else:
                where.append(device)
        return ", ".join(where)

    def placement(self) -> str:
        """Its place in a chain, in words: `sets the precision; last; after prune, prune_structured only`."""
        words = ["alone"] if self.alone else []
        words += ["sets the precision"] if self.sets_precision else []
        words += ["last"] if self.opaque else []
        before = allowed_before(self)
        if before is not None:
            words.append(f"after {', '.join(before)} only" if before else "first")
        return "; ".join(words) or "anywhere"


OPTIMIZATIONS: dict[str, Optimization] = {
    opt.name: opt
    for opt in [
        Optimization("baseline", "fp32 eager, eval() and inference_mode", alone=True),
        Optimization("fp16", "model and inputs cast to float16", sets_precision=True, may_precede=("torchscript",)),
        Optimization("bf16", "model and inputs cast to bfloat16", sets_precision=True, may_precede=("torchscript",)),
        # tf32 is the math of fp32 convolutions and matmuls, so it counts as the chain's precision:
        # with fp16/bf16 (no fp32 ops left) or dynamic_quant it would be a label without effect.
        Optimization(
            "tf32",
            "fp32 model, convs and matmuls in TF32 (Ampere+ tensor cores)",
            sets_precision=True,
            may_precede=("torchscript",),
            min_capability=(8, 0),
            gpus="Ampere",
            capability_refusal="{name} needs compute capability {capability} ({gpus}) or newer",
            process_wide="sets TF32 math process-wide (torch.backends)",
        ),
        Optimization("channels_last", "NHWC memory format for model and inputs", may_precede=("torchscript",)),
        Optimization(
            "prune",
            "L1 unstructured pruning of conv/linear weights (zeros)",
            may_precede=("torchscript",),
            knobs=("prune_amount",),
        ),
        Optimization(
            "prune_structured",
            "conv channels removed (torch-pruning, L1)",
            may_precede=("torchscript",),
            knobs=("prune_amount", "prune_round_to"),
        ),
        Optimization(
            "dynamic_quant",
            "nn.Linear int8 dynamic quantization (CPU only)",
            devices=("cpu",),
            sets_precision=True,
            may_precede=("torchscript",),
            records=("quantized_layers",),
        ),
        Optimization(
            "int8_weight_only",
            "torchao int8 weights of nn.Linear, fp32 activations",
            sets_precision=True,
            packages=("torchao==0.18.0",),
            records=("quantized_layers",),
        ),
        Optimization(
            "int8_dynamic",
            "torchao int8 weights and per-token int8 activations of nn.Linear",
            sets_precision=True,
            packages=("torchao==0.18.0",),
            records=("quantized_layers",),
        ),
        Optimization(
            "float8",
            "torchao float8 weights and activations of nn.Linear (CUDA, compute capability 8.9+)",
            devices=("cuda",),
            sets_precision=True,
            min_capability=(8, 9),
            gpus="H100, H200, L4, RTX 40 and newer",
            packages=("torchao==0.18.0",),
            records=("quantized_layers",),
        ),
        Optimization(
            "int8_static",
            "PT2E static int8 of convs and linears (X86InductorQuantizer, calibrated), run by inductor",
            devices=("cpu",),
            sets_precision=True,
            opaque=True,
            may_follow=("prune", "prune_structured"),
            architecture="x86-64",
            architecture_why="uses the X86InductorQuantizer's oneDNN kernels",
            packages=("torchao==0.18.0",),
            records=("calibration", "quantized_layers", "reduce_range"),
        ),
        Optimization(
            "onnxruntime",
            "torch.onnx.export (dynamo) run by ONNX Runtime (CPU provider; CUDA with onnxruntime-gpu)",
            opaque=True,
            may_follow=("prune", "prune_structured", "fp16"),
            packages=("onnxruntime==1.31.1", "onnx==1.23.2", "onnxscript==0.7.2"),
            records=("execution_provider", "onnx_opset"),
        ),
        # TorchScript can't script tensor subclasses (torchao): the steps it can script say so (`may_precede`).
        Optimization("torchscript", "torch.jit.script + torch.jit.freeze", opaque=True, may_follow=()),
        Optimization("compile", "torch.compile (mode from --compile-mode)", opaque=True, knobs=("compile_mode",)),
        # The baseline again, as a cell of its own: its verdict against the baseline is an A/A test of the host.
        Optimization(
            "aa_control", "the baseline measured again as its own cell (A/A control: expect equivalent)", alone=True
        ),
    ]
}


def allowed_before(opt: Optimization) -> tuple[str, ...] | None:
    """The steps that may come before `opt` (None: any): its `may_follow`, then those whose `may_precede` names it."""
    if opt.may_follow is None:
        return None
    declared = [o.name for o in OPTIMIZATIONS.values() if opt.name in o.may_precede and o.name not in opt.may_follow]
    return (*opt.may_follow, *declared)


def pinned(package: str) -> str:
    """The pinned requirement of `package` (`onnxruntime` -> `onnxruntime==1.31.1`), from the entries' `packages`."""
    for opt in OPTIMIZATIONS.values():
        for requirement in opt.packages:
            if requirement.partition("==")[0] == package:
                return requirement
    raise KeyError(f"no optimization needs {package!r}")


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
        allowed = allowed_before(opt)
        if allowed is None:
            continue
        wrong = [step.name for step in chain[:position] if step.name not in allowed]
        if wrong:
            only = ", ".join(allowed)
            raise OptbenchError(f"in {text!r}, {opt.name} can't follow {wrong[0]}: only {only} may come before it")
    for plain in OPTIMIZATIONS.values():
        if plain.alone and plain.name in names and len(names) > 1:
            raise OptbenchError(f"{plain.name} is the plain fp32 model and can't be combined ({text!r})")
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
