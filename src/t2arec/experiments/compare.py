"""Table 2: Recall/MRR/NDCG@10 per model, mean ± std over seeds, and a paired t-test of the best
model against the runner-up per metric (pairs = seeds; ``*`` when p < 0.05).

A model with test-time alignment also gets a "(no TTA)" row from the same runs, so the table shows
what the alignment step itself adds.
"""
from __future__ import annotations

from typing import Any

from t2arec.experiments.report import fmt_mean_std, markdown_table, mean_std, metric_label, paired_ttest
from t2arec.experiments.store import METRICS, Setup, Variant, ensure_runs, write_text
from t2arec.pipeline import write_json

SIGNIFICANCE = 0.05


def collect_rows(setup: Setup, models: list[str], desc: str = "compare") -> dict[str, list[dict[str, float]]]:
    """Row name -> test metrics per seed (in ``setup.seeds`` order)."""
    variants = [Variant(m) for m in models]
    runs = ensure_runs(setup, variants, desc)
    rows: dict[str, list[dict[str, float]]] = {}
    for variant in variants:
        per_seed = [runs[(variant, s)] for s in setup.seeds]
        rows[variant.model] = [r["test"] for r in per_seed]
        if any(r["alignment"]["applied"] for r in per_seed):
            rows[f"{variant.model} (no TTA)"] = [r["test_no_tta"] for r in per_seed]
    return rows


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
    summary = summarise(collect_rows(setup, models), setup.seeds)
    write_json(setup.out / f"{name}.json", summary)
    write_text(setup.out / f"{name}.md", to_markdown(summary, title))
    return summary
