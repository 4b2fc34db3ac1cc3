"""One-shot check of a GPU host before trusting its numbers: `python -m worker.gpu_check --out DIR`.

Run it from the repository root on the GPU host (`scripts/gpu_check.py` runs the same). It needs the
standard library, torch, torchvision and this repository (no Celery, no Redis); nvidia-ml-py and
torch-pruning are pure Python and may be carried in on PYTHONPATH (a check needing a missing one is
skipped, saying so). `--out` defaults to $OUT; `--list` prints the checks and runs nothing.

Every cell runs the way a worker runs it: in a process forked from a forkserver
(`worker.isolation.run_isolated`), pinned to one GPU by UUID (CUDA_VISIBLE_DEVICES, set before the
forkserver starts) and to that GPU worker's CPU cores (`worker/engine/cores.py`). This process never
initializes CUDA: it reads the GPU through NVML only.

It writes DIR/gpu_check.json: the environment, every cell's result, and one entry per check with
`status` (pass, fail or skipped), `expected` (what the hardware should show), `observed` and, when
skipped or failed, `reason`. `--dry-run` runs on any machine: it records the environment, runs one
tiny CPU cell through the same forked path, and skips every GPU check with its reason. Without a
GPU (and without `--dry-run`) it says why on one line and exits 2. A full run takes about 5-7
minutes on an H200; a check that would overrun `--budget-seconds` (default 450) is skipped, saying so.

Modules: `checks.py` (the one ordered list of checks), `judges.py` (verdicts from cell results),
`run.py` (running the list), `environment.py` (versions, NVML, CPU load), `__main__.py` (the CLI).
"""
