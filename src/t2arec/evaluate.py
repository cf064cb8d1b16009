"""Full-ranking evaluation: Recall/MRR/NDCG@K over all items, per time segment, with or without
test-time alignment.

Ranks are pessimistic: an item tied with the target counts as ranked above it, so ties never
favour the target. History items are not masked (RecBole's protocol for sequential models).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from t2arec.align import AlignConfig, alignment_runs, score_batch
from t2arec.data.batching import Examples
from t2arec.models.base import SequentialRecommender


def target_ranks(scores: Tensor, targets: Tensor) -> Tensor:
    """0-based pessimistic rank of each target. scores: (B, N) for items 1..N; targets: (B,) in 1..N.

    A NaN score (a test-time step that diverged) never helps the target: a NaN target ranks last
    and a NaN on another item counts as above the target.
    """
    target_scores = scores.gather(1, (targets - 1)[:, None])
    higher_or_tied = (scores >= target_scores) | scores.isnan()
    ranks = higher_or_tied.sum(dim=1) - 1  # the target itself is not above itself
    return torch.where(target_scores[:, 0].isnan(), scores.shape[1] - 1, ranks)


def metrics_from_ranks(ranks: np.ndarray, ks: tuple[int, ...] = (10,)) -> dict[str, float]:
    """Recall@K (= hit rate with one target), MRR@K and NDCG@K, averaged over examples."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"recall@{k}"] = float(hit.mean()) if len(ranks) else 0.0
        out[f"mrr@{k}"] = float(np.where(hit, 1.0 / (ranks + 1), 0.0).mean()) if len(ranks) else 0.0
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2), 0.0).mean()) if len(ranks) else 0.0
    return out


def time_segments(target_times: np.ndarray, parts: int = 4) -> list[np.ndarray]:
    """Example indices split into ``parts`` equal groups by target timestamp (stable for ties)."""
    order = np.argsort(target_times, kind="stable")
    return [np.sort(chunk) for chunk in np.array_split(order, parts)]


@dataclass
class EvalResult:
    ranks: np.ndarray  # (N,) per example
    metrics: dict[str, float]
    param_shift: list[float] = field(default_factory=list)  # per batch, when aligned
    seconds: float = 0.0

    def segment_metrics(self, segments: list[np.ndarray], ks: tuple[int, ...] = (10,)) -> list[dict[str, float]]:
        return [metrics_from_ranks(self.ranks[idx], ks) for idx in segments]


def evaluate(
    model: SequentialRecommender,
    examples: Examples,
    align: AlignConfig | None = None,
    batch_size: int = 4096,
    ks: tuple[int, ...] = (10,),
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> EvalResult:
    """Rank every example's target among all items; align each batch first when ``align`` is enabled."""
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    ranks, shifts = [], []
    starts = range(0, len(examples), batch_size)
    for begin in tqdm(starts, desc="evaluate", disable=not progress, leave=False):
        batch = examples.batch(slice(begin, begin + batch_size)).to(device)
        scores, stats = score_batch(model, batch, align)
        ranks.append(target_ranks(scores, batch.targets).cpu().numpy())
        if stats is not None:
            shifts.append(stats.param_shift)
    model.train(was_training)
    all_ranks = np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)
    return EvalResult(all_ranks, metrics_from_ranks(all_ranks, ks), shifts, time.perf_counter() - start)


def select_alignment_lr(model: SequentialRecommender, valid: Examples, align: AlignConfig,
                        device: torch.device | str = "cpu") -> tuple[float, list[dict[str, float]]]:
    """Pick the test-time step size with the best validation NDCG@10 from ``align.lr_grid``.

    Only the validation split is used, never test. Ties keep the smaller step.
    Returns the chosen step size and one row per candidate (lr, metrics, mean parameter shift).
    """
    if not align.lr_grid or not alignment_runs(model, align):
        return align.lr, []
    rows, best_lr, best = [], align.lr, -1.0
    for lr in sorted(align.lr_grid):
        result = evaluate(model, valid, dataclasses.replace(align, lr=lr), batch_size=align.batch_size, device=device)
        ndcg = result.metrics["ndcg@10"]
        rows.append({"lr": lr, **result.metrics, "param_shift": float(np.mean(result.param_shift))})
        if ndcg > best:
            best_lr, best = lr, ndcg
    return best_lr, rows
