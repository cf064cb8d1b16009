"""Validation curves of training runs, finished or not, side by side.

    python benchmarks/curves.py RUN_DIR [RUN_DIR ...] [--every 5] [--plot curves.png]

Each RUN_DIR is a `t2arec run --out` folder: the history comes from its results.json when the run has
finished, else from the train_state.pt it writes after every epoch (a run stopped early still has
one), else from a progress.json that `--save-progress` wrote from that state (a few kB to commit,
where the state holds weights and is not committed). Prints a markdown table of validation NDCG@10 by epoch (one column per run) and, per run, the
best validation, its step and the training seconds so far; `--plot` also draws the curves against
optimiser steps.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from t2arec.experiments.store import write_text
from t2arec.train import validation_points

METRIC = "valid_ndcg@10"


def load_progress(run_dir: Path) -> dict[str, Any]:
    """The run's progress: history (one record per epoch), best score and step, seconds."""
    results = run_dir / "results.json"
    if results.exists():
        stored = json.loads(results.read_text())
        # the validation that training selected on: without the test-time step (valid_no_tta)
        best = stored.get("valid_no_tta", stored["valid"])["ndcg@10"]
        return {"history": stored["history"], "best_score": best,
                "best_step": stored.get("best_step"), "seconds": stored.get("train_seconds", 0.0),
                "finished": True}
    state, saved = run_dir / "train_state.pt", run_dir / "progress.json"
    if state.exists():
        progress = torch.load(state, map_location="cpu", weights_only=True)["progress"]
    elif saved.exists():
        progress = json.loads(saved.read_text())
    else:
        raise SystemExit(f"{run_dir}: neither results.json nor train_state.pt nor progress.json")
    return {**progress, "finished": False}


def curve_table(runs: dict[str, dict[str, Any]], every: int) -> str:
    """Validation NDCG@10 at every ``every``-th epoch (and the last), one column per run. A run that
    validated at other epochs shows its last validation within the ``every`` epochs before."""
    by_run = {name: {r["epoch"]: r[METRIC] for r in p["history"] if METRIC in r} for name, p in runs.items()}
    last = max(e for values in by_run.values() for e in values)
    shown = [e for e in range(every, last + 1, every)] + ([last] if last % every else [])
    lines = ["| epoch | " + " | ".join(runs) + " |", "|---" * (len(runs) + 1) + "|"]
    for epoch in shown:
        cells = []
        for name in runs:
            recent = [e for e in by_run[name] if epoch - every < e <= epoch]
            cells.append(f"{by_run[name][max(recent)]:.4f}" if recent else "")
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_table(runs: dict[str, dict[str, Any]]) -> str:
    lines = ["| run | epochs | steps | best valid NDCG@10 | at step | training s | finished |", "|---" * 7 + "|"]
    for name, p in runs.items():
        last = p["history"][-1]
        lines.append(f"| {name} | {last['epoch']} | {last['step']} | {p['best_score']:.4f} | {p['best_step']} | "
                     f"{p['seconds']:.0f} | {'yes' if p['finished'] else 'no'} |")
    return "\n".join(lines)


def plot(runs: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, p in runs.items():
        points = validation_points(p["history"])
        # the run's own folder names (model+overrides/seed-N): whole paths overflow the axes
        ax.plot(*zip(*points), label="/".join(Path(name).parts[-2:]))
    ax.set_xlabel("optimiser steps")
    ax.set_ylabel("validation NDCG@10")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--every", type=int, default=5, help="show every n-th epoch")
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--save-progress", action="store_true",
                        help="write each unfinished run's progress.json (its curve, without the weights)")
    args = parser.parse_args()
    runs = {str(d): load_progress(d) for d in args.runs}
    if args.save_progress:
        for d in args.runs:
            if not runs[str(d)]["finished"]:
                progress = {k: v for k, v in runs[str(d)].items() if k != "finished"}
                write_text(d / "progress.json", json.dumps(progress, indent=1) + "\n")
    print(summary_table(runs) + "\n\n" + curve_table(runs, args.every))
    if args.plot:
        plot(runs, args.plot)


if __name__ == "__main__":
    main()
