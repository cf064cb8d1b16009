"""The contract every sequential model meets, so trainer and evaluator never ask a model's name."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from t2arec.models.losses import full_cross_entropy


@dataclass
class SeqBatch:
    """A batch of left-padded sequences.

    items:     (B, L) int64, item indices, 0 = padding on the left.
    gaps:      (B, L) float32, seconds since the previous interaction in the same input
               (0 at the first real position and at padding).
    next_gap:  (B,)   float32, seconds from the last input interaction to the predicted one (t_{n+1} - t_n).
    targets:   (B, L) int64 next-item targets for training (0 = no loss at that position),
               or (B,) the single target of an evaluation example.
    """

    items: Tensor
    gaps: Tensor
    next_gap: Tensor
    targets: Tensor

    def to(self, device: torch.device | str) -> "SeqBatch":
        return SeqBatch(
            self.items.to(device, non_blocking=True),
            self.gaps.to(device, non_blocking=True),
            self.next_gap.to(device, non_blocking=True),
            self.targets.to(device, non_blocking=True),
        )

    @property
    def mask(self) -> Tensor:
        return self.items > 0


@dataclass
class LossTerm:
    """One term of a training loss: ``value`` is a mean over ``count`` units of the batch (target
    positions, windows, pairs of positions) and ``total`` adds ``weight * value``.

    The count is what lets training on several processes reproduce the loss of one process over the
    whole batch: each process holds part of the batch, so its mean must be weighed by its share of
    the units (``t2arec.distributed``). ``count`` None: the term is no average over the batch (a
    weight regulariser) and is the same whatever the batch holds.
    """

    value: Tensor
    count: Tensor | int | None = None
    weight: float = 1.0


def combine_terms(terms: dict[str, LossTerm]) -> dict[str, Tensor]:
    """Each term's value under its name, and ``total``: the weighted sum, in the order given."""
    losses = {name: term.value for name, term in terms.items()}
    total = None
    for term in terms.values():
        # a weight of 1 is left out rather than multiplied: the graph stays as it was written by hand
        part = term.value if term.weight == 1.0 else term.weight * term.value
        total = part if total is None else total + part
    losses["total"] = total
    return losses


# MKL computes products with few query rows or few item columns by kernels of their own, which sum
# in another order: a score would then depend on how many rows (other requests) or items (a block)
# it was computed with. Measured (benchmarks/blas_shapes.py): on an Intel machine with one or two
# rows; on an AMD EPYC one (MKL 2024.2, AVX-512) with up to 11 rows and fewer than 32 columns. So a
# block is always computed at least MIN_COLUMNS items wide, and where a row's scores must not depend
# on the other rows (per-request alignment, ``scoring.CorrectedScores``) at least MIN_ROWS rows:
# zeros padded and cut back (tests/test_align_request.py, tests/test_evaluate.py).
MIN_ROWS = 16
MIN_COLUMNS = 64


def _padded_product(query: Tensor, weight: Tensor, min_rows: int = 1) -> Tensor:
    """query (..., d) @ weight (N, d).T -> (..., N), computed on at least min_rows x MIN_COLUMNS."""
    rows = query.reshape(-1, query.shape[-1])
    num_rows, num_columns = rows.shape[0], weight.shape[0]
    if num_rows >= min_rows and num_columns >= MIN_COLUMNS:
        return query @ weight.T
    if num_rows < min_rows:
        rows = torch.cat([rows, rows.new_zeros(min_rows - num_rows, rows.shape[1])])
    if num_columns < MIN_COLUMNS:
        weight = torch.cat([weight, weight.new_zeros(MIN_COLUMNS - num_columns, weight.shape[1])])
    out = (rows @ weight.T)[:num_rows, :num_columns].contiguous()
    return out.view(*query.shape[:-1], num_columns)


@dataclass(frozen=True)
class ItemTable:
    """What a query is scored against: score(query, item j) = query . weight[j - 1] + bias[j - 1].

    weight: (N, d), the rows of items 1..N (no padding row); bias: (N,) or None.
    The tensors are the model's live parameters (views), so a table must be used while the
    parameters it was read from are the ones wanted (inside a test-time alignment, for instance).
    """

    weight: Tensor
    bias: Tensor | None = None

    @property
    def num_items(self) -> int:
        return self.weight.shape[0]

    def scores(self, query: Tensor, start: int = 0, stop: int | None = None, min_rows: int = 1) -> Tensor:
        """query (..., d) -> (..., stop - start) scores of items start + 1..stop (all by default),
        the product computed on at least ``min_rows`` rows (``MIN_ROWS``: rows independent of each other).

        The whole table (start 0, stop None) is exactly the product every model computed before
        the table existed; a block of it equals the same columns of that product on the BLAS
        measured here (docs/scaling.md), which is what makes ranks by blocks equal to today's.
        """
        out = _padded_product(query, self.weight[start:stop], min_rows)
        # the bias is added after the product, never fused into it (addmm may round differently)
        return out if self.bias is None else out + self.bias[start:stop]

    def columns(self, query: Tensor, items: Tensor, min_rows: int = 1) -> Tensor:
        """query (B, d), items (U,) 0-based -> (B, U) scores of those items, in that order."""
        out = _padded_product(query, self.weight.index_select(0, items), min_rows)
        return out if self.bias is None else out + self.bias.index_select(0, items)


