"""The training loop: shuffled windows, Adam, validation NDCG@10 after each epoch, early stopping.

The best weights are kept in memory; writing them is the caller's job (``pipeline.run``).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from t2arec.align import AlignConfig
from t2arec.config import TrainConfig
from t2arec.data.batching import Examples
from t2arec.evaluate import evaluate
from t2arec.models.base import SequentialRecommender


@dataclass
class TrainResult:
    best_epoch: int
    best_valid: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    train_seconds: float = 0.0


def run_epoch(model: SequentialRecommender, windows: Examples, optimizer: torch.optim.Optimizer,
              cfg: TrainConfig, rng: np.random.Generator, device: torch.device | str) -> dict[str, float]:
    """One pass over all windows in a random order; returns the mean of each loss."""
    model.train()
    order = rng.permutation(len(windows))
    sums: dict[str, float] = {}
    batches = 0
    for begin in range(0, len(order), cfg.batch_size):
        batch = windows.batch(order[begin : begin + cfg.batch_size]).to(device)
        losses = model.training_losses(batch)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach())
        batches += 1
    return {name: total / max(batches, 1) for name, total in sums.items()}


def train(model: SequentialRecommender, windows: Examples, valid: Examples, cfg: TrainConfig,
          align: AlignConfig, seed: int, device: torch.device | str = "cpu",
          progress: bool = True) -> TrainResult:
    """Train until ``cfg.epochs`` or ``cfg.patience`` epochs without a better validation NDCG@10;
    leave the best weights in ``model``."""
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    result = TrainResult(best_epoch=0, best_valid={})
    best_score, best_state, waited = -1.0, copy.deepcopy(model.state_dict()), 0
    start = time.perf_counter()
    bar = tqdm(range(1, cfg.epochs + 1), desc="train", disable=not progress, unit="epoch")
    for epoch in bar:
        epoch_start = time.perf_counter()
        losses = run_epoch(model, windows, optimizer, cfg, rng, device)
        valid_align = align if cfg.validate_aligned else None
        metrics = evaluate(model, valid, valid_align, batch_size=align.batch_size, device=device).metrics
        row = {"epoch": epoch, **{f"loss_{k}": v for k, v in losses.items()},
               **{f"valid_{k}": v for k, v in metrics.items()}, "seconds": time.perf_counter() - epoch_start}
        result.history.append(row)
        score = metrics["ndcg@10"]
        if score > best_score:
            best_score, best_state, waited = score, copy.deepcopy(model.state_dict()), 0
            result.best_epoch, result.best_valid = epoch, metrics
        else:
            waited += 1
        bar.set_postfix(loss=f"{losses['total']:.4f}", ndcg=f"{score:.4f}", best=f"{best_score:.4f}@{result.best_epoch}")
        if waited >= cfg.patience:
            break
    model.load_state_dict(best_state)
    result.train_seconds = time.perf_counter() - start
    return result
