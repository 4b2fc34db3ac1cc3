"""`python -m results compare A B`: is sweep B faster or slower than sweep A, cell by cell?

A and B are sweep ids (their `<results dir>/<id>_runs.csv`) or paths to runs CSVs. The cells both
sweeps share (same model, model kwargs and input shape, optimization, batch size and image size) are
compared on their ok runs.
The runs of two sweeps are not blocks of one another (different rounds, perhaps different machines),
so each ratio B/A is unpaired: Welch's t on the log values (see results/stats.py). Verdicts are the
four of a sweep (faster, slower, equivalent, inconclusive), and like a sweep's they share the stated
error rate among the cells compared (Bonferroni: each cell's intervals at `1 - alpha / cells`), so a
comparison of many cells makes no more false calls than one. A last row gives the geometric mean of the
ratios over the cells, with a t-interval over the cells' log ratios at the stated confidence.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from results.collect import write_csv
from results.formatting import ratio_text
from results.sequential import rounds_to_decide
from results.stats import (
    Ratio,
    Verdict,
    numeric,
    ratio_interval,
    usable_runs,
    value_interval,
    verdict,
    verdict_of,
)
from shared import config
from shared.cli import OneLineParser, add_results_arguments, one_line_errors
from shared.errors import OptbenchError

PROG = "python -m results compare"
KEYS = ("model", "model_kwargs", "input_shape", "optimization", "batch_size", "image_size")
GEOMETRIC_MEAN = "geometric mean"
COLUMNS = (
    "cell_id",
    *KEYS,
    "device_name_a",
    "device_name_b",
    "runs_a",
    "runs_b",
    "throughput_a",
    "throughput_b",
    "throughput_ratio",
    "throughput_ratio_ci_low",
    "throughput_ratio_ci_high",
    "throughput_verdict",
    "latency_ms_p50_a",
    "latency_ms_p50_b",
    "latency_ratio",
    "latency_ratio_ci_low",
    "latency_ratio_ci_high",
    "latency_verdict",
    "verdict_confidence",
    "throughput_runs_to_decide",
)
ISA_COLUMN = "cpu_isa"


class CompareError(OptbenchError):
    """Bad input: reported as one line, exit status 2."""


def _numeric(runs: pd.DataFrame, column: str) -> pd.Series:
    return numeric(runs, column).reset_index(drop=True)


def _ok_cells(runs: pd.DataFrame) -> dict[tuple, pd.DataFrame]:
    """The ok runs of each cell, by cell key, in order of first appearance."""
    missing = [c for c in ("status", *KEYS) if c not in runs.columns and c not in MODEL_KEYS]
    if missing:
        raise CompareError(f"runs CSV lacks the columns {', '.join(missing)}")
    ok = _with_model_keys(usable_runs(runs))
    return {key: group for key, group in ok.groupby(list(KEYS), sort=False, dropna=False)}


MODEL_KEYS = ("model_kwargs", "input_shape")  # what else makes two cells the same model (newer rows only)


def _with_model_keys(runs: pd.DataFrame) -> pd.DataFrame:
    """The model keys as rows before them meant them: no kwargs, and 3 x image size x image size."""

    def text(column: str) -> pd.Series:  # all-NaN columns read from a CSV are floats: text first, then fill
        values = runs[column] if column in runs.columns else pd.Series(None, index=runs.index)
        return values.astype(object).where(values.notna(), None)

    size = runs["image_size"].astype(str)
    kwargs = text("model_kwargs").fillna("").astype(str)
    return runs.assign(model_kwargs=kwargs, input_shape=text("input_shape").fillna("3x" + size + "x" + size))


def _first(runs: pd.DataFrame, column: str) -> object:
    return runs[column].iloc[0] if column in runs.columns else math.nan


def _runs_to_decide(ratio: Ratio, min_effect: float, confidence: float) -> float:
    """For an inconclusive ratio, the runs per sweep that would likely clear the band at the observed spread."""
    if verdict(ratio, min_effect) is not Verdict.INCONCLUSIVE or not ratio.estimate > 0:
        return math.nan
    # Welch's SE with n runs a side is about spread * sqrt(2 / n): the rounds estimate for spread * sqrt(2)
    needed = rounds_to_decide(math.log(ratio.estimate), ratio.sd_log * math.sqrt(2), min_effect, confidence)
    return math.nan if needed is None else needed


def _cell_row(key: tuple, a: pd.DataFrame, b: pd.DataFrame, min_effect: float, confidence: float) -> dict:
    throughput = ratio_interval(_numeric(b, "throughput_sps"), _numeric(a, "throughput_sps"), confidence, paired=False)
    # Lower latency is better: the verdict is taken on A/B (> 1 better), the table shows B/A.
    latency = ratio_interval(_numeric(a, "latency_ms_p50"), _numeric(b, "latency_ms_p50"), confidence, paired=False)
    return {
        "cell_id": _first(a, "cell_id"),
        **dict(zip(KEYS, key, strict=True)),
        "device_name_a": _first(a, "device_name"),
        "device_name_b": _first(b, "device_name"),
        "runs_a": len(a),
        "runs_b": len(b),
        "throughput_a": _numeric(a, "throughput_sps").median(),
        "throughput_b": _numeric(b, "throughput_sps").median(),
        "throughput_ratio": throughput.estimate,
        "throughput_ratio_ci_low": throughput.low,
        "throughput_ratio_ci_high": throughput.high,
        "throughput_verdict": str(verdict(throughput, min_effect)),
        "latency_ms_p50_a": _numeric(a, "latency_ms_p50").median(),
        "latency_ms_p50_b": _numeric(b, "latency_ms_p50").median(),
        "latency_ratio": 1 / latency.estimate,
        "latency_ratio_ci_low": 1 / latency.high,
        "latency_ratio_ci_high": 1 / latency.low,
        "latency_verdict": str(verdict(latency, min_effect)),
        "verdict_confidence": confidence,
        "throughput_runs_to_decide": _runs_to_decide(throughput, min_effect, confidence),
    }


def _geometric_mean(ratios: pd.Series, confidence: float) -> Ratio:
    """Geometric mean of per-cell ratios; a t-interval over the cells' log ratios when there are two or more."""
    finite = ratios[np.isfinite(ratios) & (ratios > 0)]
    if finite.empty:
        return Ratio(math.nan, math.nan, math.nan, 0, "insufficient_runs")
    low, high = value_interval(finite, confidence)
    return Ratio(float(np.exp(np.log(finite).mean())), low, high, len(finite), "t_log_over_cells")


