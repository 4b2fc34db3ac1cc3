"""`python -m producer sweep|status|rerun|resume|decide|flower`: start a sweep, look at it, re-run, resume or decide it.

Bad input is one line on stderr and exit status 2, with nothing enqueued. Needs no torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys

from rich.console import Console

from producer.progress import TABLE_ROWS, Stalled, describe_unserved, status_table, unserved_queues
from producer.sweep import (
    AUTO,
    DEFAULT_OPTIMIZATIONS,
    DEFAULT_REPEATS,
    DEFAULT_TIME_BUDGETS,
    SweepRequest,
    create,
    gpu_queue_for,
    parse_batch_sizes,
    parse_cell_ids,
    parse_list,
    parse_repeats,
    parse_time_budget,
    plan,
    rerun,
    resolve_device,
    runs_named,
)
from shared import config, keys, manifest
from shared.bulk import gc_paused
from shared.cli import OneLineParser, add_cell_arguments, one_line_errors
from shared.config import DEFAULT_MAX_REPEATS
from shared.errors import OptbenchError
from shared.models import parse_models
from shared.services import BROKERS, Session, session
from shared.spec import CellSpec
from shared.state import sweep_rows

PROG = "python -m producer"
CELL_OPTIONS = [
    f.name for f in dataclasses.fields(CellSpec) if f.name not in ("model", "optimization", "batch_size", "device")
]


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM: unwinds like KeyboardInterrupt, so what this command started is stopped."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


def online_queues(app) -> set[str] | None:
    """The queues online workers consume, or None when no worker answers."""
    replies = app.control.inspect(timeout=1.0).active_queues()
    if not replies:
        return None
    return {queue["name"] for queues in replies.values() for queue in queues}


def lost_runs(s: Session, sweep: manifest.Sweep, rows: list[dict]) -> list[str]:
    """Unfinished runs that nothing will finish: `lost`, or `running` on a worker that is gone, or
    `queued` in a queue that holds no message (lost with a Redis that had no append-only file). Runs
    still in a queue, or running on a live worker, are left alone: they go on by themselves."""
    from shared.celery_app import queue_lengths

    alive = {name for reply in s.app.control.ping(timeout=1.0) for name in reply}
    queued = {sweep.runs[row["run_id"]].queue for row in rows if row["status"] == "queued"}
    waiting = queue_lengths(queued) if queued else {}

    def lost(row: dict) -> bool:
        if row["status"] in ("running", "lost"):
            return row["status"] == "lost" or row.get("worker") not in alive
        return row["status"] == "queued" and waiting[sweep.runs[row["run_id"]].queue] == 0

    return [row["run_id"] for row in rows if lost(row)]


def cmd_sweep(args: argparse.Namespace, console: Console, state: dict) -> int:
    request = SweepRequest(
        optimizations=(
            parse_list(args.optimizations, "optimizations") if args.optimizations is not None else DEFAULT_OPTIMIZATIONS
        ),
        batch_sizes=parse_batch_sizes(args.batch_sizes) if args.batch_sizes is not None else None,
        device=args.device,
        gpu_model=args.gpu_model,
        name=args.name,
        models=tuple(model.text for model in parse_models(args.model)),
        cell_options={name: getattr(args, name) for name in CELL_OPTIONS if getattr(args, name) not in (None, {})},
        repeats=parse_repeats(args.repeats),
        max_repeats=args.max_repeats,
        time_budget=parse_time_budget(args.time_budget) if args.time_budget is not None else None,
        order_seed=args.order_seed,
    )
    # Bad input fails here, before any connection or service starts (cells validate alike on any device).
    plan(request, args.device if args.device != "auto" else "cpu")
    with session(args.start_missing, need_workers=True, broker=args.broker) as s:
        state["session"] = s
        queues = online_queues(s.app)
        device = resolve_device(args.device, None if queues is None else keys.GPU_QUEUE in queues)
        gpu_queue = None
        if device == "cuda":  # a CPU sweep never needs a GPU model
            model_queues = {q for q in queues or () if q.startswith(keys.GPU_MODEL_QUEUE_PREFIX)}
            gpu_queue = gpu_queue_for(request.gpu_model, model_queues)
        gpu_queue = gpu_queue or keys.GPU_QUEUE
        from producer.model_check import check_models  # only a sweep needs it: `status` starts faster without

        models = check_models(s.app, plan(request, device), gpu_queue, queues, s.settings.model_check_timeout)
        for model, built in models.items():
            console.print(
                f"model {model}: built on {built['worker']} ({built['model_params']:,} parameters, input "
                f"{built['input_shape']}, {built['model_source']})",
                highlight=False,
            )
        sweep = create(s.app, s.client, request, device, s.settings.result_expires, gpu_queue=gpu_queue, models=models)
        state["sweep_id"] = sweep.id
        where = f"{device} (queue {gpu_queue})" if device == "cuda" else device
        cells = len(sweep.cell_ids())
        more = (
            f"; then more rounds for undecided cells only, up to {request.max_repeats} runs per cell"
            + (f", no round starting after {budget:g} s" if (budget := sweep.spec["time_budget"]) else "")
            if request.repeats == AUTO
            else ""
        )
        console.print(
            f"sweep [bold]{sweep.id}[/]: {cells} cells x {request.first_rounds} runs = {len(sweep.runs)} runs on "
            f"{where}, interleaved round by round (order seed {sweep.spec['order_seed']}){more}",
            highlight=False,
        )
        if request.repeats == AUTO and not args.wait:
            console.print(
                f"more rounds start only while a client drives the sweep: `python -m producer decide --sweep "
                f"{sweep.id}` (or resume)",
                highlight=False,
            )
        _warn_unserved(s, sweep, console, queues)
        print(sweep.id)
        if args.wait:
            finish(s, sweep.id, console, args.stall_timeout)
    return 0


def cmd_status(args: argparse.Namespace, console: Console, state: dict) -> int:
    from producer.decide import WATCHED_FIELDS, look, open_cells, verdict_table
    from results.collect import runs_frame
    from results.stats import VERDICT_INPUTS

    with session(args.start_missing, need_workers=False, broker=args.broker) as s:
        sweep = manifest.load(s.client, args.sweep)
        rows = sweep_rows(s.app.backend, sweep, WATCHED_FIELDS)
        limit = None if args.all else TABLE_ROWS
        console.print(status_table(sweep, rows, limit))
        with gc_paused():
            cells = look(runs_frame(rows, VERDICT_INPUTS), sweep)
        if (cells["verdict"].astype(str) != "").any():
            undecided = [] if sweep.spec.get("stopped") or sweep.spec.get("repeats") != AUTO else open_cells(cells)
            stopped = f" (stopped: {sweep.spec['stopped']})" if sweep.spec.get("stopped") else ""
            console.print(verdict_table(cells, undecided, f"verdicts so far{stopped}", limit))
        if any(row["status"] == "queued" for row in rows):
            _warn_unserved(s, sweep, console, online_queues(s.app), rows)
    return 0


def cmd_rerun(args: argparse.Namespace, console: Console, state: dict) -> int:
    if args.cells is None and not args.failed:
        raise OptbenchError("say which cells or runs to re-run: --cells fp16@bs16,prune@bs1#2,... or --failed")
    names = list(parse_cell_ids(args.cells)) if args.cells is not None else []
    with session(args.start_missing, need_workers=args.wait, broker=args.broker) as s:
        state["session"] = s
        sweep = manifest.load(s.client, args.sweep)
        state["sweep_id"] = sweep.id
        run_ids = runs_named(sweep, names)
        if args.failed:
            run_ids += [row["run_id"] for row in sweep_rows(s.app.backend, sweep) if row["status"] == "failed"]
        if not run_ids:
            console.print(f"sweep {sweep.id} has no failed runs: nothing to re-run")
            return 0
        _requeue(s, sweep, list(dict.fromkeys(run_ids)), console)
        if args.wait:
            finish(s, sweep.id, console, args.stall_timeout)
    return 0


def cmd_resume(args: argparse.Namespace, console: Console, state: dict) -> int:
    """Finish an interrupted sweep: start what is missing, send again the unfinished runs nothing will
    finish (`lost_runs`), wait, collect, report."""
    with session(args.start_missing, need_workers=True, broker=args.broker) as s:
        state["session"] = s
        sweep = manifest.load(s.client, args.sweep)
        state["sweep_id"] = sweep.id
        unfinished = lost_runs(s, sweep, sweep_rows(s.app.backend, sweep))
        if unfinished:
            # A new attempt of each: a copy that turns up later is stale and acknowledged without running.
            _requeue(s, sweep, unfinished, console)
        else:
            console.print(f"sweep {sweep.id} has no unfinished runs: collecting it")
        finish(s, sweep.id, console, args.stall_timeout)
    return 0


def cmd_decide(args: argparse.Namespace, console: Console, state: dict) -> int:
    """Drive a sweep started without waiting: wait for its runs, add rounds for undecided cells (`--repeats
    auto`) until it stops, then collect and report. Any client of the sweep's Redis can run it."""
    with session(args.start_missing, need_workers=True, broker=args.broker) as s:
        state["session"] = s
        sweep = manifest.load(s.client, args.sweep)
        state["sweep_id"] = sweep.id
        if sweep.spec.get("repeats") != AUTO:
            console.print(f"sweep {sweep.id} has a fixed {sweep.spec['repeats']} runs per cell: waiting and collecting")
        finish(s, sweep.id, console, args.stall_timeout)
    return 0


