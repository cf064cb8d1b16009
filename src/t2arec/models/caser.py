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
``MAX_ITEM_LIST_LENGTH`` (50) as L (``window=50`` here; the default, 10, was chosen on validation;
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

Computation. Both convolutions slide their filters along time over the S = T + L - 1 rows, so both
are correlations in time, and a correlation is a product of spectra (one with the conjugate). One
FFT of the rows over time (length n >= S, so no filter wraps around into the rows it reads) serves
the n_v vertical filters, applied to each embedding column, and all n_h * L horizontal filters,
whose products summed over the d embedding columns are one batched matmul per frequency. The
direct horizontal convolutions cost d n_h L(L+1)/2 multiply-adds per position (0.13 G per sequence
at L = 50, T = 200, three times that with the backward pass); the FFT form costs (n/2 + 1) d n_h L
complex multiply-adds per sequence (0.013 G) whatever the filter heights, and no window of L rows is
ever copied out. The results are the direct convolutions' up to float rounding
(``tests/models/test_caser_fast.py`` checks values and gradients against them). Where a window's
max has tied candidates (the same items, or padding), rounding may pick another of them than the
direct computation would; they send the same gradient to the parameters.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2arec.models.base import ItemTable, LossTerm, SeqBatch, SequentialRecommender
from t2arec.models.losses import full_cross_entropy


@dataclass
class CaserConfig:
    num_items: int = 0  # set from the data when the model is built
    embedding_size: int = 64  # d
    # L, chosen on ML-100K validation over 2 seeds: 10 gives 0.0780 against 0.0641 with RecBole's 50
    # (MAX_ITEM_LIST_LENGTH) and trained 2.6 times faster (docs/models.md); the paper uses 5
    window: int = 10
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


def fft_length(n: int) -> int:
    """The smallest m >= n without a prime factor above 5: a size the FFT handles at full speed."""
    m = n
    while True:
        rest = m
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return m
        m += 1


class Caser(SequentialRecommender):
    uses_time = False
    has_alignment_loss = False
    scores_by_table = True

    def __init__(self, cfg: CaserConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, L = cfg.embedding_size, cfg.window
        self.item_embedding = nn.Embedding(cfg.num_items + 1, d, padding_idx=0)
        # the convolution modules hold the filters (their shapes, default initialisation and state-dict
        # names); ``encode`` applies them through the FFT rather than by calling them
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
        rows, steps = padded.shape[1], padded.shape[1] - L + 1
        emb = self.item_embedding(padded)  # (B, S = T + L - 1, d)
        # both convolutions slide filters along time; one FFT of the rows serves them all (module
        # docstring, "Computation"). S <= n: no filter wraps around into the rows it reads.
        n = fft_length(rows)
        spectrum = torch.fft.rfft(emb, n=n, dim=1)  # (B, n // 2 + 1, d)
        out_v = self.vertical(spectrum, n, steps)
        out_h = self.horizontal(spectrum, n, rows, steps)
        z = F.relu(self.fc1(self.dropout(torch.cat([out_v, out_h], dim=2))))
        return F.relu(self.fc2(z))

    def vertical(self, spectrum: Tensor, n: int, steps: int) -> Tensor:
        """Spectrum (B, n // 2 + 1, d) of the S rows -> (B, T, n_v * d), T = S - L + 1.

        Output t, filter v, dimension c is sum_l w_v[l] E[t + l, c] + b_v: the (L x 1) filter slid
        down each embedding column, a correlation, which is a product with the conjugate spectrum.
        """
        kernel = torch.fft.rfft(self.conv_v.weight.view(self.cfg.num_vertical, self.cfg.window), n=n)  # (n_v, F)
        out = torch.fft.irfft(spectrum[:, None] * kernel.conj()[None, :, :, None], n=n, dim=2)  # (B, n_v, n, d)
        out = out[:, :, :steps] + self.conv_v.bias[:, None, None]
        return out.transpose(1, 2).reshape(spectrum.shape[0], steps, -1)  # grouped by filter, as Conv2d's

    def horizontal(self, spectrum: Tensor, n: int, rows: int, steps: int) -> Tensor:
        """Spectrum (B, n // 2 + 1, d) of the S rows -> (B, T, n_h * L), grouped by height k = 1..L.

        The k-row slice starting at row s gives ReLU(sum_{j<k} W_k[:, :, j] E[s + j] + b_k) (one value
        per filter); the window ending at t takes the max over the slices inside it, s = t..t + L - k.
        All L heights are one bank of L-tap filters (height k's taps beyond k are zero), so the
        correlations of all of them are one batched matmul over the frequencies.
        """
        L, nh = self.cfg.window, self.cfg.num_horizontal
        weight = torch.cat([F.pad(conv.weight, (0, L - k)) for k, conv in enumerate(self.conv_h, start=1)])
        bias = torch.cat([conv.bias for conv in self.conv_h])  # (n_h * L,)
        kernel = torch.fft.rfft(weight, n=n).permute(2, 1, 0).conj()  # (F, d, n_h * L)
        product = torch.bmm(spectrum.transpose(0, 1), kernel)  # (F, B, n_h * L), sum over d per frequency
        # filters first: each height's group is then one contiguous block for the pooling below
        slices = torch.fft.irfft(product.permute(2, 1, 0), n=n)  # (n_h * L, B, n), slice starting at row s
        slices = F.relu(slices + bias[:, None, None])
        # a height-k slice is whole for s <= S - k (beyond, it would wrap around); the window ending at
        # t holds s = t..t + L - k: a sliding max of width L - k + 1 over the whole slices
        pooled = [F.max_pool1d(group[..., : rows - k + 1], kernel_size=L - k + 1, stride=1)
                  for k, group in enumerate(slices.split(nh), start=1)]
        return torch.cat(pooled).permute(1, 2, 0)  # (B, T, n_h * L)

    def item_table(self) -> ItemTable:
        """Tied embeddings, padding row excluded so it never ranks."""
        return ItemTable(self.item_embedding.weight[1:])

    def item_scores(self, out: Tensor) -> Tensor:
        """(..., d) -> (..., num_items) against the item table."""
        return self.item_table().scores(out)

    def reg_loss(self) -> Tensor:
        """RecBole's regulariser: reg_weight * sum of the (unsquared) L2 norms of the weights."""
        weights = [self.item_embedding.weight, self.conv_v.weight, self.fc1.weight, self.fc2.weight]
        weights += [conv.weight for conv in self.conv_h]
        return self.cfg.reg_weight * sum(w.norm(2) for w in weights)

    # --- the SequentialRecommender contract --------------------------------------------------------
    def loss_terms(self, batch: SeqBatch) -> dict[str, LossTerm]:
        """Cross-entropy over all items at every position with a target (each with its own window),
        plus the weight regulariser (no average over the batch: no count)."""
        out = self.encode(batch.items)
        has_target = batch.targets > 0
        rec = full_cross_entropy(out[has_target], self.item_embedding.weight[1:], batch.targets[has_target] - 1)
        return {"rec": LossTerm(rec, has_target.sum()), "reg": LossTerm(self.reg_loss())}

    def query(self, batch: SeqBatch) -> Tensor:
        return self.encode(batch.items, last_only=True)[:, -1]
