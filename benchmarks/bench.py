"""Performance figures of t2arec as one JSON object (issues 4 and 10): training seconds per epoch,
test-time iterations per second at batch 4096, peak memory, and the work per test iteration against
the machine's measured matmul rate.

    python benchmarks/bench.py --out docs/bench.json

Datasets: ML-100K from ``--ml100k`` (max length 50), MovieLens-1M from ``--ml1m`` (max length 200)
and a synthetic set shaped like ML-1M (6,040 users, 3,706 items, about 1M interactions, max length
200). ``epoch_s_ml1m`` is, for every model, the seconds of one pass over all of ML-1M's training
targets (one epoch of non-overlapping windows, the default batch of 32 windows) after a warm-up of
a few steps; ``--epoch-only`` times just these passes (about 12 minutes).
Every other timing is the median of ``--repeats`` runs after a warm-up. Peak memory is the
process's peak resident set right after the ML-1M-shaped T2ARec training epochs, which run first
(nothing larger has run before them).

Test-time alignment per request (issue 12): ``tta_request_it_s`` is ``tta_it_s`` with
``align.scope=request`` (every one of the 4,096 users its own request and its own step);
``served_ms`` is the latency of one single-user request through ``Recommender.recommend_encoded``
(in process, k = 10, aligned, both scopes: p50/p99 over ``--latency-users`` test users after a
warm-up). ``--only-scope`` computes just these (and ``tta_it_s`` for the ratio), a few minutes:

    python benchmarks/bench.py --only-scope --threads 1 --out docs/performance/scope.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from t2arec.align import score_batch_scoped
from t2arec.config import RunConfig, apply_overrides
from t2arec.data.batching import evaluation_examples, training_windows
from t2arec.data.prepare import prepare
from t2arec.data.readers import read_interactions
from t2arec.data.synthetic import make_synthetic
from t2arec.data.types import SequenceData
from t2arec.evaluate import target_ranks
from t2arec.experiments.throughput import full_batch
from t2arec.models import MODEL_NAMES, build_model
from t2arec.models.base import SeqBatch, SequentialRecommender
from t2arec.runtime import flush_denormals, keep_freed_memory
from t2arec.train import run_epoch


def median_seconds(job: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        job()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        job()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """The machine's float32 matmul rate: 2 n^3 flops per n x n product."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / median_seconds(lambda: a @ b, repeats) / 1e9


def stream_gb_s(n: int = 50_000_000, repeats: int = 5) -> float:
    """The machine's memory rate: bytes read and written per second by an elementwise product of
    ``n`` float32 values (4 n read + 4 n written), far larger than any cache."""
    x = torch.randn(n)
    return 8 * n / median_seconds(lambda: x * 2.0, repeats) / 1e9


def ml1m_like() -> SequenceData:
    log = make_synthetic(num_users=6040, num_items=3706, mean_length=165, shift=1.0, seed=0)
    return prepare(log, name="ml1m-like")


def ml100k(path: str) -> SequenceData:
    return prepare(read_interactions(path), name="ml-100k")


def ml1m(path: str) -> SequenceData:
    return prepare(read_interactions(path), name="ml-1m")


def make_model(name: str, data: SequenceData, max_len: int, overrides: list[str] = ()) -> tuple[SequentialRecommender, RunConfig]:
    cfg = RunConfig()
    apply_overrides(cfg, [f"model_name={name}", f"data.max_len={max_len}", *overrides])
    torch.manual_seed(cfg.seed)
    return build_model(cfg, data.num_items), cfg


def epoch_seconds(name: str, data: SequenceData, max_len: int, repeats: int) -> float:
    model, cfg = make_model(name, data, max_len)
    windows = training_windows(data, max_len, cfg.train.window_stride(max_len))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    rng = np.random.default_rng(0)
    return median_seconds(lambda: run_epoch(model, windows, optimizer, cfg.train, rng, "cpu"), repeats)


