"""Metrics with T2ARec's fast paths equal those without them (issue 4), on a trained checkpoint.

    python benchmarks/fast_paths_equal.py --checkpoint runs/ml100k/checkpoint

Runs the whole evaluation twice, once with every shortcut on (last position only, item table,
chunked final state) and once with all of them off (full per-position outputs, as before issue 4):
the test-time step size chosen on validation (or none), the validation NDCG@10 of every candidate
step, the test metrics with the best grid step (forced, so that the aligned paths are compared) and
without, every test rank, and the largest score difference.
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json

import numpy as np
import torch

from t2arec.align import score_batch
from t2arec.data.batching import evaluation_examples
from t2arec.evaluate import evaluate, select_alignment_lr
from t2arec.pipeline import load_data, load_model, remap_items


def without_shortcuts(model: torch.nn.Module) -> torch.nn.Module:
    slow = copy.deepcopy(model)  # the copied config object is shared by every copied block
    slow.cfg.fast_inference = False
    slow.cfg.use_item_table = False
    return slow


def full_evaluation(model, valid, test, align) -> dict:  # noqa: ANN001
    """The step choice on validation, then test with the best grid step forced (even when it was not
    significant, so that the aligned paths are compared) and without a step."""
    choice = select_alignment_lr(model, valid, align)
    forced = dataclasses.replace(align, lr=choice.candidate, enabled=True)
    aligned = evaluate(model, test, forced, batch_size=align.batch_size)
    plain = evaluate(model, test, None, batch_size=align.batch_size)
    return {"lr": choice.candidate, "lr_chosen": choice.lr,
            "valid_ndcg_per_lr": {str(row["lr"]): row["ndcg@10"] for row in choice.rows},
            "test": aligned.metrics, "test_no_tta": plain.metrics, "ranks": aligned.ranks, "ranks_no_tta": plain.ranks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    args = parser.parse_args()
    fast, cfg, payload = load_model(args.checkpoint)
    if not hasattr(fast.cfg, "fast_inference"):
        raise SystemExit(f"{args.checkpoint}: a {cfg.model_name} model has no fast paths to compare")
    fast.cfg.fast_inference, fast.cfg.use_item_table = True, True
    slow = without_shortcuts(fast)
    data = remap_items(load_data(cfg), payload["item_ids"])
    valid = evaluation_examples(data, "valid", cfg.data.max_len)
    test = evaluation_examples(data, "test", cfg.data.max_len)
    align = dataclasses.replace(cfg.align, enabled=True)  # the checkpoint may hold "no step chosen"
    on, off = full_evaluation(fast, valid, test, align), full_evaluation(slow, valid, test, align)
    batch = test.batch(slice(0, cfg.align.batch_size))
    chosen = dataclasses.replace(align, lr=on["lr"])
    fast.eval(), slow.eval()
    score_gap = float((score_batch(fast, batch, chosen)[0] - score_batch(slow, batch, chosen)[0]).abs().max())
    report = {
        "checkpoint": args.checkpoint,
        "lr_chosen": {"fast": on["lr_chosen"], "slow": off["lr_chosen"]},  # None: no significant step
        "lr_compared": {"fast": on["lr"], "slow": off["lr"]},
        "valid_ndcg_max_abs_diff": max(abs(on["valid_ndcg_per_lr"][lr] - off["valid_ndcg_per_lr"][lr])
                                       for lr in on["valid_ndcg_per_lr"]) if on["valid_ndcg_per_lr"] else 0.0,
        "test_fast": on["test"], "test_slow": off["test"],
        "test_no_tta_fast": on["test_no_tta"], "test_no_tta_slow": off["test_no_tta"],
        "test_metric_max_abs_diff": max(abs(on[key][m] - off[key][m]) for key in ("test", "test_no_tta")
                                        for m in on[key]),
        "ranks_equal_fraction": float(np.mean(on["ranks"] == off["ranks"])),
        "ranks_no_tta_equal_fraction": float(np.mean(on["ranks_no_tta"] == off["ranks_no_tta"])),
        "first_batch_aligned_score_max_abs_diff": score_gap,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
