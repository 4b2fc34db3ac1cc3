"""What every run of a cell measures alike, measured by its first run on a host and reused by the later ones.

A cell's fidelity against the fp32 model, its model size, parameter counts and FLOPs come out the same in every
run (seeded inputs, the same weights, the same code): only timing and memory vary between processes. So the
first run of a cell on a worker host measures them and writes them here, and a later run reads them back
(`facts_source` says which run measured them). The key is a SHA-256 of everything they depend on: the cell's
spec (timing settings aside), the model's code and weights as built, the device's name, the library versions
and optbench's own engine code, so a different model, weights or code never reuses them.

The BatchNorm statistics of `synthetic` weights (`models.reestimate_batchnorm`) are kept the same way, per model
spec, input shape and seed, and checked by the SHA-256 of the stored file before they are loaded.

The cache is a folder on the worker's disk (OPTBENCH_CACHE_DIR, default ~/.cache/optbench); entries are written
to a temporary file and renamed, so workers sharing the folder never read half an entry.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from shared.config import cache_dir

log = logging.getLogger(__name__)
# The spec fields that change how long a run times, not what the model is.
TIMING_FIELDS = ("warmup_iters", "warmup_seconds", "min_iters", "min_seconds", "target_spread", "max_seconds")
# The result fields every run of a cell measures alike (run._prepare), when the fp32 probe ran.
FACT_FIELDS = (
    "model_gflops", "gflops_per_sample", "model_size_mb", "model_size_compressed_mb", "params_total",
    "params_nonzero", "sparsity", "top1_agreement", "max_abs_error", "cosine_similarity", "fidelity_samples",
    "quant_top1_agreement", "quant_max_abs_error", "quant_cosine_similarity", "kernel_top1_agreement",
    "kernel_max_abs_error", "kernel_cosine_similarity",
)  # fmt: skip


@functools.lru_cache(maxsize=1)
def engine_code_sha256() -> str:
    """SHA-256 of optbench's engine code (worker/engine and the shared catalogue, spec and models modules)."""
    here = Path(__file__).resolve().parent
    shared = here.parent.parent / "shared"
    files = sorted(here.glob("*.py")) + [shared / name for name in ("catalogue.py", "spec.py", "models.py")]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def key_of(**parts: Any) -> str:
    """A cache key: the SHA-256 of `parts` (JSON, keys sorted) with the engine code's and torch's versions."""
    parts = {**parts, "engine": engine_code_sha256(), "torch": torch.__version__}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def cell_key(spec_fields: dict[str, Any], row: dict[str, Any]) -> str:
    """The key of a cell's facts: its spec without the timing settings, and what the row says of the model's code,
    weights, device and library versions."""
    spec = {name: value for name, value in spec_fields.items() if name not in TIMING_FIELDS}
    built = ("model_sha256", "weights", "input_shape", "device", "device_name", "torchvision_version",
             "torchao_version", "onnxruntime_version", "cpu_isa", "compute_capability")  # fmt: skip
    return key_of(kind="cell", spec=spec, **{name: row.get(name) for name in built})


def _path(key: str, suffix: str) -> Path:
    return cache_dir() / f"{key}.{suffix}"


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(handle, "wb") as out:
        out.write(data)
    os.replace(temporary, path)


def load_facts(key: str) -> dict[str, Any] | None:
    """The facts stored under `key` and where they came from (`facts_source`), or None."""
    path = _path(key, "facts.json")
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return {**stored["fields"], "facts_source": f"cached: measured {stored['measured']} (key {key[:12]})"}


def save_facts(key: str, fields: dict[str, Any], measured: str) -> None:
    """Store the facts a run measured (`measured`: its host and start time)."""
    wanted = {name: fields.get(name) for name in FACT_FIELDS}
    _write(_path(key, "facts.json"), json.dumps({"fields": wanted, "measured": measured}).encode())


def load_state(key: str) -> dict[str, torch.Tensor] | None:
    """Tensors stored under `key` if the file's SHA-256 matches the one recorded beside it, else None."""
    data_path, sha_path = _path(key, "pt"), _path(key, "pt.sha256")
    try:
        data, recorded = data_path.read_bytes(), sha_path.read_text().strip()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != recorded:
        log.warning("cached state %s does not match its SHA-256: measured again", data_path)
        return None
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def save_state(key: str, tensors: dict[str, torch.Tensor]) -> None:
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    data = buffer.getvalue()
    _write(_path(key, "pt"), data)
    _write(_path(key, "pt.sha256"), hashlib.sha256(data).hexdigest().encode())
