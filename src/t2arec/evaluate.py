"""Full-ranking evaluation: Recall/MRR/NDCG@K over all items, per time segment, with or without
test-time alignment.

Ranks are pessimistic: an item tied with the target counts as ranked above it, so ties never
favour the target. History items are not masked (RecBole's protocol for sequential models).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from t2arec import distributed
from t2arec.align import AlignConfig, use_scores_scoped
from t2arec.data.batching import Examples
from t2arec.models.base import SequentialRecommender
from t2arec.scoring import ItemScores, chunk_size, item_chunks, row_slices

MIN_COLUMNS = 8  # columns of the first product of target scores (see _first_target_scores)


def target_ranks(scores: Tensor, targets: Tensor) -> Tensor:
    """0-based pessimistic rank of each target. scores: (B, N) for items 1..N; targets: (B,) in 1..N.

    A NaN score (a test-time step that diverged) never helps the target: a NaN target ranks last
    and a NaN on another item counts as above the target.
    """
    target_scores = scores.gather(1, (targets - 1)[:, None])
    higher_or_tied = (scores >= target_scores) | scores.isnan()
    ranks = higher_or_tied.sum(dim=1) - 1  # the target itself is not above itself
    return torch.where(target_scores[:, 0].isnan(), scores.shape[1] - 1, ranks)


def _at_or_above(block: Tensor, threshold: Tensor) -> Tensor:
    """(B,) int64 count per row of the block's scores (B, c) that are >= ``threshold`` (B,) or NaN.

    Compared and counted a row slice at a time, in int32 (``t2arec.scoring.COUNT_VALUES``): the
    temporaries stay small next to the block.
    """
    return torch.cat([((block[rows] >= threshold[rows, None]) | block[rows].isnan()).sum(dim=1, dtype=torch.int32)
                      for rows in row_slices(*block.shape)]).long()


def _first_target_scores(scores: ItemScores, index: Tensor, size: int) -> Tensor:
    """(B,) each row's score of its target (0-based ``index``), from products over the batch's
    distinct targets only (at most ``size`` of them at a time): B x U work, not B x N.

    With every row of the batch in the product, MKL gave each entry the value it has in the full
    product in every measurement except with a single column (a matrix-vector path): the batch's
    targets are padded to at least ``MIN_COLUMNS`` columns for that reason. ``item_ranks`` checks
    every value against the block's anyway.
    """
    distinct, which = torch.unique(index, return_inverse=True)
    padded = distinct.repeat(-(-MIN_COLUMNS // len(distinct))) if len(distinct) < MIN_COLUMNS else distinct
    out = torch.empty(len(index), dtype=scores.dtype, device=index.device)
    for start, stop in item_chunks(len(padded), size):
        rows = ((which >= start) & (which < stop)).nonzero()[:, 0]
        if len(rows):
            out[rows] = scores.columns(padded[start:stop])[rows, which[rows] - start]
    return out


def item_ranks(scores: ItemScores, targets: Tensor, chunk: int | None = None) -> Tensor:
    """``target_ranks`` of the batch's scores, a block of items at a time (``t2arec.scoring``).

    targets: (B,) in 1..N; returns (B,) int64. When one block holds every item (``chunk`` and the
    default both allow N * B up to 2^26 values) this is ``target_ranks`` on that block, the
    computation of before blocks existed. Otherwise no block is larger than (B, chunk):

    1. a first value of each target's score comes from a product over the batch's targets alone;
    2. one pass over the blocks counts, per row, the scores >= that value or NaN, and reads each
       target's score off the block that holds it, the value every other score is compared with;
    3. rows whose two values differ are counted again against the value read in 2, in a second
       pass (with blocks of a thousand items or more it never ran on the trained checkpoints,
       docs/scaling.md).

    So a rank always compares scores of the same block computation, and equals ``target_ranks`` of
    the full product whenever a block's entries equal the full product's, which is what MKL gives
    for blocks of a thousand items or more (docs/scaling.md: measured on random tables and on the
    trained checkpoints).
    """
    num_items = scores.num_items
    size = chunk_size(scores.rows, num_items, chunk)
    if size >= num_items:
        return target_ranks(scores.block(0, num_items), targets)
    index = targets - 1
    first = _first_target_scores(scores, index, size)
    counts = torch.zeros(len(index), dtype=torch.int64, device=index.device)
    exact = torch.full_like(first, math.nan)
    for start, stop in item_chunks(num_items, size):
        block = scores.block(start, stop)
        counts += _at_or_above(block, first)
        rows = ((index >= start) & (index < stop)).nonzero()[:, 0]
        exact[rows] = block[rows, index[rows] - start]
        del block  # before the next block is made: one block at a time
    redo = ~((exact == first) | (exact.isnan() & first.isnan()))
    if bool(redo.any()):
        counts[redo] = 0
        for start, stop in item_chunks(num_items, size):  # the same full-batch blocks, so the same values
            counts[redo] += _at_or_above(scores.block(start, stop)[redo], exact[redo])
    ranks = counts - 1  # the target itself is not above itself
    return torch.where(exact.isnan(), num_items - 1, ranks)


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
    chunk: int | None = None,
) -> EvalResult:
    """Rank every example's target among all items; align each batch first when ``align`` is enabled
    (``align.scope`` "batch": one step per batch; "request": every example its own step, so its rank
    depends on nothing else and ``param_shift`` holds each batch's mean over its examples).

    Items are scored ``chunk`` at a time (None: as many as fit 2^26 scores per block, see
    ``item_ranks``), inside the batch's alignment, so memory is bounded for any catalogue.
    Under torchrun the batches (the same ones as in one process: an alignment step depends on the
    batch) are dealt to the processes in turn, and every process returns the whole result.
    """
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    starts = range(0, len(examples), batch_size)
    done: dict[int, tuple[np.ndarray, float | None]] = {}  # batch number -> (ranks, parameter shift)
    for number in tqdm(distributed.rank_share(len(starts)), desc="evaluate", disable=not progress, leave=False):
        batch = examples.batch(slice(starts[number], starts[number] + batch_size)).to(device)
        rank_block = functools.partial(item_ranks, targets=batch.targets, chunk=chunk)
        # align.scope: one step for the batch, or ("request") one per example: each user its own request
        batch_ranks, stats = use_scores_scoped(model, batch, align, rank_block)
        done[number] = (batch_ranks.cpu().numpy(), stats.param_shift if stats else None)
    model.train(was_training)
    per_batch = distributed.gather_in_order(done, len(starts))
    all_ranks = np.concatenate([r for r, _ in per_batch]) if per_batch else np.zeros(0, dtype=np.int64)
    shifts = [shift for _, shift in per_batch if shift is not None]
    return EvalResult(all_ranks, metrics_from_ranks(all_ranks, ks), shifts, time.perf_counter() - start)


def ndcg_per_user(ranks: np.ndarray, k: int = 10) -> np.ndarray:
    """NDCG@k of each example (one target: 1 / log2(rank + 2) inside the top k, else 0)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2), 0.0)