def _summary_row(table: pd.DataFrame, min_effect: float, confidence: float) -> dict:
    throughput = _geometric_mean(table["throughput_ratio"], confidence)
    latency = _geometric_mean(table["latency_ratio"], confidence)
    return {
        "cell_id": GEOMETRIC_MEAN,
        "runs_a": int(table["runs_a"].sum()),
        "runs_b": int(table["runs_b"].sum()),
        "throughput_ratio": throughput.estimate,
        "throughput_ratio_ci_low": throughput.low,
        "throughput_ratio_ci_high": throughput.high,
        "throughput_verdict": str(verdict(throughput, min_effect)),
        "latency_ratio": latency.estimate,
        "latency_ratio_ci_low": latency.low,
        "latency_ratio_ci_high": latency.high,
        "latency_verdict": str(verdict_of(1 / latency.high, 1 / latency.low, min_effect)),
        "verdict_confidence": confidence,
    }


def compare(
    runs_a: pd.DataFrame,
    runs_b: pd.DataFrame,
    min_effect: float = config.DEFAULT_MIN_EFFECT,
    confidence: float = config.DEFAULT_CONFIDENCE,
) -> pd.DataFrame:
    """One row per cell both sweeps share (ratios B over A, with intervals and verdicts), then the geometric mean.

    `confidence` holds for all the cells' verdicts together: each cell's intervals are at `1 - alpha / cells`.
    Raises CompareError when a frame lacks the key columns or the sweeps share no cell with ok runs.
    """
    cells_a, cells_b = _ok_cells(runs_a), _ok_cells(runs_b)
    shared = [key for key in cells_a if key in cells_b]
    if not shared:
        raise CompareError(
            "the two sweeps share no cell with ok runs (same model, kwargs, input shape, optimization, batch and "
            "image size)"
        )
    per_cell = 1 - (1 - confidence) / len(shared)
    rows = [_cell_row(key, cells_a[key], cells_b[key], min_effect, per_cell) for key in shared]
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    summary = pd.DataFrame([_summary_row(table, min_effect, confidence)], columns=list(COLUMNS))
    return pd.concat([table, summary], ignore_index=True)


