"""Run `t2arec run` for several seeds and print a Markdown table of mean and standard deviation.

    python benchmarks/seeds.py --data ../shared/data/ml-100k.inter --max-len 50 --seeds 2026 1 2 --out runs/seeds

Extra arguments are passed on as config overrides (section.key=value). Finished seeds are reused
from ``OUT/seed-N/results.json``, so an interrupted run can be resumed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from t2arec.config import RunConfig, apply_overrides, validate
from t2arec.pipeline import run

KEYS = ("recall@10", "mrr@10", "ndcg@10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--seeds", type=int, nargs="+", default=[2026, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/seeds"))
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
        rows.append(results)
        print(f"seed {seed}: best epoch {results['best_epoch']}, step {results['alignment']['lr']:g}, "
              f"valid {results['valid']['ndcg@10']:.4f}, test {results['test']['ndcg@10']:.4f}, "
              f"test_no_tta {results['test_no_tta']['ndcg@10']:.4f}", flush=True)

    print(f"\n{len(rows)} seeds ({', '.join(map(str, args.seeds))}), mean ± std\n")
    print("| split | " + " | ".join(KEYS) + " |")
    print("|---|" + "---|" * len(KEYS))
    for split in ("valid_no_tta", "valid", "test_no_tta", "test"):
        cells = []
        for key in KEYS:
            values = np.array([r[split][key] for r in rows])
            cells.append(f"{values.mean():.4f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.4f}")
        print(f"| {split} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
