"""int8 and float8 with torchao: weight-only and dynamic quantization of nn.Linear, static int8 through PT2E.

torchao is imported inside the functions: a worker without it still runs every other optimization, and
these say `unsupported` ("install torchao", see `transforms.unsupported_here`).
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from worker.engine.environment import CpuIsa

# Conv2d and Linear are the layers int8 kernels exist for; the report says how many of each were quantized.
LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)
# The torchao config class of each torchao optimization: their code (`transforms` registers one transform each);
# the rest of each is its catalogue entry.
TORCHAO_CONFIGS = {
    "int8_weight_only": "Int8WeightOnlyConfig",
    "int8_dynamic": "Int8DynamicActivationInt8WeightConfig",
    "float8": "Float8DynamicActivationFloat8WeightConfig",
}


def layer_counts(model: nn.Module) -> Counter[str]:
    """Conv2d and Linear layers of an eager model, by class name."""
    return Counter(type(m).__name__ for m in model.modules() if type(m) in LAYER_TYPES)


def coverage(quantized: Counter[str], layers: Counter[str]) -> str:
    """`Conv2d 0/120, Linear 1/1`: quantized layers out of all, per layer type."""
    return ", ".join(f"{name} {quantized.get(name, 0)}/{count}" for name, count in sorted(layers.items()))


def torchao_quantize(model: nn.Module, optimization: str, tune_inductor: bool) -> str:
    """torchao's `quantize_` of every nn.Linear in place (its default filter); returns the coverage.

    `tune_inductor` lets torchao set the inductor options it recommends: only when torch.compile follows,
    since they are process-wide.
    """
    import torchao.quantization

    layers = layer_counts(model)
    config = getattr(torchao.quantization, TORCHAO_CONFIGS[optimization])(set_inductor_config=tune_inductor)
    torchao.quantization.quantize_(model, config)
    quantized = Counter(
        "Linear" for m in model.modules() if isinstance(m, nn.Linear) and type(m.weight) is not nn.Parameter
    )
    return coverage(quantized, layers)


def int8_static(
    model: nn.Module, calibration: list[torch.Tensor], reduce_range: bool
) -> tuple[torch.fx.GraphModule, nn.Module, str]:
    """Post-training static int8 of convolutions and linears, as PyTorch 2 export quantization does it on x86.

    torch.export (strict: Dynamo records each call of a module on its own, so torchvision's ReLU modules
    called twice per block don't make one partition with two outputs, which the quantizer's
    conv+add+relu annotation rejects under the default non-strict export), then the X86InductorQuantizer
    (int8 activations per tensor, int8 weights per channel, BatchNorm folded into the convs), observers
    calibrated on `calibration`, converted, and compiled by inductor with freezing, which lowers the
    quantize/dequantize pairs into oneDNN int8 kernels. `reduce_range` quantizes activations to 0-127 rather
    than 0-255 (see `wants_reduce_range`). Returns the converted graph (its state dict is the int8 model on
    disk, and run eagerly it is the reference int8 model), the compiled model (what runs) and the coverage.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    layers = layer_counts(model)
    exported = torch.export.export(model, (calibration[0],), strict=True).module()
    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config(reduce_range=reduce_range))
    observed = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for batch in calibration:
            observed(batch)
    converted = convert_pt2e(observed)
    drop_unused_tensors(converted)
    return converted, Frozen(torch.compile(converted)), coverage(int8_graph_layers(converted), layers)


def wants_reduce_range(isa: CpuIsa) -> bool:
    """int8_static quantizes activations to 7 bits where oneDNN has no VNNI, as PyTorch's x86 dynamic quantization does.

    Without VNNI, oneDNN's u8 x s8 kernels sum pairs of products in 16 bits with saturation (vpmaddubsw, on
    AVX2 and on AVX-512 alike); 7-bit activations keep those sums in range. Measured (docs/notes/
    2026-12-02-int8-and-cpu-isa.md): without VNNI and without reduce_range the kernels drift from the
    reference int8 model on some models (resnet18, 32 px: total cosine 0.963 where it is 0.982 with it),
    and with it they cost a little on others (DenseNet-121, 224 px: 0.993 against 0.996); with VNNI
    reduce_range only costs resolution. `isa` is the effective one: oneDNN's, after ONEDNN_MAX_CPU_ISA.
    """
    return not isa.vnni


class Frozen(nn.Module):
    """A torch.compile'd int8 graph called with inductor's freezing on, so any compilation of it freezes.

    Freezing constant-folds the int8 weights into oneDNN's packed layout (`onednn.qconv_prepack`); it must be
    on in inductor's global config when the graph compiles (as `torch.compile(options=...)` it fails on that
    op). Patching it around each call, which costs about 12 us, keeps it out of every other cell's
    compilation in the same process.
    """

    def __init__(self, compiled: nn.Module) -> None:
        super().__init__()
        self.compiled = compiled

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        from torch._inductor import config

        with config.patch(freezing=True):
            return self.compiled(batch)


def int8_graph_layers(graph: torch.fx.GraphModule) -> Counter[str]:
    """Convolutions and linears of a converted PT2E graph whose weights are int8 (dequantized per channel)."""
    dequantize = torch.ops.quantized_decomposed.dequantize_per_channel.default
    kinds = {torch.ops.aten.conv2d.default: "Conv2d", torch.ops.aten.linear.default: "Linear"}
    return Counter(
        kinds[node.target]
        for node in graph.graph.nodes
        if node.op == "call_function" and node.target in kinds and getattr(node.args[1], "target", None) is dequantize
    )


def drop_unused_tensors(graph: torch.fx.GraphModule) -> None:
    """Delete the parameters and buffers no node reads: convert_pt2e leaves the fp32 originals of the int8 weights."""
    used = {node.target for node in graph.graph.nodes if node.op == "get_attr"}
    for name in [name for name, _ in [*graph.named_parameters(), *graph.named_buffers()] if name not in used]:
        owner, _, attribute = name.rpartition(".")
        delattr(graph.get_submodule(owner), attribute)
