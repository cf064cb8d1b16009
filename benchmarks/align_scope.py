"""What per-request alignment (align.scope = request: every user its own step) does to the metrics,
against the paper's batch step (align.scope = batch, 4,096 users per step), on trained checkpoints.

    python benchmarks/align_scope.py --checkpoints RUN_DIR [RUN_DIR ...] --out docs/performance/align_scope.json

For each checkpoint (a ``t2arec run`` output folder, or its ``checkpoint`` file), on the validation and
the test split of its own data:

1. ``stored``: no step, the batch step and the request step at the step size the checkpoint stores
   (``align.lr``: the chosen step, or the best grid step when none was significant; what
   ``t2arec evaluate --align --align-scope batch|request`` runs), or at ``--lr``;
2. ``grid``: validation NDCG@10 of both scopes at every step of the checkpoint's ``align.lr_grid``,
   and the step each scope's selection rule (``evaluate.select_alignment_lr``, on validation only)
   picks, with its test metrics.

Each aligned evaluation records its seconds, so the cost per user of each scope is in the output
too, and the paired comparison of the two scopes on the same test users (mean NDCG@10 difference,
users helped and hurt, two-sided sign test). Prints a Markdown summary; writes JSON with ``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from t2arec.align import AlignConfig
from t2arec.data.batching import evaluation_examples
from t2arec.evaluate import EvalResult, evaluate, paired_test_over_users, select_alignment_lr
from t2arec.pipeline import load_data, load_model, remap_items
from t2arec.runtime import flush_denormals, keep_freed_memory

SCOPES = ("batch", "request")


def checkpoint_path(path: Path) -> Path:
    return path / "checkpoint" if path.is_dir() else path


def summary(result: EvalResult) -> dict[str, Any]:
    users = len(result.ranks)
    return {**result.metrics, "param_shift_mean": float(np.mean(result.param_shift)) if result.param_shift else 0.0,
            "seconds": result.seconds, "ms_per_user": 1000 * result.seconds / max(users, 1)}


def compare_checkpoint(path: Path, grid: bool = True, batch_size: int | None = None,
                       lr: float | None = None) -> dict[str, Any]:
    """Every figure above for one checkpoint (``lr``: another step size than the stored one)."""
    model, cfg, payload = load_model(checkpoint_path(path))
    data = remap_items(load_data(cfg), payload["item_ids"])
    splits = {name: evaluation_examples(data, name, cfg.data.max_len) for name in ("valid", "test")}
    stored = dataclasses.replace(cfg.align, enabled=True, batch_size=batch_size or cfg.align.batch_size,
                                 lr=cfg.align.lr if lr is None else lr)
    out: dict[str, Any] = {"checkpoint": str(checkpoint_path(path)), "dataset": data.report.name,
                           "users": data.num_users, "max_len": cfg.data.max_len, "seed": cfg.seed,
                           "stored_lr": stored.lr, "stored_enabled": cfg.align.enabled, "batch_size": stored.batch_size,
                           "optimizer": stored.optimizer, "mu_time": stored.mu_time, "mu_state": stored.mu_state,
                           "threads": torch.get_num_threads(), "stored": {}}
    for split, examples in splits.items():
        plain = evaluate(model, examples, None, batch_size=stored.batch_size)
        runs = {scope: evaluate(model, examples, dataclasses.replace(stored, scope=scope), batch_size=stored.batch_size)
                for scope in SCOPES}
        out["stored"][split] = {"none": summary(plain), **{scope: summary(r) for scope, r in runs.items()},
                                "request_vs_batch": paired_test_over_users(runs["request"].ranks, runs["batch"].ranks),
                                "request_vs_none": paired_test_over_users(runs["request"].ranks, plain.ranks),
                                "batch_vs_none": paired_test_over_users(runs["batch"].ranks, plain.ranks)}
    if grid:
        out["grid"] = {}
        for scope in SCOPES:
            align = dataclasses.replace(stored, scope=scope)
            start = time.perf_counter()
            choice = select_alignment_lr(model, splits["valid"], align)
            used = choice.config(align)
            test = evaluate(model, splits["test"], used if used.enabled else None, batch_size=stored.batch_size)
            out["grid"][scope] = {"valid_rows": choice.rows, "chosen": choice.to_dict(), "test": summary(test),
                                  "selection_seconds": time.perf_counter() - start}
    return out


def to_markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| checkpoint | split | lr | no step | batch step | request step | request - batch (helped/hurt, p) "
             "| shift batch / request | ms per user batch / request |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for split in ("valid", "test"):
            s = r["stored"][split]
            cmp = s["request_vs_batch"]
            lines.append(f"| {r['dataset']} seed {r['seed']} | {split} | {r['stored_lr']:g} "
                         f"| {s['none']['ndcg@10']:.4f} | {s['batch']['ndcg@10']:.4f} | {s['request']['ndcg@10']:.4f} "
                         f"| {cmp['ndcg_gain']:+.4f} "
                         f"({cmp['users_helped']}/{cmp['users_hurt']}, {cmp['p_value']:.2g}) "
                         f"| {s['batch']['param_shift_mean']:.3g} / {s['request']['param_shift_mean']:.3g} "
                         f"| {s['batch']['ms_per_user']:.2f} / {s['request']['ms_per_user']:.2f} |")
    if any("grid" in r for r in results):
        lines += ["", "| checkpoint | scope | valid NDCG@10 per step (none first) | step chosen on validation "
                  "| its test NDCG@10 |", "|---|---|---|---|---|"]
        for r in results:
            for scope, g in r.get("grid", {}).items():
                cells = ", ".join(f"{row['lr'] if row['lr'] is not None else 'none'}: {row['ndcg@10']:.4f}"
                                  for row in g["valid_rows"])
                chosen = g["chosen"]["lr"]
                lines.append(f"| {r['dataset']} seed {r['seed']} | {scope} | {cells} | "
                             f"{'none' if chosen is None else f'{chosen:g}'} | {g['test']['ndcg@10']:.4f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", type=Path, nargs="+", required=True, help="run folders or checkpoint files")
    parser.add_argument("--no-grid", action="store_true", help="only the stored step size (no validation grid)")
    parser.add_argument("--batch-size", type=int, default=None, help="users per batch step (default: the checkpoint's)")
    parser.add_argument("--lr", type=float, default=None,
                        help="step size of the 'stored' rows instead of the checkpoint's (for reading: not chosen on "
                             "validation)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's choice)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    keep_freed_memory()
    flush_denormals()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [compare_checkpoint(path, grid=not args.no_grid, batch_size=args.batch_size, lr=args.lr)
               for path in args.checkpoints]
    report = {"command": " ".join(["python", Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "results": results}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(to_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
