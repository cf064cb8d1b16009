"""The contract every sequential model meets, so trainer and evaluator never ask a model's name."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


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