def cmd_list(args: argparse.Namespace, console: Console, state: dict) -> int:
    """The names a sweep accepts, from the catalogue (no torch needed)."""
    from shared.catalogue import MODELS, OPTIMIZATIONS

    print("optimizations (join with +, e.g. fp16+channels_last):")
    for opt in OPTIMIZATIONS.values():
        runs_on = opt.runs_on()
        where = "" if runs_on == "cpu, cuda" else f" [{runs_on}{' only' if len(opt.devices) == 1 else ''}]"
        print(f"  {opt.name:18} {opt.summary}{where}")
    print("models (torchvision classification models):")
    print("  " + ", ".join(MODELS))
    print("and timm:NAME (any of timm.list_models()), package.module:factory, path/to/file.py:factory")
    return 0


def cmd_flower(args: argparse.Namespace, console: Console, state: dict) -> int:
    from producer import flower

    flower.basic_auth()  # bad credentials settings fail before anything starts
    with session(args.start_missing, need_workers=False, broker=args.broker) as s:
        console.print(f"Flower on http://{args.address}:{args.port} (Ctrl-C stops it)", highlight=False)
        return flower.run(s.app.conf.result_backend, s.app.conf.broker_url, args.address, args.port)


def _requeue(s: Session, sweep: manifest.Sweep, run_ids: list[str], console: Console) -> None:
    for entry in rerun(s.app, s.client, sweep, run_ids, s.settings.result_expires):
        console.print(f"re-enqueued {entry.run_id} (attempt {entry.attempts})", highlight=False)


