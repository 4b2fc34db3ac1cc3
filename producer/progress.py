"""Showing a sweep to a person: the status table and the live progress bar of `--wait`."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from shared import manifest
from shared.errors import OptbenchError
from shared.manifest import Sweep
from shared.state import FINISHED, sweep_rows

POLL_SECONDS = 1.0
WAIT_PER_READ = 2.0  # a look at a big sweep is followed by twice its read time of waiting
QUEUE_CHECK_SECONDS = 10.0
TABLE_ROWS = 60  # rows of a status or verdict table before it lists only the first ones (`status --all`: all)
ATTENTION_FIRST = {"failed": 0, "lost": 1, "running": 2}  # in a shortened table, these runs come first
# The result fields a status table and the completion lines show (`sweep_rows` decodes only the fields asked for).
TABLE_FIELDS = ("device", "device_name", "latency_ms_p50", "latency_ms_p99", "throughput_sps", "error_type", "error")


class Stalled(OptbenchError):
    """`--wait` saw no progress for the stall timeout: the sweep stays enqueued (exit status 3)."""


def _number(value: Any, digits: int = 1) -> str:
    return "" if value is None or value != value else f"{value:,.{digits}f}"


def status_table(sweep: Sweep, rows: list[dict[str, Any]], limit: int | None = TABLE_ROWS) -> Table:
    """The sweep's runs, one row each; past `limit` runs, the failed, lost and running ones first and a caption
    saying how many are left out (None: every run)."""
    counts = Counter(row["status"] for row in rows)
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    repeats = sweep.spec.get("repeats", 1)
    if repeats == "auto":
        per_cell = f"{sweep.spec.get('rounds')} rounds so far, auto up to {sweep.spec.get('max_repeats')}"
    else:
        per_cell = f"{repeats} per cell"
    title = f"sweep {sweep.id}{f' ({sweep.name})' if sweep.name else ''}: {len(rows)} runs ({per_cell}): {summary}"
    table = Table(title=title)
    numeric = ("attempts", "p50 ms", "p99 ms", "samples/s")
    for column in ("run", "status", "device", "worker", "attempts", "p50 ms", "p99 ms", "samples/s", "note"):
        table.add_column(column, justify="right" if column in numeric else "left")
    shown = rows
    if limit is not None and len(rows) > limit:
        shown = sorted(rows, key=lambda row: ATTENTION_FIRST.get(row["status"], len(ATTENTION_FIRST)))[:limit]
        table.caption = (
            f"{len(rows) - limit:,} more runs not listed (failed, lost and running ones come first): "
            "`status --all` lists every run, `python -m results collect` writes them to a CSV"
        )
    for row in shown:
        table.add_row(
            row["run_id"],
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
            f"[green]ok[/]      {row['run_id']:<30} p50 {row['latency_ms_p50']:.2f} ms, "
            f"{row['throughput_sps']:,.1f} samples/s on {row['device_name']}"
        )
    colour = "red" if row["status"] == "failed" else "yellow"
    return f"[{colour}]{row['status']:<8}[/]{row['run_id']:<30} {row.get('error_type')}: {row.get('error')}"


def unserved_queues(sweep: Sweep, rows: list[dict[str, Any]], online: set[str] | None) -> dict[str, int]:
    """Queues that unfinished runs wait in but no online worker consumes, with how many runs wait there."""
    waiting = Counter(
        sweep.runs[row["run_id"]].queue for row in rows if row["status"] == "queued" and row["run_id"] in sweep.runs
    )
    return {queue: n for queue, n in waiting.items() if online is None or queue not in online}


def describe_unserved(unserved: dict[str, int]) -> str:
    return ", ".join(
        f"{n} runs wait in queue {queue!r}, which no online worker consumes" for queue, n in unserved.items()
    )


def poll_pause(read_seconds: float) -> float:
    """Seconds to wait before the next look: POLL_SECONDS, or longer for a sweep that takes a while to read, so
    that watching it spends at most a third of the time reading (a 50,000-run sweep takes seconds to read: polling
    it back to back would keep a core of the client and Redis busy)."""
    return max(POLL_SECONDS, WAIT_PER_READ * read_seconds)


def wait(
    backend,
    client: redis.Redis,
    sweep_id: str,
    console: Console,
    online_queues: Callable[[], set[str] | None],
    stall_seconds: float,
    announced: dict[str, int] | None = None,
    fields: tuple[str, ...] = TABLE_FIELDS,
) -> list[dict[str, Any]]:
    """Show progress until every run of the sweep has finished; the final rows.

    `announced` (run id -> attempt) holds the runs whose completion line is already printed, so that waiting
    again after a new round prints only the new ones. The rows carry the result `fields` only. Raises Stalled
    when nothing changed (no run started, advanced a phase or finished) for `stall_seconds`, saying which
    queues no online worker consumes.
    """
    announced = {} if announced is None else announced
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    last_state, last_change = None, time.monotonic()
    unserved: dict[str, int] = {}
    next_queue_check = 0.0
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("starting", total=None)
        while True:
            started = time.monotonic()
            try:
                sweep = manifest.load(client, sweep_id)  # a rerun may have changed a run's task meanwhile
                rows = sweep_rows(backend, sweep, fields)
            except redis.ConnectionError as exc:  # Redis restarting: the workers reconnect, and so do we
                progress.console.print(f"[yellow]Redis unreachable ({exc}); retrying[/]", highlight=False)
                time.sleep(5 * POLL_SECONDS)
                continue
            for row in rows:
                if row["status"] in FINISHED and announced.get(row["run_id"]) != row["attempts"]:
                    announced[row["run_id"]] = row["attempts"]
                    progress.console.print(completion_line(row))
            counts = Counter(row["status"] for row in rows)
            finished = sum(counts[state] for state in FINISHED)
            if finished == len(rows):
                progress.update(bar, total=len(rows), completed=finished)
                return rows
            now = time.monotonic()
            if now >= next_queue_check:
                unserved, next_queue_check = unserved_queues(sweep, rows, online_queues()), now + QUEUE_CHECK_SECONDS
            state = [(r["run_id"], r["attempts"], r["status"], r.get("phase"), r.get("iterations")) for r in rows]
            if state != last_state:
                last_state, last_change = state, now
            elif now - last_change > stall_seconds:
                why = describe_unserved(unserved) or "no run started, advanced or finished"
                raise Stalled(
                    f"sweep {sweep_id} made no progress for {stall_seconds:g} s ({why}); its runs stay enqueued"
                )
            description = (
                f"{counts['ok']} ok, {counts['failed']} failed, {counts['unsupported']} unsupported, "
                f"{counts['running']} running, {counts['queued']} queued"
            )
            if counts["lost"]:
                description += f", [yellow]{counts['lost']} lost with their worker, waiting for redelivery[/]"
            if unserved:
                description += f" [yellow]({describe_unserved(unserved)})[/]"
            progress.update(bar, total=len(rows), completed=finished, description=description)
            time.sleep(poll_pause(time.monotonic() - started))