class SequentialRecommender(nn.Module):
    """Base class. Subclasses implement ``loss_terms`` (or ``training_losses`` directly, when they are
    never trained on several processes) and either ``score`` or, when they score by a dot product
    with an item table, ``query`` and ``item_table`` (and declare ``scores_by_table``); ``score``
    then follows from those two.

    Capabilities are declared, not inferred from names:
    ``uses_time``: the model reads ``gaps``/``next_gap``;
    ``has_alignment_loss``: ``alignment_loss`` is defined (test-time alignment can run on it);
    ``has_alignment_gradients``: ``alignment_gradients`` may return that loss's gradients computed
    without autograd (it returns None when it cannot, and the caller differentiates the loss);
    ``scores_by_table``: ``query`` and ``item_table`` are defined and score = table.scores(query), so
    the items can be scored a block at a time (catalogues of millions, ``t2arec.scoring``).
    """

    uses_time: bool = False
    has_alignment_loss: bool = False
    has_alignment_gradients: bool = False
    scores_by_table: bool = False

    def loss_terms(self, batch: SeqBatch) -> dict[str, LossTerm]:
        """The terms of the training loss of one batch, each a mean with its count and weight."""
        raise NotImplementedError(f"{type(self).__name__} does not report its loss terms")

    def training_losses(self, batch: SeqBatch) -> dict[str, Tensor]:
        """Losses for one training batch; key ``total`` is what the optimiser minimises."""
        return combine_terms(self.loss_terms(batch))

    def query(self, batch: SeqBatch) -> Tensor:
        """(B, d): the representation of the position after the last input that ``item_table`` scores."""
        raise NotImplementedError(f"{type(self).__name__} does not score by an item table")

    def item_table(self) -> ItemTable:
        """The (num_items, d) table (and optional bias) that ``query`` is scored against."""
        raise NotImplementedError(f"{type(self).__name__} does not score by an item table")

    def score(self, batch: SeqBatch) -> Tensor:
        """(B, num_items) scores of items 1..num_items for the position after the last input."""
        if not self.scores_by_table:
            raise NotImplementedError
        return self.item_table().scores(self.query(batch))

    def alignment_loss(self, batch: SeqBatch, mu_time: float, mu_state: float) -> Tensor:
        """Label-free loss for test-time alignment (only when ``has_alignment_loss``)."""
        raise NotImplementedError(f"{type(self).__name__} has no self-supervised alignment loss")

    def alignment_gradients(self, batch: SeqBatch, mu_time: float, mu_state: float,
                            params: list[Tensor]) -> tuple[Tensor, list[Tensor]] | None:
        """(``alignment_loss``, its gradient for each of ``params``) computed by the model itself,
        or None to let the caller use autograd (only when ``has_alignment_gradients``)."""
        return None


def init_normal_(model: nn.Module, std: float = 0.02) -> None:
    """BERT-style initialisation: Linear and Embedding weights N(0, std), Linear biases 0,
    LayerNorm weight 1 and bias 0. Models re-initialise their special parameters afterwards."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class NextItemModel(SequentialRecommender):
    """A causal model whose output at position t predicts the item after input t.

    Subclasses provide ``item_embedding`` (row 0 is padding) and ``encode(items) -> (B, L, d)``;
    this class adds tied scoring (padding never ranks), the cross-entropy of every position that has
    a target (all prefixes of a window in one pass) and the query at the last position.
    """

    scores_by_table = True
    item_embedding: nn.Embedding

    def encode(self, items: Tensor) -> Tensor:
        raise NotImplementedError

    def item_table(self) -> ItemTable:
        """Tied: item embeddings 1..num_items (the padding row is left out, so it never ranks)."""
        return ItemTable(self.item_embedding.weight[1:])

    def item_scores(self, hidden: Tensor) -> Tensor:
        """(..., d) -> (..., num_items) against item embeddings 1..num_items."""
        return self.item_table().scores(hidden)

    def loss_terms(self, batch: SeqBatch) -> dict[str, LossTerm]:
        hidden = self.encode(batch.items)
        has_target = batch.targets > 0
        rec = full_cross_entropy(hidden[has_target], self.item_embedding.weight[1:], batch.targets[has_target] - 1)
        return {"rec": LossTerm(rec, has_target.sum())}

    def query(self, batch: SeqBatch) -> Tensor:
        return self.encode(batch.items)[:, -1]
