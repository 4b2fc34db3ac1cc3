"""The GPU path without a GPU: a fake NVML (processes it doesn't list, N/A memory, errors, MIG instances,
an energy counter that doesn't move), CUDA-graph memory and outputs, TF32, CPU cores, and the
single-cell runner on a host without Celery. Tests marked `gpu` check the same on real hardware."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from dataclasses import dataclass, field

import pytest
import torch

from shared.catalogue import parse_chain
from shared.errors import OptbenchError
from tests.conftest import REPO, tiny_spec
from worker.__main__ import worker_commands
from worker.engine import precision, trackers
from worker.engine.cores import CORES_ENV, format_cores, parse_cores, plan_cores
from worker.engine.gpus import Gpu, list_gpus, visible_gpus
from worker.engine.model_stats import run_probe
from worker.engine.run import run_cell
from worker.engine.trackers import (
    MIB,
    CudaMemory,
    GpuEnergy,
    NvmlDevice,
    find_nvml_device,
    gpu_noise,
    graph_pool_bytes,
    process_memory,
)
from worker.engine.transforms import Prepared, apply_chain, unsupported_here

ME = os.getpid()

# ------------------------------------------------------------------------------------------ fake NVML

NOT_SUPPORTED, NOT_FOUND = 3, 6


class FakeNvmlError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


def proc(pid: int, used: int | None) -> types.SimpleNamespace:
    return types.SimpleNamespace(pid=pid, usedGpuMemory=used)


@dataclass(eq=False)
class FakeDevice:
    """A GPU or MIG instance; it is its own handle."""

    uuid: str
    name: str = "NVIDIA H200"
    processes: list | Exception = field(default_factory=list)
    energy_mj: list[int] | None = None  # successive counter readings; None: unsupported
    mig: list[FakeDevice | None] | None = None  # MIG slots (None: empty); None: MIG off
    parent: FakeDevice | None = None
    sm_clock_mhz: int = 1980
    power_limit_mw: int = 700_000


class FakeNvml(types.ModuleType):
    """The pynvml calls optbench makes, over a list of FakeDevice."""

    NVMLError = FakeNvmlError
    NVML_CLOCK_SM = 1
    NVML_DEVICE_MIG_ENABLE = 1
    NVML_ERROR_NOT_FOUND = NOT_FOUND

    def __init__(self, devices: list[FakeDevice]) -> None:
        super().__init__("pynvml")
        self.devices = devices
        for gpu in devices:
            for mig in gpu.mig or []:
                if mig is not None:
                    mig.parent = gpu

    def nvmlInit(self) -> None:
        pass

    def nvmlSystemGetDriverVersion(self) -> str:
        return "580.95.05"

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeDevice:
        return self.devices[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeDevice:
        everything = self.devices + [m for d in self.devices for m in d.mig or [] if m is not None]
        for device in everything:
            if device.uuid == uuid:
                return device
        raise FakeNvmlError(NOT_FOUND)

    def nvmlDeviceGetUUID(self, handle: FakeDevice) -> bytes:
        return handle.uuid.encode()  # older pynvml returns bytes

    def nvmlDeviceGetName(self, handle: FakeDevice) -> str:
        return handle.name

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeDevice) -> list:
        if isinstance(handle.processes, Exception):
            raise handle.processes
        return list(handle.processes)

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: FakeDevice) -> list:
        raise FakeNvmlError(NOT_SUPPORTED)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeDevice) -> int:
        if handle.energy_mj is None or handle.parent is not None:
            raise FakeNvmlError(NOT_SUPPORTED)
        return handle.energy_mj.pop(0) if len(handle.energy_mj) > 1 else handle.energy_mj[0]

    def nvmlDeviceGetMigMode(self, handle: FakeDevice) -> list[int]:
        if handle.mig is None:
            raise FakeNvmlError(NOT_SUPPORTED)
        return [1, 1]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: FakeDevice) -> int:
        return len(handle.mig)

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: FakeDevice, index: int) -> FakeDevice:
        if handle.mig[index] is None:
            raise FakeNvmlError(NOT_FOUND)
        return handle.mig[index]

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle: FakeDevice) -> FakeDevice:
        return handle.parent

    def nvmlDeviceGetClockInfo(self, handle: FakeDevice, clock: int) -> int:
        if handle.parent is not None:  # like the real one: clocks are the physical GPU's
            raise FakeNvmlError(NOT_SUPPORTED)
        return handle.sm_clock_mhz

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: FakeDevice) -> int:
        if handle.parent is not None:
            raise FakeNvmlError(NOT_SUPPORTED)
        return handle.power_limit_mw


def install(monkeypatch, *devices: FakeDevice) -> FakeNvml:
    fake = FakeNvml(list(devices))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


def whole(device: FakeDevice) -> NvmlDevice:
    return NvmlDevice(device, device, device.uuid)


# ----------------------------------------- 1. NVML process memory: unlisted PID, N/A memory, NVML errors


@pytest.mark.parametrize(
    ("processes", "expected"),
    [
        ([proc(ME, 900 * MIB), proc(4242, 10 * MIB)], (900.0, "nvml_process_incl_cuda_context")),
        ([proc(4242, 10 * MIB)], (None, "unavailable:pid_not_listed")),  # a container without pid: host
        ([], (None, "unavailable:pid_not_listed")),
        ([proc(ME, None)], (None, "unavailable:not_reported")),  # pynvml's N/A
        ([proc(ME, 2**64 - 1)], (None, "unavailable:not_reported")),  # N/A passed through raw
        (FakeNvmlError(999), (None, "unavailable:nvml_error")),
    ],
)
def test_nvml_process_memory_is_null_with_its_reason_instead_of_failing_the_cell(monkeypatch, processes, expected):
    gpu = FakeDevice("GPU-1", processes=processes)
    install(monkeypatch, gpu)
    memory = process_memory(whole(gpu))
    assert (memory["process_mem_mb"], memory["process_mem_source"]) == expected


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda's allocator readings, as a CUDA-graph cell would leave them."""
    segments = [
        {"device": 0, "segment_pool_id": (0, 0), "total_size": 300 * MIB, "allocated_size": 250 * MIB},
        {"device": 0, "segment_pool_id": (1, 0), "total_size": 120 * MIB, "allocated_size": 20 * MIB},  # a graph
        {"device": 1, "segment_pool_id": (2, 0), "total_size": 999 * MIB, "allocated_size": 0},  # another GPU
    ]
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "memory_snapshot", lambda *args, **kwargs: segments)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 270 * MIB)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 420 * MIB)


