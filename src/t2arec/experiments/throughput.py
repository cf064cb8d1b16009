"""Table 4: test-time throughput, iterations per second, one iteration = one batch of test users
(default 4096, the paper's) scored over all items, including the alignment step when it is on.

The dataset's test users are repeated to fill the batch when there are fewer. Weights do not change
the cost, so models are freshly initialised (and nothing is trained).
Each figure is the median over ``iterations`` timed iterations after ``warmup`` untimed ones.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from t2arec.align import AlignConfig, alignment_runs, score_batch_scoped
from t2arec.data.batching import evaluation_examples
from t2arec.evaluate import target_ranks
from t2arec.experiments.report import markdown_table, new_figure, save_figure
from t2arec.experiments.store import Setup, Variant, build_config, write_text
from t2arec.models import build_model
from t2arec.models.base import SeqBatch, SequentialRecommender
from t2arec.pipeline import load_data, resolve_device, seed_everything, write_json


def full_batch(examples, batch_size: int) -> SeqBatch:  # noqa: ANN001
    """``batch_size`` test examples, cycling through the users when there are fewer."""
    rows = np.arange(batch_size) % len(examples)
    return examples.batch(rows)


def iterations_per_second(model: SequentialRecommender, batch: SeqBatch, align: AlignConfig | None,
                          iterations: int, warmup: int) -> dict[str, float]:
    """Median iterations/s of align (optional) + full scoring + ranking of one batch."""
    model.eval()
    seconds = []
    for i in range(warmup + iterations):
        start = time.perf_counter()
        scores, _ = score_batch_scoped(model, batch, align)  # align.scope request: every user its own step
        target_ranks(scores, batch.targets)
        if batch.items.is_cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    return {"it_s": 1.0 / median, "median_seconds": median, "iterations": iterations}


def throughput(setup: Setup, models: list[str], batch_size: int = 4096, iterations: int = 5,
               warmup: int = 1) -> dict[str, Any]:
    """Write throughput.json, throughput.md and throughput.png into ``setup.out``."""
    device = resolve_device(setup.device)
    first = build_config(setup, Variant(models[0]), setup.seeds[0])
    data = load_data(first)
    batch = full_batch(evaluation_examples(data, "test", first.data.max_len), batch_size).to(device)
    rows: dict[str, dict[str, float]] = {}
    for name in tqdm(models, desc="throughput", unit="model", disable=not setup.progress):
        cfg = build_config(setup, Variant(name), setup.seeds[0])
        seed_everything(cfg.seed)
        model = build_model(cfg, data.num_items).to(device)
        if alignment_runs(model, cfg.align):
            align = dataclasses.replace(cfg.align, lr_grid=())
            rows[name] = iterations_per_second(model, batch, align, iterations, warmup)
            rows[f"{name} (no TTA)"] = iterations_per_second(model, batch, None, iterations, warmup)
        else:
            rows[name] = iterations_per_second(model, batch, None, iterations, warmup)
    result = {"batch_size": batch_size, "dataset": data.report.name, "max_len": first.data.max_len,
              "num_items": data.num_items, "device": str(device), "threads": torch.get_num_threads(),
              "rows": rows}
    write_json(setup.out / "throughput.json", result)
    write_text(setup.out / "throughput.md", to_markdown(result))
    plot(result, setup.out / "throughput.png")
    return result


def to_markdown(result: dict[str, Any]) -> str:
    body = [[name, f"{row['it_s']:.2f}", f"{row['median_seconds'] * 1000:.0f}"] for name, row in result["rows"].items()]
    return (f"### Test-time throughput (Table 4)\n\nIterations per second, one iteration = {result['batch_size']} "
            f"test users of {result['dataset']} (max length {result['max_len']}, {result['num_items']} items) "
            f"scored over all items; {result['device']}, {result['threads']} threads; median of "
            f"{next(iter(result['rows'].values()))['iterations']} timed iterations.\n\n"
            + markdown_table(["Model", "it/s", "ms per iteration"], body) + "\n")


def plot(result: dict[str, Any], path) -> None:  # noqa: ANN001
    fig, (ax,) = new_figure(width=6.5, height=3.8)
    names = list(result["rows"])
    ax.barh(names, [result["rows"][n]["it_s"] for n in names], color="tab:blue")
    ax.invert_yaxis()
    ax.set_xlabel(f"iterations per second (batch {result['batch_size']}, higher is better)")
    ax.set_ylabel("model")
    ax.set_title(f"Test-time throughput on {result['dataset']}")
    ax.grid(axis="x", alpha=0.3)
    save_figure(fig, path)
