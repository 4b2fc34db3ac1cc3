"""`python -m worker.cell --optimization fp16`: run one cell here and print its result as one JSON object.

Needs torch and torchvision, not Celery or Redis: it is how a cell is tried by hand on any host. `--spec JSON`
takes a cell spec as a task carries it; `--check-model` only builds the model and prints what it is (the check
a sweep asks a worker for before it enqueues anything).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator

from shared.catalogue import MODELS, OPTIMIZATIONS
from shared.cli import OneLineParser, add_cell_arguments, one_line_errors
from shared.errors import OptbenchError
from shared.spec import CellSpec

PROG = "python -m worker.cell"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="Measure one (model, optimization, batch size) cell and print its result as JSON.",
    )
    parser.add_argument(
        "--optimization", default="baseline", help=f"one of {', '.join(OPTIMIZATIONS)}, or several joined with +"
    )
    parser.add_argument("--batch-size", type=int, default=1)
    add_cell_arguments(parser)
    parser.add_argument("--spec", type=json.loads, help="the whole cell spec as a JSON object (other options ignored)")
    parser.add_argument(
        "--check-model", action="store_true", help="build the model, run it once, print what it is as JSON and exit"
    )
    parser.add_argument("--list", action="store_true", help="list the optimizations and exit")
    parser.add_argument("--list-models", action="store_true", help="list the model names and exit")
    return parser


@one_line_errors(PROG)
def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    if args.pop("list"):
        for opt in OPTIMIZATIONS.values():
            print(f"{opt.name:18} {opt.summary}")
        return 0
    if args.pop("list_models"):
        print("\n".join(MODELS))
        print("and timm:NAME for NAME in timm.list_models(), package.module:factory, path/to/file.py:factory")
        return 0
    check_model, spec_json = args.pop("check_model"), args.pop("spec")
    spec = CellSpec.from_dict(spec_json) if spec_json is not None else CellSpec(**args)
    try:
        from worker.engine.models import build_model
        from worker.engine.run import run_cell
    except ImportError as exc:  # a client-only install (`pip install .`) has no torch
        raise OptbenchError(f"running a cell needs the worker side ({exc}): pip install '.[worker]'") from None
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    with _stdout_to_stderr():
        output = build_model(spec, run_once=True).fields() if check_model else run_cell(spec).to_dict()
    print(json.dumps(output))
    return 0


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Keep stdout for the JSON alone, even against libraries that print or write to fd 1."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


if __name__ == "__main__":
    sys.exit(main())