def _warn_unserved(s: Session, sweep, console: Console, queues: set[str] | None, rows=None) -> None:
    unserved = unserved_queues(sweep, rows if rows is not None else sweep_rows(s.app.backend, sweep), queues)
    if unserved:
        console.print(f"[yellow]warning:[/] {describe_unserved(unserved)}", highlight=False)


def finish(s: Session, sweep_id: str, console: Console, stall_timeout: float | None) -> None:
    """Wait for every run (adding rounds for undecided cells of a `--repeats auto` sweep), then write the CSVs
    and the report, and show the table."""
    from producer.decide import drive
    from results.collect import collect, runs_frame
    from results.recommend import cant_tell
    from results.report import write_report

    stall = stall_timeout if stall_timeout is not None else s.settings.stall_timeout
    online = lambda: online_queues(s.app)  # noqa: E731
    rows = drive(s.app.backend, s.client, s.app, sweep_id, console, online, stall, s.settings.result_expires)
    sweep = manifest.load(s.client, sweep_id)
    paths = collect(s.app.backend, sweep, s.settings.results_dir, manifest.latest_id(s.client) == sweep_id)
    report = write_report(paths.cells, paths.runs, paths.cells.with_suffix(""))
    console.print(status_table(sweep, rows))
    undecided = cant_tell(paths.frame, runs_frame(rows, ("started_at", "finished_at")))
    if undecided:
        console.print(f"[bold]{undecided}[/]", highlight=False)
    written = [paths.cells, paths.runs, *paths.extra, report]
    console.print("wrote " + ", ".join(str(p) for p in written) + " and its plots", highlight=False)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    sweep = commands.add_parser("sweep", help="enqueue `repeats` runs of every (optimization, batch size) cell")
    sweep.add_argument("--optimizations", help=f"comma-separated (default: {','.join(DEFAULT_OPTIMIZATIONS)})")
    sweep.add_argument("--batch-sizes", help="comma-separated (default: 1,2,4,8,16 on a GPU, 1,4 on a CPU)")
    sweep.add_argument(
        "--repeats",
        default=DEFAULT_REPEATS,
        help="runs per cell, each in a fresh process: a number, or auto (default): 3, then more rounds for the "
        "cells whose verdict is still inconclusive",
    )
    sweep.add_argument(
        "--max-repeats",
        type=int,
        default=DEFAULT_MAX_REPEATS,
        help=f"with --repeats auto: the most rounds a cell gets (default {DEFAULT_MAX_REPEATS})",
    )
    sweep.add_argument(
        "--time-budget",
        help="with --repeats auto: seconds after which no new round starts, or none (default: "
        f"{DEFAULT_TIME_BUDGETS['cpu']:g} for a CPU sweep, none for a GPU sweep)",
    )
    sweep.add_argument("--order-seed", type=int, help="seed of the per-round shuffle (default: random, recorded)")
    sweep.add_argument("--name", help="a label kept with the sweep")
    sweep.add_argument(
        "--gpu-model",
        help="pin GPU cells to one GPU model (e.g. 'NVIDIA H200'); 'any' mixes models for a hardware comparison",
    )
    add_cell_arguments(sweep)

    status = commands.add_parser("status", help="a table of a sweep's runs")
    status.add_argument("--all", action="store_true", help=f"list every run and verdict, not the first {TABLE_ROWS}")
    rerun_ = commands.add_parser("rerun", help="re-enqueue some runs of a sweep as a new attempt")
    rerun_.add_argument("--cells", help="comma-separated cell ids (all their runs) or run ids: fp16@bs16,prune@bs1#2")
    rerun_.add_argument("--failed", action="store_true", help="every run whose status is failed")
    resume = commands.add_parser("resume", help="finish an interrupted sweep: send its unfinished runs again and wait")
    decide = commands.add_parser(
        "decide", help="drive a --repeats auto sweep from this client: more rounds for undecided cells, then collect"
    )
    for command in (status, rerun_, resume, decide):
        command.add_argument("--sweep", default="latest", help="sweep id, or latest (default)")
    for command in (sweep, rerun_):
        command.add_argument("--wait", action="store_true", help="show progress until done, then write the CSVs")
    for command in (sweep, rerun_, resume, decide):
        command.add_argument(
            "--stall-timeout",
            type=float,
            help="with --wait: give up (exit 3) after this many seconds without progress (OPTBENCH_STALL_TIMEOUT)",
        )
    commands.add_parser("list", help="the optimizations and models a sweep accepts")
    flower = commands.add_parser("flower", help="Flower on this Redis, basic auth from OPTBENCH_FLOWER_USER/_PASSWORD")
    flower.add_argument("--address", default="127.0.0.1", help="listen address (default loopback)")
    flower.add_argument("--port", type=int, default=5555)
    for command in (sweep, status, rerun_, resume, decide, flower):
        command.add_argument(
            "--start-missing",
            action="store_true",
            help="start a private Redis and local workers if none are reachable, and stop them at the end",
        )
        command.add_argument(
            "--broker",
            choices=BROKERS,
            default=config.default_broker(),
            help="with --start-missing and no OPTBENCH_BROKER_URL: the Redis is the broker (default), "
            "or start a private RabbitMQ under run/rabbitmq",
        )
    return parser


