"""Layers shared by more than one model."""
from __future__ import annotations

import math

import torch
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


class SelfAttention(nn.Module):
    """Multi-head self-attention, dropout on the probabilities, then residual and post-LayerNorm."""

    def __init__(self, d: int, heads: int, hidden_dropout: float, attn_dropout: float, eps: float) -> None:
        super().__init__()
        if d % heads:
            raise ValueError(f"hidden size {d} is not a multiple of the number of heads {heads}")
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.dense = nn.Linear(d, d)
        self.attn_dropout, self.out_dropout = nn.Dropout(attn_dropout), nn.Dropout(hidden_dropout)
        self.norm = nn.LayerNorm(d, eps=eps)

    def forward(self, x: Tensor, allowed: Tensor, last_only: bool = False) -> Tensor:
        """x: (B, T, d); allowed: bool, broadcastable to (B, heads, T, T): query i may attend to key j.

        Returns (B, T, d); with ``last_only`` (B, 1, d): only the last position queries (all T keys
        and values are still projected), so the other positions' queries, logit rows, output
        projection and norm are never computed.

        Every row must allow at least one key. Masked logits take the most negative finite value,
        so a masked key gets weight exactly 0 and nothing becomes NaN.
        """
        bsz, length, d = x.shape
        head = d // self.heads

        def split(t: Tensor) -> Tensor:  # (B, T', d) -> (B, heads, T', head)
            return t.view(bsz, t.shape[1], self.heads, head).transpose(1, 2)

        queries = x[:, -1:] if last_only else x  # the residual stream of the positions that query
        if last_only:
            allowed = allowed[..., -1:, :]  # the last query's row (a broadcast row of size 1 stays as is)
        q, k, v = split(self.query(queries)), split(self.key(x)), split(self.value(x))
        logits = (q @ k.transpose(-1, -2) / math.sqrt(head)).masked_fill(~allowed, torch.finfo(x.dtype).min)
        context = (self.attn_dropout(logits.softmax(dim=-1)) @ v).transpose(1, 2).reshape(bsz, queries.shape[1], d)
        return self.norm(self.out_dropout(self.dense(context)) + queries)


class TransformerLayer(nn.Module):
    """RecBole's Transformer layer (SASRec, BERT4Rec): attention, then a position-wise FFN
    LayerNorm(x + Dropout(W_2 act(W_1 x))) with dropout after the second Linear only."""

    def __init__(self, d: int, heads: int, inner: int, hidden_dropout: float, attn_dropout: float,
                 eps: float = 1e-12, activation: str = "gelu") -> None:
        super().__init__()
        self.attention = SelfAttention(d, heads, hidden_dropout, attn_dropout, eps)
        self.w1, self.w2 = nn.Linear(d, inner), nn.Linear(inner, d)
        self.activation = F.gelu if activation == "gelu" else F.relu
        self.dropout = nn.Dropout(hidden_dropout)
        self.norm = nn.LayerNorm(d, eps=eps)

    def forward(self, x: Tensor, allowed: Tensor, last_only: bool = False) -> Tensor:
        """x: (B, T, d), allowed as in ``SelfAttention`` -> (B, T, d); with ``last_only`` (B, 1, d),
        the last position alone (what a final layer needs at scoring time)."""
        a = self.attention(x, allowed, last_only)
        return self.norm(self.dropout(self.w2(self.activation(self.w1(a)))) + a)
