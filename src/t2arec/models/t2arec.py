"""T2ARec: a Mamba-2 style recommender with time-interval and interest-state alignment losses.

Reads top to bottom like the paper (Sec. 4) and ``shared/spec/t2arec.md``:

    u_i = LayerNorm(Dropout(E[v_i]))                                   embedding
    [x~, B~, C~, dt] = W_in u_i ; [x, B, C] = SiLU(conv4([x~, B~, C~]))   Transform (Eq. 3-5)
    Delta_i = softplus(dt_i + dt_bias) ; Abar_i = exp(Delta_i A)        discretise (Eq. 6)
    h_i = Abar_i h_{i-1} + (Delta_i B_i) outer x_i ; y_i = h_i^T C_i + D x_i   Align^2-SSM (Eq. 7)
    o_i = FFN(LayerNorm(Dropout(W_out y_i) [+ u_i]))                    (Eq. 8)
    scores = E[1:] o_n                                                  (Eq. 9)

and the two self-supervised losses, computed from the re-fed step n+1 = Transform(o_n) (Eq. 11):
L_time (Eq. 12-14), a blocked pairwise hinge between Delta and the real time gaps, and
L_state (Eq. 20-25), the distance between the final state h_n and the backward state rebuilt from
the forward state h~_{n+1}, diluted by Delta_{n+1}^2.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2arec.models.base import SeqBatch, SequentialRecommender, init_normal_
from t2arec.models.layers import FeedForward
from t2arec.models.ssd import scan_chunked, scan_sequential


@dataclass
class T2ARecConfig:
    num_items: int = 0  # set from the data when the model is built
    hidden_size: int = 64  # d
    state_size: int = 32  # d_s
    conv_kernel: int = 4
    num_layers: int = 1
    dropout: float = 0.2
    chunk_size: int = 64
    single_layer_residual: bool = False  # Mamba4Rec has no residual around a single SSM layer
    output_gate: bool = False  # Mamba-2's y * SiLU(z); not in the paper's in-projection size
    time_transform: str = "log1p"  # g in T_i = g(t_i - t_{i-1}): "log1p" or "identity"
    # lambda in the hinge max(0, 1 - dDelta * dT / lambda). The spec says 1, at which the hinge is a
    # constant on ML-100K; 0.005 makes it active (measured in docs/ml100k.md)
    time_scale: float = 0.005
    time_block: int = 16  # b, pairs are taken inside non-overlapping blocks of b positions
    state_p: str = "learned"  # Pbar = exp(Delta P) with P learned, or "theorem": Pbar = -1/A
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    a_init_min: float = 1.0
    a_init_max: float = 16.0
    sequential_scan: bool = False  # use the reference loop (tests only; slow)

    def __post_init__(self) -> None:
        if self.time_transform not in ("log1p", "identity"):
            raise ValueError(f"time_transform must be 'log1p' or 'identity', not {self.time_transform!r}")
        if self.state_p not in ("learned", "theorem"):
            raise ValueError(f"state_p must be 'learned' or 'theorem', not {self.state_p!r}")
        if self.time_scale <= 0:
            raise ValueError("time_scale (lambda) must be positive")


@dataclass
class BlockTrace:
    """What the first block leaves for the alignment losses (shapes for batch B, length L)."""

    delta: Tensor  # (B, L), 0 at padding
    conv_inputs: Tensor  # (B, L, d + 2 d_s), pre-convolution [x~, B~, C~], 0 at padding
    x_last: Tensor  # (B, d), x_n
    final_state: Tensor  # (B, d_s, d), h_n


class T2AMambaBlock(nn.Module):
    """Single-head, unexpanded Mamba-2 mixer with the re-fed step and the backward-state head."""

    def __init__(self, cfg: T2ARecConfig) -> None:
        super().__init__()
        d, ds = cfg.hidden_size, cfg.state_size
        self.cfg = cfg
        self.conv_channels = d + 2 * ds
        gate = d if cfg.output_gate else 0
        self.in_proj = nn.Linear(d, gate + self.conv_channels + 1, bias=False)  # Linear_1
        self.conv = nn.Conv1d(self.conv_channels, self.conv_channels, cfg.conv_kernel, groups=self.conv_channels)
        self.dt_bias = nn.Parameter(torch.empty(1))
        self.A_log = nn.Parameter(torch.empty(1))
        self.D = nn.Parameter(torch.ones(1))
        self.out_proj = nn.Linear(d, d, bias=False)
        self.q_proj = nn.Linear(d, ds, bias=False)  # Linear_2: x_n -> q
        self.P = nn.Parameter(torch.zeros(1))

    def reset_ssm_parameters(self, generator: torch.Generator | None = None) -> None:
        """Mamba-2 initialisation: Delta log-uniform in [dt_min, dt_max], A uniform in [a_min, a_max]."""
        cfg = self.cfg
        u = torch.rand(1, generator=generator)
        dt = torch.exp(u * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min)).clamp(min=1e-4)
        with torch.no_grad():
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            a = torch.empty(1).uniform_(cfg.a_init_min, cfg.a_init_max, generator=generator)
            self.A_log.copy_(torch.log(a))
            self.D.fill_(1.0)
            self.P.zero_()

    @property
    def A(self) -> Tensor:
        return -torch.exp(self.A_log)

    def split_projection(self, projected: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
        """in_proj output -> (gate z or None, conv inputs [x~, B~, C~], dt)."""
        gate = self.cfg.hidden_size if self.cfg.output_gate else 0
        z = projected[..., :gate] if gate else None
        return z, projected[..., gate : gate + self.conv_channels], projected[..., -1]

    def split_conv_output(self, xbc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        d, ds = self.cfg.hidden_size, self.cfg.state_size
        return xbc[..., :d], xbc[..., d : d + ds], xbc[..., d + ds :]

    def forward(self, u: Tensor, mask: Tensor) -> tuple[Tensor, BlockTrace]:
        """u: (B, L, d), mask: (B, L) bool -> (W_out y) (B, L, d) and the trace."""
        z, conv_in, dt = self.split_projection(self.in_proj(u))
        maskf = mask.to(u.dtype)
        conv_in = conv_in * maskf[..., None]  # the convolution must not see padded values
        xbc = F.conv1d(F.pad(conv_in.transpose(1, 2), (self.cfg.conv_kernel - 1, 0)), self.conv.weight,
                       self.conv.bias, groups=self.conv_channels).transpose(1, 2)
        x, b, c = self.split_conv_output(F.silu(xbc))
        x = x * maskf[..., None]
        delta = F.softplus(dt + self.dt_bias) * maskf  # Delta = 0 at padding: Abar = 1, no input
        scan = scan_sequential if self.cfg.sequential_scan else scan_chunked
        kwargs = {} if self.cfg.sequential_scan else {"chunk_size": self.cfg.chunk_size}
        y, final_state = scan(x * delta[..., None], delta * self.A, b, c, **kwargs)
        y = y + self.D * x
        if z is not None:
            y = y * F.silu(z)
        trace = BlockTrace(delta=delta, conv_inputs=conv_in, x_last=x[:, -1], final_state=final_state)
        return self.out_proj(y), trace

    def refeed(self, o_last: Tensor, conv_inputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Eq. 11: Transform(o_n) as token n+1, the conv window ending at n+1.

        o_last: (B, d); conv_inputs: (B, L, C) of positions 1..n. Returns x, B, Delta of step n+1.
        """
        _, conv_new, dt = self.split_projection(self.in_proj(o_last))
        k = self.cfg.conv_kernel
        window = torch.cat([conv_inputs[:, -(k - 1):], conv_new[:, None]], dim=1)  # (B, k, C)
        if window.shape[1] < k:  # sequences shorter than the kernel: zeros before the start
            window = F.pad(window, (0, 0, k - window.shape[1], 0))
        xbc = torch.einsum("bkc,ck->bc", window, self.conv.weight[:, 0, :]) + self.conv.bias
        x, b, _ = self.split_conv_output(F.silu(xbc))
        delta = F.softplus(dt + self.dt_bias)
        return x, b, delta


