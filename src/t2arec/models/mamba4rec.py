"""Mamba4Rec (Liu et al., 2024): Mamba-1 selective state-space layers for next-item prediction.

Reads top to bottom like the paper and its reference code (github.com/chengkai-liu/Mamba4Rec):

    u = LayerNorm(Dropout(E[v]))                                          embedding
    MambaLayer:  m = Mixer(u)
                 a = LayerNorm(Dropout(m))          if one layer          (no residual)
                 a = LayerNorm(Dropout(m) + u)      if stacked
                 out = LayerNorm(Dropout(W2 Dropout(GELU(W1 a))) + a)   position-wise FFN, 4d wide
    scores = E[1..n] o_n                                                  tied item embeddings

The Mamba-1 mixer (Gu & Dao, 2023), with d_inner = expand * d and per-channel state size N:

    [x, z] = W_in u ;  x = SiLU(causal depthwise conv_k(x))
    [dt~, B, C] = W_x x ;  Delta = softplus(W_dt dt~ + b_dt)      (per channel)
    h_t = exp(Delta_t A) h_{t-1} + Delta_t B_t x_t ;  y_t = C_t h_t + D x_t   (A = -exp(A_log), N states per channel)
    out = W_out (y * SiLU(z))

Left padding is an exact no-op: the convolution input and x are zeroed at padding and Delta is
forced to 0 there, so exp(Delta A) = 1 and nothing enters the state.

The selective scan has three implementations that agree to rounding (tested in values and
gradients):

- ``selective_scan_kernel`` (``selective_scan_cpu.py``): a C++ kernel for the CPU, forward and
  backward, compiled at first use. The loop over positions runs in C++, with the state of one
  (sequence, channel) in registers; the backward recomputes states instead of storing them.
- ``selective_scan_chunked``: inside chunks of Q positions, a parallel prefix scan by recursive
  doubling (log2 Q steps that multiply only decays <= 1, so nothing can overflow, unlike
  cumulative-sum forms that divide by decay products), then a short loop carries the state from
  chunk to chunk. Few, large operations, meant for accelerators (not benchmarked on one here).
- ``selective_scan_sequential``: the recurrence as a Python loop, one step per position on
  (B, E, N) tensors; the reference the other two are tested against.

``scan = "auto"`` takes the kernel on the CPU and the chunked scan elsewhere. On a CPU both
PyTorch forms are slow at ML-1M shapes (B = 128, L = 200, E = 128, N = 32): the loop runs a dozen
small operations at each of the 200 positions and autograd keeps their (B, E, N) results for the
backward, and the chunked form makes several passes over (B, L, E, N) tensors of 420 MB each,
bound by memory bandwidth (4-15x slower than the loop). When the
kernel cannot be built (no C++ compiler or ninja), ``"auto"`` warns once and takes the chunked scan
on the CPU too, so no training path loops over positions in Python; ``scan = "sequential"`` is
there for tests and may be faster in that case.

At test time (``score``) only the last position is needed: the scan still runs over all positions,
but the last layer applies its gate, out-projection, norms and FFN to the last position only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2arec.models import selective_scan_cpu
from t2arec.models.base import NextItemModel, SeqBatch, init_normal_
from t2arec.models.layers import FeedForward
from t2arec.models.selective_scan_cpu import selective_scan_kernel


SCANS = ("auto", "kernel", "chunked", "sequential")


@dataclass
class Mamba4RecConfig:
    num_items: int = 0  # set from the data when the model is built
    hidden_size: int = 64  # d
    state_size: int = 32  # d_state, N
    conv_kernel: int = 4  # d_conv
    expand: int = 2  # d_inner = expand * d
    num_layers: int = 1
    dropout: float = 0.2
    dt_rank: int = 0  # 0 = Mamba's "auto": ceil(d / 16)
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    # "mamba": Mamba's own initialisation of W_dt / b_dt (Delta log-uniform in [dt_min, dt_max]);
    # "recbole": what the Mamba4Rec code ends up with, as its N(0, 0.02) re-initialisation of every
    # Linear also overwrites W_dt and zeroes b_dt (so Delta starts near softplus(0) = 0.69)
    dt_init: str = "mamba"
    # "kernel" (compiled, CPU only), "chunked", "sequential" (the reference loop), or "auto": the
    # kernel on the CPU when it can be built, the chunked scan otherwise
    scan: str = "auto"
    chunk_size: int = 16  # positions per chunk of the chunked scan

    def __post_init__(self) -> None:
        if self.dt_init not in ("mamba", "recbole"):
            raise ValueError(f"dt_init must be 'mamba' or 'recbole', not {self.dt_init!r}")
        if self.scan not in SCANS:
            raise ValueError(f"scan must be one of {', '.join(map(repr, SCANS))}, not {self.scan!r}")
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be positive")

    @property
    def inner_size(self) -> int:
        return self.expand * self.hidden_size

    @property
    def delta_rank(self) -> int:
        return self.dt_rank or math.ceil(self.hidden_size / 16)


# --- the selective scan -------------------------------------------------------------------------
def selective_scan_sequential(x: Tensor, delta: Tensor, A: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Reference loop. x, delta: (B, L, E); A: (E, N); b, c: (B, L, N) -> y (B, L, E), y_t = C_t h_t."""
    batch, length, channels = x.shape
    state = x.new_zeros(batch, channels, A.shape[-1])  # h_0 = 0, (B, E, N)
    outputs = []
    for t in range(length):
        decay = torch.exp(delta[:, t, :, None] * A)  # exp(Delta_t A)
        state = decay * state + delta[:, t, :, None] * b[:, t, None, :] * x[:, t, :, None]
        outputs.append((state * c[:, t, None, :]).sum(dim=-1))
    return torch.stack(outputs, dim=1)


