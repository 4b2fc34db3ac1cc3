"""The client (`python -m producer`, `python -m results`) works in a Python that cannot import torch.

Each client command runs in a subprocess whose `sitecustomize` puts a `sys.meta_path` finder first
that raises ImportError for torch, torchvision, pynvml and torch_pruning, and logs every such attempt
(a guarded `try: import torch` would still load torch in a full install), against the test Redis and
real workers of a full install. The catalogue the client validates with must match what torchvision
and the worker's transforms know: those checks run in this process, which has torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, TINY_SWEEP_ARGS, service_env

BLOCKED = ("torch", "torchvision", "pynvml", "torch_pruning", "timm")
BLOCKED_LOG = "OPTBENCH_TEST_BLOCKED_LOG"

# Loaded by every Python started with the blocker's folder first on PYTHONPATH.
SITECUSTOMIZE = f'''
import os
import sys

BLOCKED = {BLOCKED!r}


class _BlockTorch:
    """Torch and its kin are not installed here: every attempt to import them fails, and is logged."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] not in BLOCKED:
            return None
        log = os.environ.get({BLOCKED_LOG!r})
        if log:
            with open(log, "a") as file:
                file.write(name + "\\n")
        raise ImportError(f"{{name}} is blocked: the client must not import it", name=name)


