"""The GPU check's one ordered list of checks: each names what it expects, the cells it runs, its judge,
about how long it takes and what it needs (no torch, no NVML: `--list` reads this alone).

Cells are DenseNet-121 (`MODEL`, random weights, `CELL_BUDGET`) on the pinned GPU unless their spec
says otherwise. A check may also judge cells an earlier check ran (`reads`); it is skipped when those
did not run. The list runs cheap and most informative checks first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from worker.gpu_check import judges
from worker.gpu_check.judges import Cells, Verdict

MODEL = "densenet121"
CELL_BUDGET = {"warmup_iters": 10, "warmup_seconds": 1.0, "min_iters": 100, "min_seconds": 2.0}
CELL_TIME_LIMIT = 240.0  # seconds, per cell (a compile cell compiles DenseNet-121 first)
DEFAULT_BUDGET_SECONDS = 450.0  # the run's own bound: a check that would overrun it is skipped
DEVICE_SECONDS = 15 * 60  # a lent GPU machine's device time for one task, start-up included
STARTUP_SECONDS = 240  # starting that machine, copying the tree, importing torch, reading NVML
OOM_IMAGE = 2048
DRY_RUN_CELL = {
    "model": "mobilenet_v3_small",
    "image_size": 32,
    "batch_size": 2,
    "device": "cpu",
    "warmup_iters": 1,
    "warmup_seconds": 0.0,
    "min_iters": 3,
    "min_seconds": 0.0,
}

Need = Literal["gpu", "torch_pruning", "torchao", "spare_cores"]
# Why a check is skipped when a need is missing ("gpu": the host's own reason, e.g. NVML unavailable).
MISSING: dict[Need, str] = {
    "gpu": "no GPU",
    "torch_pruning": "torch-pruning is not installed (pure Python: carry it on PYTHONPATH)",
    "torchao": "torchao is not installed (pip install torchao==0.18.0)",
    "spare_cores": "too few cores to give the GPU worker its own (see core_plan)",
}


@dataclass(frozen=True)
class Host:
    """What the checks need to know about the machine: the pinned GPU (None: none) and what is installed."""

    gpu_uuid: str | None = None
    no_gpu_reason: str | None = None
    mig: bool = False
    memory_total_bytes: int = 0
    extras: Mapping[str, str | None] = field(default_factory=dict)
    cpu_worker_cores: tuple[int, ...] = ()  # the CPU worker's cores, apart from the GPU worker's

    def lacks(self, needs: tuple[Need, ...]) -> str | None:
        """Why a check with these needs can't run here, or None."""
        for need in needs:
            if need == "gpu" and self.gpu_uuid is None:
                return self.no_gpu_reason or MISSING["gpu"]
            if need in ("torch_pruning", "torchao") and self.extras.get(need) is None:
                return MISSING[need]
            if need == "spare_cores" and not self.cpu_worker_cores:
                return MISSING[need]
        return None


@dataclass(frozen=True)
class Cell:
    """One cell a check runs: its label in the report and the CellSpec fields it sets."""

    label: str
    spec: Mapping[str, Any]
    batch_for_memory: Callable[[int], int] | None = None  # batch size from the GPU's memory in bytes
    load: Literal["every_core", "cpu_worker_cores"] | None = None  # a busy process on each such core
    min_left_s: float = 0.0  # not started (nor the check's later cells) with less time budget left


Judge = Callable[[Cells, Host], Verdict]


@dataclass(frozen=True)
class GpuCheck:
    """One claim about a GPU host, with everything needed to confirm it."""

    name: str
    expects: str  # what the hardware should show
    cells: tuple[Cell, ...]  # run in this order
    judge: Judge
    estimate_s: float  # about how long its cells take; not started with less time budget left
    needs: tuple[Need, ...] = ("gpu",)
    reads: tuple[str, ...] = ()  # labels of cells an earlier check runs, judged here too

    @property
    def labels(self) -> list[str]:
        """Every cell it judges: those it reads, then those it runs."""
        return [*self.reads, *(cell.label for cell in self.cells)]


