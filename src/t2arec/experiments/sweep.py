"""Figures 6 and 7: sensitivity to the loss weights, one weight varied at a time.

Training (Figure 6): T2ARec trained with mu1 (L_time) or mu2 (L_state) over a grid, the other at its
default; each model aligned at test time with the step it chose on validation.
Test time (Figure 7): the default model's checkpoint aligned with mu1 or mu2 over a grid, the other
at its default, with the step size the default model chose on validation (so only the weight moves);
when the default model chose no step, each point chooses a step, or none, on validation itself.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from t2arec.experiments.report import mean_std, metric_label, new_figure, save_figure, markdown_table, fmt_mean_std
from t2arec.experiments.store import METRICS, Setup, Variant, build_config, ensure_runs, ensure_variant, write_text
from t2arec.pipeline import write_json

TRAIN_GRID = (0.0, 0.01, 0.1, 1.0, 10.0)
TEST_GRID = (0.0, 1e-3, 1e-2, 1e-1, 1.0)
WEIGHTS = {"train": ("train.mu_time", "train.mu_state"), "test": ("align.mu_time", "align.mu_state")}
SYMBOL = {"mu_time": "mu1 (L_time)", "mu_state": "mu2 (L_state)"}


def _summary(values: list[dict[str, float]]) -> dict[str, Any]:
    return {m: dict(zip(("mean", "std"), mean_std([v[m] for v in values])), values=[v[m] for v in values])
            for m in METRICS}


def train_sweep(setup: Setup, model: str, grid: Sequence[float]) -> dict[str, list[dict[str, Any]]]:
    defaults = build_config(setup, Variant(model), setup.seeds[0]).train
    points: dict[tuple[str, float], Variant] = {}
    for key in WEIGHTS["train"]:
        for value in grid:
            default = getattr(defaults, key.split(".")[1])
            points[(key, value)] = Variant(model) if value == default else Variant(model, (f"{key}={value:g}",))
    runs = ensure_runs(setup, list(dict.fromkeys(points.values())), "sweep (training)")
    return {key.split(".")[1]: [{"value": value, **_summary([runs[(points[(key, value)], s)]["test"]
                                                              for s in setup.seeds])} for value in grid]
            for key in WEIGHTS["train"]}


def test_sweep(setup: Setup, model: str, grid: Sequence[float]) -> dict[str, list[dict[str, Any]]]:
    base = Variant(model)
    runs = ensure_runs(setup, [base], "sweep (test time)")
    out: dict[str, list[dict[str, Any]]] = {}
    for key in WEIGHTS["test"]:
        name = key.split(".")[1]
        out[name] = []
        for value in grid:
            per_seed = []
            for seed in setup.seeds:
                align = dataclasses.replace(build_config(setup, base, seed).align, **{name: value})
                trained = runs[(base, seed)]["alignment"]
                if trained["applied"]:  # keep the default model's step: only the weight moves
                    align = dataclasses.replace(align, lr_grid=(), lr=trained["lr"])
                per_seed.append(ensure_variant(setup, base, seed, f"{name}={value:g}", align)["test"])
            out[name].append({"value": value, **_summary(per_seed)})
    return out


def plot(curves: dict[str, list[dict[str, Any]]], phase: str, path) -> None:  # noqa: ANN001
    """One panel per weight: NDCG@10 (left axis) and Recall@10 (right axis) against the grid."""
    fig, axes = new_figure(ncols=len(curves))
    for ax, (name, points) in zip(axes, curves.items()):
        positions = range(len(points))
        ndcg = [p["ndcg@10"]["mean"] for p in points]
        recall = [p["recall@10"]["mean"] for p in points]
        line1 = ax.plot(positions, ndcg, "o-", color="tab:blue", label="NDCG@10")
        ax.set_ylabel("NDCG@10")
        twin = ax.twinx()
        line2 = twin.plot(positions, recall, "s--", color="tab:red", label="Recall@10")
        twin.set_ylabel("Recall@10")
        ax.set_xticks(list(positions), [f"{p['value']:g}" for p in points])
        ax.set_xlabel(f"{SYMBOL[name]} weight in {'training' if phase == 'train' else 'test-time alignment'}")
        ax.legend(line1 + line2, [line.get_label() for line in line1 + line2], loc="best", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Sensitivity to the {'training' if phase == 'train' else 'test-time'} loss weights")
    save_figure(fig, path)


def to_markdown(result: dict[str, Any], seeds: list[int]) -> str:
    parts = []
    for phase, figure in (("train", "Figure 6"), ("test", "Figure 7")):
        if phase not in result:
            continue
        for name, points in result[phase].items():
            body = [[f"{p['value']:g}", *(fmt_mean_std(p[m]["mean"], p[m]["std"], len(seeds)) for m in METRICS)]
                    for p in points]
            parts.append(f"#### {figure}: {SYMBOL[name]} in {'training' if phase == 'train' else 'test'}\n\n"
                         + markdown_table(["weight", *map(metric_label, METRICS)], body))
    head = (f"### Loss-weight sensitivity (Figures 6 and 7)\n\nTest split, mean ± std over {len(seeds)} seed(s) "
            f"({', '.join(map(str, seeds))}); the other weight at its default.\n\n")
    return head + "\n\n".join(parts) + "\n"


def sweep(setup: Setup, model: str = "t2arec", train_grid: Sequence[float] = TRAIN_GRID,
          test_grid: Sequence[float] = TEST_GRID, phases: Sequence[str] = ("train", "test")) -> dict[str, Any]:
    """Write sweep.json, sweep.md, sweep_train.png and sweep_test.png into ``setup.out``."""
    result: dict[str, Any] = {"seeds": setup.seeds}
    if "train" in phases:
        result["train"] = train_sweep(setup, model, train_grid)
        plot(result["train"], "train", setup.out / "sweep_train.png")
    if "test" in phases:
        result["test"] = test_sweep(setup, model, test_grid)
        plot(result["test"], "test", setup.out / "sweep_test.png")
    write_json(setup.out / "sweep.json", result)
    write_text(setup.out / "sweep.md", to_markdown(result, setup.seeds))
    return result