def test_cuda_memory_of_a_cell_nvml_does_not_list_is_read_without_a_type_error(monkeypatch, fake_cuda):
    gpu = FakeDevice("GPU-1", processes=[proc(4242, 10 * MIB)])
    install(monkeypatch, gpu)
    memory = CudaMemory(torch.device("cuda:0"), whole(gpu)).read()
    assert memory["process_mem_mb"] is None and memory["process_mem_source"] == "unavailable:pid_not_listed"
    assert memory["peak_mem_reserved_mb"] == 420


# ------------------------------------------------------ 3. CUDA graphs: activations live in the graph pool


def test_graph_pool_memory_is_counted_in_the_peak_and_reported(monkeypatch, fake_cuda):
    assert graph_pool_bytes(torch.cuda.memory_snapshot(), 0) == (120 * MIB, 20 * MIB)
    memory = CudaMemory(torch.device("cuda:0"), None).read()
    # the allocator's peak (270) plus the pool memory no live tensor holds (100): what replays write
    assert memory["peak_mem_allocated_mb"] == 370 and memory["cuda_graph_pool_mb"] == 120
    assert memory["process_mem_source"] == "unavailable:no_nvml"


def test_without_graphs_there_is_no_graph_pool():
    segments = [{"device": 0, "segment_pool_id": (0, 0), "total_size": 5, "allocated_size": 5}]
    assert graph_pool_bytes(segments, 0) == (0, 0)


