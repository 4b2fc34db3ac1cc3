"""Command-line pieces both sides use: one-line errors, and the options that shape a cell."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from collections.abc import Callable

from shared.errors import OptbenchError
from shared.models import parse_input_shape, parse_model_kwargs
from shared.spec import COMPILE_MODES, DEVICES, CellSpec

SPEC_DEFAULTS = {f.name: f.default for f in dataclasses.fields(CellSpec) if f.default is not dataclasses.MISSING}


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (no usage block) and exits 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}\n")


def one_line_errors(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Wrap a CLI's main: an OptbenchError becomes `PROG: error: <message>` on stderr and exit status 2; argparse's
    exit (--help, or a bad argument it already reported in one line) becomes the returned status."""

    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapped(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except OptbenchError as exc:
                print(f"{prog}: error: {exc}", file=sys.stderr)
                return 2
            except SystemExit as exc:
                return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)

        return wrapped

    return wrap


def add_results_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the commands that read a sweep's CSVs: the verdicts' band and where the CSVs are."""
    from shared.config import DEFAULT_MIN_EFFECT

    parser.add_argument(
        "--min-effect",
        type=float,
        default=DEFAULT_MIN_EFFECT,
        help=f"half-width of the band of no practical difference (default {DEFAULT_MIN_EFFECT})",
    )
    parser.add_argument("--results-dir", help="folder of the CSVs (default $OPTBENCH_RESULTS_DIR or results)")


def add_cell_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by a single cell and a sweep; their dest names are CellSpec fields."""
    add = parser.add_argument
    add(
        "--model",
        default=SPEC_DEFAULTS["model"],
        help="torchvision name (default %(default)s), timm:NAME, package.module:factory or path/file.py:factory",
    )
    add(
        "--model-kwargs",
        type=parse_model_kwargs,
        default={},
        help="keyword arguments of the model's builder, as a JSON object: '{\"num_classes\": 10}'",
    )
    add("--input-shape", type=parse_input_shape, help="one sample's shape C,H,W (default 3,IMAGE_SIZE,IMAGE_SIZE)")
    add("--device", choices=DEVICES, default="auto", help="auto: CUDA if present and the optimization runs there")
    add("--image-size", type=int, default=SPEC_DEFAULTS["image_size"], help="input height and width in pixels")
    add(
        "--weights",
        default="auto",
        help="auto (default: the torchvision checkpoint in the hub cache, else synthetic; never downloads) | "
        "pretrained | synthetic (seeded random init, BatchNorm statistics re-estimated: logits depend on the input) "
        "| random (seeded init as is: nearly the same logits for any input) | PATH",
    )
    add("--warmup", dest="warmup_iters", type=int, help="minimum warm-up calls (device default if unset)")
    add("--warmup-seconds", type=float, help="minimum warm-up seconds")
    add("--min-iters", type=int, help="minimum timed calls")
    add("--min-seconds", type=float, help="minimum timed seconds")
    add("--target-spread", type=float, help="keep timing until IQR/median is at most this")
    add("--max-seconds", type=float, help="with --target-spread: the longest the timed phase may run")
    add("--prune-amount", type=float, default=SPEC_DEFAULTS["prune_amount"], help="fraction pruned (prune*)")
    add("--compile-mode", choices=COMPILE_MODES, default="default", help="torch.compile mode")
    add("--seed", type=int, default=0, help="seed of random weights and inputs")
