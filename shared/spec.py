"""A cell: one (model, optimization, batch size) measured on one device, and its validation.

`CellSpec` is what travels from the producer to the worker (as a JSON dict) and what
`python -m worker.cell` builds from its arguments. Constructing one validates it, so an
invalid cell never reaches a GPU.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from shared.catalogue import normalize
from shared.errors import OptbenchError
from shared.models import FILE, MODULE, ModelSpec, check_input_shape, check_model_kwargs, parse_model

DEVICES = ("auto", "cuda", "cpu")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
WEIGHTS_KEYWORDS = ("auto", "pretrained", "random", "synthetic")
MAX_BATCH_SIZE = 4096
MIN_IMAGE_SIZE = 32  # below this the 32x down-sampling of ImageNet models leaves no pixels
MAX_IMAGE_SIZE = 2048


@dataclass(frozen=True)
class CellSpec:
    """Everything that defines one cell. Measurement knobs left as None take the device's defaults."""

    model: str = "densenet121"  # a model spec (shared/models.py): torchvision name, timm:NAME, or a factory
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the model's builder
    input_shape: tuple[int, ...] | None = None  # one sample's shape; None: (3, image_size, image_size)
    optimization: str = "baseline"
    batch_size: int = 1
    image_size: int = 224
    device: str = "auto"
    weights: str = "auto"
    warmup_iters: int | None = None
    warmup_seconds: float | None = None
    min_iters: int | None = None
    min_seconds: float | None = None
    target_spread: float | None = None
    max_seconds: float | None = None
    prune_amount: float = 0.5
    compile_mode: str = "default"
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        _check_int("image_size", self.image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        if self.device not in DEVICES:
            raise OptbenchError(f"device must be one of {', '.join(DEVICES)} (got {self.device!r})")
        if self.compile_mode not in COMPILE_MODES:
            raise OptbenchError(f"compile_mode must be one of {', '.join(COMPILE_MODES)} (got {self.compile_mode!r})")
        if self.weights not in WEIGHTS_KEYWORDS and not os.path.isfile(self.weights):
            raise OptbenchError(
                f"weights must be auto, pretrained, random, synthetic or a state-dict file (no file {self.weights!r})"
            )
        _check_number("prune_amount", self.prune_amount, 0.0, 1.0, open_interval=True)
        for name in ("warmup_iters", "min_iters"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 0 if name == "warmup_iters" else 1, 10**7)
        for name in ("warmup_seconds", "min_seconds", "max_seconds"):
            if getattr(self, name) is not None:
                _check_number(name, getattr(self, name), 0.0, 86400.0)
        if self.target_spread is not None:
            _check_number("target_spread", self.target_spread, 0.0, 1.0, open_interval=True)

        model = parse_model(self.model)
        object.__setattr__(self, "model", model.text)  # "torchvision:resnet50" -> "resnet50"
        object.__setattr__(self, "model_kwargs", check_model_kwargs(self.model_kwargs))
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", check_input_shape(self.input_shape))
        if self.weights == "pretrained" and model.kind in (MODULE, FILE):
            raise OptbenchError(
                f"weights pretrained are torchvision's or timm's: a factory ({model.text}) builds its own; "
                "use random, synthetic or a state-dict file"
            )
        object.__setattr__(self, "optimization", normalize(self.optimization))  # "fp16 + bf16" -> "fp16+bf16"

    @property
    def model_spec(self) -> ModelSpec:
        return parse_model(self.model)

    @property
    def cell_id(self) -> str:
        """The cell's name inside a sweep, e.g. `fp16@bs16`."""
        return f"{self.optimization}@bs{self.batch_size}"

    def to_dict(self) -> dict[str, Any]:
        """The spec as a JSON-ready dict (its one nested value, `model_kwargs`, copied: the dict is the caller's)."""
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        values["model_kwargs"] = copy.deepcopy(self.model_kwargs)
        if self.input_shape is not None:
            values["input_shape"] = list(self.input_shape)
        return values

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellSpec:
        """Build from a JSON dict (e.g. task arguments), rejecting unknown keys."""
        if not isinstance(data, dict):
            raise OptbenchError(f"a cell spec must be a JSON object (got {type(data).__name__})")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise OptbenchError(f"unknown cell spec field(s): {', '.join(unknown)}")
        return cls(**data)


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptbenchError(f"{name} must be an integer (got {value!r})")
    if not low <= value <= high:
        raise OptbenchError(f"{name} must be between {low} and {high} (got {value})")


def _check_number(name: str, value: Any, low: float, high: float, open_interval: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OptbenchError(f"{name} must be a number (got {value!r})")
    inside = low < value < high if open_interval else low <= value <= high
    if not inside:
        bounds = f"({low}, {high})" if open_interval else f"[{low}, {high}]"
        raise OptbenchError(f"{name} must be in {bounds} (got {value})")
