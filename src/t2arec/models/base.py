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


class SequentialRecommender(nn.Module):
    """Base class. Subclasses implement ``training_losses`` and ``score``.

    Capabilities are declared, not inferred from names:
    ``uses_time``: the model reads ``gaps``/``next_gap``;
    ``has_alignment_loss``: ``alignment_loss`` is defined (test-time alignment can run on it).
    """

    uses_time: bool = False
    has_alignment_loss: bool = False

    def training_losses(self, batch: SeqBatch) -> dict[str, Tensor]:
        """Losses for one training batch; key ``total`` is what the optimiser minimises."""
        raise NotImplementedError

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

    def training_losses(self, batch: SeqBatch) -> dict[str, Tensor]:
        hidden = self.encode(batch.items)
        has_target = batch.targets > 0
        rec = full_cross_entropy(hidden[has_target], self.item_embedding.weight[1:], batch.targets[has_target] - 1)
        return {"rec": rec, "total": rec}

    def score(self, batch: SeqBatch) -> Tensor:
        return self.item_scores(self.encode(batch.items)[:, -1])
