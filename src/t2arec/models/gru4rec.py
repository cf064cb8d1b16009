"""GRU4Rec (Hidasi et al., ICLR 2016) as RecBole 1.2 builds it for next-item prediction with CE loss.

    e_i = Dropout(E[v_i])                 embedding (dropout on the embeddings only)
    h_i = GRU(e_i, h_{i-1}), h_0 = 0      bias-free GRU, as RecBole (``bias=False``)
    o_i = W h_i + b                       dense layer from the hidden to the embedding size
    scores = E[1:] o_n                    tied item embeddings

Defaults are RecBole 1.2's ``recbole/properties/model/GRU4Rec.yaml``: embedding 64, hidden 128,
1 layer, dropout 0.3, CE loss. RecBole's initialisation (``init="recbole"``): Xavier-normal item
embeddings, Xavier-uniform GRU input and recurrent weights, PyTorch's default for the dense layer;
``init="normal"`` uses the house N(0, 0.02) for all of them. The padding row is kept at zero.

Padding. Batches are left-padded, and a GRU reading padding before the first item would start the
first item from another state (with biases, even zero inputs move the state). The sequences are
therefore shifted so their padding is on the right and packed, the GRU sees the real items only,
and the outputs are shifted back to the input columns; padding columns output ``W 0 + b``, which
no loss reads.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from t2arec.models.base import NextItemModel, SeqBatch


@dataclass
class GRU4RecConfig:
    num_items: int = 0  # set from the data when the model is built
    embedding_size: int = 64
    hidden_size: int = 128
    num_layers: int = 1
    dropout: float = 0.3  # dropout_prob, on the item embeddings
    init: str = "recbole"  # "recbole" (Xavier, see the module docstring) or "normal" (N(0, 0.02))

    def __post_init__(self) -> None:
        if self.init not in ("recbole", "normal"):
            raise ValueError(f"init must be 'recbole' or 'normal', not {self.init!r}")


def roll_rows(x: Tensor, shifts: Tensor) -> Tensor:
    """out[b, j] = x[b, (j + shifts[b]) % L] for x of shape (B, L, ...)."""
    length = x.shape[1]
    index = (torch.arange(length, device=x.device)[None, :] + shifts[:, None]) % length
    return x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x))


class GRU4Rec(NextItemModel):
    uses_time = False
    has_alignment_loss = False

    def __init__(self, cfg: GRU4RecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_embedding = nn.Embedding(cfg.num_items + 1, cfg.embedding_size, padding_idx=0)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(cfg.embedding_size, cfg.hidden_size, num_layers=cfg.num_layers, bias=False,
                          batch_first=True)
        self.dense = nn.Linear(cfg.hidden_size, cfg.embedding_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        gru_weights = [w for name, w in self.gru.named_parameters() if name.startswith("weight_")]
        if self.cfg.init == "recbole":
            nn.init.xavier_normal_(self.item_embedding.weight)
            for weight in gru_weights:  # RecBole sets layer 0; all layers here (the same for 1 layer)
                nn.init.xavier_uniform_(weight)
            self.dense.reset_parameters()
        else:
            for weight in [self.item_embedding.weight, self.dense.weight, *gru_weights]:
                nn.init.normal_(weight, std=0.02)
            nn.init.zeros_(self.dense.bias)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    # --- encoding -------------------------------------------------------------------------------
    def encode(self, items: Tensor, last_only: bool = False) -> Tensor:
        """items (B, L) left-padded -> outputs (B, L, embedding_size); output i has seen items 1..i.

        With ``last_only`` the result is (B, 1, embedding_size), the output of the last column: the
        GRU still reads every item, but only its final state (returned per row by the packed GRU)
        goes through the dense layer, and the outputs are neither unpacked nor shifted back.
        """
        lengths = (items > 0).sum(dim=1)
        num_pad = items.shape[1] - lengths
        x = self.embed_dropout(self.item_embedding(items))
        x = roll_rows(x, num_pad)  # padding moved to the right
        # an all-padding row (length 0) is given length 1: it reads one zero embedding, no loss uses it
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        hidden, final = self.gru(packed)
        # final[-1]: the top layer's state after each row's last real item, rows in input order. (An
        # all-padding row's state stays 0: the GRU has no bias and reads a zero embedding, which is
        # also what the unpacked output holds at its last column.)
        if last_only:
            return self.dense(final[-1])[:, None]
        hidden, _ = pad_packed_sequence(hidden, batch_first=True, total_length=items.shape[1])
        hidden = roll_rows(hidden, -num_pad)  # back to the input columns
        return self.dense(hidden)

    def query(self, batch: SeqBatch) -> Tensor:
        return self.encode(batch.items, last_only=True)[:, -1]
