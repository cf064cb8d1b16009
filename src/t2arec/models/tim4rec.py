"""TiM4Rec (Fan et al., 2024): a multi-head Mamba-2 / SSD recommender whose step size reads the time gaps.

Paper: "TiM4Rec: An Efficient Sequential Recommendation Model Based on Time-Aware Structured State
Space Duality Model", arXiv:2409.16182 (Neurocomputing 2025, doi:10.1016/j.neucom.2025.131270),
Sec. 4 ("Time-aware Structured Masked Matrix" / time-aware SSD). Reference code:
github.com/AlwaysFHao/TiM4Rec, files ``tim4rec.py`` (model, layer, FFN), ``ssd.py`` (``TiSSD``) and
``config/config4movie_64d.yaml`` (ML-1M, d = 64). This file is written from scratch after them.

Reads top to bottom like the reference:

    u = LayerNorm(Dropout(E[v]))                                              embedding
    tau^(1)_i = log1p(t_i - t_{i-1})  (0 at the first position), one copy per head   time feature
    TiSSDLayer:  [z, x~, B~, C~, dt] = W_in u                                 (dt: one per head)
                 [x, B, C] = act(causal depthwise conv4([x~, B~, C~]))
                 s = tau * MLP(tau)                                         time scaling
                 T = act(conv4_2(act(conv4_1(s))))                          two causal depthwise convs per head
                 Delta_i,h = softplus(dt_i,h * T_i,h + b_dt,h)             the time-aware step size
                 h_i = exp(Delta_i,h A_h) h_{i-1} + B_i (outer) (Delta_i,h x_i,h)  per head, B, C shared
                 y_i = h_i^T C_i + D_h x_i,h ;  y = RMSNorm(y * SiLU(z)) ; m = W_out y
                 a = LayerNorm(Dropout(m))        if one layer  (no residual)
                 a = LayerNorm(Dropout(m) + u)    if stacked
                 out = LayerNorm(Dropout(W2 Dropout(Hardswish(W1 a))) + a)    FFN, 4d wide
                 g = sigmoid(W_g tau) ;  tau^(l+1) = g * tau + (1 - g) * T    time feature for the next layer
    scores = E[1..n] o_n                                                      tied item embeddings

How time enters (``ssd.py``, ``TiSSD.forward``): the per-head step ``dt`` from the input projection is
*multiplied* by a learned, causally convolved transform ``T`` of the time-interval feature before
``dt_bias`` and the softplus. Since the SSD mask is L_ij = exp(sum_{j<k<=i} Delta_k A), this makes the
structured mask time-aware at scalar cost (the paper's "Time-aware Structured Masked Matrix"); the
chunked SSD scan (``t2arec.models.ssd.scan_chunked``) runs unchanged with the time-aware Delta.

Defaults (ML-1M, 64-d, ``config/config4movie_64d.yaml`` unless stated):
hidden_size 64, num_layers 2, dropout 0.2, time_dropout 0.2 (``time_drop_out``), state_size 32
(``d_state``), conv_kernel 4 (``d_conv``), expand 2, head_dim 32 (so 4 heads), chunk_size 32,
norm_eps 1e-12. From ``ssd.py``: A initialised uniform in [1, 16] per head, Delta log-uniform in
[1e-3, 1e-1] (floor 1e-4) through ``dt_bias``, D = 1 per head, biased in/out projections, gated
RMSNorm with the gate applied before the norm (``norm_before_gate=False``); from ``tim4rec.py``:
N(0, 0.02) Linear/Embedding init, Kaiming-normal (fan_out) convolutions with zero bias
(``is_kai_ming_init: True``), Hardswish FFN. The reference's convolution activation is Hardswish
whenever the number of heads is not a multiple of 8 (true for 4 heads), SiLU otherwise with the fused
kernel; ``activation`` picks it. The reference's input length is 200 for ML-1M.

Deviations, all needed for causality and for left padding to be an exact no-op:

- Time normalisation: the reference takes raw second differences of the timestamp list and applies
  Dropout and a LayerNorm over the *sequence axis* (a fixed ``max_seq_length``). That mixes positions
  (non-causal; our loss is on every position) and depends on padding, so we use ``log1p`` of the
  gaps in seconds instead (harmless at Unix-epoch scale), with the same Dropout.
- The time-scale MLP and the residual gate are ``Linear(seq_len, seq_len)`` / ``Linear(seq_len, 1)``
  across positions in the reference; here they act position-wise on the per-head time features
  (``Linear(heads, heads)``), and the LayerNorm over the sequence axis that closes the inter-layer
  time update is dropped.
- Padding: conv inputs (items and time) are zeroed at padded positions and Delta is forced to 0
  there, so exp(Delta A) = 1 and nothing enters the state.
- ``next_gap`` is not used (the reference reads only the input timestamps).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2arec.models.base import LossTerm, NextItemModel, SeqBatch, init_normal_
from t2arec.models.layers import FeedForward
from t2arec.models.losses import full_cross_entropy
from t2arec.models.ssd import scan_chunked, scan_sequential


@dataclass
class TiM4RecConfig:
    num_items: int = 0  # set from the data when the model is built
    hidden_size: int = 64  # d
    state_size: int = 32  # d_state, N (B and C shared by all heads)
    conv_kernel: int = 4  # d_conv
    expand: int = 2  # d_inner = expand * d
    head_dim: int = 32  # P; heads = d_inner / P
    num_layers: int = 2
    dropout: float = 0.2
    time_dropout: float = 0.2
    chunk_size: int = 32
    norm_eps: float = 1e-12
    activation: str = "hardswish"  # of the convolutions: "hardswish" (reference, 4 heads) or "silu"
    use_time: bool = True  # False: plain SSD (the reference's ``is_time`` ablation)
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    a_init_min: float = 1.0
    a_init_max: float = 16.0
    sequential_scan: bool = False  # use the reference loop (tests only; slow)

    def __post_init__(self) -> None:
        if self.activation not in ("hardswish", "silu"):
            raise ValueError(f"activation must be 'hardswish' or 'silu', not {self.activation!r}")
        if self.inner_size % self.head_dim:
            raise ValueError(f"expand * hidden_size = {self.inner_size} is not divisible by head_dim {self.head_dim}")
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be positive")

    @property
    def inner_size(self) -> int:
        return self.expand * self.hidden_size

    @property
    def num_heads(self) -> int:
        return self.inner_size // self.head_dim


def causal_depthwise_conv(x: Tensor, conv: nn.Conv1d, keep: Tensor) -> Tensor:
    """x: (B, L, C), keep: (B, L, 1) -> (B, L, C); position i sees inputs i-k+1..i, padding zeroed first."""
    x = (x * keep).transpose(1, 2)
    out = F.conv1d(F.pad(x, (conv.kernel_size[0] - 1, 0)), conv.weight, conv.bias, groups=conv.groups)
    return out.transpose(1, 2)


class GatedRMSNorm(nn.Module):
    """RMSNorm(y * SiLU(z)) * w (Mamba-2's gated norm with the gate before the norm)."""

    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        y = y * F.silu(z)
        return y * torch.rsqrt(y.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight


class TiSSD(nn.Module):
    """The time-aware SSD mixer: Mamba-2 block whose per-head Delta is scaled by the time feature."""

    def __init__(self, cfg: TiM4RecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, e, n, h = cfg.hidden_size, cfg.inner_size, cfg.state_size, cfg.num_heads
        self.conv_channels = e + 2 * n
        self.in_proj = nn.Linear(d, e + self.conv_channels + h)  # [z, x~, B~, C~, dt]
        self.conv = nn.Conv1d(self.conv_channels, self.conv_channels, cfg.conv_kernel, groups=self.conv_channels)
        self.dt_bias = nn.Parameter(torch.empty(h))
        self.A_log = nn.Parameter(torch.empty(h))
        self.D = nn.Parameter(torch.ones(h))
        self.norm = GatedRMSNorm(e, cfg.norm_eps)
        self.out_proj = nn.Linear(e, d)
        self.act = nn.Hardswish() if cfg.activation == "hardswish" else nn.SiLU()
        if cfg.use_time:
            self.time_scale = nn.Sequential(  # reference: the same shape of MLP over the sequence axis
                nn.Dropout(cfg.time_dropout), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, h)
            )
            self.time_conv1 = nn.Conv1d(h, h, cfg.conv_kernel, groups=h)
            self.time_conv2 = nn.Conv1d(h, h, cfg.conv_kernel, groups=h)
            self.time_gate = nn.Sequential(nn.Dropout(cfg.time_dropout), nn.Linear(h, h), nn.Sigmoid())

    def reset_ssm_parameters(self) -> None:
        """Mamba-2 initialisation (per head): Delta log-uniform in [dt_min, dt_max], A uniform in [a_min, a_max], D = 1."""
        cfg = self.cfg
        h = cfg.num_heads
        with torch.no_grad():
            u = torch.rand(h, dtype=self.dt_bias.dtype)
            dt = torch.exp(u * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min))
            dt = dt.clamp(min=cfg.dt_init_floor)
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            self.A_log.copy_(torch.log(torch.empty(h, dtype=self.A_log.dtype).uniform_(cfg.a_init_min, cfg.a_init_max)))
            self.D.fill_(1.0)
            self.norm.weight.fill_(1.0)

    @property
    def A(self) -> Tensor:
        return -torch.exp(self.A_log)

    def forward(self, u: Tensor, tau: Tensor | None, mask: Tensor,
                last_only: bool = False) -> tuple[Tensor, Tensor | None]:
        """u: (B, L, d), tau: (B, L, H) time features (0 at padding) or None, mask: (B, L) bool.

        Returns W_out y (B, L, d) and the time features for the next layer. With ``last_only`` the
        scan still runs over every position, but the gated norm and W_out only at the last: (B, 1, d).
        """
        cfg = self.cfg
        batch, length, _ = u.shape
        e, n, h, p = cfg.inner_size, cfg.state_size, cfg.num_heads, cfg.head_dim
        keep = mask.to(u.dtype)[..., None]  # (B, L, 1)
        z, xbc, dt = self.in_proj(u).split([e, self.conv_channels, h], dim=-1)
        xbc = self.act(causal_depthwise_conv(xbc, self.conv, keep)) * keep
        x, b, c = xbc.split([e, n, n], dim=-1)

        next_tau = None
        if tau is not None:
            scaled = tau * self.time_scale(tau)  # time_diff * mlp4time_scale(time_diff)
            time_dt = self.act(causal_depthwise_conv(scaled, self.time_conv1, keep))
            time_dt = self.act(causal_depthwise_conv(time_dt, self.time_conv2, keep)) * keep
            dt = dt * time_dt  # the time-aware step: final_dt = dt * T
            gate = self.time_gate(tau)
            next_tau = (gate * tau + (1 - gate) * time_dt) * keep
        delta = F.softplus(dt + self.dt_bias) * keep  # (B, L, H); Delta = 0 at padding: decay 1, no input

        # heads into the batch: x (B*H, L, P), log decay (B*H, L), B and C shared by the heads
        xh = x.view(batch, length, h, p)
        x_in = (xh * delta[..., None]).permute(0, 2, 1, 3).reshape(batch * h, length, p)
        log_decay = (delta * self.A).permute(0, 2, 1).reshape(batch * h, length)
        bh = b[:, None].expand(batch, h, length, n).reshape(batch * h, length, n)
        ch = c[:, None].expand(batch, h, length, n).reshape(batch * h, length, n)
        if cfg.sequential_scan:
            y, _ = scan_sequential(x_in, log_decay, bh, ch)
        else:
            y, _ = scan_chunked(x_in, log_decay, bh, ch, chunk_size=cfg.chunk_size)
        y = y.view(batch, h, length, p).permute(0, 2, 1, 3)  # (B, L, H, P)
        y = (y + self.D[:, None] * xh).reshape(batch, length, e)
        if last_only:
            y, z = y[:, -1:], z[:, -1:]
        return self.out_proj(self.norm(y, z)), next_tau


class HardswishFeedForward(FeedForward):
    """The reference FFN: LayerNorm(Dropout(W2 Dropout(Hardswish(W1 a))) + a), W1: d -> 4d."""

    def forward(self, a: Tensor) -> Tensor:
        return self.norm(self.dropout(self.w2(self.dropout(F.hardswish(self.w1(a))))) + a)


class TiSSDLayer(nn.Module):
    def __init__(self, cfg: TiM4RecConfig) -> None:
        super().__init__()
        self.mixer = TiSSD(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.ffn = HardswishFeedForward(cfg.hidden_size, cfg.dropout)
        self.ffn.norm.eps = cfg.norm_eps
        self.residual = cfg.num_layers > 1  # a single layer has no residual connection

    def forward(self, u: Tensor, tau: Tensor | None, mask: Tensor,
                last_only: bool = False) -> tuple[Tensor, Tensor | None]:
        """u: (B, L, d) -> (B, L, d) and the next time features; with ``last_only`` (B, 1, d): what
        follows the scan (norms, FFN) runs at the last position only."""
        mixed, tau = self.mixer(u, tau, mask, last_only)
        if last_only:
            u = u[:, -1:]
        mixed = self.dropout(mixed)
        return self.ffn(self.norm(mixed + u if self.residual else mixed)), tau


class TiM4Rec(NextItemModel):
    uses_time = True
    has_alignment_loss = False

    def __init__(self, cfg: TiM4RecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_embedding = nn.Embedding(cfg.num_items + 1, cfg.hidden_size, padding_idx=0)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.embed_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.time_dropout = nn.Dropout(cfg.dropout)  # the reference drops raw time diffs with dropout_prob
        self.layers = nn.ModuleList(TiSSDLayer(cfg) for _ in range(cfg.num_layers))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_normal_(self, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Conv1d):  # reference: is_kai_ming_init
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        for layer in self.layers:
            layer.mixer.reset_ssm_parameters()

    def time_features(self, gaps: Tensor, mask: Tensor, dtype: torch.dtype) -> Tensor:
        """(B, L) gaps in seconds -> (B, L, H): log1p(gap), 0 at padding, one copy per head."""
        tau = torch.log1p(gaps.to(dtype).clamp(min=0)) * mask.to(dtype)
        return self.time_dropout(tau)[..., None].expand(*tau.shape, self.cfg.num_heads)

    def encode(self, items: Tensor, gaps: Tensor | None = None, last_only: bool = False) -> Tensor:
        """items, gaps (B, L) -> outputs (B, L, d); position t sees items and gaps up to t only.

        With ``last_only`` the result is (B, 1, d), the last position's output: the final layer's
        scan runs over all positions, what follows it at the last position only.
        """
        mask = items > 0
        hidden = self.embed_norm(self.embed_dropout(self.item_embedding(items)))
        tau = None
        if self.cfg.use_time:
            if gaps is None:
                raise ValueError("TiM4Rec with use_time needs the gaps")
            tau = self.time_features(gaps, mask, hidden.dtype)
        for i, layer in enumerate(self.layers):
            hidden, tau = layer(hidden, tau, mask, last_only=last_only and i == len(self.layers) - 1)
        return hidden[:, -1:] if last_only else hidden

    def loss_terms(self, batch: SeqBatch) -> dict[str, LossTerm]:
        hidden = self.encode(batch.items, batch.gaps)
        has_target = batch.targets > 0
        rec = full_cross_entropy(hidden[has_target], self.item_embedding.weight[1:], batch.targets[has_target] - 1)
        return {"rec": LossTerm(rec, has_target.sum())}

    def query(self, batch: SeqBatch) -> Tensor:
        return self.encode(batch.items, batch.gaps, last_only=True)[:, -1]
