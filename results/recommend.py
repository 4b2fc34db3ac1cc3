"""What to ship: the best cell of a sweep on one objective, under the user's constraints, with its ties and
why every other cell lost.

- **Constraints** on measured quantities (p99 latency, peak memory) *hold* when the worse end of the
  quantity's interval over runs meets them, and *may hold* when only the median does (such a cell is never
  recommended, but named with the reason). Model size is one number per cell. Fidelity constraints (cosine
  similarity, top-1 agreement against the fp32 model) are judged on the worst run; with `random` weights they
  can't be judged (random logits agree by accident or not at all) and are said to be skipped.
- **The objective** (throughput by default, or p50 or p99 latency) ranks the cells that meet every
  constraint by their median. The best one is compared run by run (rounds paired, as the verdicts) with each
  other eligible cell: a cell it doesn't beat beyond the minimum effect can't be told from it, so it *ties*,
  and all ties are named. These comparisons share the sweep's confidence (Bonferroni), as the verdicts do.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from results import stats
from results.formatting import ratio_text
from results.ranking import Metric, oriented_ratio, run_values
from shared import config
from shared.cli import OneLineParser, add_results_arguments, one_line_errors
from shared.config import DEFAULT_CONFIDENCE, DEFAULT_MIN_EFFECT
from shared.errors import OptbenchError

PROG = "python -m results recommend"

OBJECTIVES = {
    "throughput": Metric("throughput_sps", "throughput", "samples/s", True),
    "latency_p50": Metric("latency_ms_p50", "p50 latency", "ms", False),
    "latency_p99": Metric("latency_ms_p99", "p99 latency", "ms", False),
}
DEFAULT_MIN_COSINE = 0.999
HOLDS, MAY_HOLD, BROKEN, NOT_JUDGED = "holds", "may hold", "broken", "not judged"


@dataclass(frozen=True)
class Constraints:
    objective: str = "throughput"
    max_latency_p99_ms: float | None = None
    max_memory_mb: float | None = None
    max_model_mb: float | None = None
    min_cosine: float | None = DEFAULT_MIN_COSINE
    min_top1_agreement: float | None = None
    batch_size: int | None = None  # None: every batch size competes

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise OptbenchError(f"objective must be one of {', '.join(OBJECTIVES)} (got {self.objective!r})")
        for name in ("max_latency_p99_ms", "max_memory_mb", "max_model_mb"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise OptbenchError(f"{name.replace('_', '-')} must be a positive number (got {value})")
        for name in ("min_cosine", "min_top1_agreement"):
            value = getattr(self, name)
            if value is not None and not (0 <= value <= 1):
                raise OptbenchError(f"{name.replace('_', '-')} must be in [0, 1] (got {value})")

    def describe(self) -> str:
        parts = [f"objective {self.objective}"]
        if self.max_latency_p99_ms is not None:
            parts.append(f"p99 latency <= {self.max_latency_p99_ms:g} ms")
        if self.max_memory_mb is not None:
            parts.append(f"peak memory <= {self.max_memory_mb:g} MiB")
        if self.max_model_mb is not None:
            parts.append(f"model <= {self.max_model_mb:g} MiB")
        if self.min_cosine is not None:
            parts.append(f"cosine similarity >= {self.min_cosine:g}")
        if self.min_top1_agreement is not None:
            parts.append(f"top-1 agreement >= {self.min_top1_agreement:g}")
        parts.append(f"batch size {self.batch_size}" if self.batch_size is not None else "any batch size")
        return ", ".join(parts)


@dataclass(frozen=True)
class Check:
    """One constraint on one cell: the column read, the value compared (the worse end, else the median)."""

    name: str
    state: str  # holds | may hold | broken | not judged
    column: str  # the cells CSV column holding `value`
    value: float | None
    limit: float
    median_column: str | None = None  # with may hold: the median that meets the limit


@dataclass(frozen=True)
class Loss:
    """Why a cell isn't the recommendation: a constraint it breaks (or may break), or the objective."""

    cell_id: str
    reason: str  # constraint | objective | not_measured
    checks: tuple[Check, ...] = ()
    ratio: stats.Ratio | None = None  # the recommended cell over this one, > 1 favours the recommended
    verdict: str = ""
    status: str = ""


@dataclass
class Recommendation:
    constraints: Constraints
    objective: Metric
    confidence: float  # of each comparison with the recommended cell
    recommended: str | None = None
    ties: list[Loss] = field(default_factory=list)  # can't be told from the recommended on the objective
    losses: list[Loss] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    undecided: str | None = None  # `cant_tell`: said first when no cell is shown faster than its baseline

    def to_dict(self) -> dict:
        return asdict(self)


