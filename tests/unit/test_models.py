"""Model specs (`shared/models.py`): parsed and checked on the client without torch or timm, and their ids."""

from __future__ import annotations

import pandas as pd
import pytest

from producer.sweep import SweepRequest, parse_cell_ids, plan
from results.collect import cells_frame
from results.compare import CompareError, compare, model_code_difference
from shared.errors import OptbenchError
from shared.models import (
    FILE,
    MODULE,
    TIMM,
    TIMM_REQUIREMENT,
    TORCHVISION,
    parse_input_shape,
    parse_model,
    parse_model_kwargs,
    parse_models,
    timm_models,
)
from shared.spec import CellSpec
from tests.conftest import REPO


@pytest.mark.parametrize(
    ("text", "kind", "name", "factory", "canonical", "label"),
    [
        ("densenet121", TORCHVISION, "densenet121", None, "densenet121", "densenet121"),
        ("torchvision:resnet50", TORCHVISION, "resnet50", None, "resnet50", "resnet50"),
        ("timm:resnet18", TIMM, "resnet18", None, "timm:resnet18", "timm:resnet18"),
        ("timm:resnet18.a1_in1k", TIMM, "resnet18.a1_in1k", None, "timm:resnet18.a1_in1k", "timm:resnet18.a1_in1k"),
        ("tiny_model:build", MODULE, "tiny_model", "build", "tiny_model:build", "tiny_model:build"),
        (
            "my.pkg.models:make_net",
            MODULE,
            "my.pkg.models",
            "make_net",
            "my.pkg.models:make_net",
            "my.pkg.models:make_net",
        ),
        ("models/net.py:build", FILE, "models/net.py", "build", "models/net.py:build", "net.py:build"),
        ("/abs/net.py:build", FILE, "/abs/net.py", "build", "/abs/net.py:build", "net.py:build"),
    ],
)
def test_each_kind_of_spec_parses_to_its_canonical_text_and_label(text, kind, name, factory, canonical, label):
    spec = parse_model(text)
    assert (spec.kind, spec.name, spec.factory, spec.text, spec.label) == (kind, name, factory, canonical, label)
    assert "/" not in spec.label  # the label is the model's part of a cell id, before the `/`


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "a model must be a non-empty string"),
        ("densenet12", "did you mean densenet121"),
        ("torchvision:nope", "unknown model 'nope'"),
        ("timm:resnet_18", "did you mean timm:resnet18"),
        ("timm:", "unknown timm model ''"),
        ("pkg.mod:", "malformed model"),
        (":build", "malformed model"),
        ("pkg.mod:1build", "malformed model"),
        ("pkg-name.mod:build", "malformed model"),
        ("net.py", "malformed model"),
        (".py:build", "the file path is empty"),
    ],
)
def test_a_bad_spec_is_one_line_that_says_what_is_wrong(text, message):
    with pytest.raises(OptbenchError, match=message) as raised:
        parse_model(text)
    assert "\n" not in str(raised.value)


def test_a_list_of_models_keeps_each_once_and_their_labels_apart():
    assert [m.text for m in parse_models("resnet18, timm:resnet18,pkg.m:build")] == [
        "resnet18", "timm:resnet18", "pkg.m:build",
    ]  # fmt: skip
    with pytest.raises(OptbenchError, match="resnet18 appears twice"):
        parse_models("resnet18,torchvision:resnet18")
    with pytest.raises(OptbenchError, match=r"net\.py:build appears twice"):
        parse_models("a/net.py:build,b/net.py:build")


def test_model_kwargs_are_a_json_object_of_identifiers():
    assert parse_model_kwargs('{"num_classes": 10, "drop_rate": 0.1}') == {"num_classes": 10, "drop_rate": 0.1}
    assert parse_model_kwargs(None) == {} and parse_model_kwargs("  ") == {}
    for text, message in (
        ("{num_classes: 10}", "JSON object"),
        ("[1]", "keyword arguments"),
        ('{"a-b": 1}', "identifiers"),
    ):
        with pytest.raises(OptbenchError, match=message):
            parse_model_kwargs(text)


def test_an_input_shape_is_one_to_four_positive_sides():
    assert parse_input_shape("1,28,28") == (1, 28, 28) == parse_input_shape("1x28x28")
    assert parse_input_shape(None) is None and parse_input_shape("16") == (16,)
    for text in ("3,x,32", "0,28,28", "1,2,3,4,5", "3,-1,4"):
        with pytest.raises(OptbenchError, match="input shape"):
            parse_input_shape(text)


