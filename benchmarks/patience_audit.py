"""How much patience each finished run really had, and whether it was still climbing when it stopped.

    python benchmarks/patience_audit.py experiments/results/ml-1m/runs [--out audit.md]

Patience is counted in optimiser steps (`train.patience_steps`), but a run validates only at the end
of the epoch in which the step count passes a multiple of `train.eval_steps` (unless
`train.validate_within_epochs=true`), so on long epochs the same 2,000 steps hold fewer validations:
7 at 270 steps per epoch, 3 at 855. With few validations, one noisy high stops a run that is still
improving. For every results.json under the given folders this prints a markdown table: steps per
epoch, the validations that followed the best one before the stop, the best validation NDCG@10 and
its step, and the rise of the best-so-far over the `--window` steps before that best (a large rise:
the curve was still steep when patience ran out; n/a when the best came sooner than that).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from t2arec.experiments.store import write_text
from t2arec.train import validation_points


def audit(results: dict[str, Any], window: int) -> dict[str, Any]:
    """The patience facts of one finished run (its results.json, loaded)."""
    history = results["history"]
    points = validation_points(history)
    best_step = results["best_step"]
    best = max(score for step, score in points if step == best_step)
    # the best-so-far `window` steps before the best (None when the run had not validated by then)
    earlier = max((score for step, score in points if step <= best_step - window), default=None)
    return {"steps_per_epoch": history[0]["step"],
            "validations_after_best": sum(1 for step, _ in points if step > best_step),
            "patience_steps": results["config"]["train"]["patience_steps"],
            "best": best, "best_step": best_step, "stop_step": results["steps"],
            "rise": None if earlier is None else best - earlier}


def audit_table(rows: dict[str, dict[str, Any]], window: int) -> str:
    lines = [f"| run | steps per epoch | patience steps | validations after the best | best valid NDCG@10 "
             f"| at step | stopped at | rise over the {window:,} steps before the best |",
             "|---" * 8 + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['steps_per_epoch']} | {r['patience_steps']:,} | {r['validations_after_best']} "
                     f"| {r['best']:.4f} | {r['best_step']:,} | {r['stop_step']:,} "
                     f"| {'n/a' if r['rise'] is None else format(r['rise'], '+.4f')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path, help="folders searched for results.json")
    parser.add_argument("--window", type=int, default=4000, help="steps before the best for the rise")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    rows = {}
    for root in args.roots:
        for path in sorted(root.glob("**/results.json")):
            name = path.parent.relative_to(root) if len(args.roots) == 1 else path.parent
            rows[str(name)] = audit(json.loads(path.read_text()), args.window)
    if not rows:
        raise SystemExit(f"no results.json under {', '.join(map(str, args.roots))}")
    table = audit_table(rows, args.window)
    print(table)
    if args.out:
        write_text(args.out, table + "\n")


if __name__ == "__main__":
    main()
