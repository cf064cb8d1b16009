"""SASRec (Kang & McAuley, ICDM 2018) as RecBole 1.2 builds it: a causal post-LayerNorm Transformer.

    e_i = Dropout(LayerNorm(E[v_i] + P[p_i]))                       embedding + learned position
    a = LayerNorm(x + Dropout(W_o MultiHead(x, causal & key-padding mask)))   self-attention
    x' = LayerNorm(a + Dropout(W_2 GELU(W_1 a)))                     point-wise feed-forward
    scores = E[1:] x_n                                               tied item embeddings

Defaults are RecBole 1.2's ``recbole/properties/model/SASRec.yaml`` (2 layers, 2 heads, hidden 64,
inner 256, dropout 0.5 / 0.5, GELU, LayerNorm eps 1e-12, N(0, 0.02) init, CE loss) and its
``MAX_ITEM_LIST_LENGTH`` (50) for the number of learned positions. Like RecBole (and unlike the
paper's TensorFlow code) the item embeddings are not scaled by sqrt(d) and the feed-forward network
is two Linear layers with dropout after the second one only.

Positions. Batches are left-padded, so a position id cannot be the column index. The id of a real
item is the number of real items before it (0 for the first real item, as in RecBole, whose batches
are right-padded and whose positions start at the first item). Adding padding on the left
therefore changes no id; padding positions get id 0 and are never attended to by a real query.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from t2arec.models.base import NextItemModel, SeqBatch, init_normal_
from t2arec.models.layers import TransformerLayer


@dataclass
class SASRecConfig:
    num_items: int = 0  # set from the data when the model is built
    max_len: int = 50  # learned positions; RecBole MAX_ITEM_LIST_LENGTH (set to data.max_len)
    num_layers: int = 2  # n_layers
    num_heads: int = 2  # n_heads
    hidden_size: int = 64
    inner_size: int = 256
    hidden_dropout: float = 0.5  # hidden_dropout_prob (embeddings, sub-layer outputs)
    attn_dropout: float = 0.5  # attn_dropout_prob (attention probabilities)
    hidden_act: str = "gelu"  # "gelu" (erf form, as RecBole) or "relu" (the paper)
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.hidden_act not in ("gelu", "relu"):
            raise ValueError(f"hidden_act must be 'gelu' or 'relu', not {self.hidden_act!r}")
        if self.max_len < 1:
            raise ValueError("max_len must be >= 1")


class SASRec(NextItemModel):
    uses_time = False
    has_alignment_loss = False

    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_embedding = nn.Embedding(cfg.num_items + 1, cfg.hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(cfg.max_len, cfg.hidden_size)
        self.embed_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.embed_dropout = nn.Dropout(cfg.hidden_dropout)
        self.layers = nn.ModuleList(
            TransformerLayer(cfg.hidden_size, cfg.num_heads, cfg.inner_size, cfg.hidden_dropout, cfg.attn_dropout,
                             cfg.layer_norm_eps, cfg.hidden_act) for _ in range(cfg.num_layers))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_normal_(self, std=self.cfg.initializer_range)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    # --- encoding -------------------------------------------------------------------------------
    def position_ids(self, mask: Tensor) -> Tensor:
        """(B, L) bool -> (B, L) ids: real items count from 0 at the first real item; padding gets 0."""
        ids = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
        longest = int(ids.max()) + 1 if ids.numel() else 0
        if longest > self.cfg.max_len:
            raise ValueError(f"a sequence has {longest} items but SASRec has {self.cfg.max_len} positions (max_len)")
        return ids

    @staticmethod
    def attention_mask(mask: Tensor) -> Tensor:
        """(B, L) bool -> (B, 1, L, L): causal, real keys only, plus the query itself."""
        length = mask.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
        itself = torch.eye(length, dtype=torch.bool, device=mask.device)
        return (causal & (mask[:, None, :] | itself))[:, None]

    def encode(self, items: Tensor, last_only: bool = False) -> Tensor:
        """items (B, L) -> hidden states (B, L, d); state i has seen items 1..i.

        With ``last_only`` the result is (B, 1, d), the state of the last position: the final layer
        then runs one query over all keys and its FFN at that position only (earlier layers still
        need every position, as keys and values of the next layer).
        """
        mask = items > 0
        x = self.item_embedding(items) + self.position_embedding(self.position_ids(mask))
        x = self.embed_dropout(self.embed_norm(x))
        allowed = self.attention_mask(mask)
        for i, layer in enumerate(self.layers):
            x = layer(x, allowed, last_only=last_only and i == len(self.layers) - 1)
        return x[:, -1:] if last_only else x  # (no layers: the embedding of the last position)

    def query(self, batch: SeqBatch) -> Tensor:
        return self.encode(batch.items, last_only=True)[:, -1]
