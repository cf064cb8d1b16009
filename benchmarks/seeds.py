"""Run `t2arec run` for several seeds and print a Markdown table of mean and standard deviation.

    python benchmarks/seeds.py --data ../shared/data/ml-100k.inter --max-len 50 --seeds 2026 1 2 --out runs/seeds

Extra arguments are passed on as config overrides (section.key=value). Finished seeds are reused
from ``OUT/seed-N/results.json``, so an interrupted run can be resumed.

With ``--adam-grid 1e-4 3e-4 1e-3`` each seed's checkpoint is also evaluated with a one-step Adam
alignment whose learning rate is chosen on the validation split from that grid, or no step when no
gain is significant (rows ``valid_adam``/``test_adam``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from t2arec.config import RunConfig, apply_overrides, validate
from t2arec.data.batching import evaluation_examples
from t2arec.evaluate import evaluate, select_alignment_lr
from t2arec.pipeline import load_data, load_model, remap_items, run

KEYS = ("recall@10", "mrr@10", "ndcg@10")


def adam_alignment(run_dir: Path, grid: list[float]) -> dict:
    """Validation-chosen one-step Adam alignment on a finished run's checkpoint."""
    model, cfg, payload = load_model(run_dir / "checkpoint")
    data = remap_items(load_data(cfg), payload["item_ids"])
    valid = evaluation_examples(data, "valid", cfg.data.max_len)
    test = evaluation_examples(data, "test", cfg.data.max_len)
    # enabled=True: the checkpoint's own (SGD) choice may have been "no step"; Adam gets its own choice
    adam = dataclasses.replace(cfg.align, optimizer="adam", lr_grid=tuple(grid), enabled=True)
    choice = select_alignment_lr(model, valid, adam)
    chosen = choice.config(adam)  # alignment off when no Adam step was significant
    best_valid = next(row for row in choice.rows if row["lr"] == choice.lr)
    print(f"  adam on validation from {grid}: {choice.reason}")
    return {"valid_adam": {k: best_valid[k] for k in KEYS},
            "test_adam": evaluate(model, test, chosen, batch_size=chosen.batch_size).metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--seeds", type=int, nargs="+", default=[2026, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/seeds"))
    parser.add_argument("--adam-grid", type=float, nargs="*", default=[])
    args, overrides = parser.parse_known_args()

    rows = []
    for seed in args.seeds:
        out = args.out / f"seed-{seed}"
        if (out / "results.json").exists():
            results = json.loads((out / "results.json").read_text())
        else:
            cfg = RunConfig()
            apply_overrides(cfg, [f"seed={seed}", f"data.max_len={args.max_len}", *overrides])
            if args.data:
                cfg.data.path = args.data
            validate(cfg)
            results = run(cfg, out, progress=False)
        if args.adam_grid:
            results.update(adam_alignment(out, args.adam_grid))
        rows.append(results)
        step = results["alignment"]["lr"]
        print(f"seed {seed}: best epoch {results['best_epoch']}, step {'none' if step is None else f'{step:g}'}, "
              f"valid {results['valid']['ndcg@10']:.4f}, test {results['test']['ndcg@10']:.4f}, "
              f"test_no_tta {results['test_no_tta']['ndcg@10']:.4f}", flush=True)

    print(f"\n{len(rows)} seeds ({', '.join(map(str, args.seeds))}), mean ± std\n")
    print("| split | " + " | ".join(KEYS) + " |")
    print("|---|" + "---|" * len(KEYS))
    splits = ["valid_no_tta", "valid", "test_no_tta", "test"] + (["valid_adam", "test_adam"] if args.adam_grid else [])
    for split in splits:
        cells = []
        for key in KEYS:
            values = np.array([r[split][key] for r in rows])
            cells.append(f"{values.mean():.4f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.4f}")
        print(f"| {split} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
