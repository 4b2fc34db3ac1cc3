"""`--repeats auto`: after each round, decide the cells that can be decided and run one more round of the rest.

Every cell of an `auto` sweep runs 3 rounds. Then, after each round (a *look*), the sweep's runs are
aggregated exactly as the collector does (`results.collect.cells_frame`, verdicts at the confidence the
sequential plan allows at this look: `results/sequential.py`). A cell whose verdict is `faster`, `slower`
or `equivalent` is decided and runs no more. If any cell is still `inconclusive`, the next round is enqueued
for the open cells only, together with what they are compared with: the baseline at their batch size (and
the `aa_control` there, so the A/A control keeps measuring the same rounds). The rounds stay paired and
interleaved: a round's cells are shuffled together, as in the first rounds. It stops when every cell is
decided, at `max_repeats` rounds, or when the next round would end past `--time-budget`; the reason is
recorded in the sweep (`stopped`). Any client can drive it: `--wait`, `resume` and `decide` call `drive`.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from producer.progress import TABLE_FIELDS, TABLE_ROWS, wait
from producer.sweep import AUTO, FIRST_ROUNDS, add_round, rounds_of
from results.collect import cells_frame, runs_frame
from results.formatting import ratio_text
from results.sequential import looks_for, plan_last_look
from results.stats import AA_CONTROL, BASELINE, COUNTERPART_KEYS, VERDICT_INPUTS, Verdict
from shared import manifest
from shared.manifest import Sweep

STOPPED_DECIDED = "every cell decided"
STOPPED_MAX = "max_repeats reached"
STOPPED_BUDGET = "time budget reached"
STOPPED_PLANNED = "the looks planned within the time budget are done"
# What watching a sweep reads of each stored result: the verdicts' inputs and the status table's fields.
WATCHED_FIELDS = (*VERDICT_INPUTS, *TABLE_FIELDS, "started_at", "finished_at")


def open_cells(cells: pd.DataFrame) -> list[str]:
    """Cells whose verdict is still inconclusive and that have measured at least once (a cell that only
    fails or is unsupported gains nothing from another round)."""
    undecided = cells["verdict"] == str(Verdict.INCONCLUSIVE)
    measured = pd.to_numeric(cells["repeats_ok"], errors="coerce").fillna(0) > 0
    return cells.loc[undecided & measured, "cell_id"].astype(str).tolist()


def next_round_cells(cells: pd.DataFrame, undecided: list[str]) -> list[str]:
    """The open cells and the cells they are compared with: the baseline (and the A/A control) sharing their
    model, shape and device, in the sweep's cell order."""
    keys = [c for c in COUNTERPART_KEYS if c in cells.columns]

    def key(row: pd.Series) -> tuple:
        return tuple(None if pd.isna(row[c]) else row[c] for c in keys)

    wanted = {key(row) for _, row in cells[cells["cell_id"].isin(undecided)].iterrows()}
    partners = cells[cells["optimization"].isin([BASELINE, AA_CONTROL])]
    chosen = set(undecided) | {str(row["cell_id"]) for _, row in partners.iterrows() if key(row) in wanted}
    return [c for c in cells["cell_id"].astype(str) if c in chosen]


def look(runs: pd.DataFrame, sweep: Sweep) -> pd.DataFrame:
    """The sweep's cells as the collector would write them now (verdicts at this look)."""
    return cells_frame(runs, looks=looks_for(sweep.spec))


def look_plan(sweep: Sweep, runs: pd.DataFrame, now: datetime.datetime) -> dict[str, Any]:
    """The last look of an `auto` sweep, planned at its first look from durations alone (`plan_last_look`): a round
    lasts as long as its rounds so far took on average, from the first run's start to the last run's end."""
    rounds = rounds_of(sweep)
    created = datetime.datetime.fromisoformat(sweep.created_at)
    started = pd.to_datetime(runs.get("started_at"), utc=True, errors="coerce", format="ISO8601")
    finished = pd.to_datetime(runs.get("finished_at"), utc=True, errors="coerce", format="ISO8601")
    measuring = (finished.max() - started.min()).total_seconds() if started.notna().any() else math.nan
    round_seconds = measuring / rounds if math.isfinite(measuring) else (now - created).total_seconds() / rounds
    budget = sweep.spec.get("time_budget")
    elapsed = (now - created).total_seconds()
    last = plan_last_look(rounds, int(sweep.spec["max_repeats"]), elapsed, round_seconds, budget and float(budget))
    why = f"rounds of {round_seconds:.0f} s, {elapsed:.0f} s of a {float(budget):.0f} s budget used" if budget else ""
    return {
        "planned_last_look": last,
        "look_plan": f"looks after rounds {min(FIRST_ROUNDS, last)}-{last}"
        + (f" ({why})" if why else f" (--max-repeats {last})"),
    }


