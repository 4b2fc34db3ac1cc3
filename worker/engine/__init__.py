"""The cell engine: one cell measured start to end in this process (`run.run_cell` is the entry; torch), and the
torch-free host probes it uses (`cores.py`: CPU cores; `gpus.py`: NVML)."""
