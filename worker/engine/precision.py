"""The math of fp32 convolutions and matmuls: strict IEEE fp32 unless the `tf32` optimization asks for TF32.

cuDNN runs fp32 convolutions in TF32 by default on Ampere and newer, so without this the "fp32"
baseline and the fidelity reference on an H200 would be TF32. Every cell starts strict
(`set_tf32(False)`); the `tf32` optimization turns it on after the reference was recorded.

The flags are set through the long-standing API (`torch.backends.cudnn.allow_tf32` and
`torch.set_float32_matmul_precision`), which torch >= 2.9 mirrors into the newer `fp32_precision`
flags. Setting the newer flags directly is not safe on torch 2.14: once a cuDNN op's precision is
`ieee`, reading `torch.backends.cudnn.allow_tf32` raises, and inductor still reads it (and
`torch.get_float32_matmul_precision()`) while compiling. Reading prefers the newer flags when present.
"""

from __future__ import annotations

import torch


def set_tf32(enabled: bool) -> None:
    """Allow (or forbid) TF32 in fp32 cuDNN convolutions and in fp32 matmuls (cuBLAS; oneDNN where it has it)."""
    torch.backends.cudnn.allow_tf32 = enabled
    torch.set_float32_matmul_precision("high" if enabled else "highest")


def tf32_flags(backends=torch.backends) -> dict[str, bool]:
    """Whether fp32 convolutions (cuDNN) and matmuls (cuBLAS) may use TF32 now."""
    cudnn, matmul = backends.cudnn, backends.cuda.matmul
    if hasattr(cudnn, "conv") and hasattr(matmul, "fp32_precision"):  # torch >= 2.9
        # ("cuda", "all"), then generic; guarded like the rest in case a version lacks one of them
        parents = [getattr(cudnn, "fp32_precision", "none"), getattr(backends, "fp32_precision", "none")]
        return {
            "tf32_cudnn": _effective(cudnn.conv.fp32_precision, parents) == "tf32",
            "tf32_matmul": _effective(matmul.fp32_precision, parents) == "tf32",
        }
    return {"tf32_cudnn": bool(cudnn.allow_tf32), "tf32_matmul": bool(matmul.allow_tf32)}


def _effective(value: str, parents: list[str]) -> str:
    """An op's precision: its own, else the first parent's that is set ("none" means inherit), else ieee."""
    for candidate in [value, *parents]:
        if candidate != "none":
            return candidate
    return "ieee"


def capability_shortfall(device: torch.device, minimum: tuple[int, int], needs: str) -> str | None:
    """`needs` and this GPU's compute capability when the CUDA device is below `minimum`; None otherwise or off CUDA."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < minimum:
        return f"{needs}; this GPU is {major}.{minor}"
    return None
