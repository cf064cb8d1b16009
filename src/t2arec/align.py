"""Test-time alignment (the paper's Algorithm 1), for any model with a self-supervised loss.

For one batch: record theta_0; take M gradient steps on mu1 * L_time + mu2 * L_state (no labels);
predict with the adapted parameters; restore theta_0 bit for bit. The update is shared by the
whole batch, so results depend on the batch size.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

import torch
from torch import Tensor

from t2arec.models.base import SeqBatch, SequentialRecommender
from t2arec.scoring import ItemScores, item_scores

T = TypeVar("T")


@dataclass
class AlignConfig:
    enabled: bool = True
    steps: int = 1  # M
    lr: float = 0.005  # alpha
    mu_time: float = 1e-2  # mu1_test
    mu_state: float = 1e-1  # mu2_test
    optimizer: str = "sgd"  # "sgd": theta -= alpha * grad (Algorithm 1); "adam": fresh Adam state per batch
    batch_size: int = 4096
    # step sizes to choose ``lr`` from on the validation split after training (empty: keep ``lr``, untested)
    lr_grid: tuple[float, ...] = (0.005, 0.05, 0.5, 1.0, 2.0, 5.0, 10.0)
    # a step from the grid is used only when its validation gain over no step has a one-sided p-value
    # (Bonferroni-adjusted for the grid size) below this; otherwise test runs without a step
    significance: float = 0.05

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"align.optimizer must be 'sgd' or 'adam', not {self.optimizer!r}")
        self.lr_grid = tuple(float(v) for v in self.lr_grid)
        if any(v <= 0 for v in self.lr_grid):
            raise ValueError("align.lr_grid values must be positive")
        if self.steps < 0:
            raise ValueError("align.steps must be >= 0")
        if not 0.0 < self.significance <= 1.0:
            raise ValueError(f"align.significance must be in (0, 1], not {self.significance}")


@dataclass
class AlignStats:
    """How far one alignment moved the parameters (L2 norm over all of them) and the loss before."""

    param_shift: float
    loss_before: float


def _step(params: list[Tensor], grads: list[Tensor], cfg: AlignConfig, moments: list[tuple[Tensor, Tensor]], t: int) -> None:
    """One in-place update. ``moments`` holds Adam's (m, v) per parameter, fresh for each batch."""
    if cfg.optimizer == "sgd":
        for p, g in zip(params, grads):
            p.sub_(cfg.lr * g)
        return
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    if not moments:
        moments.extend((torch.zeros_like(p), torch.zeros_like(p)) for p in params)
    for p, g, (m, v) in zip(params, grads, moments):
        m.mul_(beta1).add_(g, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        p.sub_(cfg.lr * (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt() + eps))


def _loss_and_gradients(model: SequentialRecommender, batch: SeqBatch, cfg: AlignConfig,
                        params: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """The alignment loss and its gradient for each of ``params``: the model's own when it offers
    them (``has_alignment_gradients``, e.g. T2ARec's written-out step), else autograd's."""
    with torch.enable_grad():
        if model.has_alignment_gradients:
            own = model.alignment_gradients(batch, cfg.mu_time, cfg.mu_state, params)
            if own is not None:
                return own
        loss = model.alignment_loss(batch, cfg.mu_time, cfg.mu_state)
        return loss, list(torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True))


@contextlib.contextmanager
def aligned(model: SequentialRecommender, batch: SeqBatch, cfg: AlignConfig) -> Iterator[AlignStats]:
    """Inside the ``with`` block the model is adapted to ``batch``; on exit it is restored exactly.

    The model should be in eval mode (dropout off), as at test time.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    snapshot = [p.detach().clone() for p in params]
    stats = AlignStats(param_shift=0.0, loss_before=float("nan"))
    try:
        moments: list[tuple[Tensor, Tensor]] = []
        for t in range(1, cfg.steps + 1):
            loss, grads = _loss_and_gradients(model, batch, cfg, params)
            if t == 1:
                stats.loss_before = float(loss.detach())
            with torch.no_grad():
                _step(params, list(grads), cfg, moments, t)
        with torch.no_grad():
            shift = sum(float((p - s).pow(2).sum()) for p, s in zip(params, snapshot))
            stats.param_shift = shift**0.5
        yield stats
    finally:
        with torch.no_grad():
            for p, s in zip(params, snapshot):
                p.copy_(s)


def alignment_runs(model: SequentialRecommender, cfg: AlignConfig | None) -> bool:
    """Whether ``score_batch`` takes a test-time step: ``cfg`` enables at least one step and the model
    has a self-supervised loss to take it on."""
    return cfg is not None and cfg.enabled and cfg.steps > 0 and model.has_alignment_loss


def _predict(model: SequentialRecommender, batch: SeqBatch, cfg: AlignConfig | None,
             compute: Callable[[], T]) -> tuple[T, AlignStats | None]:
    """``compute()`` under no_grad, inside one test-time alignment on ``batch`` when ``cfg`` enables it."""
    if not alignment_runs(model, cfg):
        with torch.no_grad():
            return compute(), None
    with aligned(model, batch, cfg) as stats, torch.no_grad():
        return compute(), stats


def score_batch(model: SequentialRecommender, batch: SeqBatch, cfg: AlignConfig | None) -> tuple[Tensor, AlignStats | None]:
    """Scores (B, num_items) for a batch, after test-time alignment when ``cfg`` enables it."""
    return _predict(model, batch, cfg, lambda: model.score(batch))


def use_scores(model: SequentialRecommender, batch: SeqBatch, cfg: AlignConfig | None,
               use: Callable[[ItemScores], T]) -> tuple[T, AlignStats | None]:
    """``use(scores)`` on the batch's item scores (``t2arec.scoring.item_scores``), after test-time
    alignment when ``cfg`` enables it: one step per batch, exactly as ``score_batch``.

    The scores are produced a block at a time from the model's live parameters, so ``use`` runs
    while the aligned parameters are in place (they are restored after it returns). ``use`` must
    therefore consume them (rank, top-k) and return plain results, not the ``ItemScores``.
    """
    return _predict(model, batch, cfg, lambda: use(item_scores(model, batch)))