def _shift(t: Tensor, offset: int, fill: float) -> Tensor:
    """t shifted ``offset`` positions later along dim 1, the first ``offset`` entries set to ``fill``."""
    head = t.new_full((t.shape[0], offset, *t.shape[2:]), fill)
    return torch.cat([head, t[:, :-offset]], dim=1)


def selective_scan_chunked(
    x: Tensor, delta: Tensor, A: Tensor, b: Tensor, c: Tensor, chunk_size: int = 16
) -> Tensor:
    """Same contract as ``selective_scan_sequential``.

    The recurrence h_t = a_t h_{t-1} + u_t is associative in the pairs (a, u). Inside each chunk,
    recursive doubling gives, after the step with offset k, the state and the decay product over
    the last 2k positions; after log2(Q) steps, the state reached from a zero start and the decay
    from the chunk's start. The state entering each chunk then comes from a loop over chunks.
    The sequence is left-padded to a multiple of Q with (a = 1, u = 0), which changes nothing, and
    chunks are aligned to the end of the sequence.
    """
    batch, length, channels = x.shape
    n_state = A.shape[-1]
    decay = torch.exp(delta[..., None] * A)  # (B, L, E, N), in (0, 1]
    inputs = (delta * x)[..., None] * b[:, :, None, :]  # Delta_t B_t x_t, (B, L, E, N)
    q = min(chunk_size, length)
    pad = (-length) % q
    if pad:
        decay = F.pad(decay, (0, 0, 0, 0, pad, 0), value=1.0)
        inputs = F.pad(inputs, (0, 0, 0, 0, pad, 0))
        c = F.pad(c, (0, 0, pad, 0))
    chunks = decay.shape[1] // q
    decay = decay.reshape(batch * chunks, q, channels, n_state)
    states = inputs.reshape(batch * chunks, q, channels, n_state)

    # 1. Inside each chunk: inclusive prefix scan by recursive doubling.
    offset = 1
    while offset < q:
        states = states + decay * _shift(states, offset, 0.0)
        decay = decay * _shift(decay, offset, 1.0)
        offset *= 2
    states = states.reshape(batch, chunks, q, channels, n_state)  # from a zero state at the chunk start
    decay = decay.reshape(batch, chunks, q, channels, n_state)  # product of decays since the chunk start

    # 2. The state entering each chunk, then what it adds at every position of the chunk.
    if chunks > 1:
        carried = [torch.zeros_like(states[:, 0, 0])]
        for k in range(chunks - 1):
            carried.append(decay[:, k, -1] * carried[-1] + states[:, k, -1])
        states = states + decay * torch.stack(carried, dim=1)[:, :, None]

    y = torch.einsum("bken,bkn->bke", states.reshape(batch, chunks * q, channels, n_state), c)
    return y[:, pad:]


def selective_scan(x: Tensor, delta: Tensor, A: Tensor, b: Tensor, c: Tensor, scan: str = "auto",
                   chunk_size: int = 16) -> Tensor:
    """The scan chosen by ``scan`` (see ``Mamba4RecConfig.scan``); same contract as the three forms.

    ``"auto"`` takes the kernel for CPU float32/float64 tensors when it can be built (the first call
    builds it), and the chunked scan otherwise. ``"kernel"`` raises if the kernel is unavailable.
    """
    if scan == "sequential":
        return selective_scan_sequential(x, delta, A, b, c)
    if scan == "kernel" or (scan == "auto" and selective_scan_cpu.kernel_supports(x)
                            and selective_scan_cpu.kernel_available()):
        return selective_scan_kernel(x, delta, A, b, c)
    return selective_scan_chunked(x, delta, A, b, c, chunk_size=chunk_size)