def sign_test(gain: np.ndarray) -> tuple[float, int, int]:
    """One-sided exact sign test that a paired gain is more often positive than negative.

    ``gain`` holds one paired difference per user (aligned minus unaligned). Users with no change
    carry no information about the direction and are left out (the usual treatment of ties); among
    the others the number helped is Binomial(n, 1/2) when the step helps and hurts equally often.
    Returns (p-value, users helped, users hurt); p = 1 when no user changed.
    """
    from scipy.stats import binomtest

    helped, hurt = int((gain > 0).sum()), int((gain < 0).sum())
    if helped + hurt == 0:
        return 1.0, 0, 0
    return float(binomtest(helped, helped + hurt, 0.5, alternative="greater").pvalue), helped, hurt


def paired_test_over_users(aligned_ranks: np.ndarray, plain_ranks: np.ndarray) -> dict[str, float | int]:
    """Aligned against unaligned on the same users: mean NDCG@10 gain and a two-sided exact sign test
    (users whose NDCG@10 changed; the same test the step choice uses, both directions)."""
    from scipy.stats import binomtest

    gain = ndcg_per_user(aligned_ranks) - ndcg_per_user(plain_ranks)
    helped, hurt = int((gain > 0).sum()), int((gain < 0).sum())
    p_value = float(binomtest(helped, helped + hurt, 0.5).pvalue) if helped + hurt else 1.0
    return {"ndcg_gain": float(gain.mean()) if len(gain) else 0.0, "users_helped": helped, "users_hurt": hurt,
            "p_value": p_value}


SELECTION_TEST = ("one-sided exact sign test on the validation users whose NDCG@10 changed with the step "
                  "(binomial, p = 1/2), Bonferroni-adjusted for the number of grid steps")


@dataclass
class AlignmentChoice:
    """The outcome of ``select_alignment_lr``: which step test uses (``lr``; None = no step) and why.

    ``candidate`` is the step written to the run's config: the chosen one, else the best grid step
    (what ``--align`` forces on a checkpoint whose choice was "no step").
    """

    lr: float | None
    candidate: float
    tested: bool  # a choice was made on validation (False: the config was taken as given)
    reason: str
    rows: list[dict[str, float | int | None]] = field(default_factory=list)  # one per candidate, no step first
    valid_gain: float | None = None  # mean validation NDCG@10 of the best grid step minus no step
    p_value: float | None = None  # the best grid step's sign-test p-value against no step
    p_adjusted: float | None = None  # min(1, p_value * grid size)
    significance: float | None = None
    users_helped: int | None = None
    users_hurt: int | None = None

    @property
    def chosen(self) -> bool:
        return self.lr is not None

    def config(self, align: AlignConfig) -> AlignConfig:
        """``align`` as test uses it: the candidate step, and alignment off when no step was chosen."""
        if not self.tested:
            return align
        return dataclasses.replace(align, lr=self.candidate, enabled=align.enabled and self.chosen)

    def to_dict(self) -> dict[str, object]:
        """The ``alignment.chosen`` record of results.json (``rows`` go to ``alignment_selection``)."""
        record = {"lr": self.lr, "reason": self.reason, "tested_on": "validation" if self.tested else None}
        if self.tested:
            record.update(test=SELECTION_TEST, best_grid_lr=self.candidate, valid_ndcg_gain=self.valid_gain,
                          p_value=self.p_value, p_adjusted=self.p_adjusted, significance=self.significance,
                          users_helped=self.users_helped, users_hurt=self.users_hurt,
                          grid_size=len(self.rows) - 1)
        return record


