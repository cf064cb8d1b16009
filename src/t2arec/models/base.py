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


class SequentialRecommender(nn.Module):
    """Base class. Subclasses implement ``loss_terms`` (or ``training_losses`` directly, when they are
    never trained on several processes) and ``score``.

    Capabilities are declared, not inferred from names:
    ``uses_time``: the model reads ``gaps``/``next_gap``;
    ``has_alignment_loss``: ``alignment_loss`` is defined (test-time alignment can run on it).
    """

    uses_time: bool = False
    has_alignment_loss: bool = False

    def loss_terms(self, batch: SeqBatch) -> dict[str, LossTerm]:
        """The terms of the training loss of one batch, each a mean with its count and weight."""
        raise NotImplementedError(f"{type(self).__name__} does not report its loss terms")

    def training_losses(self, batch: SeqBatch) -> dict[str, Tensor]:
        """Losses for one training batch; key ``total`` is what the optimiser minimises."""
        return combine_terms(self.loss_terms(batch))

    def score(self, batch: SeqBatch) -> Tensor:
        """(B, num_items) scores of items 1..num_items for the position after the last input."""
        raise NotImplementedError

    def alignment_loss(self, batch: SeqBatch, mu_time: float, mu_state: float) -> Tensor:
        """Label-free loss for test-time alignment (only when ``has_alignment_loss``)."""
        raise NotImplementedError(f"{type(self).__name__} has no self-supervised alignment loss")


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
    a target (all prefixes of a window in one pass) and the score at the last position.
    """

    item_embedding: nn.Embedding

    def encode(self, items: Tensor) -> Tensor:
        raise NotImplementedError

    def item_scores(self, hidden: Tensor) -> Tensor:
        """(..., d) -> (..., num_items) against item embeddings 1..num_items."""
        return hidden @ self.item_embedding.weight[1:].T

    def loss_terms(self, batch: SeqBatch) -> dict[str, LossTerm]:
        hidden = self.encode(batch.items)
        has_target = batch.targets > 0
        rec = full_cross_entropy(hidden[has_target], self.item_embedding.weight[1:], batch.targets[has_target] - 1)
        return {"rec": LossTerm(rec, has_target.sum())}

    def score(self, batch: SeqBatch) -> Tensor:
        return self.item_scores(self.encode(batch.items)[:, -1])
