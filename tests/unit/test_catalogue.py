"""The catalogue of optimizations (`shared/catalogue.py`): each entry whole and consistent, its pins equal to
pyproject.toml's, its place in a chain declared on the step itself, and docs/optimizations.md's table fresh.

Torch-free: the engine's side (every entry has a transform, every knob a value) is in test_client_without_torch.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest

from shared.catalogue import ARCHITECTURES, OPTIMIZATIONS, Optimization, allowed_before, parse_chain, pinned
from shared.errors import OptbenchError
from shared.result import CellResult
from tests.conftest import REPO


def test_every_pin_is_the_worker_extras():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    worker = pyproject["project"]["optional-dependencies"]["worker"]
    pins = {requirement for opt in OPTIMIZATIONS.values() for requirement in opt.packages}
    assert pins and all("==" in requirement for requirement in pins)
    assert sorted(pins - set(worker)) == []
    assert pinned("onnxruntime") in worker


def test_chain_declarations_name_steps_of_the_catalogue():
    for opt in OPTIMIZATIONS.values():
        named = [*(opt.may_follow or ()), *opt.may_precede]
        assert set(named) <= set(OPTIMIZATIONS) and opt.name not in named, opt.name
        for later in opt.may_precede:  # only a step that limits what precedes it needs to be told
            assert OPTIMIZATIONS[later].may_follow is not None, f"{opt.name} may_precede {later}, which takes any step"


def test_each_refusal_names_its_rule_in_full():
    with pytest.raises(OptbenchError) as error:
        parse_chain("channels_last+int8_static")
    assert str(error.value) == (
        "in 'channels_last+int8_static', int8_static can't follow channels_last: "
        "only prune, prune_structured may come before it"
    )
    with pytest.raises(OptbenchError) as error:
        parse_chain("int8_weight_only+torchscript")
    assert str(error.value) == (
        "in 'int8_weight_only+torchscript', torchscript can't follow int8_weight_only: only fp16, bf16, tf32, "
        "channels_last, prune, prune_structured, dynamic_quant may come before it"
    )
    with pytest.raises(OptbenchError, match="only prune, prune_structured, fp16 may come before it"):
        parse_chain("bf16+onnxruntime")


def test_a_new_step_says_it_may_precede_torchscript_without_editing_torchscript(monkeypatch):
    torchscript = OPTIMIZATIONS["torchscript"]
    monkeypatch.setitem(OPTIMIZATIONS, "sparse", Optimization("sparse", "a new step", may_precede=("torchscript",)))
    assert [opt.name for opt in parse_chain("sparse+torchscript")] == ["sparse", "torchscript"]
    assert allowed_before(torchscript)[-1] == "sparse" and OPTIMIZATIONS["torchscript"] is torchscript
    monkeypatch.setitem(OPTIMIZATIONS, "sparse", Optimization("sparse", "a new step"))
    with pytest.raises(OptbenchError, match="torchscript can't follow sparse"):
        parse_chain("sparse+torchscript")


def test_knobs_and_records_are_result_fields():
    fields = {field.name for field in dataclasses.fields(CellResult)}
    for opt in OPTIMIZATIONS.values():
        assert set(opt.knobs) | set(opt.records) <= fields, opt.name


def test_capability_and_architecture_are_declared_once_and_agree():
    for opt in OPTIMIZATIONS.values():
        texts = [opt.summary, opt.hardware, opt.capability_shortfall_text() if opt.min_capability else ""]
        written = {found for text in texts for found in re.findall(r"compute capability (\d+\.\d+)", text)}
        assert written <= ({opt.capability} if opt.min_capability else set()), opt.name
        assert opt.architecture in ("", *ARCHITECTURES) and bool(opt.architecture) == bool(opt.architecture_why)
    float8, int8_static = OPTIMIZATIONS["float8"], OPTIMIZATIONS["int8_static"]
    assert float8.capability_shortfall_text() == (
        "float8 needs compute capability 8.9 or newer (H100, H200, L4, RTX 40 and newer)"
    )
    assert OPTIMIZATIONS["tf32"].capability_shortfall_text() == "tf32 needs compute capability 8.0 (Ampere) or newer"
    assert int8_static.architecture_refusal("AMD64") is None and int8_static.architecture_refusal("x86_64") is None
    assert int8_static.architecture_refusal("aarch64") == (
        "int8_static uses the X86InductorQuantizer's oneDNN kernels: x86-64 only, not aarch64"
    )


def test_the_docs_table_is_what_make_docs_writes():
    done = subprocess.run(
        [sys.executable, "scripts/docs.py", "--check"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    text = (REPO / "docs" / "optimizations.md").read_text()
    headings = " ".join(line for line in text.splitlines() if line.startswith("### "))
    assert [name for name in OPTIMIZATIONS if f"`{name}`" not in headings] == []  # each has its notes too
