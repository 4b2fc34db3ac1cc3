"""Write the docs' generated parts from the code (`make docs`); `--check` exits 1 when they are stale.

One part for now: docs/optimizations.md's table of optimizations, between its two markers, written from
the catalogue's entries (`shared/catalogue.py`). The notes on each optimization below it are prose.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as `python scripts/docs.py`
    sys.path.insert(0, str(REPO))

from shared.catalogue import OPTIMIZATIONS  # noqa: E402

OPTIMIZATIONS_DOC = REPO / "docs" / "optimizations.md"
BEGIN = "<!-- optimizations table: begin -->"
END = "<!-- optimizations table: end -->"


def optimizations_table() -> str:
    """The markdown table of every optimization, in the catalogue's order."""
    lines = [
        "| name | what it does | runs on | needs | in a chain | records |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for opt in OPTIMIZATIONS.values():
        needs = ", ".join(f"`{requirement}`" for requirement in opt.packages)
        records = ", ".join(f"`{field}`" for field in (*opt.knobs, *opt.records))
        cells = [f"`{opt.name}`", opt.summary, opt.runs_on(), needs, opt.placement(), records]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def with_table(text: str, table: str) -> str:
    """`text` with what lies between the markers replaced by `table`."""
    before, begin, rest = text.partition(BEGIN)
    _, end, after = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"the markers {BEGIN!r} and {END!r} are missing")
    return f"{before}{BEGIN}\n\n{table}\n\n{END}{after}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/docs.py", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a generated part is stale")
    args = parser.parse_args(argv)
    current = OPTIMIZATIONS_DOC.read_text()
    wanted = with_table(current, optimizations_table())
    if current == wanted:
        return 0
    relative = OPTIMIZATIONS_DOC.relative_to(REPO)
    if args.check:
        print(f"{relative}: its optimizations table is stale: run `make docs`", file=sys.stderr)
        return 1
    OPTIMIZATIONS_DOC.write_text(wanted)
    print(f"wrote {relative}'s optimizations table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
