"""`python -m producer sweep|status|rerun`: start a sweep, look at it, re-run some of its cells.

Bad input is one line on stderr and exit status 2, with nothing enqueued.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import redis
from rich.console import Console

from producer.sweep import (
    DEFAULT_OPTIMIZATIONS,
    SweepRequest,
    create,
    gpu_queue_for,
    parse_batch_sizes,
    parse_cell_ids,
    parse_list,
    plan,
    rerun,
    resolve_device,
)
from shared import config, manifest
from shared.cli import SPEC_DEFAULTS, OneLineParser, add_cell_arguments
from shared.connection import connect
from shared.errors import OptbenchError

PROG = "python -m producer"
CELL_OPTIONS = [name for name in SPEC_DEFAULTS if name not in ("optimization", "batch_size", "device")]


@dataclass
class Session:
    app: object
    client: redis.Redis
    settings: config.Settings


@contextlib.contextmanager
def session(start_missing: bool, need_workers: bool) -> Iterator[Session]:
    """Connect to Redis (and with --start-missing, start Redis and workers that aren't running)."""
    from producer import services
    from worker.app import app, use_redis

    settings = config.load()
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(services.redis_for_sweep()) if start_missing else settings.redis_url
        client = stack.enter_context(contextlib.closing(connect(url)))
        use_redis(url)
        if start_missing and need_workers:
            stack.enter_context(services.local_workers(app, url, services.RUN_DIR / "worker.log"))
        yield Session(app, client, settings)


def online_queues(app) -> set[str] | None:
    """The queues online workers consume, or None when no worker answers."""
    replies = app.control.inspect(timeout=1.0).active_queues()
    if not replies:
        return None
    return {queue["name"] for queues in replies.values() for queue in queues}


def cmd_sweep(args: argparse.Namespace, console: Console) -> int:
    request = SweepRequest(
        optimizations=(
            parse_list(args.optimizations, "optimizations") if args.optimizations is not None else DEFAULT_OPTIMIZATIONS
        ),
        batch_sizes=parse_batch_sizes(args.batch_sizes) if args.batch_sizes is not None else None,
        device=args.device,
        gpu_model=args.gpu_model,
        name=args.name,
        cell_options={name: getattr(args, name) for name in CELL_OPTIONS if getattr(args, name) is not None},
    )
    # Bad input fails here, before any connection or service starts (cells validate alike on any device).
    plan(request, args.device if args.device != "auto" else "cpu")
    with session(args.start_missing, need_workers=True) as s:
        queues = online_queues(s.app)
        gpu_online = None if queues is None else "gpu" in queues
        device = resolve_device(args.device, gpu_online)
        gpu_queue = gpu_queue_for(request.gpu_model, {q for q in queues or () if q.startswith("gpu.")})
        sweep = create(s.app, s.client, request, device, s.settings.result_expires, gpu_queue=gpu_queue)
        where = f"{device} (queue {gpu_queue})" if device == "cuda" else device
        console.print(f"sweep [bold]{sweep.id}[/]: {len(sweep.cells)} cells on {where}", highlight=False)
        print(sweep.id)
        if args.wait:
            finish(s, sweep.id, console)
    return 0


def cmd_status(args: argparse.Namespace, console: Console) -> int:
    from producer.progress import status_table
    from results.collect import sweep_rows

    with session(args.start_missing, need_workers=False) as s:
        sweep = manifest.load(s.client, args.sweep)
        console.print(status_table(sweep, sweep_rows(s.app.backend, sweep)))
    return 0


def cmd_rerun(args: argparse.Namespace, console: Console) -> int:
    from results.collect import sweep_rows

    if args.cells is None and not args.failed:
        raise OptbenchError("say which cells to re-run: --cells fp16@bs16,... or --failed")
    cells = list(parse_cell_ids(args.cells)) if args.cells is not None else []
    with session(args.start_missing, need_workers=args.wait) as s:
        sweep = manifest.load(s.client, args.sweep)
        if args.failed:
            cells += [row["cell_id"] for row in sweep_rows(s.app.backend, sweep) if row["status"] == "failed"]
        if not cells:
            console.print(f"sweep {sweep.id} has no failed cells: nothing to re-run")
            return 0
        entries = rerun(s.app, s.client, sweep, cells, s.settings.result_expires)
        for entry in entries:
            console.print(f"re-enqueued {entry.cell_id} (attempt {entry.attempts})", highlight=False)
        if args.wait:
            finish(s, sweep.id, console)
    return 0


def cmd_flower(args: argparse.Namespace, console: Console) -> int:
    from producer import flower

    flower.basic_auth()  # bad credentials settings fail before anything starts
    with session(args.start_missing, need_workers=False) as s:
        url = s.app.conf.broker_url
        console.print(f"Flower on http://{args.address}:{args.port} (Ctrl-C stops it)", highlight=False)
        return flower.run(url, args.address, args.port)


def finish(s: Session, sweep_id: str, console: Console) -> None:
    """Wait for every cell, then write the CSV and the report, and show the table."""
    from producer.progress import status_table, wait
    from results.collect import collect
    from results.report import write_report

    rows = wait(s.app.backend, s.client, sweep_id, console)
    sweep = manifest.load(s.client, sweep_id)
    _, paths = collect(s.app.backend, sweep, s.settings.results_dir, manifest.latest_id(s.client) == sweep_id)
    report = write_report(paths[0], paths[0].with_suffix(""))
    console.print(status_table(sweep, rows))
    console.print("wrote " + ", ".join(str(p) for p in [*paths, report]) + " and its plots", highlight=False)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    sweep = commands.add_parser("sweep", help="enqueue one task per (optimization, batch size) cell")
    sweep.add_argument(
        "--optimizations", help="comma-separated (default: baseline,fp16,prune,dynamic_quant,torchscript)"
    )
    sweep.add_argument("--batch-sizes", help="comma-separated (default: 1,2,4,8,16 on a GPU, 1,2,4 on a CPU)")
    sweep.add_argument("--name", help="a label kept with the sweep")
    sweep.add_argument(
        "--gpu-model",
        help="pin GPU cells to one GPU model (e.g. 'NVIDIA H200'); 'any' mixes models for a hardware comparison",
    )
    add_cell_arguments(sweep)

    status = commands.add_parser("status", help="a table of a sweep's cells")
    rerun = commands.add_parser("rerun", help="re-enqueue some cells of a sweep as a new attempt")
    rerun.add_argument("--cells", help="comma-separated cell ids such as fp16@bs16")
    rerun.add_argument("--failed", action="store_true", help="every cell whose status is failed")
    for command in (status, rerun):
        command.add_argument("--sweep", default="latest", help="sweep id, or latest (default)")
    for command in (sweep, rerun):
        command.add_argument("--wait", action="store_true", help="show progress until done, then write the CSV")
    flower = commands.add_parser("flower", help="Flower on this Redis, basic auth from OPTBENCH_FLOWER_USER/_PASSWORD")
    flower.add_argument("--address", default="127.0.0.1", help="listen address (default loopback)")
    flower.add_argument("--port", type=int, default=5555)
    for command in (sweep, status, rerun, flower):
        command.add_argument(
            "--start-missing",
            action="store_true",
            help="start a private Redis and local workers if none are reachable, and stop them at the end",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("optbench").setLevel(logging.INFO)
    console = Console(stderr=args.command != "status")  # stdout of `sweep` is the sweep id alone
    if not console.is_terminal:
        console.width = 160
    try:
        if args.start_missing and args.command in ("sweep", "rerun") and not args.wait:
            raise OptbenchError("--start-missing stops what it started when done: use it with --wait")
        commands = {"sweep": cmd_sweep, "status": cmd_status, "rerun": cmd_rerun, "flower": cmd_flower}
        return commands[args.command](args, console)
    except OptbenchError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; enqueued cells go on (`python -m producer status`)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
