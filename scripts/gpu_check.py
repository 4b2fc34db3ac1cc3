"""`python3 scripts/gpu_check.py ARGS` runs `python -m worker.gpu_check ARGS` (see worker/gpu_check).

Kept for the command the README gives; it runs the package from this repository's root whatever the
current folder, keeping any PYTHONPATH (e.g. carried-in extras) after it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "worker.gpu_check", *sys.argv[1:]]
    os.execve(sys.executable, argv, {**os.environ, "PYTHONPATH": path})


if __name__ == "__main__":
    main()