class T2ARecLayer(nn.Module):
    def __init__(self, cfg: T2ARecConfig) -> None:
        super().__init__()
        self.mixer = T2AMambaBlock(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=1e-12)
        self.ffn = FeedForward(cfg.hidden_size, cfg.dropout)
        self.residual = cfg.num_layers > 1 or cfg.single_layer_residual

    def forward(self, u: Tensor, mask: Tensor) -> tuple[Tensor, BlockTrace]:
        mixed, trace = self.mixer(u, mask)
        a = self.dropout(mixed) + u if self.residual else self.dropout(mixed)
        return self.ffn(self.norm(a)), trace


class T2ARec(SequentialRecommender):
    uses_time = True
    has_alignment_loss = True

    def __init__(self, cfg: T2ARecConfig, mu_time: float = 0.1, mu_state: float = 1.0) -> None:
        super().__init__()
        self.cfg = cfg
        self.mu_time, self.mu_state = mu_time, mu_state
        self.item_embedding = nn.Embedding(cfg.num_items + 1, cfg.hidden_size, padding_idx=0)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.embed_norm = nn.LayerNorm(cfg.hidden_size, eps=1e-12)
        self.layers = nn.ModuleList(T2ARecLayer(cfg) for _ in range(cfg.num_layers))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_normal_(self, std=0.02)
        for layer in self.layers:
            layer.mixer.reset_ssm_parameters()

    # --- encoding -------------------------------------------------------------------------------
    def embed(self, items: Tensor) -> Tensor:
        return self.embed_norm(self.embed_dropout(self.item_embedding(items)))

    def encode(self, items: Tensor) -> tuple[Tensor, Tensor, BlockTrace]:
        """items (B, L) -> outputs o (B, L, d), first-layer input u (B, L, d), first-layer trace."""
        mask = items > 0
        u = hidden = self.embed(items)
        first_trace = None
        for layer in self.layers:
            hidden, trace = layer(hidden, mask)
            if first_trace is None:  # the alignment losses live in the first block, next to E
                first_trace = trace
        return hidden, u, first_trace

    def item_scores(self, o: Tensor) -> Tensor:
        """(..., d) -> (..., num_items): tied embeddings, padding row excluded so it never ranks."""
        return o @ self.item_embedding.weight[1:].T

    # --- the two alignment losses ----------------------------------------------------------------
    def time_values(self, gaps: Tensor) -> Tensor:
        if self.cfg.time_transform == "log1p":
            return torch.log1p(gaps.clamp(min=0))
        return gaps

    def time_loss(self, batch: SeqBatch, delta: Tensor, delta_next: Tensor) -> Tensor:
        """L_time (Eq. 14): hinge on pairs (i, j), 2 <= i < j <= n+1, inside blocks of b positions.

        delta: (B, L) of positions 1..n (0 at padding), delta_next: (B,) of step n+1.
        """
        mask = batch.mask
        # position i takes part when it and its predecessor are real; step n+1 always does
        no_predecessor = torch.zeros_like(mask[:, :1])
        valid = torch.cat([no_predecessor, mask[:, 1:] & mask[:, :-1], mask[:, -1:]], dim=1)  # (B, L+1)
        d_all = torch.cat([delta, delta_next[:, None]], dim=1)  # (B, L+1)
        t_all = self.time_values(torch.cat([batch.gaps, batch.next_gap[:, None]], dim=1))
        block = self.cfg.time_block
        pad = (-d_all.shape[1]) % block  # blocks are aligned to the end, where n+1 sits
        d_all, t_all = F.pad(d_all, (pad, 0)), F.pad(t_all, (pad, 0))
        valid = F.pad(valid, (pad, 0), value=False)
        bsz = d_all.shape[0]
        d_all, t_all, valid = (v.reshape(bsz, -1, block) for v in (d_all, t_all, valid))
        d_diff = d_all[..., :, None] - d_all[..., None, :]
        t_diff = t_all[..., :, None] - t_all[..., None, :]
        upper = torch.triu(torch.ones(block, block, dtype=torch.bool, device=delta.device), 1)
        pairs = valid[..., :, None] & valid[..., None, :] & upper
        hinge = F.relu(1.0 - d_diff * t_diff / self.cfg.time_scale)
        count = pairs.sum()
        return (hinge * pairs).sum() / count.clamp(min=1)

    def state_loss(self, trace: BlockTrace, x_next: Tensor, b_next: Tensor, delta_next: Tensor) -> Tensor:
        """L_state (Eq. 20-25): ||h_n - h^b_n||_F^2 / Delta_{n+1}^2, averaged over the batch."""
        mixer = self.layers[0].mixer
        h_n = trace.final_state  # (B, d_s, d)
        dn = delta_next[:, None, None]
        forward_state = torch.exp(dn * mixer.A) * h_n + dn * b_next[:, :, None] * x_next[:, None, :]
        if self.cfg.state_p == "theorem":
            p_bar = (-1.0 / mixer.A).expand_as(dn)
        else:
            p_bar = torch.exp(dn * mixer.P)
        q = mixer.q_proj(trace.x_last)  # (B, d_s)
        backward_state = p_bar * forward_state + dn * q[:, :, None] * trace.x_last[:, None, :]
        sq_err = (h_n - backward_state).pow(2).sum(dim=(1, 2))
        return (sq_err / delta_next.clamp(min=1e-4).pow(2)).mean()

    def self_supervised_losses(self, batch: SeqBatch, o_last: Tensor, trace: BlockTrace) -> tuple[Tensor, Tensor]:
        """(L_time, L_state) for the sequences of ``batch`` whose last output is ``o_last`` (B, d)."""
        mixer = self.layers[0].mixer
        x_next, b_next, delta_next = mixer.refeed(o_last, trace.conv_inputs)
        return self.time_loss(batch, trace.delta, delta_next), self.state_loss(trace, x_next, b_next, delta_next)

    # --- the SequentialRecommender contract --------------------------------------------------------
    def training_losses(self, batch: SeqBatch) -> dict[str, Tensor]:
        """All positions are trained in one causal pass; L_time and L_state at the window's end."""
        o, _, trace = self.encode(batch.items)
        has_target = batch.targets > 0
        logits = self.item_scores(o[has_target])  # (T, num_items)
        rec = F.cross_entropy(logits, batch.targets[has_target] - 1)
        total = rec
        losses = {"rec": rec}
        if self.mu_time or self.mu_state:
            time, state = self.self_supervised_losses(batch, o[:, -1], trace)
            total = total + self.mu_time * time + self.mu_state * state
            losses.update(time=time, state=state)
        losses["total"] = total
        return losses

    def score(self, batch: SeqBatch) -> Tensor:
        o, _, _ = self.encode(batch.items)
        return self.item_scores(o[:, -1])

    def alignment_loss(self, batch: SeqBatch, mu_time: float, mu_state: float) -> Tensor:
        o, _, trace = self.encode(batch.items)
        time, state = self.self_supervised_losses(batch, o[:, -1], trace)
        return mu_time * time + mu_state * state