COMMANDS = {
    "sweep": cmd_sweep,
    "status": cmd_status,
    "rerun": cmd_rerun,
    "resume": cmd_resume,
    "decide": cmd_decide,
    "list": cmd_list,
    "flower": cmd_flower,
}


@one_line_errors(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("optbench").setLevel(logging.INFO)
    console = Console(stderr=args.command != "status")  # stdout of `sweep` is the sweep id alone
    if not console.is_terminal:
        console.width = 160
    if getattr(args, "start_missing", False) and args.command in ("sweep", "rerun") and not args.wait:
        raise OptbenchError("--start-missing stops what it started when done: use it with --wait")
    state: dict = {}
    previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops what we started, as Ctrl-C does
    try:
        return COMMANDS[args.command](args, console, state)
    except Stalled as exc:
        s: Session | None = state.get("session")
        after = f"; resume it with `make resume SWEEP={state['sweep_id']}`" if s is not None and s.started else ""
        print(f"{PROG}: error: {exc}{after}", file=sys.stderr)
        return 3
    except (KeyboardInterrupt, Interrupted) as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        print(f"{PROG}: {interrupted_message(state)}", file=sys.stderr)
        return 128 + signum
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted_message(state: dict) -> str:
    """What an interruption leaves behind, and what to type next."""
    sweep_id = state.get("sweep_id")
    s: Session | None = state.get("session")
    if sweep_id is None:
        return "interrupted before anything was enqueued"
    if s is not None and s.started:
        names = {"redis": "the private Redis", "rabbitmq": "the private RabbitMQ", "workers": "the local workers"}
        stopped = " and ".join(names[x] for x in s.started)
        return (
            f"interrupted: stopped {stopped} this command started, so sweep {sweep_id} is paused "
            f"(its runs are kept); resume it with `make resume SWEEP={sweep_id}`"
        )
    return (
        f"interrupted: sweep {sweep_id}'s enqueued runs go on on the workers; "
        f"`python -m producer status --sweep {sweep_id}` shows them, `make resume SWEEP={sweep_id}` waits and collects"
    )


if __name__ == "__main__":
    sys.exit(main())
