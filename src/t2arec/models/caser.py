"""Caser (Tang & Wang, WSDM 2018) as RecBole 1.2 builds it, without the user embedding.

For the window W of the last L item embeddings (an L x d "image", zeros where the window reaches
before the first item):

    o_v = [conv_v(W)]                          n_v vertical filters of shape L x 1   -> n_v * d
    o_h = [max_pool(ReLU(conv_h,k(W)))]_k      n_h horizontal filters of each size k x d, k = 1..L -> n_h * L
    z = ReLU(fc1(Dropout([o_v, o_h])))         -> d
    o = ReLU(fc2(z))                           -> d   (RecBole: fc2([z, P_u]); see "User" below)
    scores = E[1:] o                           tied item embeddings, no bias (as RecBole)

Defaults are RecBole 1.2's ``recbole/properties/model/Caser.yaml``: embedding 64, dropout 0.4,
n_v 4, n_h 8, reg_weight 1e-4, CE loss; RecBole has no separate L and uses its input length
``MAX_ITEM_LIST_LENGTH`` (50) as L, which is the default ``window`` here (set it to data.max_len;
the paper and its code use L = 5, n_v 4, n_h 16, d 50, dropout 0.5). RecBole's loss adds
reg_weight times the (unsquared) L2 norms of the item embeddings, the vertical and the fully
connected weights, and of every horizontal filter bank; reported as ``reg``. RecBole's
initialisation (``init="recbole"``): item embeddings N(0, 1/d), Xavier-normal Linear weights,
zero biases, PyTorch's default for the convolutions; ``init="normal"`` is N(0, 0.02) for the
embeddings and Linear weights. The padding row is kept at zero.

User. Our batches carry no user id, so the user embedding P_u is taken as zero: fc2 then reads z
alone, and fc2 is a d -> d layer instead of RecBole's 2d -> d (the same function with P_u = 0).

Training. RecBole trains Caser on the single next item of each (augmented) prefix. Here every
position t with a target is trained in one pass, each with its own window of the L items ending at
t: the convolutions run once over the sequence left-padded by L - 1 zero rows, and each window's
horizontal max-pooling is a sliding max of width L - k + 1 over those outputs, which is exactly the
per-window computation. ``score`` runs the same on the last L items, so left padding beyond the
window changes nothing (the window is read, never the length of the batch).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2arec.models.base import SeqBatch, SequentialRecommender
from t2arec.models.losses import full_cross_entropy


@dataclass
class CaserConfig:
    num_items: int = 0  # set from the data when the model is built
    embedding_size: int = 64  # d
    window: int = 50  # L; RecBole uses MAX_ITEM_LIST_LENGTH (50), the paper 5
    num_vertical: int = 4  # n_v (nv)
    num_horizontal: int = 8  # n_h (nh), filters per height 1..L
    dropout: float = 0.4  # dropout_prob, on the concatenated convolution outputs
    reg_weight: float = 1e-4  # weight of the L2 norms added to the loss
    init: str = "recbole"  # "recbole" (see the module docstring) or "normal" (N(0, 0.02))

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError("window (L) must be >= 1")
        if self.num_vertical < 1 or self.num_horizontal < 1:
            raise ValueError("num_vertical and num_horizontal must be >= 1")
        if self.init not in ("recbole", "normal"):
            raise ValueError(f"init must be 'recbole' or 'normal', not {self.init!r}")


class Caser(SequentialRecommender):
    uses_time = False
    has_alignment_loss = False

    def __init__(self, cfg: CaserConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, L = cfg.embedding_size, cfg.window
        self.item_embedding = nn.Embedding(cfg.num_items + 1, d, padding_idx=0)
        self.conv_v = nn.Conv2d(1, cfg.num_vertical, kernel_size=(L, 1))
        # a k x d horizontal filter is a 1-d convolution over time with the d embedding dims as channels
        # (RecBole's Conv2d(1, n_h, (k, d)): the same function and the same default initialisation)
        self.conv_h = nn.ModuleList(nn.Conv1d(d, cfg.num_horizontal, kernel_size=k) for k in range(1, L + 1))
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc1 = nn.Linear(cfg.num_vertical * d + cfg.num_horizontal * L, d)
        self.fc2 = nn.Linear(d, d)  # RecBole: Linear(2d, d) on [z, P_u]; P_u = 0 here
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in [self.conv_v, *self.conv_h]:
            conv.reset_parameters()
        for fc in (self.fc1, self.fc2):
            if self.cfg.init == "recbole":
                nn.init.xavier_normal_(fc.weight)
            else:
                nn.init.normal_(fc.weight, std=0.02)
            nn.init.zeros_(fc.bias)
        std = 1.0 / self.cfg.embedding_size if self.cfg.init == "recbole" else 0.02
        nn.init.normal_(self.item_embedding.weight, std=std)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    # --- encoding -------------------------------------------------------------------------------
    def encode(self, items: Tensor, last_only: bool = False) -> Tensor:
        """items (B, T) -> outputs (B, T, d); output t reads the window of the L items ending at t.

        With ``last_only`` only the window ending at the last column is computed: (B, 1, d).
        """
        L = self.cfg.window
        if last_only:  # exactly the last L columns, zeros on the left of a shorter sequence
            padded = F.pad(items[:, -L:], (max(0, L - items.shape[1]), 0))
        else:  # L - 1 zero columns so that the first position has a full (mostly empty) window
            padded = F.pad(items, (L - 1, 0))
        bsz, steps = items.shape[0], padded.shape[1] - L + 1
        emb = self.item_embedding(padded)  # (B, T + L - 1, d)
        # vertical: one (L x 1) filter slid down the time axis gives every window's n_v x d output
        out_v = self.conv_v(emb[:, None]).permute(0, 2, 1, 3).reshape(bsz, steps, -1)  # (B, T, n_v * d)
        out_h = []
        channels_first = emb.transpose(1, 2)  # (B, d, T + L - 1)
        for k, conv in enumerate(self.conv_h, start=1):
            rows = F.relu(conv(channels_first))  # (B, n_h, T + L - k): one value per k-row slice
            out_h.append(F.max_pool1d(rows, kernel_size=L - k + 1, stride=1))  # (B, n_h, T)
        out_h = torch.cat(out_h, dim=1).transpose(1, 2)  # (B, T, n_h * L), grouped by height
        z = F.relu(self.fc1(self.dropout(torch.cat([out_v, out_h], dim=2))))
        return F.relu(self.fc2(z))

    def item_scores(self, out: Tensor) -> Tensor:
        """(..., d) -> (..., num_items): tied embeddings, padding row excluded so it never ranks."""
        return out @ self.item_embedding.weight[1:].T

    def reg_loss(self) -> Tensor:
        """RecBole's regulariser: reg_weight * sum of the (unsquared) L2 norms of the weights."""
        weights = [self.item_embedding.weight, self.conv_v.weight, self.fc1.weight, self.fc2.weight]
        weights += [conv.weight for conv in self.conv_h]
        return self.cfg.reg_weight * sum(w.norm(2) for w in weights)

    # --- the SequentialRecommender contract --------------------------------------------------------
    def training_losses(self, batch: SeqBatch) -> dict[str, Tensor]:
        """Cross-entropy over all items at every position with a target (each with its own window)."""
        out = self.encode(batch.items)
        has_target = batch.targets > 0
        rec = full_cross_entropy(out[has_target], self.item_embedding.weight[1:], batch.targets[has_target] - 1)
        reg = self.reg_loss()
        return {"rec": rec, "reg": reg, "total": rec + reg}

    def score(self, batch: SeqBatch) -> Tensor:
        return self.item_scores(self.encode(batch.items, last_only=True)[:, -1])
