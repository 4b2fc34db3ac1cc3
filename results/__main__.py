"""`python -m results collect|report|compare|recommend`: a sweep's CSVs from the Redis result backend, its report, and
the comparison of two sweeps. Needs no torch.
"""

from __future__ import annotations

import sys

from shared import manifest
from shared.cli import OneLineParser, one_line_errors
from shared.config import DEFAULT_MIN_EFFECT
from shared.services import session

PROG = "python -m results"


@one_line_errors(PROG)
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:  # parses its own arguments
        from results.compare import main as compare_main

        return compare_main(argv[1:])
    if argv[:1] == ["recommend"]:
        from results.recommend import main as recommend_main

        return recommend_main(argv[1:])
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    collect_cmd = commands.add_parser(
        "collect", help="write results/<sweep id>.csv, <sweep id>_runs.csv (and benchmark_results.csv)"
    )
    report_cmd = commands.add_parser("report", help="collect, then write results/<sweep id>/report.md and plots")
    commands.add_parser("compare", help="sweep B against sweep A, cell by cell: compare A B (see compare --help)")
    commands.add_parser("recommend", help="what to ship under constraints (see recommend --help)")
    for command in (collect_cmd, report_cmd):
        command.add_argument("--sweep", default="latest", help="sweep id, or latest (default)")
        command.add_argument(
            "--min-effect",
            type=float,
            default=DEFAULT_MIN_EFFECT,
            help=f"smallest ratio change a verdict calls ({DEFAULT_MIN_EFFECT:g})",
        )
        command.add_argument("--start-missing", action="store_true", help="start the private Redis if needed")
    args = parser.parse_args(argv)

    from results.collect import collect

    with session(args.start_missing, need_workers=False) as s:
        sweep = manifest.load(s.client, args.sweep)
        is_latest = manifest.latest_id(s.client) == sweep.id
        written = collect(s.app.backend, sweep, s.settings.results_dir, is_latest, args.min_effect)
    frame = written.frame
    counts = frame["status"].value_counts().to_dict()
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    paths = [written.cells, written.runs, *written.extra]
    runs = int(frame["repeats"].sum())
    print(f"sweep {sweep.id}: {len(frame)} cells ({summary}), {runs} runs; wrote {', '.join(map(str, paths))}")
    if args.command == "report":
        from results.report import write_report

        report = write_report(written.cells, written.runs, written.cells.with_suffix(""), min_effect=args.min_effect)
        print(f"wrote {report} and its plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