def stop_reason(sweep: Sweep, undecided: list[str], next_cells: int, now: datetime.datetime) -> str | None:
    """Why no further round starts, or None to run one."""
    if not undecided:
        return STOPPED_DECIDED
    rounds = rounds_of(sweep)
    if rounds >= int(sweep.spec["max_repeats"]):
        return STOPPED_MAX
    if rounds >= int(sweep.spec.get("planned_last_look") or sweep.spec["max_repeats"]):
        return STOPPED_PLANNED
    budget = sweep.spec.get("time_budget")
    if budget:
        elapsed = (now - datetime.datetime.fromisoformat(sweep.created_at)).total_seconds()
        per_cell_round = elapsed / max(rounds * len(sweep.cell_ids()), 1)  # the rounds so far, per cell
        if elapsed + per_cell_round * next_cells > float(budget):
            return STOPPED_BUDGET
    return None


def verdict_table(cells: pd.DataFrame, undecided: list[str], title: str, limit: int | None = TABLE_ROWS) -> Table:
    """Each compared cell's current speedup, interval and verdict, and whether it runs on; past `limit` cells, the
    first ones and a caption counting every verdict (None: every cell)."""
    table = Table(title=title)
    for column in ("cell", "runs used", "speedup [interval]", "verdict", "next"):
        table.add_column(column, justify="right" if column == "runs used" else "left")
    compared = cells[cells["verdict"].astype(str) != ""]
    if limit is not None and len(compared) > limit:
        counts = compared["verdict"].astype(str).value_counts()
        table.caption = (
            f"{len(compared) - limit:,} more cells not listed; all {len(compared):,} verdicts: "
            + ", ".join(f"{n:,} {verdict}" for verdict, n in counts.items())
        )
        compared = compared.head(limit)
    for _, row in compared.iterrows():
        interval = ratio_text(row["speedup"], row["speedup_ci_low"], row["speedup_ci_high"])
        running = str(row["cell_id"]) in undecided
        needed = row.get("rounds_to_decide")
        note = "runs on" if running else "decided"
        if running and pd.notna(needed):
            note += f" (~{int(needed)} rounds would decide it: an estimate)"
        table.add_row(str(row["cell_id"]), str(int(row["runs_used"])), interval, str(row["verdict"]), note)
    return table


def drive(
    backend,
    client,
    app,
    sweep_id: str,
    console: Console,
    online_queues: Callable[[], set[str] | None],
    stall_seconds: float,
    ttl: int,
) -> list[dict[str, Any]]:
    """Wait for the sweep's runs; for an `auto` sweep, add rounds for its undecided cells until it stops.
    Returns the final run rows."""
    announced: dict[str, int] = {}  # runs whose completion line is printed: each once, across rounds
    while True:
        rows = wait(backend, client, sweep_id, console, online_queues, stall_seconds, announced, WATCHED_FIELDS)
        sweep = manifest.load(client, sweep_id)
        if sweep.spec.get("repeats") != AUTO or sweep.spec.get("stopped"):
            return rows
        runs = runs_frame(rows, (*VERDICT_INPUTS, "started_at", "finished_at"))
        if "planned_last_look" not in sweep.spec:  # the first look: plan the last one before any verdict is read
            plan = look_plan(sweep, runs, datetime.datetime.now(datetime.timezone.utc))
            manifest.update_spec(client, sweep, plan)
            console.print(f"--repeats auto: {plan['look_plan']}", highlight=False)
            sweep = manifest.load(client, sweep_id)
        cells = look(runs, sweep)
        undecided = open_cells(cells)
        next_cells = next_round_cells(cells, undecided)
        reason = stop_reason(sweep, undecided, len(next_cells), datetime.datetime.now(datetime.timezone.utc))
        rounds = rounds_of(sweep)
        title = f"after round {rounds}: {len(undecided)} of {int((cells['verdict'] != '').sum())} verdicts open"
        console.print(verdict_table(cells, undecided if reason is None else [], title))
        if reason is not None:
            manifest.update_spec(client, sweep, {"stopped": reason})
            console.print(f"--repeats auto stopped after round {rounds}: {reason}", highlight=False)
            return rows
        entries = add_round(app, client, sweep, next_cells, ttl)
        console.print(
            f"round {rounds + 1}: {len(entries)} runs ({len(undecided)} open cells and their baselines)",
            highlight=False,
        )
