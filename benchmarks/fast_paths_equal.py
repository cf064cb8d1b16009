"""Metrics with T2ARec's fast paths equal those without them (issues 4 and 12), on a trained checkpoint.

    python benchmarks/fast_paths_equal.py --checkpoint runs/ml100k/checkpoint
    python benchmarks/fast_paths_equal.py --checkpoint runs/ml1m/checkpoint --compare step

``--compare shortcuts`` (the default) runs the whole evaluation twice, once with every shortcut on
(last position only, item table, chunked final state, the written-out test-time step) and once
with all of them off (full per-position outputs and autograd, as before issue 4): the test-time
step size chosen on validation (or none), the validation NDCG@10 of every candidate step, the test
metrics with the best grid step (forced, so that the aligned paths are compared) and without,
every test rank, and the largest score difference.

``--compare step`` changes only how the test-time step's gradient is computed: written out
(``model.fast_step``, issue 12) against autograd over ``alignment_loss``, everything else as the
checkpoint runs it. It aligns every test batch with both and compares the aligned scores of every
batch, every rank, the metrics, the loss before the step and the parameter shift: one pass over the
test set per path (``--grid`` also compares the step-size choice on validation).
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time

import numpy as np
import torch

from t2arec.align import score_batch
from t2arec.data.batching import evaluation_examples
from t2arec.evaluate import evaluate, metrics_from_ranks, select_alignment_lr, target_ranks
from t2arec.pipeline import load_data, load_model, remap_items
from t2arec.runtime import flush_denormals, keep_freed_memory


def without_shortcuts(model: torch.nn.Module) -> torch.nn.Module:
    slow = copy.deepcopy(model)  # the copied config object is shared by every copied block
    slow.cfg.fast_inference = False
    slow.cfg.use_item_table = False
    slow.cfg.fast_step = False
    return slow


def with_autograd_step(model: torch.nn.Module) -> torch.nn.Module:
    reference = copy.deepcopy(model)
    reference.cfg.fast_step = False
    return reference


def step_comparison(fast: torch.nn.Module, test, align) -> dict:  # noqa: ANN001
    """Every test batch aligned with the written-out step and with autograd's (the same step size)."""
    reference = with_autograd_step(fast)
    fast.eval(), reference.eval()
    ranks: dict[str, list[np.ndarray]] = {"fast": [], "autograd": []}
    stats: dict[str, list[tuple[float, float]]] = {"fast": [], "autograd": []}
    gap, seconds = 0.0, {"fast": 0.0, "autograd": 0.0}
    for start in range(0, len(test), align.batch_size):
        batch = test.batch(slice(start, start + align.batch_size))
        scores = {}
        for name, model in (("fast", fast), ("autograd", reference)):
            began = time.perf_counter()
            scores[name], step = score_batch(model, batch, align)
            seconds[name] += time.perf_counter() - began
            ranks[name].append(target_ranks(scores[name], batch.targets).numpy())
            stats[name].append((step.loss_before, step.param_shift))
        gap = max(gap, float((scores["fast"] - scores["autograd"]).abs().max()))
    fast_ranks, ref_ranks = np.concatenate(ranks["fast"]), np.concatenate(ranks["autograd"])
    fast_metrics, ref_metrics = metrics_from_ranks(fast_ranks), metrics_from_ranks(ref_ranks)
    return {
        "lr": align.lr, "batch_size": align.batch_size, "batches": len(stats["fast"]),
        "test_fast": fast_metrics, "test_autograd": ref_metrics,
        "test_metric_max_abs_diff": max(abs(fast_metrics[m] - ref_metrics[m]) for m in fast_metrics),
        "ranks_equal_fraction": float(np.mean(fast_ranks == ref_ranks)),
        "aligned_score_max_abs_diff": gap,
        "loss_before": {"fast": [s[0] for s in stats["fast"]], "autograd": [s[0] for s in stats["autograd"]]},
        "param_shift": {"fast": [s[1] for s in stats["fast"]], "autograd": [s[1] for s in stats["autograd"]]},
        "seconds_with_scoring": seconds,
    }


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
    parser.add_argument("--compare", choices=("shortcuts", "step"), default="shortcuts")
    parser.add_argument("--lr", type=float, default=None, help="--compare step: this step size (default: the checkpoint's)")
    parser.add_argument("--grid", action="store_true", help="--compare step: also compare the choice on validation")
    args = parser.parse_args()
    keep_freed_memory()
    flush_denormals()
    fast, cfg, payload = load_model(args.checkpoint)
    if not hasattr(fast.cfg, "fast_inference"):
        raise SystemExit(f"{args.checkpoint}: a {cfg.model_name} model has no fast paths to compare")
    fast.cfg.fast_inference, fast.cfg.use_item_table, fast.cfg.fast_step = True, True, True
    data = remap_items(load_data(cfg), payload["item_ids"])
    valid = evaluation_examples(data, "valid", cfg.data.max_len)
    test = evaluation_examples(data, "test", cfg.data.max_len)
    align = dataclasses.replace(cfg.align, enabled=True)  # the checkpoint may hold "no step chosen"
    if args.compare == "step":
        report = {"checkpoint": args.checkpoint, "compare": "step"}
        if args.grid:
            choices = {name: select_alignment_lr(model, valid, align)
                       for name, model in (("fast", fast), ("autograd", with_autograd_step(fast)))}
            report["lr_chosen"] = {name: c.lr for name, c in choices.items()}
            report["valid_ndcg_per_lr"] = {name: {str(r["lr"]): r["ndcg@10"] for r in c.rows} for name, c in choices.items()}
        step_align = dataclasses.replace(align, lr=args.lr if args.lr is not None else align.lr)
        report.update(step_comparison(fast, test, step_align))
        print(json.dumps(report, indent=2))
        return
    slow = without_shortcuts(fast)
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
