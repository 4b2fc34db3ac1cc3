"""The report of a sweep: `report.md`, PNG plots and `citations.json`, written from the sweep's two CSVs.

The cells CSV (`results/<sweep>.csv`, `results.stats.aggregate`'s rows) holds each cell's representative
values, their intervals and its verdict against the baseline; the runs CSV (`results/<sweep>_runs.csv`)
holds every run's values, from which the best-per-metric table compares two cells run by run.

The report speaks only of what is significant. A cell is called faster or slower than the baseline only
where the cells CSV's verdict says so, with the interval beside it; a cell is named best for a metric
only when its interval against each other cell lies wholly beyond the minimum effect, else the cells
it cannot be told from share a tie (`results.ranking`).

Every number the report quotes goes through `Citations`, which records in `citations.json` where it came
from: a cell and column of the cells CSV, a run and column of the runs CSV, a cell's speedup over the
baseline with its interval and verdict, or a comparison of two cells' runs with its interval and the
claim made from it. A test checks each against the CSVs, and that no sentence claims more than its
citation supports. Sentences are built from the data: nothing is fixed text standing in for a finding.

The parts: `load` reads the CSVs; `citations` quotes numbers and prints them; `sections` writes the
findings (header and method, against the baseline, best per metric, fidelity); `noise` the noise
section; `environment` the runs without a measurement and where the sweep was measured; `plots` the
PNGs. `write_report`, here, puts them together.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from results.ranking import rank_all
from results.recommend import Constraints, recommend
from results.report.citations import CONFIDENCE, Citations
from results.report.environment import environment_section, not_measured_section
from results.report.load import load_cells, load_runs, measured
from results.report.noise import noise_section
from results.report.plots import write_plots
from results.report.sections import best_section, fidelity_section, header_section, versus_baseline_section
from results.report.ship import models_section, ship_section
from shared.config import DEFAULT_MIN_EFFECT

__all__ = ["write_report"]


def write_report(cells_csv: Path, runs_csv: Path, out_dir: Path, min_effect: float = DEFAULT_MIN_EFFECT) -> Path:
    """Write report.md, the plots and citations.json into `out_dir`; returns the report's path."""
    cells, runs = load_cells(cells_csv, min_effect), load_runs(runs_csv)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = measured(cells)
    cite = Citations(cells, runs, min_effect)
    plots = write_plots(done, out_dir) if len(done) else []
    groups = sorted(done["group"].unique())
    several_models = cells["model"].nunique() > 1
    constraints = Constraints()  # the defaults of `python -m results recommend`
    answers = {group: recommend(done[done["group"] == group], runs, constraints, min_effect) for group in groups}
    findings = [models_section(done, answers, cite, constraints) if several_models else ""]
    for group in groups:  # one group per model and per device (`--gpu-model any`)
        on_device = done[done["group"] == group]
        rankings = rank_all(on_device, runs, min_effect, CONFIDENCE)
        findings += [(f"# {group}" if several_models else f"# On {group}") if len(groups) > 1 else ""]
        findings += [
            ship_section(answers[group], cite),
            versus_baseline_section(on_device, cite),
            best_section(rankings, cite, min_effect),
            fidelity_section(on_device, rankings, cite),
        ]
    sections = [
        header_section(cells, runs, min_effect),
        *findings,
        noise_section(done, runs, cite),
        not_measured_section(runs),
        environment_section(cells, runs),
        "## Plots\n\n" + "\n".join(f"![{title}]({name})" for name, title in plots) if plots else "",
    ]
    report = out_dir / "report.md"
    report.write_text("\n\n".join(part for part in sections if part) + "\n")
    (out_dir / "citations.json").write_text(json.dumps([asdict(c) for c in cite.items], indent=1))
    return report
