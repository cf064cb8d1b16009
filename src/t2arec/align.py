"""Test-time alignment (the paper's Algorithm 1), for any model with a self-supervised loss.

For one batch: record theta_0; take M gradient steps on mu1 * L_time + mu2 * L_state (no labels);
predict with the adapted parameters; restore theta_0 bit for bit. The update is shared by the
whole batch, so results depend on the batch size.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

import torch
from torch import Tensor

from t2arec.models.base import SeqBatch, SequentialRecommender
from t2arec.scoring import CorrectedScores, ItemScores, item_scores

T = TypeVar("T")
SCOPES = ("batch", "request")


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
    # "batch": one step on the whole batch's loss (Algorithm 1, evaluation's default); "request": every
    # request its own step from the trained parameters, on its own users' loss, so that its answer
    # depends on nothing else (serving's default; ``use_scores_by_request``)
    scope: str = "batch"

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"align.optimizer must be 'sgd' or 'adam', not {self.optimizer!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"align.scope must be 'batch' or 'request', not {self.scope!r}")
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


# --- per-request alignment (align.scope = "request") --------------------------------------------------
# tokens of one per-request computation: at max length 200, 128 sequences (about 0.4 GB of intermediates
# and per-row parameter copies with their gradients; 256 took 0.25 GB more and no less time, 32 no less
# time either, on a noisy machine); whole requests are never split
REQUEST_CHUNK_TOKENS = 25_600


def request_index(requests: Sequence[int] | Tensor | None, rows: int, device: torch.device | str = "cpu") -> Tensor:
    """(B,) int64 request number of each row, 0..R-1 (R distinct labels, numbered in sorted order).

    ``requests`` labels each row with its request (any integers; rows with the same label form one
    request); None makes every row its own request.
    """
    if requests is None:
        return torch.arange(rows, device=device)
    labels = torch.as_tensor(requests if isinstance(requests, Tensor) else list(requests), dtype=torch.int64,
                             device=device)
    if labels.shape != (rows,):
        raise ValueError(f"requests: expected one label per row ({rows}), got shape {tuple(labels.shape)}")
    return torch.unique(labels, return_inverse=True)[1]


def _request_chunks(index: Tensor, max_rows: int) -> list[tuple[Tensor, Tensor, int]]:
    """Groups of whole requests of about ``max_rows`` rows: (batch rows, their request 0..R_c-1, R_c).

    A request goes to the group in which its first row falls when requests are laid end to end, so
    a group holds at most 2 * max_rows - 1 rows (a request larger than that is a group of its own)."""
    order = torch.argsort(index, stable=True)
    counts = torch.bincount(index)
    starts = torch.cumsum(counts, 0) - counts
    group_of_request = starts // max(1, max_rows)
    out = []
    for group in torch.unique(group_of_request).tolist():
        requests = (group_of_request == group).nonzero()[:, 0]
        first, last = int(requests[0]), int(requests[-1])
        rows = order[int(starts[first]): int(starts[last] + counts[last])]
        out.append((rows, index[rows] - first, last - first + 1))
    return out


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """PyTorch (and MKL, process-wide) on one thread inside the block, restored after it.

    With several threads, an elementwise kernel splits a tensor among them at offsets that depend on
    its size, and a reduction may split the reduced dimension when the output is small (a single
    request). Either changes how a row's values are rounded, so a request would not get the same
    numbers alone and among others. The step is mostly memory traffic (docs/performance.md,
    "Per-request alignment"); what a second thread would have gained was not measured on a quiet
    machine.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def use_scores_by_request(model: SequentialRecommender, batch: SeqBatch, cfg: AlignConfig,
                          use: Callable[[ItemScores], T],
                          requests: Sequence[int] | Tensor | None = None,
                          chunk_tokens: int = REQUEST_CHUNK_TOKENS) -> tuple[T, AlignStats]:
    """``use(scores)`` after a test-time step per request: Algorithm 1 (``cfg.steps`` steps of
    ``cfg.optimizer`` with ``cfg.lr`` on mu1 L_time + mu2 L_state, fresh Adam moments per request)
    taken by every request on its own rows' loss, from the trained parameters, and its rows scored
    with its own adapted parameters.

    ``requests``: a label per row of ``batch`` (None: every row its own request, as in evaluation).
    All the requests of a group of rows are computed together: every parameter gets a leading request
    dimension and one backward pass per step gives each request its gradient (the model's
    ``t2arec.models.t2arec_request`` implementation); groups of about ``chunk_tokens`` tokens bound
    the memory. The model's own parameters are never modified. With a single request this is the
    batch-scope step on the same rows (up to float rounding), and a request's scores do not depend
    on the other requests of the batch.

    The statistics are means over the requests: each request's parameter shift (L2 over every
    parameter, its item rows included) and its loss before the step.
    """
    from t2arec.models.t2arec_request import request_adapter

    adapter = request_adapter(model)
    if adapter is None:
        raise ValueError(f"{type(model).__name__} has no per-request test-time alignment; use align.scope=batch")
    index = request_index(requests, len(batch.items), batch.items.device)
    max_rows = max(1, chunk_tokens // max(1, batch.items.shape[1]))
    query = None
    fixes, shifts, losses = [], [], []
    with one_thread():
        for rows, local, count in _request_chunks(index, max_rows):
            whole = len(rows) == len(index) and bool(torch.equal(rows, torch.arange(len(rows), device=rows.device)))
            part = batch if whole else SeqBatch(batch.items[rows], batch.gaps[rows], batch.next_gap[rows],
                                                batch.targets[rows])
            state = adapter(model, part, local, count, cfg.mu_time, cfg.mu_state)
            losses.append(_step_requests(state, cfg))
            with torch.no_grad():
                part_query = state.query()
                if query is None:
                    query = part_query.new_empty(len(index), part_query.shape[1])
                query[rows] = part_query
                fix_rows, fix_items, fix_values = state.corrections(part_query)
                fixes.append((rows[fix_rows], fix_items, fix_values))
                shifts.append(state.shift())
            del state  # its per-request parameters, before the next group's
    with torch.no_grad():
        scores = CorrectedScores(query, model.item_table(), *(torch.cat(parts) for parts in zip(*fixes)))
        stats = AlignStats(param_shift=float(torch.cat(shifts).mean()), loss_before=float(torch.cat(losses).mean()))
        return use(scores), stats


def _step_requests(state, cfg: AlignConfig) -> Tensor:  # noqa: ANN001
    """Algorithm 1's ``cfg.steps`` steps on every request of ``state`` at once (its ``tensors`` are
    updated in place); returns each request's loss before the first step (R,)."""
    tensors = state.tensors
    moments: list[tuple[Tensor, Tensor]] = []
    before = None
    for t in range(1, cfg.steps + 1):
        with torch.enable_grad():
            for tensor in tensors:
                tensor.requires_grad_(True)
            loss = state.loss()  # (R,): each request's own loss
            # the sum's gradient with respect to request r's parameters is the gradient of r's loss alone
            grads = torch.autograd.grad(loss.sum(), tensors, allow_unused=True, materialize_grads=True)
        if before is None:
            before = loss.detach()
        with torch.no_grad():
            _step(tensors, list(grads), cfg, moments, t)
    for tensor in tensors:
        tensor.requires_grad_(False)
    return before


def use_scores_scoped(model: SequentialRecommender, batch: SeqBatch, cfg: AlignConfig | None,
                      use: Callable[[ItemScores], T],
                      requests: Sequence[int] | Tensor | None = None) -> tuple[T, AlignStats | None]:
    """``use_scores`` (one step for the batch) or ``use_scores_by_request`` (one per request), as
    ``cfg.scope`` says. ``requests`` labels the rows' requests (None: one row, one request); batch
    scope ignores it."""
    if alignment_runs(model, cfg) and cfg.scope == "request":
        return use_scores_by_request(model, batch, cfg, use, requests)
    return use_scores(model, batch, cfg, use)


def score_batch_scoped(model: SequentialRecommender, batch: SeqBatch, cfg: AlignConfig | None,
                       requests: Sequence[int] | Tensor | None = None) -> tuple[Tensor, AlignStats | None]:
    """Scores (B, num_items) as ``score_batch``, with the step of ``cfg.scope``."""
    if alignment_runs(model, cfg) and cfg.scope == "request":
        return use_scores_by_request(model, batch, cfg, lambda scores: scores.block(0, scores.num_items), requests)
    return score_batch(model, batch, cfg)
