"""Which model a cell measures: the `--model` spec, parsed and checked without torch or timm.

A spec is one of
- a torchvision classification model: `densenet121`, or `torchvision:densenet121`;
- a timm model: `timm:resnet18` (or with a pretrained tag, `timm:resnet18.a1_in1k`);
- a factory in an importable module: `package.module:factory`;
- a factory in a Python file on the worker: `path/to/file.py:factory` (relative to the worker's folder).
A factory is a callable returning an `nn.Module`, called with the cell's `--model-kwargs`. The client checks
the syntax and the torchvision and timm names (against lists kept equal to the pinned packages' by tests);
whether a factory builds is only known on a worker, which the producer asks before it enqueues anything
(`producer/model_check.py`). How a spec becomes a model is `worker/engine/models.py`'s.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from shared.catalogue import MODELS
from shared.errors import OptbenchError

TORCHVISION, TIMM, MODULE, FILE = "torchvision", "timm", "module", "file"
IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
MODULE_SPEC = re.compile(rf"^(?P<module>{IDENTIFIER}(?:\.{IDENTIFIER})*):(?P<factory>{IDENTIFIER})$")
FILE_SPEC = re.compile(rf"^(?P<path>[^:,@#\s]*\.py):(?P<factory>{IDENTIFIER})$")
TIMM_SPEC = re.compile(r"^(?P<name>[a-z0-9_]+)(?:\.(?P<tag>[A-Za-z0-9_]+))?$")
MAX_INPUT_SIDE = 8192
TIMM_REQUIREMENT = "timm==1.0.31"  # equal to pyproject.toml's worker extra (a test checks it)
EXAMPLES = "densenet121, timm:resnet18, mypackage.models:build or models/net.py:build"


@dataclass(frozen=True)
class ModelSpec:
    """A parsed `--model`: its kind, the torchvision/timm name or module/file, and the factory."""

    text: str  # canonical: `densenet121`, `timm:resnet18`, `pkg.mod:build`, `models/net.py:build`
    kind: str  # torchvision | timm | module | file
    name: str  # the torchvision or timm name, the module, or the file path
    factory: str | None = None

    @property
    def label(self) -> str:
        """The model's part of a cell id in a sweep of several models (`resnet50/fp16@bs8`): no `/`."""
        if self.kind == FILE:
            return f"{self.name.rsplit('/', 1)[-1]}:{self.factory}"
        return self.text

    @property
    def is_zoo(self) -> bool:
        """A torchvision or timm name, which the client checks itself."""
        return self.kind in (TORCHVISION, TIMM)


@functools.cache
def timm_models() -> frozenset[str]:
    """timm.list_models() of the pinned timm (shared/timm_models.txt; a test keeps the two equal)."""
    text = resources.files("shared").joinpath("timm_models.txt").read_text()
    return frozenset(line for line in text.splitlines() if line)


def parse_model(text: object) -> ModelSpec:
    """The spec `text` names; OptbenchError says what is wrong, in one line."""
    if not isinstance(text, str) or not text.strip():
        raise OptbenchError(f"a model must be a non-empty string such as {EXAMPLES} (got {text!r})")
    text = text.strip()
    prefix, _, rest = text.partition(":")
    if prefix == TORCHVISION:
        return _torchvision(rest)
    if prefix == TIMM:
        return _timm(rest)
    if match := FILE_SPEC.match(text):
        if not match["path"].removesuffix(".py"):
            raise OptbenchError(f"model {text!r}: the file path is empty (use path/to/file.py:factory)")
        return ModelSpec(text, FILE, match["path"], match["factory"])
    if match := MODULE_SPEC.match(text):
        return ModelSpec(text, MODULE, match["module"], match["factory"])
    if ":" in text or "/" in text or text.endswith(".py"):
        raise OptbenchError(
            f"malformed model {text!r}: a factory is package.module:function or path/to/file.py:function"
        )
    return _torchvision(text)


def parse_models(text: str) -> tuple[ModelSpec, ...]:
    """A comma-separated list of specs, each once, whose cell-id labels differ."""
    items = [item.strip() for item in str(text).split(",")]
    if not str(text).strip() or not all(items):
        raise OptbenchError(f"models must be a comma-separated list without empty items (got {text!r})")
    specs = tuple(parse_model(item) for item in items)
    labels = [spec.label for spec in specs]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise OptbenchError(f"model {', '.join(repeated)} appears twice: each model must appear once")
    return specs


def _torchvision(name: str) -> ModelSpec:
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise OptbenchError(
            f"unknown model {name!r}: {hint}use a torchvision classification model such as densenet121 or resnet50 "
            f"(`python -m producer list`), timm:NAME, or a factory (package.module:function, file.py:function)"
        )
    return ModelSpec(name, TORCHVISION, name)


def _timm(name: str) -> ModelSpec:
    match = TIMM_SPEC.match(name)
    if not match or match["name"] not in timm_models():
        close = difflib.get_close_matches(match["name"] if match else name, sorted(timm_models()), n=3)
        hint = f": did you mean {', '.join('timm:' + c for c in close)}?" if close else ""
        raise OptbenchError(f"unknown timm model {name!r}{hint} (timm.list_models() lists them)")
    return ModelSpec(f"{TIMM}:{name}", TIMM, name)


def parse_model_kwargs(text: str | None) -> dict[str, Any]:
    """`--model-kwargs`: a JSON object whose keys are Python identifiers (keyword arguments of the factory)."""
    if text is None or not str(text).strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OptbenchError(f"model kwargs must be a JSON object such as '{{\"num_classes\": 10}}' ({exc})") from None
    return check_model_kwargs(value)


def check_model_kwargs(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise OptbenchError(f"model kwargs must be a JSON object of keyword arguments (got {value!r})")
    bad = sorted(str(key) for key in value if not (isinstance(key, str) and re.fullmatch(IDENTIFIER, key)))
    if bad:
        raise OptbenchError(f"model kwargs keys must be Python identifiers (got {', '.join(map(repr, bad))})")
    return value


def parse_input_shape(text: str | None) -> tuple[int, ...] | None:
    """`--input-shape C,H,W` (or any per-sample shape of 1 to 4 positive sides): a tuple, or None."""
    if text is None or not str(text).strip():
        return None
    try:
        shape = tuple(int(side) for side in str(text).replace("x", ",").split(","))
    except ValueError:
        raise OptbenchError(f"input shape must be comma-separated integers such as 3,224,224 (got {text!r})") from None
    return check_input_shape(shape)


def check_input_shape(shape: object) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or not 1 <= len(shape) <= 4:
        raise OptbenchError(f"input shape must be 1 to 4 sides per sample, such as 3,224,224 (got {shape!r})")
    if any(isinstance(side, bool) or not isinstance(side, int) or not 1 <= side <= MAX_INPUT_SIDE for side in shape):
        raise OptbenchError(f"input shape sides must be integers between 1 and {MAX_INPUT_SIDE} (got {shape!r})")
    return tuple(shape)


def shape_text(shape: tuple[int, ...]) -> str:
    """A per-sample shape as rows record it: `3x224x224`."""
    return "x".join(str(side) for side in shape)