def _memory_column(cells: pd.DataFrame) -> str:
    """Peak memory: the GPU allocator's where recorded, else the process's peak RSS."""
    return "peak_mem_allocated_mb" if stats.numeric(cells, "peak_mem_allocated_mb").notna().any() else "process_mem_mb"


def _measured_check(name: str, row: pd.Series, column: str, limit: float) -> Check:
    """An upper limit on a measured quantity: holds by the interval's worse (high) end, may hold by the median."""
    high, median = row.get(f"{column}_ci_high"), row.get(column)
    if pd.notna(high) and float(high) <= limit:
        return Check(name, HOLDS, f"{column}_ci_high", float(high), limit)
    if pd.notna(median) and float(median) <= limit:
        worse = f"{column}_ci_high" if pd.notna(high) else column
        return Check(name, MAY_HOLD, worse, float(high) if pd.notna(high) else float(median), limit, column)
    return Check(name, BROKEN, column, None if pd.isna(median) else float(median), limit)


def _checks(row: pd.Series, constraints: Constraints, memory: str, random_weights: bool) -> list[Check]:
    checks = []
    if constraints.max_latency_p99_ms is not None:
        checks.append(_measured_check("p99 latency", row, "latency_ms_p99", constraints.max_latency_p99_ms))
    if constraints.max_memory_mb is not None:
        checks.append(_measured_check("peak memory", row, memory, constraints.max_memory_mb))
    if constraints.max_model_mb is not None:
        size = row.get("model_size_mb")
        ok = pd.notna(size) and float(size) <= constraints.max_model_mb
        checks.append(
            Check("model size", HOLDS if ok else BROKEN, "model_size_mb", _float(size), constraints.max_model_mb)
        )
    for name, column, limit in (
        ("cosine similarity", "cosine_similarity", constraints.min_cosine),
        ("top-1 agreement", "top1_agreement", constraints.min_top1_agreement),
    ):
        if limit is None:
            continue
        worst = row.get(column)  # the cells CSV holds the worst run's
        if random_weights:
            state = NOT_JUDGED
        elif pd.isna(worst):
            state = MAY_HOLD  # not measured: it can't be shown to hold
        else:
            state = HOLDS if float(worst) >= limit else BROKEN
        checks.append(Check(name, state, column, _float(worst), limit))
    return checks


def _float(value: object) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def recommend(
    cells: pd.DataFrame,
    runs: pd.DataFrame,
    constraints: Constraints,
    min_effect: float = DEFAULT_MIN_EFFECT,
    confidence: float = DEFAULT_CONFIDENCE,
) -> Recommendation:
    """The recommendation among `cells` (the cells CSV of one device, indexed by cell id) from their `runs`."""
    objective = OBJECTIVES[constraints.objective]
    pool = cells if constraints.batch_size is None else cells[cells["batch_size"] == constraints.batch_size]
    if pool.empty:
        raise OptbenchError(f"the sweep has no cell at batch size {constraints.batch_size}")
    result = Recommendation(constraints, objective, confidence, undecided=cant_tell(pool, runs))
    weights = {str(w) for w in pool.get("weights", pd.Series(dtype=object)).dropna()}
    random_weights = any(w.startswith("random") for w in weights)  # rows say `random(seed=0)`
    if random_weights:
        result.notes.append(
            "fidelity constraints not judged: the sweep ran with random weights, whose outputs agree by accident; "
            "measure with --weights synthetic or pretrained to judge them"
        )
    memory = _memory_column(pool)
    eligible = []
    for cell_id, row in pool.iterrows():
        measured = pd.notna(pd.to_numeric(row.get(objective.column), errors="coerce"))
        if not measured or int(pd.to_numeric(row.get("repeats_ok"), errors="coerce") or 0) == 0:
            result.losses.append(Loss(str(cell_id), "not_measured", status=str(row.get("status", ""))))
            continue
        checks = _checks(row, constraints, memory, random_weights)
        failing = tuple(c for c in checks if c.state in (BROKEN, MAY_HOLD))
        if failing:
            result.losses.append(Loss(str(cell_id), "constraint", checks=failing))
        else:
            eligible.append(str(cell_id))
    if not eligible:
        result.losses.sort(key=_loss_order)
        return result
    values = pd.to_numeric(pool.loc[eligible, objective.column], errors="coerce")
    order = values.sort_values(ascending=not objective.higher_is_better, kind="stable").index.astype(str)
    best = order[0]
    result.recommended = best
    per_comparison = 1 - (1 - confidence) / max(len(order) - 1, 1)
    result.confidence = per_comparison
    best_runs = run_values(runs, pool, best, objective.column)
    for other in order[1:]:
        ratio = oriented_ratio(
            best_runs, run_values(runs, pool, other, objective.column), objective.higher_is_better, per_comparison
        )
        called = str(stats.verdict(ratio, min_effect))
        loss = Loss(other, "objective", ratio=ratio, verdict=called)
        (result.losses if called == str(stats.Verdict.FASTER) else result.ties).append(loss)
    result.losses.sort(key=_loss_order)
    return result


