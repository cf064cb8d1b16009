"""Figures 2 and 5: NDCG@10 per interest-shift segment (test users split into four equal groups by
the time of their test target, earliest first), one line per model.

Reuses the runs of ``compare`` when given the same output folder.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from t2arec.experiments.report import markdown_table, metric_label, new_figure, save_figure
from t2arec.experiments.store import METRICS, Setup, Variant, ensure_runs, write_text
from t2arec.pipeline import write_json


def segment_curves(setup: Setup, models: list[str]) -> dict[str, Any]:
    """Row name -> per-segment metric means over seeds (and the segments' time ranges)."""
    variants = [Variant(m) for m in models]
    runs = ensure_runs(setup, variants, "segments")
    curves: dict[str, Any] = {}
    ranges: list[dict[str, Any]] = []
    for variant in variants:
        per_seed = [runs[(variant, s)] for s in setup.seeds]
        splits = [("test", variant.model)]
        if any(r["alignment"]["applied"] for r in per_seed):
            splits.append(("test_no_tta", f"{variant.model} (no TTA)"))
        for split, name in splits:
            curves[name] = [{m: float(np.mean([r["segments"][i][split][m] for r in per_seed])) for m in METRICS}
                            for i in range(len(per_seed[0]["segments"]))]
        ranges = [{k: seg[k] for k in ("segment", "users", "from_time", "to_time")} for seg in per_seed[0]["segments"]]
    return {"seeds": setup.seeds, "segments": ranges, "curves": curves}


def plot(result: dict[str, Any], path, metric: str = "ndcg@10") -> None:  # noqa: ANN001
    fig, (ax,) = new_figure(width=6.0, height=4.0)
    colours: dict[str, str] = {}
    for name, points in result["curves"].items():
        base = name.removesuffix(" (no TTA)")  # a model and its no-TTA row share a colour
        colour = colours.setdefault(base, f"C{len(colours)}")
        style = "--" if name != base else "-"
        ax.plot(range(1, len(points) + 1), [p[metric] for p in points], style, color=colour, marker="o", label=name)
    ax.set_xticks(range(1, len(result["segments"]) + 1))
    ax.set_xlabel("test segment (by target time, 1 = earliest; later = more interest shift)")
    ax.set_ylabel(metric_label(metric))
    ax.set_title(f"{metric_label(metric)} per interest-shift segment")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def to_markdown(result: dict[str, Any]) -> str:
    segs = result["segments"]
    header = ["Model", *(f"segment {s['segment']}" for s in segs)]
    tables = []
    for metric in ("ndcg@10", "recall@10"):
        body = [[name, *(f"{p[metric]:.4f}" for p in points)] for name, points in result["curves"].items()]
        tables.append(f"{metric_label(metric)}:\n\n" + markdown_table(header, body))
    seeds = result["seeds"]
    users = ", ".join(str(s["users"]) for s in segs)
    return (f"### Per-segment performance (Figures 2 and 5)\n\nTest users split by target time into "
            f"{len(segs)} equal segments ({users} users); mean over {len(seeds)} seed(s).\n\n"
            + "\n\n".join(tables) + "\n")


def segments(setup: Setup, models: list[str]) -> dict[str, Any]:
    """Write segments.json, segments.md and segments.png into ``setup.out``."""
    result = segment_curves(setup, models)
    write_json(setup.out / "segments.json", result)
    write_text(setup.out / "segments.md", to_markdown(result))
    plot(result, setup.out / "segments.png")
    return result