def isa_difference(runs_a: pd.DataFrame, runs_b: pd.DataFrame) -> str | None:
    """A warning when the two sweeps' CPUs ran different instruction sets (int8 and bf16 kernels differ)."""
    if ISA_COLUMN not in runs_a.columns or ISA_COLUMN not in runs_b.columns:
        return None
    isa_a, isa_b = ({str(v) for v in runs[ISA_COLUMN].dropna()} for runs in (runs_a, runs_b))
    if not isa_a or not isa_b or isa_a == isa_b:
        return None
    ranges = [
        sorted({str(v) for v in runs.get("reduce_range", pd.Series(dtype=object)).dropna()})
        for runs in (runs_a, runs_b)
    ]
    quantized = f"; int8_static's reduce_range: A {ranges[0]}, B {ranges[1]}" if ranges[0] != ranges[1] else ""
    return (
        f"the sweeps ran on different CPU instruction sets (A: {', '.join(sorted(isa_a))}; B: "
        f"{', '.join(sorted(isa_b))}): int8, bf16 and memory-format kernels differ between them, so a ratio "
        f"mixes the change with the hardware{quantized}"
    )


def model_code_difference(runs_a: pd.DataFrame, runs_b: pd.DataFrame) -> str | None:
    """A warning when a model both sweeps measured ran different model code (`model_sha256`) in each."""
    if "model_sha256" not in runs_a.columns or "model_sha256" not in runs_b.columns:
        return None
    hashes_a, hashes_b = (
        runs.dropna(subset=["model_sha256"]).groupby("model")["model_sha256"].unique() for runs in (runs_a, runs_b)
    )
    differ = [
        f"{model} (A: {', '.join(h[:12] for h in sorted(hashes_a[model]))}; B: "
        f"{', '.join(h[:12] for h in sorted(hashes_b[model]))})"
        for model in hashes_a.index.intersection(hashes_b.index)
        if set(hashes_a[model]) != set(hashes_b[model])
    ]
    if not differ:
        return None
    return (
        f"the sweeps measured different model code (sha256 of its source) for {'; '.join(differ)}: a ratio mixes "
        "the change with the model's own"
    )


def regressions(table: pd.DataFrame, pct: float) -> list[str]:
    """Cells whose throughput is significantly lower by more than `pct` percent (the interval's top under 1 - pct)."""
    cells = table[table["cell_id"] != GEOMETRIC_MEAN]
    return cells.loc[cells["throughput_ratio_ci_high"] < 1 - pct / 100, "cell_id"].astype(str).tolist()


# --- command line ----------------------------------------------------------------------------------


def runs_path(sweep: str, results_dir: Path) -> Path:
    """A path as given when it names a CSV file (or exists), else `<results dir>/<sweep>_runs.csv`."""
    given = Path(sweep)
    if sweep.endswith(".csv") or given.is_file():
        return given
    return results_dir / f"{sweep}_runs.csv"


def label(sweep: str) -> str:
    """The name of a sweep in the output file: its id, or a CSV's stem without `_runs`."""
    name = Path(sweep).name
    if name.endswith(".csv"):
        name = name[: -len(".csv")].removesuffix("_runs")
    return name


