"""Seconds per optimiser step by training batch size, on ML-1M's windows (length 200).

    python benchmarks/step_time.py [--model t2arec] [--sizes 16,32,64,128] [--data ../shared/data/ml-1m.inter]
                                   [--state RUN/train_state.pt] [--keep-denormals] [--set model.chunk_size=64 ...]
                                   [--profile 25]

Prints, per batch size, the median step time over 5 steps after 3 warm-up steps, and the pass over
all windows that it implies (windows / batch x step). ``--state`` starts from the weights and Adam
moments of a training in progress (a run folder's train_state.pt, made with the same model and data)
instead of a fresh model: late in training some of them are subnormal floats, and
``--keep-denormals`` times the steps without flushing those to zero (the behaviour before the fix).
``--set`` applies config overrides (``section.key=value``) to the model timed. ``--profile N`` then
prints PyTorch's profiler table (the N operators with the most self CPU time) over 3 more steps.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import make_model, median_seconds, ml1m  # noqa: E402

from t2arec.data.batching import training_windows  # noqa: E402
from t2arec.runtime import flush_denormals, keep_freed_memory  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="t2arec")
    parser.add_argument("--sizes", default="16,32,64,128")
    parser.add_argument("--data", default="../shared/data/ml-1m.inter")
    parser.add_argument("--max-len", type=int, default=200)
    parser.add_argument("--state", type=Path, default=None, help="a run's train_state.pt to start from")
    parser.add_argument("--keep-denormals", action="store_true", help="do not flush subnormal floats to zero")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="config overrides")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="print the profiler's N operators with the most self CPU time over 3 more steps")
    args = parser.parse_args()
    keep_freed_memory()
    if not args.keep_denormals:
        flush_denormals()
    state = torch.load(args.state, map_location="cpu", weights_only=False) if args.state else None
    data = ml1m(args.data)
    windows = training_windows(data, args.max_len, args.max_len)
    print(f"{len(windows)} windows of length {args.max_len}")
    for size in (int(s) for s in args.sizes.split(",")):
        model, cfg = make_model(args.model, data, args.max_len, args.set)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        rng = np.random.default_rng(0)
        model.train()
        steps = 3 + 5 + 3  # warm-up, timed, profiled
        batches = iter([windows.batch(rng.choice(len(windows), size, replace=False)) for _ in range(steps)])

        def step() -> None:
            losses = model.training_losses(next(batches))
            optimizer.zero_grad()
            losses["total"].backward()
            optimizer.step()

        seconds = median_seconds(step, repeats=5, warmup=3)
        print(f"batch {size}: {seconds:.3f} s per step, {seconds * len(windows) / size:.1f} s per pass", flush=True)
        if args.profile:
            print_profile(step, args.profile)


def print_profile(step: Callable[[], None], rows: int) -> None:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(3):
            step()
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows), flush=True)


if __name__ == "__main__":
    main()
