"""Table 2: Recall/MRR/NDCG@10 per model, mean ± std over seeds, and a paired t-test of the best
model against the runner-up per metric (pairs = seeds; ``*`` when p < 0.05).

A model with test-time alignment also gets a "(no TTA)" row from the same runs, so the table shows
what the alignment step itself adds.
"""
from __future__ import annotations

import statistics
from typing import Any

from t2arec.experiments.report import fmt_mean_std, markdown_table, mean_std, metric_label, paired_ttest
from t2arec.experiments.store import METRICS, Setup, Variant, ensure_runs, write_text
from t2arec.pipeline import write_json

SIGNIFICANCE = 0.05


def collect_runs(setup: Setup, models: list[str], desc: str = "compare") -> dict[str, list[dict[str, Any]]]:
    """Model -> the results.json of each seed's run (in ``setup.seeds`` order), trained when missing."""
    variants = [Variant(m) for m in models]
    runs = ensure_runs(setup, variants, desc)
    return {v.model: [runs[(v, s)] for s in setup.seeds] for v in variants}


def metric_rows(runs: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, float]]]:
    """Row name -> test metrics per seed; a model whose alignment step was applied also gets a
    "(no TTA)" row from the same checkpoints."""
    rows: dict[str, list[dict[str, float]]] = {}
    for model, per_seed in runs.items():
        rows[model] = [r["test"] for r in per_seed]
        if any(r["alignment"]["applied"] for r in per_seed):
            rows[f"{model} (no TTA)"] = [r["test_no_tta"] for r in per_seed]
    return rows


def collect_rows(setup: Setup, models: list[str], desc: str = "compare") -> dict[str, list[dict[str, float]]]:
    """Row name -> test metrics per seed (in ``setup.seeds`` order)."""
    return metric_rows(collect_runs(setup, models, desc))


def median_epoch_seconds(run: dict[str, Any]) -> float | None:
    """Epochs times the median epoch's seconds: the run's training time with the time it spent
    paused (SIGSTOP while CI or a benchmark ran) or slowed by another job left out, which the
    wall-clock total keeps; None for results without a history."""
    seconds = [e["seconds"] for e in run.get("history") or [] if e.get("seconds") is not None]
    return statistics.median(seconds) * len(seconds) if seconds else None


def training_summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per model: training time (wall-clock, and at the median epoch), optimiser steps, the step of
    the best validation, and whether the test-time step was applied, each per seed (older results
    without these fields give None)."""
    return {model: {"train_seconds": [r.get("train_seconds") for r in per_seed],
                     "median_epoch_train_seconds": [median_epoch_seconds(r) for r in per_seed],
                     "steps": [r.get("steps") for r in per_seed],
                     "best_step": [r.get("best_step") for r in per_seed],
                     "alignment_applied": [bool(r.get("alignment", {}).get("applied")) for r in per_seed]}
            for model, per_seed in runs.items()}


def training_markdown(training: dict[str, dict[str, Any]]) -> str:
    """The training cost of each model's runs (wall-clock on this machine), one cell per seed."""
    def cells(values: list[Any], unit: float = 1.0, digits: int = 0) -> str:
        return ", ".join("-" if v is None else f"{v / unit:.{digits}f}" for v in values)
    body = [[model, cells(t["train_seconds"], 60.0, 1), cells(t["median_epoch_train_seconds"], 60.0, 1),
             cells(t["steps"]), cells(t["best_step"]),
             ", ".join("yes" if a else "no" for a in t["alignment_applied"])] for model, t in training.items()]
    return ("Training per run (one cell per seed): wall-clock minutes of training and validation; the same "
            "at the median epoch (epochs times the median epoch's time: pauses and slowdowns by other jobs "
            "left out); optimiser steps, the step of the best validation, and whether a test-time step was "
            "applied.\n\n"
            + markdown_table(["Model", "minutes", "minutes at the median epoch", "steps", "best step",
                              "step applied"], body) + "\n")


def rank_metric(rows: dict[str, list[dict[str, float]]], metric: str) -> dict[str, Any]:
    """Best and runner-up row by mean, and the paired t-test between them."""
    means = sorted(((mean_std([m[metric] for m in per_seed])[0], name) for name, per_seed in rows.items()),
                   reverse=True)
    best = means[0][1]
    runner_up = means[1][1] if len(means) > 1 else None
    p_value = None
    if runner_up is not None:
        p_value = paired_ttest([m[metric] for m in rows[best]], [m[metric] for m in rows[runner_up]])
    return {"best": best, "runner_up": runner_up, "p_value": p_value,
            "significant": p_value is not None and p_value < SIGNIFICANCE}


def summarise(rows: dict[str, list[dict[str, float]]], seeds: list[int]) -> dict[str, Any]:
    table = {name: {metric: dict(zip(("mean", "std"), mean_std([m[metric] for m in per_seed])),
                                 values=[m[metric] for m in per_seed]) for metric in METRICS}
             for name, per_seed in rows.items()}
    return {"seeds": seeds, "metrics": list(METRICS), "rows": table,
            "ranking": {metric: rank_metric(rows, metric) for metric in METRICS}}


def to_markdown(summary: dict[str, Any], title: str) -> str:
    seeds = len(summary["seeds"])
    body = []
    for name, cells in summary["rows"].items():
        row = [name]
        for metric in summary["metrics"]:
            text = fmt_mean_std(cells[metric]["mean"], cells[metric]["std"], seeds)
            rank = summary["ranking"][metric]
            if name == rank["best"]:
                text = f"**{text}**" + ("\\*" if rank["significant"] else "")
            elif name == rank["runner_up"]:
                text = f"<u>{text}</u>"
            row.append(text)
        body.append(row)
    notes = []
    for metric in summary["metrics"]:
        rank = summary["ranking"][metric]
        p = "undefined" if rank["p_value"] is None else f"{rank['p_value']:.3g}"
        notes.append(f"- {metric_label(metric)}: best {rank['best']}, runner-up {rank['runner_up']}, "
                     f"paired t-test over seeds p = {p}")
    header = ["Model", *(metric_label(m) for m in summary["metrics"])]
    seed_text = ", ".join(map(str, summary["seeds"]))
    return (f"### {title}\n\nTest split, mean ± std over {seeds} seed(s) ({seed_text}). Best in bold, runner-up "
            f"underlined, `*` = paired t-test p < {SIGNIFICANCE}.\n\n"
            + markdown_table(header, body) + "\n\n" + "\n".join(notes) + "\n")


def compare(setup: Setup, models: list[str], title: str = "Overall performance (Table 2)",
            name: str = "compare") -> dict[str, Any]:
    """Train (or reuse) every model for every seed; write ``name``.json and ``name``.md into ``setup.out``."""
    runs = collect_runs(setup, models)
    summary = summarise(metric_rows(runs), setup.seeds)
    summary["training"] = training_summary(runs)
    write_json(setup.out / f"{name}.json", summary)
    write_text(setup.out / f"{name}.md", to_markdown(summary, title) + "\n" + training_markdown(summary["training"]))
    return summary