def target_pass_seconds(name: str, data: SequenceData, max_len: int, warmup_steps: int = 3) -> float:
    """One pass over every training target in non-overlapping windows (one window per max_len
    targets, each window once), after ``warmup_steps`` untimed steps."""
    model, cfg = make_model(name, data, max_len, ["train.stride=0", "train.stride_fraction=1", "train.window_repeats=1"])
    windows = training_windows(data, max_len, max_len)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    warm = dataclasses.replace(windows, **{f: getattr(windows, f)[: warmup_steps * cfg.train.batch_size]
                                          for f in ("items", "gaps", "next_gap", "targets", "users", "target_times")})
    run_epoch(model, warm, optimizer, cfg.train, np.random.default_rng(0), "cpu")
    start = time.perf_counter()
    run_epoch(model, windows, optimizer, cfg.train, np.random.default_rng(0), "cpu")
    return time.perf_counter() - start


def test_iteration(model: SequentialRecommender, batch: SeqBatch, align) -> None:  # noqa: ANN001
    scores, _ = score_batch_scoped(model, batch, align)  # align.scope request: every user its own step
    target_ranks(scores, batch.targets)


def test_it_s(name: str, data: SequenceData, max_len: int, batch_size: int, repeats: int, aligned: bool,
              overrides: list[str] = ()) -> float:
    model, cfg = make_model(name, data, max_len, list(overrides))
    model.eval()
    batch = full_batch(evaluation_examples(data, "test", max_len), batch_size)
    align = cfg.align if aligned else None
    return 1.0 / median_seconds(lambda: test_iteration(model, batch, align), repeats)


def served_ms(data: SequenceData, max_len: int, users: int, scope: str, warmup: int = 5) -> dict[str, float]:
    """Latency of one single-user aligned request in process (``Recommender.recommend_encoded``, k = 10),
    ms: p50, p99 and mean over ``users`` test users, each sent alone."""
    from t2arec.serve.recommender import EncodedUser, Recommender

    model, cfg = make_model("t2arec", data, max_len, [f"align.scope={scope}"])
    recommender = Recommender(model, cfg, [None, *range(1, data.num_items + 1)])
    people = [EncodedUser(items[:-1], times[:-1], float(times[-1]), 0)
              for items, times in zip(data.items[:users], data.times[:users])]
    assert recommender.aligns and recommender.scope == scope
    for user in people[:warmup]:
        recommender.recommend_encoded([user], 10)
    ms = []
    for user in people:
        start = time.perf_counter()
        recommender.recommend_encoded([user], 10)
        ms.append((time.perf_counter() - start) * 1000)
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "mean": float(np.mean(ms)),
            "users": len(ms)}


def scope_figures(big: SequenceData, batch_size: int, repeats: int, latency_users: int) -> dict[str, Any]:
    """Aligned throughput in both scopes on the ML-1M-shaped set and single-user served latency."""
    figures: dict[str, Any] = {}
    figures["tta_it_s"] = test_it_s("t2arec", big, 200, batch_size, repeats, True)
    figures["tta_request_it_s"] = test_it_s("t2arec", big, 200, batch_size, repeats, True, ["align.scope=request"])
    figures["tta_request_over_tta"] = figures["tta_request_it_s"] / figures["tta_it_s"]
    figures["served_ms"] = {scope: served_ms(big, 200, latency_users, scope) for scope in ("request", "batch")}
    return figures


class _Unattributed:
    """A stand-in for FlopCounterMode's module tracker: every count goes to the "Global" total."""

    parents = {"Global"}

    def __enter__(self) -> "_Unattributed":
        return self

    def __exit__(self, *args: object) -> None:
        return None


