"""Shared test helpers: tiny cells so the CPU suite stays fast."""

from __future__ import annotations

import pytest
import torch

from shared.spec import CellSpec

# Small images, two samples, a handful of timed calls: enough to exercise every code path.
TINY = dict(image_size=32, batch_size=2, warmup_iters=1, warmup_seconds=0.0, min_iters=3, min_seconds=0.0)


def tiny_spec(**overrides) -> CellSpec:
    return CellSpec(**{**TINY, **overrides})


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