sys.meta_path.insert(0, _BlockTorch())
'''


@pytest.fixture(scope="module")
def blocker(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("no_torch")
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return folder


@pytest.fixture
def blocked_log(tmp_path) -> Path:
    return tmp_path / "blocked_imports.log"


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("client_results")


def blocked_env(redis_url: str, blocker: Path, log: Path, results_dir: Path) -> dict[str, str]:
    """The environment of a client without torch: the blocker first on PYTHONPATH, results in a temp folder."""
    return service_env(
        redis_url,
        PYTHONPATH=os.pathsep.join((str(blocker), str(REPO))),
        OPTBENCH_RESULTS_DIR=str(results_dir),
        **{BLOCKED_LOG: str(log)},
    )


@pytest.fixture
def client_env(redis_url, blocker, blocked_log, results_dir) -> dict[str, str]:
    return blocked_env(redis_url, blocker, blocked_log, results_dir)


def client(module: str, *args: str, env: dict[str, str], python_args: tuple[str, ...] = ()):
    """Run a client CLI in a fresh interpreter (cwd: the repository), as a user types it."""
    return subprocess.run(
        [sys.executable, *python_args, "-m", module, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def ok(done: subprocess.CompletedProcess, blocked_log: Path) -> subprocess.CompletedProcess:
    """The command exited 0 and never tried to import a blocked module."""
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert_no_blocked_imports(blocked_log)
    return done


def assert_no_blocked_imports(blocked_log: Path) -> None:
    attempts = blocked_log.read_text().split() if blocked_log.exists() else []
    assert attempts == [], f"the client tried to import {sorted(set(attempts))}"


@pytest.fixture(scope="module")
def sweep_id(workers, redis_url, blocker, results_dir, tmp_path_factory) -> str:
    """A tiny sweep, started and waited for by a client without torch; its id."""
    log = tmp_path_factory.mktemp("sweep") / "blocked_imports.log"
    env = blocked_env(redis_url, blocker, log, results_dir)
    args = ("--optimizations", "baseline,prune", "--batch-sizes", "1", "--repeats", "2", "--wait")
    done = ok(client("producer", "sweep", *TINY_SWEEP_ARGS, *args, env=env), log)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout  # stdout is the sweep id alone
    return lines[0]


def test_the_blocker_makes_torch_unimportable(client_env, blocked_log):
    probe = (
        "import importlib\n"
        f"for name in {BLOCKED!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError:\n"
        "        continue\n"
        "    raise SystemExit(name + ' was imported')\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], env=client_env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert blocked_log.read_text().split() == list(BLOCKED)
    done = subprocess.run([sys.executable, "-c", "import torch"], env=client_env, capture_output=True, text=True)
    assert done.returncode == 1 and "ImportError: torch is blocked" in done.stderr


def test_sweep_ran_every_run_ok_without_torch(sweep_id, app, redis_client):
    from shared import manifest
    from shared.state import sweep_rows

    rows = sweep_rows(app.backend, manifest.load(redis_client, sweep_id))
    assert sorted(row["run_id"] for row in rows) == [
        "baseline@bs1#1",
        "baseline@bs1#2",
        "prune@bs1#1",
        "prune@bs1#2",
    ]
    assert {row["status"] for row in rows} == {"ok"}, rows


def test_rows_of_some_fields_are_the_full_rows_cut_to_them(sweep_id, app, redis_client):
    from producer.decide import WATCHED_FIELDS
    from shared import manifest
    from shared.result import FIELD_NAMES
    from shared.state import sweep_rows

    sweep = manifest.load(redis_client, sweep_id)
    full, watched = sweep_rows(app.backend, sweep), sweep_rows(app.backend, sweep, WATCHED_FIELDS)
    left_out = set(FIELD_NAMES) - set(WATCHED_FIELDS)
    assert "latency_ms_p90" in left_out and "throughput_sps" in WATCHED_FIELDS
    for whole, cut in zip(full, watched, strict=True):
        assert cut == {name: whole[name] for name in cut}
        assert set(whole) - set(cut) == left_out - {"requested_device"}  # the manifest's, in every row
    assert app.backend.task_keyprefix + b"x" == app.backend.get_key_for_task("x")  # as sweep_rows builds keys


def test_status(sweep_id, client_env, blocked_log):
    done = ok(client("producer", "status", "--sweep", sweep_id, env=client_env), blocked_log)
    assert "prune@bs1" in done.stdout and "baseline@bs1" in done.stdout


def test_rerun(sweep_id, client_env, blocked_log):
    done = ok(
        client("producer", "rerun", "--sweep", sweep_id, "--cells", "prune@bs1", "--wait", env=client_env),
        blocked_log,
    )
    assert "re-enqueued prune@bs1#1 (attempt 2)" in done.stderr
    assert "re-enqueued prune@bs1#2 (attempt 2)" in done.stderr


def test_collect_report_and_compare(sweep_id, client_env, blocked_log, results_dir):
    done = ok(client("results", "collect", "--sweep", sweep_id, env=client_env), blocked_log)
    assert f"sweep {sweep_id}: 2 cells (2 ok), 4 runs" in done.stdout
    assert (results_dir / f"{sweep_id}.csv").exists() and (results_dir / f"{sweep_id}_runs.csv").exists()
    ok(client("results", "report", "--sweep", sweep_id, env=client_env), blocked_log)
    assert (results_dir / sweep_id / "report.md").exists()
    # On a busy machine every run may be flagged as contended, leaving none to compare: one line, exit 2.
    done = client("results", "compare", sweep_id, sweep_id, env=client_env)
    none_usable = done.returncode == 2 and done.stderr.count("\n") == 1 and "share no cell with ok runs" in done.stderr
    assert done.returncode == 0 or none_usable, done.stderr[-3000:]
    # compare's whole path, whatever the contention: the runs without their noise signals, against themselves
    runs = pd.read_csv(results_dir / f"{sweep_id}_runs.csv")
    quiet = results_dir / "quiet_runs.csv"
    runs.drop(columns=[c for c in runs.columns if c.startswith("noise_")]).to_csv(quiet, index=False)
    ok(client("results", "compare", str(quiet), str(quiet), env=client_env), blocked_log)
    table = pd.read_csv(results_dir / "compare-quiet-quiet.csv")
    assert table["cell_id"].tolist() == ["baseline@bs1", "prune@bs1", "geometric mean"], table
    # the same runs on both sides: every ratio is exactly 1 with an interval around it, never faster or slower;
    # the geometric mean of ratios that are all 1 has a zero-width interval: equivalent
    assert set(table["throughput_verdict"].iloc[:-1]) <= {"equivalent", "inconclusive"}, table
    assert table["throughput_ratio"].tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert table["throughput_verdict"].iloc[-1] == "equivalent", table
    done = ok(client("results", "recommend", sweep_id, env=client_env), blocked_log)
    assert "What to ship" in done.stdout
    assert_no_blocked_imports(blocked_log)


@pytest.mark.parametrize(
    "command",
    [("producer", "--help"), ("producer", "status", "--help"), ("results", "--help"), ("results", "compare", "--help")],
    ids=" ".join,
)
def test_help(command, client_env, blocked_log):
    done = ok(client(*command, env=client_env), blocked_log)
    assert done.stdout.startswith("usage: python -m ")


@pytest.mark.parametrize(
    ("model", "message"),
    [("nonsense", "unknown model 'nonsense'"), ("timm:resnet_18", "unknown timm model 'resnet_18': did you mean")],
)
def test_an_invalid_sweep_is_one_line_and_exit_2(model, message, client_env, blocked_log):
    done = client("producer", "sweep", *TINY_SWEEP_ARGS, "--model", model, env=client_env)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert done.stdout == ""
    assert not blocked_log.exists()


@pytest.mark.parametrize("blocked", [True, False], ids=["blocked", "full-install"])
def test_status_help_imports_no_torch(blocked, client_env, blocked_log):
    """`-X importtime` lists every module loaded: none of torch's, with the blocker or in the full install."""
    env = client_env if blocked else {**client_env, "PYTHONPATH": str(REPO)}
    done = ok(client("producer", "status", "--help", env=env, python_args=("-X", "importtime")), blocked_log)
    imported = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "shared.services" in imported
    leaked = sorted(name for name in imported if name.partition(".")[0] in BLOCKED)
    assert leaked == []


def test_catalogue_models_are_torchvisions():
    import torchvision

    from shared.catalogue import MODELS

    assert list(MODELS) == torchvision.models.list_models(module=torchvision.models)


def test_catalogue_optimizations_are_the_engines_transforms():
    from shared.catalogue import OPTIMIZATIONS
    from worker.engine.transforms import TRANSFORMS

    assert sorted(OPTIMIZATIONS) == sorted(TRANSFORMS)


def test_the_engine_registers_code_only_for_catalogue_names_and_reads_the_rest_from_it(monkeypatch):
    import dataclasses

    import torch

    from shared.catalogue import OPTIMIZATIONS, parse_chain
    from shared.spec import CellSpec
    from worker.engine import transforms

    assert set(transforms.CHECKS) <= set(OPTIMIZATIONS)
    with pytest.raises(KeyError, match="not in the catalogue"):
        transforms.transform("nonsense")
    spec_fields = {field.name for field in dataclasses.fields(CellSpec)}
    knobs = {knob for opt in OPTIMIZATIONS.values() for knob in opt.knobs}
    assert knobs <= spec_fields | set(transforms.SETTINGS)
    monkeypatch.setattr(transforms.platform, "machine", lambda: "aarch64")
    assert transforms.unsupported_here(parse_chain("prune+int8_static"), torch.device("cpu")) == (
        "int8_static uses the X86InductorQuantizer's oneDNN kernels: x86-64 only, not aarch64"
    )
    entry = dataclasses.replace(OPTIMIZATIONS["int8_dynamic"], packages=("no-such-package==1.0",))
    monkeypatch.setitem(OPTIMIZATIONS, "int8_dynamic", entry)
    assert transforms.unsupported_here([entry], torch.device("cpu")) == (
        "int8_dynamic needs no-such-package, which is not installed here: install no-such-package==1.0"
    )