def test_a_cell_spec_keeps_the_canonical_model_and_round_trips_kwargs_and_shape():
    spec = CellSpec(model="torchvision:resnet50", model_kwargs={"num_classes": 10}, input_shape=[3, 64, 64])
    assert spec.model == "resnet50" and spec.input_shape == (3, 64, 64)
    assert CellSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(OptbenchError, match="weights pretrained are torchvision's or timm's"):
        CellSpec(model="pkg.models:build", weights="pretrained")


def test_the_timm_names_and_pin_are_the_installed_timms():
    import timm

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    assert timm_models() == frozenset(timm.list_models())
    assert f"timm=={timm.__version__}" == TIMM_REQUIREMENT
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert TIMM_REQUIREMENT in pyproject["optional-dependencies"]["worker"]
    # `pip install .` (the client) installs neither: it checks timm names against shared/timm_models.txt
    assert not [r for r in pyproject["dependencies"] if r.startswith(("torch", "timm"))]


def test_several_models_prefix_their_cell_ids_and_one_model_keeps_todays():
    two = plan(
        SweepRequest(models=("resnet18", "timm:resnet18"), optimizations=("baseline", "fp16"), batch_sizes=(1,)), "cpu"
    )
    assert list(two) == [
        "resnet18/baseline@bs1", "resnet18/fp16@bs1", "timm:resnet18/baseline@bs1", "timm:resnet18/fp16@bs1",
    ]  # fmt: skip
    assert two["timm:resnet18/fp16@bs1"].model == "timm:resnet18"
    one = plan(SweepRequest(models=("torchvision:resnet18",), optimizations=("baseline",), batch_sizes=(1,)), "cpu")
    assert list(one) == ["baseline@bs1"] and one["baseline@bs1"].model == "resnet18"
    assert parse_cell_ids("resnet18/fp16 + channels_last@bs1#2,timm:resnet18/fp16@bs1") == (
        "resnet18/fp16+channels_last@bs1#2", "timm:resnet18/fp16@bs1",
    )  # fmt: skip
    with pytest.raises(OptbenchError, match="malformed cell id"):
        parse_cell_ids("a/b/fp16@bs1")


# ------------------------------------------------------------------------------------ the same model everywhere


def model_runs(hashes: dict[str, str]) -> pd.DataFrame:
    """Runs of one model's baseline cell, one per worker, each with the model code hash it measured."""
    return pd.DataFrame(
        [
            {"sweep_id": "s", "cell_id": "baseline@bs1", "run_id": f"baseline@bs1#{i}", "repeat": i, "status": "ok",
             "worker": worker, "model": "pkg.net:build", "model_sha256": sha, "throughput_sps": 100.0 + i,
             "latency_ms_p50": 10.0 - i / 10,
             "optimization": "baseline", "batch_size": 1, "image_size": 32, "device": "cpu", "device_name": "cpu"}
            for i, (worker, sha) in enumerate(hashes.items(), start=1)
        ]
    )  # fmt: skip


def test_the_collector_refuses_a_model_measured_with_different_code_naming_the_workers():
    same = cells_frame(model_runs({"cpu@a": "a" * 64, "cpu@b": "a" * 64}))
    assert same.loc[0, "model_sha256"] == "a" * 64 and same.loc[0, "repeats_ok"] == 2
    with pytest.raises(OptbenchError) as raised:
        cells_frame(model_runs({"cpu@a": "a" * 64, "cpu@b": "b" * 64, "cpu@c": "a" * 64}))
    message = str(raised.value)
    assert "model pkg.net:build was measured with different model code" in message
    assert "sha256 aaaaaaaaaaaa on cpu@a, cpu@c; sha256 bbbbbbbbbbbb on cpu@b" in message


def test_compare_says_when_two_sweeps_measured_different_model_code():
    a, b = model_runs({"cpu@a": "a" * 64}), model_runs({"cpu@a": "b" * 64})
    assert model_code_difference(a, a) is None
    warning = model_code_difference(a, b)
    assert "different model code" in warning and "pkg.net:build (A: aaaaaaaaaaaa; B: bbbbbbbbbbbb)" in warning


def test_compare_pairs_cells_of_the_same_model_kwargs_and_input_shape_only():
    new = model_runs({"cpu@a": "a" * 64, "cpu@b": "a" * 64}).assign(input_shape="3x32x32")
    old = new.drop(columns=["model_sha256", "input_shape"])  # rows from before model kwargs and input shapes
    assert list(compare(old, new)["cell_id"]) == ["baseline@bs1", "geometric mean"]  # 32 px: 3x32x32
    with pytest.raises(CompareError, match="share no cell"):
        compare(old, new.assign(model_kwargs='{"num_classes": 10}'))
    with pytest.raises(CompareError, match="share no cell"):
        compare(old, new.assign(input_shape="1x32x32"))