def read_runs(sweep: str, results_dir: Path) -> pd.DataFrame:
    path = runs_path(sweep, results_dir)
    if not path.is_file():
        raise CompareError(f"no runs CSV at {path}: `python -m results collect --sweep {label(sweep)}` writes it")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CompareError(f"cannot read {path}: {exc}") from exc


def _verdict_text(row: dict, metric: str) -> str:
    colours = {"faster": "green", "slower": "red", "equivalent": "cyan", "inconclusive": "yellow"}
    called = str(row[f"{metric}_verdict"])
    text = f"[{colours.get(called, '')}]{called}[/]"
    needed = row.get(f"{metric}_runs_to_decide")
    if called == "inconclusive" and needed is not None and not pd.isna(needed):
        text += f" (~{int(needed)} runs a side would decide it: an estimate)"
    return text


def _number(value: object) -> str:
    return "" if pd.isna(value) else f"{value:,.1f}"


def print_table(table: pd.DataFrame, name_a: str, name_b: str, min_effect: float, confidence: float) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    cells = len(table) - 1
    per_cell = 1 - (1 - confidence) / max(cells, 1)
    view = Table(
        title=f"{name_b} vs {name_a} (B/A; {confidence:.0%} for all {cells} cells' verdicts together: each cell's "
        f"interval at {per_cell:.2%}; band ±{min_effect:.0%})"
    )
    for heading in ("cell", "runs A/B", "throughput A", "throughput B", "throughput B/A", "", "p50 B/A", ""):
        view.add_column(heading, justify="left" if heading in ("cell", "") else "right", no_wrap=True)
    for row in table.to_dict("records"):
        view.add_row(
            escape(str(row["cell_id"])),
            "" if pd.isna(row["runs_a"]) else f"{int(row['runs_a'])}/{int(row['runs_b'])}",
            _number(row["throughput_a"]),
            _number(row["throughput_b"]),
            ratio_text(row["throughput_ratio"], row["throughput_ratio_ci_low"], row["throughput_ratio_ci_high"]),
            _verdict_text(row, "throughput"),
            ratio_text(row["latency_ratio"], row["latency_ratio_ci_low"], row["latency_ratio_ci_high"]),
            _verdict_text(row, "latency"),
        )
    # Piped (a CI log): wide enough never to cut a number; a terminal: its own width.
    Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160).print(view)


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 100:
        raise CompareError(f"--fail-on-regression wants a percentage in (0, 100), not {text!r}")
    return value


def _parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("a", help="sweep id or runs CSV of the reference sweep")
    parser.add_argument("b", help="sweep id or runs CSV of the sweep compared with it")
    parser.add_argument("--fail-on-regression", metavar="PCT", help="exit 1 if a cell is slower by more than PCT%%")
    add_results_arguments(parser)
    return parser


@one_line_errors(PROG)
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    results_dir = Path(args.results_dir) if args.results_dir else config.results_dir()
    pct = None if args.fail_on_regression is None else _percent(args.fail_on_regression)
    if not 0 <= args.min_effect < 1:
        raise CompareError(f"--min-effect wants a fraction in [0, 1), not {args.min_effect}")
    runs_a, runs_b = read_runs(args.a, results_dir), read_runs(args.b, results_dir)
    table = compare(runs_a, runs_b, args.min_effect)
    name_a, name_b = label(args.a), label(args.b)
    path = results_dir / f"compare-{name_a}-{name_b}.csv"
    write_csv(table, path)
    for warning in (isa_difference(runs_a, runs_b), model_code_difference(runs_a, runs_b)):
        if warning:
            print(f"warning: {warning}")
    print_table(table, name_a, name_b, args.min_effect, config.DEFAULT_CONFIDENCE)
    print(f"wrote {path}")
    if pct is None:
        return 0
    slower = regressions(table, pct)
    if slower:
        print(f"regressions: throughput lower by more than {pct:g}% in {', '.join(slower)}")
        return 1
    print(f"no cell's throughput is lower by more than {pct:g}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
