"""`python -m results collect|report --sweep ID|latest`: a sweep's CSV from the Redis result backend, and its report."""

from __future__ import annotations

import sys

from shared import manifest
from shared.cli import OneLineParser
from shared.errors import OptbenchError

PROG = "python -m results"


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog=PROG, description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    collect_cmd = commands.add_parser("collect", help="write results/<sweep id>.csv (and benchmark_results.csv)")
    report_cmd = commands.add_parser("report", help="collect, then write results/<sweep id>/report.md and plots")
    for command in (collect_cmd, report_cmd):
        command.add_argument("--sweep", default="latest", help="sweep id, or latest (default)")
        command.add_argument("--start-missing", action="store_true", help="start the private Redis if needed")
    args = parser.parse_args(argv)

    from producer.__main__ import session
    from results.collect import collect

    try:
        with session(args.start_missing, need_workers=False) as s:
            sweep = manifest.load(s.client, args.sweep)
            is_latest = manifest.latest_id(s.client) == sweep.id
            frame, paths = collect(s.app.backend, sweep, s.settings.results_dir, is_latest)
    except OptbenchError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    counts = frame["status"].value_counts().to_dict()
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    print(f"sweep {sweep.id}: {len(frame)} cells ({summary}); wrote {', '.join(map(str, paths))}")
    if args.command == "report":
        from results.report import write_report

        print(f"wrote {write_report(paths[0], paths[0].with_suffix(''))} and its plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
