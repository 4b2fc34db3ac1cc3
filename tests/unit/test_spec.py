import pytest

from shared.catalogue import OPTIMIZATIONS as OPTIMIZATIONS
from shared.catalogue import parse_chain, preferred_device, unsupported_reason
from shared.errors import OptbenchError
from shared.spec import MAX_BATCH_SIZE, CellSpec


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"batch_size": 0}, "batch_size must be between 1"),
        ({"batch_size": -4}, "batch_size must be between 1"),
        ({"batch_size": MAX_BATCH_SIZE + 1}, "batch_size must be between 1"),
        ({"batch_size": 2.5}, "batch_size must be an integer"),
        ({"batch_size": True}, "batch_size must be an integer"),
        ({"image_size": -3}, "image_size must be between 32"),
        ({"model": "nonsense"}, "unknown model 'nonsense'"),
        ({"optimization": "nonsense"}, "unknown optimization 'nonsense': valid names are baseline, fp16"),
        ({"optimization": ""}, "non-empty"),
        ({"optimization": "fp16+fp16"}, "same step twice"),
        ({"optimization": "fp16+bf16"}, "sets the precision twice"),
        ({"optimization": "fp16+dynamic_quant"}, "sets the precision twice"),
        ({"optimization": "torchscript+fp16"}, "must be the last step"),
        ({"optimization": "baseline+prune"}, "can't be combined"),
        ({"optimization": "aa_control+fp16"}, "aa_control is the plain fp32 model and can't be combined"),
        ({"device": "tpu"}, "device must be one of"),
        ({"weights": "/no/such/file.pt"}, "no file '/no/such/file.pt'"),
        ({"weights": "imagenet"}, "auto, pretrained, random, synthetic or a state-dict file"),
        ({"prune_amount": 1.0}, "prune_amount must be in (0.0, 1.0)"),
        ({"compile_mode": "fast"}, "compile_mode must be one of"),
        ({"min_iters": 0}, "min_iters must be between 1"),
    ],
)
def test_invalid_specs_are_rejected_with_a_clear_message(fields, message):
    with pytest.raises(OptbenchError, match=None) as error:
        CellSpec(**fields)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_from_dict_round_trips_and_rejects_unknown_fields():
    spec = CellSpec(optimization="fp16+channels_last", batch_size=16)
    assert CellSpec.from_dict(spec.to_dict()) == spec
    assert spec.cell_id == "fp16+channels_last@bs16"
    with pytest.raises(OptbenchError, match="unknown cell spec field"):
        CellSpec.from_dict({**spec.to_dict(), "command": "rm -rf /"})
    with pytest.raises(OptbenchError, match="must be a JSON object"):
        CellSpec.from_dict(["densenet121"])


def test_chains_compose_left_to_right_in_the_order_given():
    assert [opt.name for opt in parse_chain("bf16+channels_last")] == ["bf16", "channels_last"]
    assert [opt.name for opt in parse_chain("prune+fp16+compile")] == ["prune", "fp16", "compile"]


def test_cpu_only_optimizations_resolve_auto_to_cpu_and_are_unsupported_on_cuda():
    quant = parse_chain("dynamic_quant")
    assert preferred_device(quant, cuda_available=True) == "cpu"
    assert preferred_device(parse_chain("fp16"), cuda_available=True) == "cuda"
    assert preferred_device(parse_chain("fp16"), cuda_available=False) == "cpu"
    assert unsupported_reason(quant, "cuda") == "dynamic_quant runs on cpu only, not on cuda"
    assert all(unsupported_reason([opt], "cpu") is None for opt in OPTIMIZATIONS.values() if opt.name != "float8")
    assert "compute capability 8.9+" in unsupported_reason(parse_chain("float8"), "cpu")
