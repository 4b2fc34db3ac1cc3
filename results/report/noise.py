"""The report's noise section: how much runs of a cell disagreed, which runs were measured under contention
(and left out of every interval), what to do about either, and what the A/A control cells say.
"""

from __future__ import annotations

import pandas as pd

from results import runs, stats
from results.report.citations import VERDICT_WORDS, Citations, percent
from results.stats import AA_CONTROL, numeric


def noise_section(done: pd.DataFrame, runs: pd.DataFrame, cite: Citations) -> str:
    lines = ["## Noise", ""]
    cv = numeric(done, "run_to_run_cv")
    noisy = cv[cv >= stats.HIGH_CV].sort_values(ascending=False)
    ok = runs[runs["status"] == "ok"]
    flagged = ok[stats.contended(ok).to_numpy()]
    if len(noisy):
        lines.append(
            f"Cells whose runs' throughput varied by `{percent(stats.HIGH_CV)}` or more (coefficient of variation):"
        )
        lines += [f"- `{c}`: {cite.quote(c, 'run_to_run_cv', 1, 100, '%')}" for c in noisy.index]
        lines.append("")
    if len(flagged):
        lines.append("Runs measured under contention (left out of every interval and verdict above):")
        lines += [_contended_line(run, cite) for _, run in flagged.iterrows()]
        lines.append("")
    lines += _noise_advice(noisy, flagged, cv, ok, cite)
    lines += _aa_controls(done, cite)
    return "\n".join(lines)


def _aa_controls(done: pd.DataFrame, cite: Citations) -> list[str]:
    """What each A/A control cell says: the same model measured as two cells should show no difference."""
    controls = done[(done["optimization"] == AA_CONTROL) & done["verdict"].isin(VERDICT_WORDS)]
    lines = []
    for cell, row in controls.sort_values("batch_size").iterrows():
        control = f"The A/A control `{cell}` (the baseline measured again as a cell of its own)"
        if row["verdict"] == "equivalent":
            lines.append(f"{control}: {cite.speedup(str(cell))}, as it should be.")
        elif row["verdict"] == "inconclusive":
            lines.append(
                f"{control}: {cite.speedup(str(cell))}: this host's run-to-run noise is wider than the "
                f"`±{percent(cite.min_effect)}` band at these runs, so verdicts near the band can't be told either."
            )
        else:
            lines.append(
                f"{control} differs from the baseline: {cite.speedup(str(cell))}. Noise or drift on "
                "this host alone made a verdict of that size: treat verdicts near it as unproven, and raise "
                "`--repeats` or `--min-effect`, or measure on a quieter host."
            )
    return ["", *lines] if lines else []


def _contended_line(run: pd.Series, cite: Citations) -> str:
    run_id, parts = str(run["run_id"]), []
    if not pd.isna(run.get("noise_cpu_wait_fraction")):
        waited = cite.quote_run(run_id, "noise_cpu_wait_fraction", 1, 100, "%")
        parts.append(f"waited for a CPU {waited} of its runnable time")
    if not pd.isna(run.get("noise_cpu_steal_fraction")):
        stolen = cite.quote_run(run_id, "noise_cpu_steal_fraction", 1, 100, "%")
        parts.append(f"its VM lost {stolen} of the host's CPU time to the hypervisor")
    if not pd.isna(run.get("noise_load_avg")):
        parts.append(f"load average {cite.quote_run(run_id, 'noise_load_avg')}")
    if not pd.isna(run.get("noise_gpu_other_processes")):
        parts.append(f"{cite.quote_run(run_id, 'noise_gpu_other_processes', 0)} other processes on its GPU")
    return f"- run `{run_id}`: {', '.join(parts)}"


def _noise_advice(
    noisy: pd.Series, flagged: pd.DataFrame, cv: pd.Series, ok: pd.DataFrame, cite: Citations
) -> list[str]:
    advice = []
    waits = numeric(flagged, "noise_cpu_wait_fraction")
    if (waits >= runs.CONTENDED_WAIT_FRACTION).any():
        advice.append(
            "Runs that waited for a CPU timed a busy host as much as the model: re-run their cells on a quiet "
            "host, or pin each worker to its own cores."
        )
    if (numeric(flagged, "noise_cpu_steal_fraction") >= runs.CONTENDED_STEAL_FRACTION).any():
        advice.append("Runs whose VM lost CPU time to its hypervisor (steal): measure on dedicated hardware.")
    shared = numeric(flagged, "noise_gpu_other_processes")
    if (shared >= 1).any():
        advice.append("Runs that shared their GPU with other processes: re-run them when nothing else uses the GPU.")
    quiet_noisy = [c for c in noisy.index if c not in set(flagged["cell_id"])]
    if quiet_noisy:
        names = ", ".join(f"`{c}`" for c in quiet_noisy)
        advice.append(f"Runs disagree without contention in {names}: raise `--repeats` to narrow their intervals.")
    if noisy.empty:
        advice.append(_quiet_summary(flagged, cv, ok, cite))
    return advice


def _quiet_summary(flagged: pd.DataFrame, cv: pd.Series, ok: pd.DataFrame, cite: Citations) -> str:
    recorded = [c for c in ("noise_cpu_wait_fraction", "noise_gpu_other_processes") if c in ok and ok[c].notna().any()]
    if not flagged.empty:
        contention = ""
    elif recorded:
        contention = (
            f"No run showed contention (none waited for a CPU `{percent(runs.CONTENDED_WAIT_FRACTION)}` of its "
            "runnable time or more, none lost that much to steal, none shared its GPU); "
        )
    else:
        contention = "No run recorded contention measurements, so contention can't be ruled out; "
    finite = cv.dropna()
    if finite.empty:
        return contention + "no cell has two ok runs, so run-to-run variation is unknown."
    worst = str(finite.idxmax())
    spread = cite.quote(worst, "run_to_run_cv", 1, 100, "%")
    sentence = f"the largest run-to-run variation of throughput was {spread} (`{worst}`)."
    return contention + sentence if contention else sentence[0].upper() + sentence[1:]