LEADING_CANDIDATES = 3  # `cant_tell` names this many open cells, the highest speedups first


def cant_tell(cells: pd.DataFrame, runs: pd.DataFrame) -> str | None:
    """One line when no cell is shown faster than its baseline: the leading open candidates, the rounds that would
    likely decide them (`rounds_to_decide`) and what that costs at this sweep's measured seconds per run; None when
    some cell is faster (or nothing was compared)."""
    verdicts = cells.get("verdict", pd.Series(dtype=object)).astype(str)
    compared = verdicts.isin([str(v) for v in stats.Verdict])
    if not compared.any() or (verdicts == str(stats.Verdict.FASTER)).any():
        return None
    open_ = cells[(verdicts == str(stats.Verdict.INCONCLUSIVE)) & (stats.numeric(cells, "speedup") > 1)]
    open_ = open_.sort_values("speedup", ascending=False).head(LEADING_CANDIDATES)
    if open_.empty:
        return "No cell is shown faster than its baseline, and none leans that way: nothing here to ship for speed."
    needed = stats.numeric(open_, "rounds_to_decide")
    named = ", ".join(
        f"`{cell}`" + (f" (~{int(n)} rounds)" if pd.notna(n) else " (no round count decides it)")
        for cell, n in zip(open_["cell_id"] if "cell_id" in open_.columns else open_.index, needed, strict=True)
    )
    line = f"No cell is shown faster than its baseline yet: the leading candidates are {named}."
    seconds = _seconds_per_run(runs)
    done = int(stats.numeric(open_, "repeats").max())
    if needed.notna().any() and math.isfinite(seconds):
        rounds = int(needed.max())
        # Each later round runs the open cells and their baselines only.
        extra = max(rounds - done, 0) * seconds * 2 * len(open_)
        budget = 60 * math.ceil((seconds * len(runs) + extra) / 60)
        line += f" Deciding them would take about {extra / 60:.0f} more minutes: `make sweep TIME_BUDGET={budget}`."
    return line


def _seconds_per_run(runs: pd.DataFrame) -> float:
    """The sweep's measured seconds per run: its runs' span, first start to last end, over their count."""
    if runs.empty or "started_at" not in runs.columns or "finished_at" not in runs.columns:
        return math.nan
    started = pd.to_datetime(runs["started_at"], utc=True, errors="coerce", format="ISO8601")
    finished = pd.to_datetime(runs["finished_at"], utc=True, errors="coerce", format="ISO8601")
    if started.isna().all() or finished.isna().all():
        return math.nan
    return (finished.max() - started.min()).total_seconds() / len(runs)


def _loss_order(loss: Loss) -> tuple[int, int]:
    """Cells that only may break a constraint first, then those that break one, then the objective's losers."""
    may = all(c.state == MAY_HOLD for c in loss.checks) if loss.checks else False
    return ("constraint", "objective", "not_measured").index(loss.reason), 0 if may else 1


UNITS = {"p99 latency": " ms", "peak memory": " MiB", "model size": " MiB"}


def describe_check(check: Check) -> str:
    """`p99 latency 12.3 ms: needs <= 10 ms (broken)`, for the command line."""
    unit = UNITS.get(check.name, "")
    limit = "<=" if unit else ">="
    value = "not measured" if check.value is None else f"{check.value:,.4g}{unit}"
    which = " (the interval's high end; its median meets it)" if check.median_column else ""
    return f"{check.name} {value}{which}: needs {limit} {check.limit:g}{unit} ({check.state})"


# --- command line ----------------------------------------------------------------------------------


def _ratio_text(ratio: stats.Ratio | None) -> str:
    return ratio_text(None, None, None) if ratio is None else ratio_text(ratio.estimate, ratio.low, ratio.high)


def render(result: Recommendation, cells: pd.DataFrame, title: str) -> list[str]:
    """The recommendation as lines of plain text."""
    metric = result.objective
    lines = [result.undecided] if result.undecided else []
    lines += [f"{title}: {result.constraints.describe()}"]
    lines += [f"note: {note}" for note in result.notes]
    if result.recommended is None:
        lines.append("no cell meets every constraint; the closest misses:")
    else:
        best = result.recommended
        value = float(cells.loc[best, metric.column])
        lines.append(f"recommended: {best} ({metric.name} {value:,.2f} {metric.unit}, median over its runs)")
        if result.ties:
            lines.append(f"can't be told from it on {metric.name} (a tie: ship any of them), recommended over each:")
            lines += [f"  {t.cell_id}: {_ratio_text(t.ratio)}: {t.verdict}" for t in result.ties]
        compared = any(loss.reason == "objective" for loss in result.losses) or result.ties
        shared = f" (comparisons at {result.confidence:.2%} each, sharing the sweep's confidence)" if compared else ""
        if result.losses:
            lines.append(f"the others{shared}:")
    for loss in result.losses:
        if loss.reason == "constraint":
            lines.append(f"  {loss.cell_id}: " + "; ".join(describe_check(c) for c in loss.checks))
        elif loss.reason == "objective":
            lines.append(
                f"  {loss.cell_id}: worse on {metric.name}: the recommended cell is {_ratio_text(loss.ratio)} "
                f"better ({loss.verdict})"
            )
        else:
            lines.append(f"  {loss.cell_id}: not measured ({loss.status})")
    return lines