def gpu_oom_batch(total_bytes: int, image: int = OOM_IMAGE) -> int:
    """A batch whose input fits the host but whose first two activations (conv0, norm0 of DenseNet-121:
    64 channels at half the image size, fp32) exceed the GPU: e.g. 280 on a 141 GB H200 (input 14 GB)."""
    per_sample = 2 * 64 * (image // 2) ** 2 * 4
    return min(4096, total_bytes // per_sample + 16)


BATCH_CELLS = tuple(
    Cell(f"{opt}@bs{bs}", {"optimization": opt, "batch_size": bs})
    for opt in ("baseline", "fp16")
    for bs in (1, 16, 256)
)
BATCHES = [cell.label for cell in BATCH_CELLS]
BASELINES, HALVES = BATCHES[:3], BATCHES[3:]
NOISE = ("quiet@bs1", "load_every_core@bs1", "load_cpu_worker_cores@bs1")
QUANTIZED = ["int8_weight_only@bs64", "int8_dynamic@bs64"]
QUANT_CELLS = ["baseline@bs64", *QUANTIZED, "float8@bs64", "onnxruntime@bs64"]
COMPILE_PAIRS = [(f"compile-default@bs{bs}", f"compile-reduce-overhead@bs{bs}") for bs in (1, 16)]


def _compile_cells() -> tuple[Cell, ...]:
    """Default then reduce-overhead per batch size; a pair starts only with a minute of budget left."""
    cells = []
    for default, graphs in COMPILE_PAIRS:
        bs = int(default.rsplit("bs", 1)[1])
        cells.append(
            Cell(default, {"optimization": "compile", "compile_mode": "default", "batch_size": bs}, min_left_s=60)
        )
        cells.append(Cell(graphs, {"optimization": "compile", "compile_mode": "reduce-overhead", "batch_size": bs}))
    return tuple(cells)


CHECKS: list[GpuCheck] = [
    GpuCheck(
        name="forked_cell_path_on_cpu",
        expects="a tiny CPU cell runs through worker.isolation.run_isolated (no Celery) and records its cores and "
        "back-to-back throughput",
        cells=(Cell("dry_run_cpu_cell", DRY_RUN_CELL),),
        judge=lambda cells, host: judges.judge_forked_cpu_cell(cells, "dry_run_cpu_cell"),
        estimate_s=10,
        needs=(),
    ),
    GpuCheck(
        name="cells_run_on_the_pinned_gpu",
        expects="baseline and fp16 at batch 1, 16, 256 are ok (no TypeError from NVML's process list) on the GPU "
        "pinned by UUID: each cell's gpu_uuid is the pinned GPU-... or, on a MIG instance, MIG-... UUID",
        cells=BATCH_CELLS,
        judge=lambda cells, host: judges.judge_cells_run(cells, BATCHES, host.gpu_uuid),
        estimate_s=60,
    ),
    GpuCheck(
        name="nvml_lists_the_cell_process",
        expects="process_mem_source is nvml_process_incl_cuda_context for every cell (bare metal, or a container "
        "with pid: host)",
        cells=(),
        reads=tuple(BATCHES),
        judge=lambda cells, host: judges.judge_nvml_lists_cells(cells, BATCHES),
        estimate_s=0,
    ),
    GpuCheck(
        name="baseline_is_strict_fp32",
        expects="baseline cells run with TF32 off, cosine to the fp32 reference >= 0.99999; fp16's cosine to strict "
        "fp32 >= 0.99",
        cells=(),
        reads=tuple(BATCHES),
        judge=lambda cells, host: judges.judge_strict_fp32(cells, BASELINES, HALVES),
        estimate_s=0,
    ),
    GpuCheck(
        name="back_to_back_throughput",
        expects="throughput_sps (back to back) >= 0.97 x throughput_sequential_sps at batch 1, 16, 256; the gap "
        "largest at batch 1",
        cells=(),
        reads=tuple(BASELINES),
        judge=lambda cells, host: judges.judge_throughput(cells, BASELINES),
        estimate_s=0,
    ),
    GpuCheck(
        name="energy_clock_power",
        expects="energy per sample > 0 over a 2 s phase (null with unavailable:mig_instance on MIG); SM clock and "
        "power limit recorded",
        cells=(),
        reads=tuple(BATCHES),
        judge=lambda cells, host: judges.judge_energy(cells, BATCHES, host.mig),
        estimate_s=0,
    ),
    GpuCheck(
        name="tf32_vs_strict_fp32",
        expects="tf32 at batch 16 runs with TF32 on and differs from strict fp32 more than the baseline; "
        "speedup_p50 > 1 on Ampere and newer",
        cells=(Cell("tf32@bs16", {"optimization": "tf32", "batch_size": 16}),),
        reads=("baseline@bs16",),
        judge=lambda cells, host: judges.judge_tf32(cells, "baseline@bs16", "tf32@bs16"),
        estimate_s=15,
    ),
    GpuCheck(
        name="prune_structured_fp16",
        expects="prune_structured+fp16 at batch 64: prune_round_to 8 and at least fp16's throughput",
        cells=(
            Cell("fp16@bs64", {"optimization": "fp16", "batch_size": 64}),
            Cell("prune_structured+fp16@bs64", {"optimization": "prune_structured+fp16", "batch_size": 64}),
        ),
        judge=lambda cells, host: judges.judge_pruned_fp16(cells, "prune_structured+fp16@bs64", "fp16@bs64"),
        estimate_s=45,
        needs=("gpu", "torch_pruning"),
    ),
    GpuCheck(
        name="real_cuda_oom",
        expects="DenseNet-121 at 2048 px with a batch whose activations exceed the GPU fails with error_type "
        "out_of_memory and 'CUDA out of memory'",
        cells=(
            Cell(
                "oom",
                {"optimization": "baseline", "image_size": OOM_IMAGE, "warmup_iters": 0, "min_iters": 1},
                batch_for_memory=gpu_oom_batch,
            ),
        ),
        judge=lambda cells, host: judges.judge_oom(cells, "oom"),
        estimate_s=60,
    ),
    GpuCheck(
        name="cpu_load_and_core_policy",
        expects="batch-1 p99 with a busy process on each of the CPU worker's cores stays within 1.25x of quiet; "
        "with one on every core it rises (shown for contrast)",
        cells=(
            Cell(NOISE[0], {"optimization": "baseline", "batch_size": 1}),
            Cell(NOISE[1], {"optimization": "baseline", "batch_size": 1}, load="every_core"),
            Cell(NOISE[2], {"optimization": "baseline", "batch_size": 1}, load="cpu_worker_cores"),
        ),
        judge=lambda cells, host: judges.judge_noise(cells, *NOISE),
        estimate_s=30,
        needs=("gpu", "spare_cores"),
    ),
    GpuCheck(
        name="torchao_int8_float8_at_bs64",
        expects="int8_weight_only and int8_dynamic (torchao) at batch 64 are ok with cosine >= 0.99 and quantize "
        "the classifier (Linear 1/1); float8 is ok on compute capability 8.9+ and unsupported naming 8.9 below; "
        "onnxruntime runs with CUDAExecutionProvider, or is unsupported naming onnxruntime-gpu",
        # synthetic weights: logits that depend on the input, so cosine means something
        cells=tuple(
            Cell(label, {"optimization": label.split("@")[0], "batch_size": 64, "weights": "synthetic"})
            for label in QUANT_CELLS
        ),
        judge=lambda cells, host: judges.judge_quantized(cells, QUANT_CELLS[0], QUANTIZED, *QUANT_CELLS[3:]),
        estimate_s=90,
        needs=("gpu", "torchao"),
    ),
    GpuCheck(
        name="compile_with_cuda_graphs",
        expects="compile default and reduce-overhead at batch 1 and 16 are ok (no overwritten CUDA-graph outputs; "
        "Triton finds a C compiler), cosine >= 0.9999, graph-pool memory reported and counted in the peak",
        cells=_compile_cells(),
        judge=lambda cells, host: judges.judge_compile(cells, COMPILE_PAIRS),
        estimate_s=120,
    ),
]
GPU_CHECKS = [check for check in CHECKS if "gpu" in check.needs]
BY_NAME = {check.name: check for check in CHECKS}
