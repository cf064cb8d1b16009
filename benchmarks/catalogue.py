"""A catalogue of a million items (issue 11): evaluation memory and time at batch 4096, and the
latency of serving one user, as one JSON object.

    OMP_NUM_THREADS=1 python benchmarks/catalogue.py --out docs/performance/catalogue.json

The model is T2ARec with its default config and random weights (the cost does not depend on the
weights) over ``--items`` items; the inputs are random histories of ``--max-len`` items with random
gaps. Each part runs in a fresh Python process, so its peak resident set (``ru_maxrss``) is its own:

* ``evaluate`` / ``evaluate_aligned``: ``t2arec.evaluate.evaluate`` of ``--examples`` examples at
  ``--batch-size``, without and with the test-time step; seconds and peak resident memory, and the
  resident memory before evaluating (the model and the inputs).
* ``serve``: ``Recommender.recommend`` for one user (k = 10) ``--requests`` times, without and with
  the step: p50 and p99 milliseconds after ``--warmup`` untimed requests, and the peak memory.

The command line's process settings (``keep_freed_memory``, ``flush_denormals``) are applied in
every part, as ``t2arec evaluate`` and ``t2arec serve`` apply them.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from t2arec.config import RunConfig
from t2arec.data.batching import Examples
from t2arec.evaluate import evaluate
from t2arec.models.t2arec import T2ARec, T2ARecConfig
from t2arec.runtime import flush_denormals, keep_freed_memory
from t2arec.scoring import DEFAULT_MAX_BLOCK, chunk_size
from t2arec.serve import History, Recommender

PARTS = ("evaluate", "evaluate_aligned", "serve")
GIB = 2**30


def rss_gib() -> tuple[float, float]:
    """(current, peak) resident set of this process in GiB."""
    current = 0.0
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) * 1024 / GIB
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux: KiB


def random_model(items: int, max_len: int) -> tuple[T2ARec, RunConfig]:
    cfg = RunConfig()
    cfg.data.max_len = max_len
    torch.manual_seed(cfg.seed)
    model = T2ARec(T2ARecConfig(num_items=items), mu_time=cfg.train.mu_time, mu_state=cfg.train.mu_state)
    return model.eval(), cfg


def random_examples(count: int, items: int, max_len: int, seed: int = 0) -> Examples:
    """Full histories of random items, gaps of about a day, random targets."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(86_400.0, (count, max_len)).astype(np.float32)
    gaps[:, 0] = 0.0  # the window's first interaction
    return Examples(rng.integers(1, items + 1, (count, max_len)), gaps,
                    rng.exponential(86_400.0, count).astype(np.float32), rng.integers(1, items + 1, count),
                    np.arange(count), np.zeros(count))


def evaluate_part(args: argparse.Namespace, aligned: bool) -> dict[str, Any]:
    model, cfg = random_model(args.items, args.max_len)
    examples = random_examples(args.examples, args.items, args.max_len)
    before, _ = rss_gib()
    start = time.perf_counter()
    result = evaluate(model, examples, cfg.align if aligned else None, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    _, peak = rss_gib()
    return {"seconds": seconds, "examples_per_s": args.examples / seconds, "rss_before_gib": before,
            "peak_rss_gib": peak, "aligned_batches": len(result.param_shift)}


def latencies_ms(recommender: Recommender, history: History, now: float, align: bool, requests: int,
                 warmup: int) -> dict[str, float]:
    times = []
    for i in range(warmup + requests):
        start = time.perf_counter()
        recommender.recommend([history], [now], k=10, align=align)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "mean_ms": statistics.fmean(times), "requests": requests}


def serve_part(args: argparse.Namespace) -> dict[str, Any]:
    model, cfg = random_model(args.items, args.max_len)
    recommender = Recommender(model, cfg, [None, *range(1, args.items + 1)])
    example = random_examples(1, args.items, args.max_len, seed=1)
    times = np.cumsum(example.gaps[0].astype(np.float64)) + 1.6e9
    history = History(example.items[0].tolist(), times.tolist())
    now = float(times[-1] + example.next_gap[0])
    out = {"plain": latencies_ms(recommender, history, now, False, args.requests, args.warmup),
           "aligned": latencies_ms(recommender, history, now, True, args.requests, args.warmup)}
    out["peak_rss_gib"] = rss_gib()[1]
    return out


def run_part(part: str, args: argparse.Namespace) -> dict[str, Any]:
    keep_freed_memory()
    flush_denormals()
    if part == "serve":
        return serve_part(args)
    return evaluate_part(args, aligned=part == "evaluate_aligned")


def options(args: argparse.Namespace) -> list[str]:
    return ["--items", str(args.items), "--examples", str(args.examples), "--batch-size", str(args.batch_size),
            "--max-len", str(args.max_len), "--requests", str(args.requests), "--warmup", str(args.warmup)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--examples", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--part", choices=PARTS, help="run one part in this process (the parent runs each part so)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    if args.part:
        print(json.dumps(run_part(args.part, args)))
        return
    figures: dict[str, Any] = {
        "items": args.items, "examples": args.examples, "batch_size": args.batch_size, "max_len": args.max_len,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "items_per_block": chunk_size(args.batch_size, args.items),
        "block_gib": chunk_size(args.batch_size, args.items) * args.batch_size * 4 / GIB,
        # what one (batch, items) float32 score matrix, as before blocks, would take on its own
        "full_score_matrix_gib": args.batch_size * args.items * 4 / GIB,
        "max_block_values": DEFAULT_MAX_BLOCK,
    }
    for part in PARTS:
        done = subprocess.run([sys.executable, __file__, "--part", part, *options(args)], check=True,
                              capture_output=True, text=True)
        figures[part] = json.loads(done.stdout.strip().splitlines()[-1])
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
