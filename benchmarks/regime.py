"""The training regime study (issue 10): which stride (targets per window), and how much patience,
each model should train with, judged on the validation split only.

    python benchmarks/regime.py --data ../shared/data/ml-100k.inter --max-len 50 \
        --models t2arec sasrec --fractions 1 0.2 --seeds 2026 1 --out experiments/regime/ml-100k

Every (model, stride fraction, seed) is one ``t2arec run`` with a long patience (``--patience-steps``)
and frequent validation (``--eval-steps``), kept in ``--out/runs`` and reused when the script runs
again. From each run's validation curve the script also replays shorter patiences: where would
training have stopped, and how much of the best validation NDCG@10 would it have kept? It prints
both tables and writes them to ``--out/regime.md`` (test figures are shown for information only;
no choice reads them). ``--subsample-users N`` first writes a copy of the data with N randomly
chosen users (a small log of long histories) into ``--out/data/``, outside the repository's data.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from t2arec.data.readers import read_interactions
from t2arec.data.types import SequenceData
from t2arec.evaluate import metrics_from_ranks, target_ranks
from t2arec.experiments import Setup
from t2arec.experiments.report import markdown_table
from t2arec.experiments.store import Variant, build_config, ensure_runs, write_text
from t2arec.pipeline import load_data
from t2arec.runtime import flush_denormals, keep_freed_memory
from t2arec.train import replay_patience


def subsample(path: Path, users: int, seed: int, out: Path) -> Path:
    """A RecBole atomic copy of ``path`` with ``users`` users drawn at random (all their interactions)."""
    target = out / "data" / f"{path.stem}-{users}users-seed{seed}.inter"
    if target.exists():
        return target
    frame = read_interactions(path).frame
    chosen = np.random.default_rng(seed).permutation(frame["user"].unique().sort().to_numpy())[:users]
    kept = frame.filter(pl.col("user").is_in(chosen.tolist()))
    target.parent.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    lines += [f"{u}\t{i}\t{t:.0f}" for u, i, t in kept.iter_rows()]
    write_text(target, "\n".join(lines) + "\n")
    return target


def most_popular(data: SequenceData) -> dict[str, float]:
    """Validation and test NDCG@10 of ranking every item by its count in the training split, the
    floor a trained model must clear (ties pessimistic, as for the models)."""
    counts = np.bincount(np.concatenate([items[:-2] for items in data.items]), minlength=data.num_items + 1)
    scores = torch.as_tensor(counts[1:], dtype=torch.float64).expand(data.num_users, -1)
    result = {}
    for split, position in (("valid", -2), ("test", -1)):
        targets = torch.as_tensor(np.array([items[position] for items in data.items]))
        result[split] = metrics_from_ranks(target_ranks(scores, targets).numpy())["ndcg@10"]
    return result


def parse_variant(text: str) -> Variant:
    """"bert4rec:train.window_repeats=2,train.stride_fraction=0.2" -> Variant("bert4rec", (...))."""
    model, _, overrides = text.partition(":")
    return Variant(model, tuple(o.strip() for o in overrides.split(",") if o.strip()))


def replay(history: list[dict[str, Any]], patience: int, fraction: float = 0.0) -> tuple[float, int, int | None]:
    """(best validation NDCG@10, its step, the step training stops at) had the patience been ``patience``
    steps, or ``fraction`` of the best validation's step when longer (``train.patience_fraction``).
    The stop is None when that patience would not have run out within the run: the curve after it is
    unknown, and so is what the longer patience would have kept."""
    return replay_patience(history, patience, fraction)


def parse_patience(text: str) -> tuple[int, float]:
    """"2000" -> (2000, 0.0); "2000+0.3" -> (2000, 0.3): steps, and the fraction of the best's step."""
    steps, _, fraction = text.partition("+")
    try:
        return int(steps), float(fraction or 0.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a patience is STEPS or STEPS+FRACTION (e.g. 2000+0.3), got {text!r}")


def fmt(values: list[float], digits: int = 4) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--models", nargs="+", default=["t2arec", "sasrec"])
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.2],
                        help="train.stride_fraction values (targets per window / max length)")
    parser.add_argument("--variants", nargs="*", default=[],
                        help="explicit runs instead of --models x --fractions: MODEL or "
                             "MODEL:section.key=value,section.key=value (e.g. bert4rec:train.window_repeats=2)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2026, 1])
    parser.add_argument("--eval-steps", type=int, default=100)
    parser.add_argument("--patience-steps", type=int, default=5000)
    parser.add_argument("--patience-fraction", type=float, default=0.0,
                        help="train.patience_fraction of the runs (0: a fixed patience, whose replays are exact)")
    parser.add_argument("--patience-grid", type=parse_patience, nargs="+", default=[(500, 0.0), (1000, 0.0), (2000, 0.0), (3000, 0.0), (5000, 0.0)],
                        help="patiences to replay: STEPS, or STEPS+FRACTION to also wait that fraction of the "
                             "best validation's step (train.patience_fraction)")
    parser.add_argument("--subsample-users", type=int, default=0)
    parser.add_argument("--overrides", nargs="*", default=[], help="more section.key=value for every run")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    keep_freed_memory()
    flush_denormals()

    data = subsample(args.data, args.subsample_users, 0, args.out) if args.subsample_users else args.data
    overrides = [f"data.path={data}", f"data.max_len={args.max_len}", f"train.eval_steps={args.eval_steps}",
                 f"train.patience_steps={args.patience_steps}", f"train.patience_fraction={args.patience_fraction:g}",
                 *args.overrides]
    setup = Setup(out=args.out, overrides=overrides, seeds=args.seeds, progress=not args.quiet)
    variants = ([parse_variant(text) for text in args.variants] if args.variants else
                [Variant(m, (f"train.stride_fraction={f:g}",)) for m in args.models for f in args.fractions])
    runs = ensure_runs(setup, variants, "regime")

    rows, replays, profiles = [], [], []
    for variant in variants:
        per_seed = [runs[(variant, s)] for s in args.seeds]
        rows.append([variant.model, " ".join(variant.overrides) or "defaults",
                     f"{per_seed[0]['training_windows']:,}",
                     fmt([r["valid_no_tta"]["ndcg@10"] for r in per_seed]),
                     fmt([r["test_no_tta"]["ndcg@10"] for r in per_seed]),
                     fmt([r["best_step"] for r in per_seed], 0), fmt([r["steps"] for r in per_seed], 0),
                     fmt([r["train_seconds"] for r in per_seed], 0)])
        profiles.append([variant.label, *(fmt([r[split][metric] for r in per_seed])
                                          for split in ("valid_no_tta", "test_no_tta")
                                          for metric in ("recall@10", "mrr@10"))])
        for patience, fraction in args.patience_grid:
            kept = [replay(r["history"], patience, fraction) for r in per_seed]
            label = f"{patience}, or {fraction:g} of the best's step" if fraction else str(patience)
            if any(stop is None for _, _, stop in kept):
                replays.append([variant.label, label, "n/a", "after the run's end"])
                continue
            lost = [r["valid_no_tta"]["ndcg@10"] - k[0] for r, k in zip(per_seed, kept)]
            replays.append([variant.label, label, fmt(lost), fmt([k[2] for k in kept], 0)])
    popular = most_popular(load_data(build_config(setup, variants[0], args.seeds[0])))
    rows.append(["most popular (reference)", "counts in the training split", "-", f"{popular['valid']:.4f}",
                 f"{popular['test']:.4f}", "-", "-", "-"])
    command = "python benchmarks/regime.py " + shlex.join(sys.argv[1:])
    text = (f"### Training regime on `{data.name}` (max length {args.max_len})\n\n```bash\n{command}\n```\n\n"
            f"Validation every {args.eval_steps} steps, patience {args.patience_steps} steps"
            + (f" or {args.patience_fraction:g} of the best's step" if args.patience_fraction else "")
            + "; NDCG@10 without "
            f"test-time alignment, mean ± std over seeds {', '.join(map(str, args.seeds))}.\n\n"
            + markdown_table(["model", "overrides", "windows", "valid NDCG@10", "test NDCG@10",
                              "best step", "steps", "train s"], rows)
            + "\n\nOther patiences replayed on the same validation curves: validation NDCG@10 lost against "
              "the full run, and the step where training would have stopped (n/a: that patience would "
              "have trained past the run's end).\n\n"
            + markdown_table(["run", "patience (steps)", "valid NDCG@10 lost", "stops at step"], replays)
            + "\n\nWhere the hits rank: Recall@10 counts the targets in the top 10, MRR@10 rewards the top "
              "places (two runs with the same NDCG@10 can trade one for the other).\n\n"
            + markdown_table(["run", "valid Recall@10", "valid MRR@10", "test Recall@10", "test MRR@10"], profiles)
            + "\n")
    write_text(args.out / "regime.md", text)
    print(text)


if __name__ == "__main__":
    main()