# --------------------------------------------------- 2. CUDA graphs: the probe copies each output


class StaticOutput(torch.nn.Module):
    """Returns the same buffer every call, overwritten by the next call, as a CUDA graph replay does."""

    def __init__(self) -> None:
        super().__init__()
        self.out = torch.zeros(1, 3)

    def forward(self, x):
        return self.out.copy_(x.mean(dim=(1, 2, 3), keepdim=True).reshape(-1, 1).expand(-1, 3))


def test_probe_outputs_survive_the_next_call_of_a_model_with_static_outputs():
    batches = [torch.full((1, 3, 4, 4), float(i)) for i in range(3)]
    outputs = run_probe(StaticOutput(), batches)
    assert outputs[:, 0].tolist() == [0.0, 1.0, 2.0]


# -------------------------------------------------------------------------------- 9. MIG instances


def mig_host() -> tuple[FakeDevice, FakeDevice]:
    plain = FakeDevice("GPU-aaa", "NVIDIA H200")
    slices = [FakeDevice("MIG-m0", "NVIDIA H200 MIG 1g.18gb"), None, FakeDevice("MIG-m2", "NVIDIA H200 MIG 3g.71gb")]
    return plain, FakeDevice("GPU-bbb", "NVIDIA H200", mig=slices)


def test_a_mig_gpu_gets_one_worker_per_instance_pinned_by_its_mig_uuid(monkeypatch):
    install(monkeypatch, *mig_host())
    gpus = list_gpus()
    assert [(g.index, g.uuid, g.mig_index) for g in gpus] == [(0, "GPU-aaa", None), (1, "MIG-m0", 0), (1, "MIG-m2", 2)]
    commands = worker_commands(gpus, "node7", cpu_worker=True, loglevel="INFO", cores=list(range(32)))
    names = [cmd[cmd.index("--hostname") + 1] for cmd, _ in commands]
    assert names == ["gpu0@node7", "gpu1-mig0@node7", "gpu1-mig2@node7", "cpu@node7"]
    assert [env["CUDA_VISIBLE_DEVICES"] for env in (e for _, e in commands)] == ["GPU-aaa", "MIG-m0", "MIG-m2", ""]
    queues = [cmd[cmd.index("--queues") + 1] for cmd, _ in commands]
    # a sweep never mixes MIG profiles with whole GPUs
    assert queues[1] == "optbench.gpu,optbench.gpu.nvidia-h200-mig-1g-18gb"


def test_cuda_visible_devices_naming_the_physical_gpu_keeps_its_mig_instances(monkeypatch):
    install(monkeypatch, *mig_host())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbb")
    assert [gpu.uuid for gpu in visible_gpus()] == ["MIG-m0", "MIG-m2"]


def test_a_cell_on_a_mig_instance_reads_its_memory_but_no_energy(monkeypatch):
    plain, gpu = mig_host()
    instance = gpu.mig[0]
    instance.processes = [proc(ME, 400 * MIB), proc(31337, MIB)]
    gpu.energy_mj = [1_000, 900_000]
    install(monkeypatch, plain, gpu)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-m0")  # as the worker pins it
    device = find_nvml_device(torch_uuid="m0", index=0)
    assert (device.handle, device.parent, device.is_mig) == (instance, gpu, True)
    assert process_memory(device)["process_mem_mb"] == 400
    energy = GpuEnergy(device, clock=iter([0.0, 5.0]).__next__)
    energy.start()
    assert energy.read() == {"energy_j": None, "energy_source": "unavailable:mig_instance"}
    noise = gpu_noise(device)  # clocks and power limit are the physical GPU's; processes the instance's
    assert noise == {"noise_gpu_sm_clock_mhz": 1980, "noise_gpu_other_processes": 1, "gpu_power_limit_w": 700.0}


