"""Showing a sweep to a person: the status table and the live progress bar of `--wait`."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from results.collect import FINISHED, sweep_rows
from shared import manifest
from shared.manifest import Sweep

POLL_SECONDS = 1.0


def _number(value: Any, digits: int = 1) -> str:
    return "" if value is None or value != value else f"{value:,.{digits}f}"


def status_table(sweep: Sweep, rows: list[dict[str, Any]]) -> Table:
    counts = Counter(row["status"] for row in rows)
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    table = Table(title=f"sweep {sweep.id}{f' ({sweep.name})' if sweep.name else ''}: {summary}")
    for column in ("cell", "status", "device", "worker", "attempts", "p50 ms", "p99 ms", "samples/s", "note"):
        table.add_column(column, justify="right" if column in ("attempts", "p50 ms", "p99 ms", "samples/s") else "left")
    for row in rows:
        table.add_row(
            row["cell_id"],
            row["status"],
            row.get("device") or row.get("requested_device") or "",
            row.get("worker") or "",
            str(row["attempts"]),
            _number(row.get("latency_ms_p50"), 2),
            _number(row.get("latency_ms_p99"), 2),
            _number(row.get("throughput_sps")),
            (row.get("error") or row.get("phase") or "")[:80],
        )
    return table


def completion_line(row: dict[str, Any]) -> str:
    if row["status"] == "ok":
        return (
            f"[green]ok[/]      {row['cell_id']:<28} p50 {row['latency_ms_p50']:.2f} ms, "
            f"{row['throughput_sps']:,.1f} samples/s on {row['device_name']}"
        )
    colour = "red" if row["status"] == "failed" else "yellow"
    return f"[{colour}]{row['status']:<8}[/]{row['cell_id']:<28} {row.get('error_type')}: {row.get('error')}"


def wait(backend, client: redis.Redis, sweep_id: str, console: Console) -> list[dict[str, Any]]:
    """Show progress until every cell of the sweep has finished; returns the final rows."""
    announced: dict[str, int] = {}
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("starting", total=None)
        while True:
            sweep = manifest.load(client, sweep_id)  # a rerun may have changed a cell's task meanwhile
            rows = sweep_rows(backend, sweep)
            for row in rows:
                if row["status"] in FINISHED and announced.get(row["cell_id"]) != row["attempts"]:
                    announced[row["cell_id"]] = row["attempts"]
                    progress.console.print(completion_line(row))
            counts = Counter(row["status"] for row in rows)
            finished = sum(counts[state] for state in FINISHED)
            description = (
                f"{counts['ok']} ok, {counts['failed']} failed, {counts['unsupported']} unsupported, "
                f"{counts['running']} running, {counts['queued']} queued"
            )
            progress.update(bar, total=len(rows), completed=finished, description=description)
            if finished == len(rows):
                return rows
            time.sleep(POLL_SECONDS)
