"""Layers shared by more than one model."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class FeedForward(nn.Module):
    """Mamba4Rec's position-wise FFN (T2ARec keeps it): LayerNorm(Dropout(W2 Dropout(GELU(W1 a))) + a), W1: d -> 4d."""

    def __init__(self, d: int, dropout: float) -> None:
        super().__init__()
        self.w1, self.w2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d, eps=1e-12)

    def forward(self, a: Tensor) -> Tensor:
        return self.norm(self.dropout(self.w2(self.dropout(F.gelu(self.w1(a))))) + a)