def newest_cells_csv(results_dir: Path) -> Path:
    """The newest sweep's cells CSV in the results folder (sweep ids sort by creation time)."""
    found = sorted(p for p in results_dir.glob("*.csv") if p.stem[:1].isdigit() and not p.stem.endswith("_runs"))
    if not found:
        raise OptbenchError(f"no sweep CSV in {results_dir}: run `make sweep` first (or pass a sweep id)")
    return found[-1]


def cells_and_runs(sweep: str | None, results_dir: Path) -> tuple[Path, Path]:
    """The cells and runs CSVs of a sweep id, a cells CSV path, or (None) the newest sweep."""
    if sweep is None:
        cells = newest_cells_csv(results_dir)
    elif sweep.endswith(".csv") or Path(sweep).is_file():
        cells = Path(sweep)
    else:
        cells = results_dir / f"{sweep}.csv"
    runs = cells.with_name(f"{cells.stem}_runs.csv")
    for path in (cells, runs):
        if not path.is_file():
            raise OptbenchError(f"no CSV at {path}: `python -m results collect --sweep {cells.stem}` writes it")
    return cells, runs


def _parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("sweep", nargs="?", help="sweep id or cells CSV (default: the newest sweep's CSV)")
    parser.add_argument("--objective", choices=list(OBJECTIVES), default="throughput")
    parser.add_argument("--max-latency-p99-ms", type=float, help="p99 latency per batch, in ms")
    parser.add_argument("--max-memory-mb", type=float, help="peak memory (GPU allocator, or process RSS on a CPU)")
    parser.add_argument("--max-model-mb", type=float, help="model size (torch.save bytes), in MiB")
    parser.add_argument("--min-cosine", type=float, default=DEFAULT_MIN_COSINE, help="worst run's cosine (0.999)")
    parser.add_argument("--min-top1-agreement", type=float, help="worst run's top-1 agreement with fp32")
    parser.add_argument("--batch-size", type=int, help="only cells of this batch size compete (default: all)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_results_arguments(parser)
    return parser


@one_line_errors(PROG)
def main(argv: list[str] | None = None) -> int:
    from results.report.load import load_cells, load_runs

    args = _parser().parse_args(argv)
    constraints = Constraints(
        objective=args.objective,
        max_latency_p99_ms=args.max_latency_p99_ms,
        max_memory_mb=args.max_memory_mb,
        max_model_mb=args.max_model_mb,
        min_cosine=args.min_cosine,
        min_top1_agreement=args.min_top1_agreement,
        batch_size=args.batch_size,
    )
    results_dir = Path(args.results_dir) if args.results_dir else config.results_dir()
    cells_csv, runs_csv = cells_and_runs(args.sweep, results_dir)
    cells, runs = load_cells(cells_csv, args.min_effect), load_runs(runs_csv)
    if constraints.batch_size is not None:
        cells = cells[cells["batch_size"] == constraints.batch_size]
        if cells.empty:
            raise OptbenchError(f"sweep {cells_csv.stem} has no cell at batch size {constraints.batch_size}")
    measured = cells[pd.to_numeric(cells["repeats_ok"], errors="coerce").fillna(0) > 0]
    groups = sorted(measured["group"].unique()) or sorted(cells["group"].unique())
    answers = {}
    for group in groups:  # one answer per device (`--gpu-model any`)
        on_device = cells[cells["group"] == group]
        answers[str(group)] = recommend(on_device, runs, constraints, args.min_effect)
    elsewhere = sorted(set(cells.loc[~cells["group"].isin(groups), "cell_id"].astype(str)))
    if elsewhere:  # cells that never ran on any device (unsupported, failed): no device name to group them by
        answers[str(groups[0])].notes.append(f"not measured on any device: {', '.join(elsewhere)}")
    if args.json:
        json.dump({group: answer.to_dict() for group, answer in answers.items()}, sys.stdout, indent=1, default=str)
        print()
        return 0
    for group, answer in answers.items():
        print("\n".join(render(answer, cells, f"What to ship ({cells_csv.stem} on {group})")))
    return 0