def test_torch_uuid_without_prefix_matches_a_mig_instance(monkeypatch):
    install(monkeypatch, *mig_host())
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert find_nvml_device(torch_uuid="m2", index=0).uuid == "MIG-m2"
    assert find_nvml_device(torch_uuid="aaa", index=0).uuid == "GPU-aaa"
    with pytest.raises(LookupError, match="GPU-zzz"):
        find_nvml_device(torch_uuid="zzz", index=0)


# ----------------------------------------------------------- 10. energy steps, SM clock, power, neighbours


@pytest.mark.parametrize(
    ("readings_mj", "seconds", "expected"),
    [
        ([5_000, 5_000], 3.0, (None, "unavailable:counter_did_not_move")),
        ([5_000, 60_000], 0.4, (None, "unavailable:phase_too_short")),
        ([5_000, 605_000], 2.0, (600.0, "nvml_total_energy_whole_gpu")),
        (None, 2.0, (None, "unavailable:counter_unsupported")),
    ],
)
def test_energy_is_null_when_the_counter_did_not_move_or_the_phase_was_short(
    monkeypatch, readings_mj, seconds, expected
):
    gpu = FakeDevice("GPU-1", energy_mj=readings_mj)
    install(monkeypatch, gpu)
    energy = GpuEnergy(whole(gpu), clock=iter([10.0, 10.0 + seconds]).__next__)
    energy.start()
    reading = energy.read()
    assert (reading["energy_j"], reading["energy_source"]) == expected


def test_energy_on_the_cpu_has_no_source_and_without_nvml_says_so():
    assert GpuEnergy(None, on_gpu=False).read() == {"energy_j": None, "energy_source": None}
    assert GpuEnergy(None).read() == {"energy_j": None, "energy_source": "unavailable:no_nvml"}


@pytest.mark.parametrize(
    ("pids", "others"),
    [
        ([ME, 111, 222], 2),
        ([ME], 0),
        ([98765, 111], 1),  # in a PID namespace NVML lists us under a host PID: one of them is us
        ([], None),  # NVML sees no process at all (not even ours): unknown
    ],
)
def test_noise_records_sm_clock_power_limit_and_other_processes(monkeypatch, pids, others):
    gpu = FakeDevice("GPU-1", processes=[proc(pid, MIB) for pid in pids], sm_clock_mhz=1410, power_limit_mw=500_000)
    install(monkeypatch, gpu)
    noise = trackers.Noise(whole(gpu))
    noise.start()
    reading = noise.read()
    assert reading["noise_gpu_sm_clock_mhz"] == 1410 and reading["gpu_power_limit_w"] == 500.0
    assert reading["noise_gpu_other_processes"] == others


def test_nvml_errors_in_noise_readings_leave_those_fields_null(monkeypatch):
    gpu = FakeDevice("GPU-1", processes=FakeNvmlError(999))
    install(monkeypatch, gpu)
    assert gpu_noise(whole(gpu))["noise_gpu_other_processes"] is None


# ---------------------------------------------------------------------------------------------- 4. TF32


