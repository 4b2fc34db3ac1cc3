"""Watching a big sweep: the runs that need attention first in its tables, the rest counted; looks spaced by their
cost."""

from __future__ import annotations

import io

import pandas as pd
from rich.console import Console

from producer.decide import verdict_table
from producer.progress import POLL_SECONDS, TABLE_ROWS, WAIT_PER_READ, poll_pause, status_table
from shared.manifest import Sweep


def rendered(table) -> str:
    console = Console(file=io.StringIO(), width=200)
    console.print(table)
    return " ".join(console.file.getvalue().split())  # a caption wraps at the table's width


def test_a_big_sweeps_status_lists_failed_lost_and_running_runs_first_and_counts_the_rest():
    rows = [{"run_id": f"baseline@bs{i}#1", "status": "ok", "attempts": 1} for i in range(1, 200)]
    rows[150] = {**rows[150], "status": "failed", "error": "out of memory"}
    rows[170] = {**rows[170], "status": "running", "phase": "measuring"}
    sweep = Sweep("s", "2026-12-02T00:00:00+00:00", {"repeats": 1})
    text = rendered(status_table(sweep, rows))
    assert text.count("#1 ") == TABLE_ROWS and f"{len(rows) - TABLE_ROWS} more runs not listed" in text
    assert text.index("baseline@bs151#1") < text.index("baseline@bs171#1") < text.index("baseline@bs1#1 ")
    everything = rendered(status_table(sweep, rows, limit=None))
    assert everything.count("#1 ") == len(rows) and "not listed" not in everything


def test_a_big_sweeps_verdict_table_counts_every_verdict():
    cells = pd.DataFrame({"cell_id": [f"fp16@bs{i}" for i in range(100)], "runs_used": 3, "speedup": 1.5,
                          "speedup_ci_low": 1.4, "speedup_ci_high": 1.6,
                          "verdict": ["faster"] * 70 + ["inconclusive"] * 30, "rounds_to_decide": None})  # fmt: skip
    text = rendered(verdict_table(cells, [], "verdicts"))
    assert f"{100 - TABLE_ROWS} more cells not listed; all 100 verdicts: 70 faster, 30 inconclusive" in text


def test_a_sweep_that_takes_seconds_to_read_is_looked_at_less_often():
    assert poll_pause(0.05) == POLL_SECONDS  # a small sweep: once a second
    assert poll_pause(3.0) == WAIT_PER_READ * 3.0 > POLL_SECONDS  # 50,000 runs: reading is at most a third of the time
