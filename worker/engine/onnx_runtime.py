"""A model exported to ONNX (torch.onnx.export, the dynamo exporter) and run by ONNX Runtime.

The session is called like the torch model it replaces: a torch tensor in, a torch tensor of logits
out. Inputs and outputs are bound in place with I/O binding (the input's memory is read where it lies,
the logits are written into one preallocated torch tensor), so no copy between torch and ONNX Runtime
is timed. On CUDA, ONNX Runtime runs on torch's current stream, which the CUDA-event timer measures.
onnxruntime and onnxscript are imported inside the functions: a worker without them runs every other
optimization, and this one says `unsupported` ("install onnxruntime", see `transforms.unsupported_here`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
ELEMENT_TYPES = {torch.float32: np.float32, torch.float16: np.float16}


def export(model: nn.Module, example: torch.Tensor) -> tuple[bytes, int]:
    """The serialized ONNX model (weights inside) for inputs shaped like `example`, and its opset."""
    program = torch.onnx.export(model, (example,), dynamo=True, verbose=False)
    proto = program.model_proto
    opset = next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))
    return proto.SerializeToString(), opset


class OrtModel(nn.Module):
    """An ONNX Runtime session on one device, bound to one input shape and one output buffer."""

    def __init__(self, onnx_model: bytes, example: torch.Tensor, threads: int) -> None:
        super().__init__()
        import onnxruntime

        device = example.device
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        provider = PROVIDERS[device.type]
        provider_options: dict[str, str] = {}
        self.device_id = 0
        if device.type == "cuda":
            self.device_id = device.index if device.index is not None else torch.cuda.current_device()
            stream = torch.cuda.current_stream(device).cuda_stream
            provider_options = {"device_id": str(self.device_id), "user_compute_stream": str(stream)}
        self.session = onnxruntime.InferenceSession(onnx_model, options, providers=[(provider, provider_options)])
        if self.session.get_providers()[0] != provider:  # ONNX Runtime falls back to the CPU with a warning
            raise RuntimeError(f"ONNX Runtime did not start {provider} (got {self.session.get_providers()})")
        self.provider = provider
        self.shape = tuple(example.shape)
        self.dtype = example.dtype
        self.input_name = self.session.get_inputs()[0].name
        output = self.session.get_outputs()[0]
        self.output = torch.empty(output.shape, dtype=example.dtype, device=device)
        self.binding = self.session.io_binding()
        self.binding.bind_output(
            output.name,
            device.type,
            self.device_id,
            ELEMENT_TYPES[self.dtype],
            list(output.shape),
            self.output.data_ptr(),
        )

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """The logits of `batch`, in the one output buffer: the next call overwrites them."""
        if tuple(batch.shape) != self.shape or batch.dtype != self.dtype:
            raise ValueError(f"this session takes {self.dtype} inputs of shape {self.shape}, got {batch.shape}")
        batch = batch.contiguous()
        self.binding.bind_input(
            self.input_name,
            batch.device.type,
            self.device_id,
            ELEMENT_TYPES[self.dtype],
            list(self.shape),
            batch.data_ptr(),
        )
        self.session.run_with_iobinding(self.binding)
        return self.output