def flops_per_iteration(name: str, data: SequenceData, max_len: int, batch_size: int, aligned: bool) -> int:
    """Floating-point operations of one test iteration as counted by PyTorch (matmuls, convolutions)."""
    model, cfg = make_model(name, data, max_len)
    model.eval()
    batch = full_batch(evaluation_examples(data, "test", max_len), batch_size)
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _Unattributed()  # its per-module hooks fail on tensors made under no_grad
    with counter:
        test_iteration(model, batch, cfg.align if aligned else None)
    return int(counter.get_total_flops())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ml100k", default="../shared/data/ml-100k.inter")
    parser.add_argument("--ml1m", default="../shared/data/ml-1m.inter")
    parser.add_argument("--epoch-models", nargs="*", default=list(MODEL_NAMES),
                        help="models whose pass over ML-1M's training targets is timed (epoch_s_ml1m)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure (median)")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--slow", action="store_true", help="T2ARec without its inference shortcuts (before/after)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's choice)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--tta-only", action="store_true",
                        help="only T2ARec's test iterations with and without alignment (tta_it_s, no_tta_it_s)")
    parser.add_argument("--only-scope", action="store_true",
                        help="only the figures of both alignment scopes (tta_it_s, tta_request_it_s, served_ms)")
    parser.add_argument("--epoch-only", action="store_true",
                        help="only epoch_s_ml1m, the pass over ML-1M's training targets of each --epoch-models")
    parser.add_argument("--latency-users", type=int, default=200, help="single-user requests timed for served_ms")
    args = parser.parse_args()
    keep_freed_memory()
    flush_denormals()
    if args.threads:
        torch.set_num_threads(args.threads)
    slow = ["model.fast_inference=false", "model.use_item_table=false"] if args.slow else []
    figures: dict[str, Any] = {"machine": {"cpu": platform.processor() or platform.machine(),
                                           "threads": torch.get_num_threads(), "torch": torch.__version__},
                               "repeats": args.repeats, "batch_size": args.batch_size, "slow_paths": args.slow}

    if args.epoch_only:
        movielens = ml1m(args.ml1m)
        figures["epoch_s_ml1m"] = {name: target_pass_seconds(name, movielens, 200) for name in args.epoch_models}
        _report(figures, args.out)
        return
    big = ml1m_like()
    figures["ml1m_like"] = {"users": big.num_users, "items": big.num_items, "interactions": big.report.interactions}
    if args.tta_only or args.only_scope:
        if args.tta_only:
            for key in ("tta_it_s", "no_tta_it_s"):
                figures[key] = test_it_s("t2arec", big, 200, args.batch_size, args.repeats, key == "tta_it_s", slow)
            figures["tta_over_no_tta"] = figures["tta_it_s"] / figures["no_tta_it_s"]
        if args.only_scope:
            figures |= scope_figures(big, args.batch_size, args.repeats, args.latency_users)
        _report(figures, args.out)
        return
    figures["epoch_s_ml1m_like"] = epoch_seconds("t2arec", big, 200, 1)
    figures["train_peak_rss_mb"] = peak_rss_mb()
    for name, key in (("t2arec", "tta_it_s"), ("t2arec", "no_tta_it_s"), ("sasrec", "sasrec_it_s"),
                      ("mamba4rec", "mamba4rec_it_s")):
        extra = slow if name == "t2arec" else []
        figures[key] = test_it_s(name, big, 200, args.batch_size, args.repeats, key == "tta_it_s", extra)
    figures["tta_over_no_tta"] = figures["tta_it_s"] / figures["no_tta_it_s"]
    figures["tta_over_sasrec"] = figures["tta_it_s"] / figures["sasrec_it_s"]
    figures |= {k: v for k, v in scope_figures(big, args.batch_size, args.repeats, 200).items() if k != "tta_it_s"}
    figures["flops_per_test_iteration"] = flops_per_iteration("t2arec", big, 200, args.batch_size, True)
    figures["flops_per_test_iteration_no_tta"] = flops_per_iteration("t2arec", big, 200, args.batch_size, False)

    if args.epoch_models:
        movielens = ml1m(args.ml1m)
        figures["epoch_s_ml1m"] = {name: target_pass_seconds(name, movielens, 200) for name in args.epoch_models}
    small = ml100k(args.ml100k)
    figures["epoch_s_ml100k"] = epoch_seconds("t2arec", small, 50, args.repeats)
    figures["sasrec_epoch_s_ml100k"] = epoch_seconds("sasrec", small, 50, args.repeats)
    figures["matmul_gflops"] = matmul_gflops()
    figures["stream_gb_s"] = stream_gb_s()
    # the rate if every counted flop ran at the matmul rate and nothing else cost anything
    figures["tta_floor_it_s"] = figures["matmul_gflops"] * 1e9 / figures["flops_per_test_iteration"]
    _report(figures, args.out)


def _report(figures: dict[str, Any], out: Path | None) -> None:
    """Print the figures as JSON, and write them to ``out`` too when given."""
    text = json.dumps(figures, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n")


if __name__ == "__main__":
    main()
