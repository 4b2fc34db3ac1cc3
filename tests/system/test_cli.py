"""`python -m worker.cell` as a user runs it: one JSON object on stdout, one-line errors, exit codes."""

import json
import subprocess
import sys

import pytest


def cell(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "worker.cell", *args], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "batch_size must be between 1 and 4096 (got 0)"),
        (["--batch-size", "two"], "argument --batch-size: invalid int value: 'two'"),
        (["--optimization", "nonsense"], "unknown optimization 'nonsense': valid names are baseline"),
        (["--model", "nonsense"], "unknown model 'nonsense'"),
        (["--image-size", "-3"], "image_size must be between 32 and 2048 (got -3)"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_traceback(args, message):
    done = cell(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_a_cell_prints_exactly_one_json_object_and_exits_0():
    done = cell("--optimization", "prune", "--batch-size", "2", "--image-size", "32", "--min-seconds", "0")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # the whole of stdout is one object
    assert result["status"] == "ok" and result["optimization"] == "prune"
    assert "deprecated" not in done.stdout


def test_an_unsupported_cell_still_exits_0_with_its_reason():
    done = cell("--optimization", "dynamic_quant", "--device", "cuda", "--image-size", "32")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "unsupported"


def test_list_names_every_optimization():
    done = cell("--list")
    names = [line.split()[0] for line in done.stdout.splitlines()]
    assert names[:3] == ["baseline", "fp16", "bf16"] and "dynamic_quant" in names
