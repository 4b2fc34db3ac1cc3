"""A sweep's CSVs from the manifest and the Redis result backend, written atomically.

- `results/<sweep>_runs.csv`: one row per run (`shared.state.RUN_COLUMNS`: `run_id`, `repeat`, the result schema).
- `results/<sweep>.csv`: one row per cell, aggregated over its ok runs with intervals and a verdict
  against the baseline (`results.stats.aggregate`); also `results/benchmark_results.csv` when the
  sweep is the newest.
Unfinished runs are rows too (`queued`, `running`), so a CSV of a sweep in progress says so. A model whose
runs were measured with different model code (`model_sha256`: workers with different versions of a factory
or of timm) is refused: its cells would compare different models.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from results.sequential import Looks, looks_for
from results.stats import aggregate
from shared.bulk import gc_paused
from shared.config import DEFAULT_MIN_EFFECT
from shared.errors import OptbenchError
from shared.manifest import Sweep
from shared.state import RUN_COLUMNS, sweep_rows

LATEST_CSV = "benchmark_results.csv"


@dataclass(frozen=True)
class Written:
    cells: Path  # results/<sweep>.csv
    runs: Path  # results/<sweep>_runs.csv
    extra: list[Path] = field(default_factory=list)  # benchmark_results.csv when the sweep is the newest
    frame: pd.DataFrame | None = None  # the cell rows


def runs_frame(rows: list[dict[str, Any]], columns: tuple[str, ...] = RUN_COLUMNS) -> pd.DataFrame:
    """One row per run, grouped by cell in sweep order, in the run columns' order (or `columns` only)."""
    return pd.DataFrame.from_records(rows, columns=list(columns)) if rows else pd.DataFrame(columns=list(columns))


def cells_frame(runs: pd.DataFrame, min_effect: float = DEFAULT_MIN_EFFECT, looks: Looks | None = None) -> pd.DataFrame:
    """One row per cell; grouped by device name when several GPU models took part (`--gpu-model any`)."""
    check_same_model_code(runs)
    cells = aggregate(runs, min_effect=min_effect, looks=looks)
    return cells.sort_values("device_name", kind="stable", na_position="last").reset_index(drop=True)


def check_same_model_code(runs: pd.DataFrame) -> None:
    """Raise OptbenchError when the ok runs of one model carry different model code hashes, naming the workers."""
    if "model_sha256" not in runs.columns:
        return
    ok = runs[(runs["status"] == "ok") & runs["model_sha256"].notna()]
    hashes = ok.groupby("model", sort=False)["model_sha256"].nunique()
    mixed = hashes.index[hashes > 1]
    if mixed.empty:
        return
    model = mixed[0]  # the first model with several hashes; its workers are listed only now
    by_hash = ok[ok["model"] == model].groupby("model_sha256", sort=False)["worker"]
    seen = "; ".join(f"sha256 {sha[:12]} on {', '.join(sorted(set(map(str, workers))))}" for sha, workers in by_hash)
    raise OptbenchError(
        f"model {model} was measured with different model code ({seen}): install the same code on every "
        "worker and re-run its cells; its runs are not aggregated"
    )


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[str]:
    """A temporary file beside `path` that replaces it when the block ends without error: readers never see
    half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    with replacing(path) as temporary:
        frame.to_csv(temporary, index=False)


def collect(
    backend, sweep: Sweep, results_dir: Path, is_latest: bool, min_effect: float = DEFAULT_MIN_EFFECT
) -> Written:
    """Write the sweep's runs CSV and cells CSV (and benchmark_results.csv when it is the latest sweep)."""
    with gc_paused():
        runs = runs_frame(sweep_rows(backend, sweep))
        cells = cells_frame(runs, min_effect, looks_for(sweep.spec))
    written = Written(
        cells=results_dir / f"{sweep.id}.csv",
        runs=results_dir / f"{sweep.id}_runs.csv",
        extra=[results_dir / LATEST_CSV] if is_latest else [],
        frame=cells,
    )
    write_csv(runs, written.runs)
    write_csv(cells, written.cells)
    for path in written.extra:  # the same bytes, copied
        with replacing(path) as temporary:
            shutil.copyfile(written.cells, temporary)
    return written
