"""How much history a training target sees, under our windows and under RecBole's every-prefix training.

    python benchmarks/context.py --data ../shared/data/ml-1m.inter --max-len 200 --strides 200 40

Prepares the data as every command does (10-core by default) and prints one JSON object: the number
of training targets; per stride, the windows, the tokens a pass computes (windows x max length,
padding included) and the mean context of a target (the items before it in its window); and the same
two figures for every-prefix training, where each target is its own sequence of its last ``max_len``
items (RecBole's augmentation, which papers of this field use). A per-position model costs about the
same per token either way, so the token ratio is what an every-prefix epoch costs against one pass.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from t2arec.config import RunConfig
from t2arec.data.batching import training_windows
from t2arec.data.types import SequenceData
from t2arec.pipeline import load_data


def window_context(data: SequenceData, max_len: int, stride: int) -> dict:
    """Windows of ``training_windows``: their count, tokens and the mean context of a target."""
    windows = training_windows(data, max_len, stride)
    real_inputs = np.cumsum(windows.items > 0, axis=1)  # items up to and including each position
    is_target = windows.targets > 0
    return {
        "windows": int(len(windows.items)),
        "tokens": int(windows.items.size),
        "targets": int(is_target.sum()),
        "mean_context": float(real_inputs[is_target].mean()),
    }


def prefix_context(data: SequenceData, max_len: int) -> dict:
    """Every-prefix training: target t of a training part (t >= 1) sees its min(t, max_len) predecessors."""
    contexts = [np.minimum(np.arange(1, len(items) - 2), max_len) for items in data.items]
    context = np.concatenate(contexts)
    # users with more targets than one window holds: the ones whose windows differ from their prefixes
    beyond = sum(len(c) for c in contexts if len(c) > max_len)
    return {"sequences": int(context.size), "tokens": int(context.sum()), "mean_context": float(context.mean()),
            "share_of_targets_in_longer_histories": beyond / max(int(context.size), 1)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="a file, archive or dataset name, as for t2arec run")
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--min-count", type=int, default=10)
    parser.add_argument("--strides", type=int, nargs="+", default=None,
                        help="targets trained per window (default: max length, non-overlapping windows)")
    args = parser.parse_args(argv)
    cfg = RunConfig()
    cfg.data.path, cfg.data.min_count = args.data, args.min_count
    data = load_data(cfg)
    prefix = prefix_context(data, args.max_len)
    report: dict = {"data": args.data, "max_len": args.max_len, "min_count": args.min_count,
                    "targets": prefix["sequences"], "every_prefix": prefix, "strides": {}}
    for stride in args.strides or [args.max_len]:
        windows = window_context(data, args.max_len, stride)
        windows["prefix_tokens_per_window_token"] = prefix["tokens"] / windows["tokens"]
        report["strides"][str(stride)] = windows
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