@pytest.fixture
def restore_tf32():
    before = (torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    yield
    torch.backends.cudnn.allow_tf32 = before[0]
    torch.set_float32_matmul_precision(before[1])


def test_tf32_flags_follow_set_tf32_and_every_getter_stays_readable(restore_tf32):
    precision.set_tf32(True)
    assert precision.tf32_flags() == {"tf32_cudnn": True, "tf32_matmul": True}
    assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32 is True
    precision.set_tf32(False)
    assert precision.tf32_flags() == {"tf32_cudnn": False, "tf32_matmul": False}
    # inductor reads these legacy getters while compiling: they must not raise
    assert torch.get_float32_matmul_precision() == "highest" and torch.backends.cudnn.allow_tf32 is False


def test_tf32_flags_on_a_torch_without_fp32_precision_use_allow_tf32():
    old_torch = types.SimpleNamespace(
        cudnn=types.SimpleNamespace(allow_tf32=True), cuda=types.SimpleNamespace(matmul=types.SimpleNamespace())
    )
    old_torch.cuda.matmul.allow_tf32 = False
    assert precision.tf32_flags(old_torch) == {"tf32_cudnn": True, "tf32_matmul": False}


def test_a_cell_resets_fp32_math_to_strict_before_its_reference(restore_tf32):
    precision.set_tf32(True)  # left over from an earlier cell in this process, or torch's cuDNN default
    result = run_cell(tiny_spec(model="mobilenet_v3_small", optimization="baseline"))
    assert result.status == "ok", result.error
    assert precision.tf32_flags() == {"tf32_cudnn": False, "tf32_matmul": False}


def test_the_tf32_step_turns_tf32_on_after_the_reference(restore_tf32):
    precision.set_tf32(False)
    spec = tiny_spec(model="mobilenet_v3_small", optimization="tf32")
    model = torch.nn.Linear(2, 2)
    apply_chain(parse_chain("tf32"), Prepared(model, torch.device("cpu"), (3, spec.image_size, spec.image_size)), spec)
    assert precision.tf32_flags() == {"tf32_cudnn": True, "tf32_matmul": True}
    with pytest.raises(OptbenchError, match="sets the precision twice"):
        parse_chain("tf32+fp16")


def test_tf32_on_a_gpu_older_than_ampere_is_unsupported(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    reason = unsupported_here(parse_chain("tf32"), torch.device("cuda"))
    assert reason == "tf32 needs compute capability 8.0 (Ampere) or newer; this GPU is 7.0"
    assert unsupported_here(parse_chain("fp16"), torch.device("cuda")) is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert unsupported_here(parse_chain("tf32"), torch.device("cuda")) is None


# ------------------------------------------------------------------------------------------ 6. CPU cores


def test_each_gpu_worker_gets_its_own_cores_and_the_cpu_worker_the_rest():
    plan = plan_cores(list(range(32)), gpu_workers=2, cpu_worker=True)
    assert plan.gpu == [list(range(0, 8)), list(range(8, 16))] and plan.cpu == list(range(16, 32))
    small = plan_cores(list(range(6)), gpu_workers=2, cpu_worker=True)
    assert small.gpu == [[0, 1], [2, 3]] and small.cpu == [4, 5]
    no_cpu_worker = plan_cores(list(range(16)), gpu_workers=2, cpu_worker=False)
    assert no_cpu_worker.gpu == [list(range(8)), list(range(8, 16))] and no_cpu_worker.cpu is None


def test_without_gpus_or_with_too_few_cores_nothing_is_pinned():
    assert plan_cores([0, 1], gpu_workers=0, cpu_worker=True).cpu is None  # this 2-core CPU host
    tight = plan_cores([0, 1], gpu_workers=2, cpu_worker=True)
    assert tight.gpu == [None, None] and tight.cpu is None


def test_worker_commands_pass_each_worker_its_cores():
    gpus = [Gpu(0, "GPU-aaa", "NVIDIA H200")]
    commands = worker_commands(gpus, "node7", cpu_worker=True, loglevel="INFO", cores=list(range(16)))
    assert [env[CORES_ENV] for _, env in commands] == ["0-7", "8-15"]
    alone = worker_commands([], "node7", cpu_worker=True, loglevel="INFO", cores=[0, 1])
    assert alone[0][1][CORES_ENV] == ""  # a CPU-only host: all cores, torch's default threads


def test_core_lists_format_and_parse_like_taskset():
    assert format_cores([0, 1, 2, 3, 8, 9, 11]) == "0-3,8-9,11"
    assert parse_cores("0-3,8-9,11") == [0, 1, 2, 3, 8, 9, 11]
    for bad in ("", "3-1", "a", "-1"):
        with pytest.raises(ValueError):
            parse_cores(bad)


# ----------------------------------------------- 12 (and 6): the single-cell runner without Celery, pinned

BLOCK_QUEUE_LIBRARIES = textwrap.dedent(
    """
    import runpy, sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("celery", "kombu", "redis"):
                sys.stderr.write("BLOCKED IMPORT " + name + "\\n")
                raise ImportError("blocked in this test: " + name)
            return None

    sys.meta_path.insert(0, Block())
    runpy.run_module("worker.cell", run_name="__main__")
    """
)


@pytest.fixture(scope="module")
def celery_free_cell():
    args = ["--model", "mobilenet_v3_small", "--image-size", "32", "--batch-size", "2", "--warmup", "1"]
    args += ["--warmup-seconds", "0", "--min-iters", "3", "--min-seconds", "0", "--device", "cpu"]
    env = {**os.environ, CORES_ENV: "0"}
    return subprocess.run(
        [sys.executable, "-c", BLOCK_QUEUE_LIBRARIES, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_single_cell_runner_needs_no_celery_kombu_or_redis(celery_free_cell):
    assert celery_free_cell.returncode == 0, celery_free_cell.stderr[-2000:]
    assert "BLOCKED IMPORT" not in celery_free_cell.stderr
    result = json.loads(celery_free_cell.stdout)
    assert result["status"] == "ok", result["error"]


def test_a_cell_runs_on_the_cores_it_is_given_with_as_many_threads(celery_free_cell):
    result = json.loads(celery_free_cell.stdout)
    assert (result["cpu_cores"], result["cpu_threads"]) == ("0", 1)


# ----------------------------------------------------------------------------------- on a real GPU


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_cells_with_cuda_graphs_keep_their_fidelity_and_report_graph_memory(mode):
    spec = tiny_spec(model="resnet18", optimization="compile", compile_mode=mode, device="cuda", batch_size=4)
    result = run_cell(spec)
    assert result.status == "ok", result.error
    assert result.cosine_similarity > 0.9999
    graphs = mode == "reduce-overhead"
    assert (result.cuda_graph_pool_mb > 0) is graphs


@pytest.mark.gpu
def test_on_a_gpu_the_baseline_is_strict_fp32_and_tf32_is_not():
    baseline = run_cell(tiny_spec(device="cuda", batch_size=8))
    tf32 = run_cell(tiny_spec(device="cuda", batch_size=8, optimization="tf32"))
    assert (baseline.tf32_cudnn, baseline.tf32_matmul) == (False, False)
    assert (tf32.tf32_cudnn, tf32.tf32_matmul) == (True, True)
    if torch.cuda.get_device_capability() >= (8, 0):
        assert tf32.max_abs_error > baseline.max_abs_error


def _energy_counter_works() -> bool:
    """Whether this GPU's NVML reads its total energy counter (asked of NVML directly, not of the code under test)."""
    import pynvml

    pynvml.nvmlInit()
    try:
        pynvml.nvmlDeviceGetTotalEnergyConsumption(pynvml.nvmlDeviceGetHandleByIndex(0))
        return True
    except pynvml.NVMLError:
        return False
    finally:
        pynvml.nvmlShutdown()


@pytest.mark.gpu
def test_on_a_gpu_nvml_fields_are_read_and_energy_needs_a_long_enough_phase():
    result = run_cell(tiny_spec(device="cuda", batch_size=8, min_seconds=2.0))
    assert result.status == "ok", result.error
    assert result.gpu_power_limit_w and result.noise_gpu_sm_clock_mhz
    assert result.energy_source == (
        "nvml_total_energy_whole_gpu" if _energy_counter_works() else "unavailable:counter_unsupported"
    )
    assert result.throughput_sps >= 0.95 * result.throughput_sequential_sps