def _untested(model: SequentialRecommender, align: AlignConfig) -> AlignmentChoice | None:
    """The choice when there is nothing to choose from: alignment off, impossible, or a fixed step."""
    if not model.has_alignment_loss:
        return AlignmentChoice(None, align.lr, False, f"{type(model).__name__} has no self-supervised loss to align on")
    if not align.enabled or align.steps == 0:
        return AlignmentChoice(None, align.lr, False, "alignment is off (align.enabled=false or align.steps=0)")
    if not align.lr_grid:
        return AlignmentChoice(align.lr, align.lr, False,
                               f"align.lr_grid is empty: the given step align.lr={align.lr:g} is used, untested")
    return None


def select_alignment_lr(model: SequentialRecommender, valid: Examples, align: AlignConfig,
                        device: torch.device | str = "cpu") -> AlignmentChoice:
    """Choose the test-time step from "no step" and ``align.lr_grid``, on the validation split only.

    1. Every grid step is evaluated on the validation users, and so is no step at all.
    2. The best grid step is the one with the highest mean validation NDCG@10 (ties keep the smaller).
    3. It is used only when it beats no step on average and the gain is significant: a one-sided
       paired sign test over validation users (aligned vs unaligned NDCG@10 of the same user), with
       the p-value multiplied by the grid size, must be below ``align.significance``. Otherwise test
       runs without a step.

    Why a sign test: the per-user differences are mostly zero and otherwise take a handful of discrete
    values (NDCG@10 of one target), so a t-test's normality is out of the question; the sign test
    assumes nothing about their distribution, is exact (a binomial tail, no resampling seed, the
    same answer on every machine) and asks the question that matters here: does the step help more
    users than it hurts? It ignores the size of each change, so the mean gain must also be positive:
    a step that nudges many users up a little and drops a few far is not chosen.

    Selection effect: step 2 picks the step that looks best on these same users, so its p-value
    alone would be too optimistic. The Bonferroni factor (grid size) corrects for it: the chosen
    step's p-value is at least the smallest p-value over the grid, and the chance that any of the
    grid's steps falls below ``significance / grid size`` when none helps is at most
    ``significance``. It is conservative, because neighbouring steps give strongly correlated results.

    Test examples are never passed in. Without a grid the configured ``align.lr`` is kept, untested.
    """
    untested = _untested(model, align)
    if untested is not None:
        return untested
    kwargs = dict(batch_size=align.batch_size, device=device)
    plain = evaluate(model, valid, None, **kwargs)
    plain_ndcg = ndcg_per_user(plain.ranks)
    rows: list[dict[str, float | int | None]] = [
        {"lr": None, **plain.metrics, "param_shift": 0.0, "p_value": None, "users_helped": 0, "users_hurt": 0}]
    best_lr, best_ndcg, best_gain = align.lr, -np.inf, np.zeros(0)
    for lr in sorted(align.lr_grid):
        result = evaluate(model, valid, dataclasses.replace(align, lr=lr), **kwargs)
        gain = ndcg_per_user(result.ranks) - plain_ndcg
        p_value, helped, hurt = sign_test(gain)
        rows.append({"lr": lr, **result.metrics, "param_shift": float(np.mean(result.param_shift)),
                     "p_value": p_value, "users_helped": helped, "users_hurt": hurt})
        if result.metrics["ndcg@10"] > best_ndcg:  # strict: ties keep the smaller step
            best_lr, best_ndcg, best_gain = lr, result.metrics["ndcg@10"], gain
    best = next(row for row in rows if row["lr"] == best_lr)
    p_value = float(best["p_value"])
    p_adjusted = min(1.0, p_value * len(align.lr_grid))
    mean_gain = float(best_gain.mean()) if len(best_gain) else 0.0
    chosen = mean_gain > 0 and p_adjusted < align.significance
    gain_text = (f"the best grid step {best_lr:g} changes validation NDCG@10 by {mean_gain:+.5f} "
                 f"({best['users_helped']} users helped, {best['users_hurt']} hurt), "
                 f"sign-test p = {p_value:.3g}, x {len(align.lr_grid)} steps = {p_adjusted:.3g}")
    if chosen:
        reason = f"step {best_lr:g} chosen: {gain_text} < {align.significance:g}"
    elif mean_gain <= 0:
        reason = f"no step: {gain_text}; no grid step beats no step on average"
    else:
        reason = f"no step: {gain_text} >= {align.significance:g}, not significant"
    return AlignmentChoice(best_lr if chosen else None, best_lr, True, reason, rows, mean_gain, p_value, p_adjusted,
                           align.significance, int(best["users_helped"]), int(best["users_hurt"]))