# --- the model ----------------------------------------------------------------------------------
class MambaMixer(nn.Module):
    """The Mamba-1 block: in-projection, causal conv, selective SSM, SiLU gate, out-projection."""

    def __init__(self, cfg: Mamba4RecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, e, n, r = cfg.hidden_size, cfg.inner_size, cfg.state_size, cfg.delta_rank
        self.in_proj = nn.Linear(d, 2 * e, bias=False)  # x and the gate z
        self.conv = nn.Conv1d(e, e, cfg.conv_kernel, groups=e)  # depthwise, with bias
        self.x_proj = nn.Linear(e, r + 2 * n, bias=False)  # dt~, B, C
        self.dt_proj = nn.Linear(r, e)
        self.A_log = nn.Parameter(torch.empty(e, n))
        self.D = nn.Parameter(torch.ones(e))
        self.out_proj = nn.Linear(e, d, bias=False)

    def reset_ssm_parameters(self) -> None:
        """A = -(1..N) per channel (S4D-real), D = 1, and W_dt / b_dt per ``cfg.dt_init``."""
        cfg = self.cfg
        with torch.no_grad():
            a = torch.arange(1, cfg.state_size + 1, dtype=self.A_log.dtype)
            self.A_log.copy_(torch.log(a).expand_as(self.A_log))
            self.D.fill_(1.0)
            if cfg.dt_init == "recbole":
                nn.init.normal_(self.dt_proj.weight, std=0.02)
                nn.init.zeros_(self.dt_proj.bias)
                return
            bound = cfg.delta_rank**-0.5
            nn.init.uniform_(self.dt_proj.weight, -bound, bound)
            u = torch.rand(cfg.inner_size, dtype=self.dt_proj.bias.dtype)
            dt = torch.exp(u * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min))
            dt = dt.clamp(min=cfg.dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    @property
    def A(self) -> Tensor:
        return -torch.exp(self.A_log)

    def forward(self, u: Tensor, mask: Tensor, last_only: bool = False) -> Tensor:
        """u: (B, L, d), mask: (B, L) bool -> (B, L, d), or (B, 1, d) for the last position with ``last_only``.

        The scan runs over every position either way; ``last_only`` only saves the position-wise
        work after it (skip term, gate, out-projection).
        """
        cfg = self.cfg
        keep = mask.to(u.dtype)[..., None]
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x = x * keep  # the convolution must not see padded values
        x = F.conv1d(F.pad(x.transpose(1, 2), (cfg.conv_kernel - 1, 0)), self.conv.weight, self.conv.bias,
                     groups=cfg.inner_size).transpose(1, 2)
        x = F.silu(x) * keep
        dt, b, c = self.x_proj(x).split([cfg.delta_rank, cfg.state_size, cfg.state_size], dim=-1)
        delta = F.softplus(self.dt_proj(dt)) * keep  # Delta = 0 at padding: decay 1, no input
        y = selective_scan(x, delta, self.A, b, c, cfg.scan, cfg.chunk_size)
        if last_only:
            y, x, z = y[:, -1:], x[:, -1:], z[:, -1:]
        y = y + self.D * x
        return self.out_proj(y * F.silu(z))


class MambaLayer(nn.Module):
    def __init__(self, cfg: Mamba4RecConfig) -> None:
        super().__init__()
        self.mixer = MambaMixer(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=1e-12)
        self.ffn = FeedForward(cfg.hidden_size, cfg.dropout)
        self.residual = cfg.num_layers > 1  # a single Mamba layer has no residual connection

    def forward(self, u: Tensor, mask: Tensor, last_only: bool = False) -> Tensor:
        """u: (B, L, d) -> (B, L, d), or (B, 1, d) for the last position only with ``last_only``."""
        mixed = self.dropout(self.mixer(u, mask, last_only))
        if self.residual:
            mixed = mixed + (u[:, -1:] if last_only else u)
        return self.ffn(self.norm(mixed))


class Mamba4Rec(NextItemModel):
    uses_time = False
    has_alignment_loss = False

    def __init__(self, cfg: Mamba4RecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_embedding = nn.Embedding(cfg.num_items + 1, cfg.hidden_size, padding_idx=0)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.embed_norm = nn.LayerNorm(cfg.hidden_size, eps=1e-12)
        self.layers = nn.ModuleList(MambaLayer(cfg) for _ in range(cfg.num_layers))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_normal_(self, std=0.02)
        for layer in self.layers:
            layer.mixer.reset_ssm_parameters()

    def encode(self, items: Tensor, last_only: bool = False) -> Tensor:
        """items (B, L) -> outputs (B, L, d); position t sees items up to t only.

        With ``last_only`` the last layer computes the last position only: (B, 1, d). Earlier
        layers still compute every position, as the next layer's scan reads all of them.
        """
        mask = items > 0
        hidden = self.embed_norm(self.embed_dropout(self.item_embedding(items)))
        for depth, layer in enumerate(self.layers, start=1):
            hidden = layer(hidden, mask, last_only=last_only and depth == len(self.layers))
        return hidden

    def query(self, batch: SeqBatch) -> Tensor:
        return self.encode(batch.items, last_only=True)[:, -1]
