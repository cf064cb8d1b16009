"""T2ARec: a Mamba-2 style recommender with time-interval and interest-state alignment losses.

Reads top to bottom like the paper (Sec. 4) and ``shared/spec/t2arec.md``:

    u_i = LayerNorm(Dropout(E[v_i]))                                   embedding
    [z, x~, B~, C~, dt] = W_in u_i ; [x, B, C] = SiLU(conv4([x~, B~, C~]))  Transform (Eq. 3-5; z only with the gate)
    Delta_i = softplus(dt_i + dt_bias) ; Abar_i = exp(Delta_i A)        discretise (Eq. 6)
    h_i = Abar_i h_{i-1} + (Delta_i B_i) outer x_i ; y_i = h_i^T C_i + D x_i   Align^2-SSM (Eq. 7)
    o_i = FFN(LayerNorm(Dropout(W_out (y_i * SiLU(z_i))) [+ u_i]))       (Eq. 8; the gate z: an option, on by default)
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

from t2arec.models.base import ItemTable, LossTerm, SeqBatch, SequentialRecommender, init_normal_
from t2arec.models.last_state import final_state_from_rows
from t2arec.models.layers import FeedForward
from t2arec.models.losses import full_cross_entropy
from t2arec.models.ssd import final_state, scan_chunked, scan_sequential
from t2arec.models.ssd_kernels import kernel_available, scan_kernel
from t2arec.models import t2arec_step


@dataclass
class T2ARecConfig:
    num_items: int = 0  # set from the data when the model is built
    hidden_size: int = 64  # d
    state_size: int = 32  # d_s
    conv_kernel: int = 4
    num_layers: int = 1
    # heads of the mixer, each with its own Delta, A, D and P over d / num_heads channels (B and C are
    # shared, Mamba-2's single group). The spec fixes 1; more heads is a deviation, measured in
    # docs/ml1m_regime.md
    num_heads: int = 1
    # inner width of the mixer, expand * d: x, z, the state's columns and W_out's input. The spec's
    # block has no expansion (1); Mamba-2, Mamba4Rec and TiM4Rec expand by 2, so at the same d their
    # mixers are twice as wide. A deviation, measured in docs/ml1m_regime.md ("Capacity")
    expand: int = 1
    dropout: float = 0.1  # validation: ahead on ML-1M, a tie on ML-100K (docs/ml1m_regime.md)
    chunk_size: int = 64
    single_layer_residual: bool = False  # Mamba4Rec has no residual around a single SSM layer
    # Mamba-2's (and Mamba4Rec's) output gate y * SiLU(z), z from d more columns of the in-projection.
    # The spec leaves it out (it is not in the paper's Linear_1 size); on by default since issue 10:
    # validation NDCG@10 with/without on ML-1M 0.1588/0.1553, Amazon Pantry 0.0408/0.0369, ML-100K
    # 0.0769/0.0774 (2 seeds, a tie), ML-100K at 600 users 0.0736/0.0655, in about half the steps
    # (docs/models.md, "Training regime"). False gives the spec's block exactly.
    output_gate: bool = True
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
    # inference paths that give the same results faster (switches exist to measure and test them):
    fast_inference: bool = True  # prediction and alignment compute the last position only
    use_item_table: bool = True  # in eval mode, project each item once instead of each token
    use_kernels: bool = True  # on CUDA with mamba_ssm installed, its fused scan (ssd_kernels.py)
    # the test-time step's gradient written out (t2arec_step.py, issue 12); False: autograd over
    # alignment_loss, the reference it is tested against. Training never uses it.
    fast_step: bool = True

    def __post_init__(self) -> None:
        if self.time_transform not in ("log1p", "identity"):
            raise ValueError(f"time_transform must be 'log1p' or 'identity', not {self.time_transform!r}")
        if self.state_p not in ("learned", "theorem"):
            raise ValueError(f"state_p must be 'learned' or 'theorem', not {self.state_p!r}")
        if self.time_scale <= 0:
            raise ValueError("time_scale (lambda) must be positive")
        if self.expand < 1:
            raise ValueError(f"expand must be >= 1, not {self.expand}")
        if self.num_heads < 1 or self.inner_size % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be >= 1 and divide the inner width "
                             f"expand * hidden_size ({self.inner_size})")

    @property
    def inner_size(self) -> int:
        """The mixer's width, expand * d (d without expansion, the spec's block)."""
        return self.expand * self.hidden_size


@dataclass
class BlockTrace:
    """What the first block leaves for the alignment losses (shapes for batch B, length L, H heads of
    P = d / H channels; the spec's model has H = 1)."""

    delta: Tensor  # (B, L, H), 0 at padding
    conv_tail: Tensor  # (B, <= k-1, d + 2 d_s): pre-convolution [x~, B~, C~] of the last k-1 positions
    x_last: Tensor  # (B, d), x_n
    final_state: Tensor  # (B, H, d_s, P), h_n


@dataclass
class TokenInputs:
    """The input projection of every token, read by column groups.

    Either ``rows`` of a per-item ``table`` (num_items + 1, width) whose padding row is zero, gathered
    by ``items`` (B, L), or a ``projection`` (B, L, width) already masked at padding. Gathering each
    column group separately keeps every (B, L, width) slice, and its backward, out of the hot path.
    """

    items: Tensor
    table: Tensor | None = None
    projection: Tensor | None = None

    def take(self, cols: slice, last: int | None = None) -> Tensor:
        """Columns ``cols`` at every position, or at the ``last`` positions: (B, L or last, width)."""
        if self.table is not None:
            rows = self.items if last is None else self.items[:, -last:]
            columns = self.table[:, cols]  # index_select copies rows: much faster than columns[rows]
            return columns.index_select(0, rows.reshape(-1)).view(*rows.shape, columns.shape[1])
        source = self.projection if last is None else self.projection[:, -last:]
        return source[..., cols]


def fold_heads(t: Tensor) -> Tensor:
    """(B, L, H, w) -> (B H, L, w): heads that share B and C scan as separate rows of the batch
    (with one head a view)."""
    bsz, length, heads, width = t.shape
    return t.transpose(1, 2).reshape(bsz * heads, length, width)


class T2AMambaBlock(nn.Module):
    """Mamba-2 mixer (unexpanded and single head in the spec) with the re-fed step and the
    backward-state head. Inside the block ``d`` is the inner width ``expand * hidden_size``."""

    def __init__(self, cfg: T2ARecConfig) -> None:
        super().__init__()
        d, ds, heads = cfg.inner_size, cfg.state_size, cfg.num_heads
        self.cfg = cfg
        self.heads, self.head_dim = heads, d // heads
        self.conv_channels = d + 2 * ds
        gate = d if cfg.output_gate else 0
        self.in_proj = nn.Linear(cfg.hidden_size, gate + self.conv_channels + heads, bias=False)  # Linear_1
        self.conv = nn.Conv1d(self.conv_channels, self.conv_channels, cfg.conv_kernel, groups=self.conv_channels)
        self.dt_bias = nn.Parameter(torch.empty(heads))
        self.A_log = nn.Parameter(torch.empty(heads))
        self.D = nn.Parameter(torch.ones(heads))
        self.out_proj = nn.Linear(d, cfg.hidden_size, bias=False)
        self.q_proj = nn.Linear(d, ds, bias=False)  # Linear_2: x_n -> q
        self.P = nn.Parameter(torch.zeros(heads))

    def reset_ssm_parameters(self, generator: torch.Generator | None = None) -> None:
        """Mamba-2 initialisation: Delta log-uniform in [dt_min, dt_max], A uniform in [a_min, a_max]."""
        cfg = self.cfg
        u = torch.rand(self.heads, generator=generator)
        dt = torch.exp(u * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min)).clamp(min=1e-4)
        with torch.no_grad():
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            a = torch.empty(self.heads).uniform_(cfg.a_init_min, cfg.a_init_max, generator=generator)
            self.A_log.copy_(torch.log(a))
            self.D.fill_(1.0)
            self.P.zero_()

    @property
    def A(self) -> Tensor:
        return -torch.exp(self.A_log)

    def split_projection(self, projected: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
        """in_proj output -> (gate z or None, conv inputs [x~, B~, C~], dt (..., H))."""
        gate = self.cfg.inner_size if self.cfg.output_gate else 0
        z = projected[..., :gate] if gate else None
        return z, projected[..., gate : gate + self.conv_channels], projected[..., -self.heads:]

    def skip(self, x: Tensor) -> Tensor:
        """D x, each head's D over its P channels: (..., d) -> (..., d)."""
        return (x.unflatten(-1, (self.heads, self.head_dim)) * self.D[:, None]).flatten(-2)

    def scan(self, x: Tensor, delta: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """The recurrence of every head: x (B, L, d), delta (B, L, H), b, c (B, L, d_s) ->
        y (B, L, d) and h_n (B, H, d_s, P). The heads share B and C, so they are folded into the batch
        (with one head every reshape below is a view)."""
        bsz, length, d = x.shape
        heads, p = self.heads, self.head_dim
        if self.cfg.use_kernels and not self.cfg.sequential_scan and kernel_available(x):
            y, h = scan_kernel(x.view(bsz, length, heads, p), delta, self.A, b, c, self.cfg.chunk_size)
            return y.reshape(bsz, length, d), h

        x_delta, log_decay, b_heads = self.folded_inputs(x, delta, b)
        c_heads = fold_heads(c[:, :, None].expand(bsz, length, heads, c.shape[-1]))
        if self.cfg.sequential_scan:
            y, h = scan_sequential(x_delta, log_decay, b_heads, c_heads)
        else:
            y, h = scan_chunked(x_delta, log_decay, b_heads, c_heads, chunk_size=self.cfg.chunk_size)
        y = y.view(bsz, heads, length, p).transpose(1, 2).reshape(bsz, length, d)
        return y, h.view(bsz, heads, *h.shape[1:])

    def folded_inputs(self, x: Tensor, delta: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The scan's inputs with the heads folded into the batch: x (B, L, d), delta (B, L, H),
        b (B, L, d_s) -> Delta x (B H, L, P), log decay Delta A (B H, L), B (B H, L, d_s)."""
        bsz, length, _ = x.shape
        x_delta = fold_heads(x.view(bsz, length, self.heads, self.head_dim) * delta[..., None])
        log_decay = fold_heads((delta * self.A)[..., None])[..., 0]
        return x_delta, log_decay, fold_heads(b[:, :, None].expand(bsz, length, self.heads, b.shape[-1]))

    def final_state_of_heads(self, x: Tensor, delta: Tensor, b: Tensor) -> Tensor:
        """h_n alone (``ssd.final_state``) for every head: x (B, L, d), delta (B, L, H), b (B, L, d_s) ->
        (B, H, d_s, P)."""
        h = final_state(*self.folded_inputs(x, delta, b))
        return h.view(x.shape[0], self.heads, *h.shape[1:])

    def split_conv_output(self, xbc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        d, ds = self.cfg.inner_size, self.cfg.state_size
        return xbc[..., :d], xbc[..., d : d + ds], xbc[..., d + ds :]

    def forward(self, u: Tensor, mask: Tensor) -> tuple[Tensor, BlockTrace]:
        """u: (B, L, d), mask: (B, L) bool -> (W_out y) (B, L, d) for every position, and the trace."""
        z, conv_in, dt = self.split_projection(self.in_proj(u))
        maskf = mask.to(u.dtype)
        conv_in = conv_in * maskf[..., None]  # the convolution must not see padded values
        xbc = F.conv1d(F.pad(conv_in.transpose(1, 2), (self.cfg.conv_kernel - 1, 0)), self.conv.weight,
                       self.conv.bias, groups=self.conv_channels).transpose(1, 2)
        x, b, c = self.split_conv_output(F.silu(xbc))
        x = x * maskf[..., None]
        delta = F.softplus(dt + self.dt_bias) * maskf[..., None]  # Delta = 0 at padding: Abar = 1, no input
        y, final_state_ = self.scan(x, delta, b, c)
        y = y + self.skip(x)
        if z is not None:
            y = y * F.silu(z)
        trace = BlockTrace(delta=delta, conv_tail=conv_in[:, -(self.cfg.conv_kernel - 1):], x_last=x[:, -1],
                           final_state=final_state_)
        return self.out_proj(y), trace

    def forward_last(self, mask: Tensor, inputs: "TokenInputs") -> tuple[Tensor, BlockTrace]:
        """The same block for the last position only: (W_out y_n) (B, 1, d) and the same trace.

        y_n needs the final state h_n (``ssd.final_state``, one weighted sum), x_n and C_n, so no
        per-position output is computed, C~ is convolved at the last position only, and the gate
        is read at the last position only.
        """
        d, ds, k = self.cfg.inner_size, self.cfg.state_size, self.cfg.conv_kernel
        gate = d if self.cfg.output_gate else 0
        xb_cols = slice(gate, gate + d + ds)
        maskf = mask.to(self.conv.weight.dtype)
        delta = F.softplus(inputs.take(slice(-self.heads, None)) + self.dt_bias) * maskf[..., None]  # (B, L, H)
        # the kernel window that ends at position n gives x_n and C_n
        tail = inputs.take(slice(gate, gate + self.conv_channels), last=k)  # (B, <=k, C)
        if tail.shape[1] < k:
            tail = F.pad(tail, (0, 0, k - tail.shape[1], 0))
        xbc_last = F.silu(torch.einsum("bkc,ck->bc", tail, self.conv.weight[:, 0, :]) + self.conv.bias)
        x_last, _, c_last = self.split_conv_output(xbc_last)
        # h_n from x and B at every position (padding adds 0: Delta = 0 there)
        if inputs.table is not None:  # per-item rows: gathered, convolved and summed in cache-sized chunks
            if self.heads != 1:
                raise ValueError("the per-item table path computes one head; T2ARec.use_table excludes more")
            h_n = final_state_from_rows(inputs.table[:, xb_cols], inputs.items, 0, self.conv.weight[: d + ds, 0],
                                        self.conv.bias[: d + ds], delta[..., 0], self.A, d)[:, None]
        else:
            xb_in = inputs.take(xb_cols)
            xb = F.conv1d(F.pad(xb_in.transpose(1, 2), (k - 1, 0)), self.conv.weight[: d + ds],
                          self.conv.bias[: d + ds], groups=d + ds).transpose(1, 2)
            x, b = torch.split(F.silu(xb), [d, ds], dim=-1)
            h_n = self.final_state_of_heads(x, delta, b)
        y = torch.einsum("bn,bhnp->bhp", c_last, h_n).flatten(1) + self.skip(x_last)
        if gate:
            y = y * F.silu(inputs.take(slice(0, gate), last=1)[:, 0])
        trace = BlockTrace(delta=delta, conv_tail=tail[:, 1:], x_last=x_last, final_state=h_n)
        return self.out_proj(y)[:, None], trace

    def refeed(self, o_last: Tensor, conv_tail: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Eq. 11: Transform(o_n) as token n+1, the conv window ending at n+1.

        o_last: (B, d); conv_tail: (B, <= k-1, C), the pre-convolution inputs of the positions before
        n+1. Returns x (B, d), B (B, d_s), Delta (B, H) of step n+1.
        """
        _, conv_new, dt = self.split_projection(self.in_proj(o_last))
        k = self.cfg.conv_kernel
        window = torch.cat([conv_tail[:, -(k - 1):], conv_new[:, None]], dim=1)  # (B, k, C)
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

    def forward_last(self, u: Tensor | None, mask: Tensor, inputs: TokenInputs) -> tuple[Tensor, BlockTrace]:
        """The last position only, (B, 1, d): the norm and the FFN are position-wise. ``u`` is read only
        for the residual, so it may be None without one."""
        mixed, trace = self.mixer.forward_last(mask, inputs)
        a = self.dropout(mixed)
        if self.residual:
            a = a + u[:, -1:]
        return self.ffn(self.norm(a)), trace


class T2ARec(SequentialRecommender):
    uses_time = True
    has_alignment_loss = True
    has_alignment_gradients = True
    scores_by_table = True

    def __init__(self, cfg: T2ARecConfig, mu_time: float = 0.1, mu_state: float = 1.0) -> None:
        super().__init__()
        self.cfg = cfg
        self.mu_time, self.mu_state = mu_time, mu_state
        self.item_embedding = nn.Embedding(cfg.num_items + 1, cfg.hidden_size, padding_idx=0)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.embed_norm = nn.LayerNorm(cfg.hidden_size, eps=1e-12)
        self.layers = nn.ModuleList(T2ARecLayer(cfg) for _ in range(cfg.num_layers))
        self._table: Tensor | None = None  # cache of input_table(), not a parameter nor saved
        self._table_key: tuple | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_normal_(self, std=0.02)
        for layer in self.layers:
            layer.mixer.reset_ssm_parameters()

    # --- encoding -------------------------------------------------------------------------------
    def embed(self, items: Tensor) -> Tensor:
        return self.embed_norm(self.embed_dropout(self.item_embedding(items)))

    def encode(self, items: Tensor) -> tuple[Tensor, BlockTrace]:
        """items (B, L) -> outputs o (B, L, d) and the first layer's trace."""
        mask = items > 0
        hidden = self.embed(items)
        first_trace = None
        for layer in self.layers:
            hidden, trace = layer(hidden, mask)
            if first_trace is None:  # the alignment losses live in the first block, next to E
                first_trace = trace
        return hidden, first_trace

    def encode_last(self, items: Tensor) -> tuple[Tensor, BlockTrace]:
        """o of the last position only, (B, d), and the first layer's trace: all that prediction and
        the alignment losses read. Earlier layers still run on every position; the last runs
        ``forward_last``. In eval mode the first projection comes from the per-item table."""
        mask = items > 0
        table = self.input_table() if self.use_table(items) else None
        hidden = None if table is not None and not self.layers[0].residual else self.embed(items)
        first_trace = None
        for i, layer in enumerate(self.layers):
            if i == len(self.layers) - 1:
                if i == 0 and table is not None:
                    inputs = TokenInputs(items, table=table)
                else:
                    projection = layer.mixer.in_proj(hidden)
                    inputs = TokenInputs(items, projection=projection * mask[..., None].to(projection.dtype))
                hidden, trace = layer.forward_last(hidden, mask, inputs)
            else:
                hidden, trace = layer(hidden, mask)
            if first_trace is None:
                first_trace = trace
        return hidden[:, -1], first_trace

    # --- the per-item table: embedding, LayerNorm and input projection computed once per item ----
    def use_table(self, items: Tensor) -> bool:
        """At inference (no dropout) the first projection depends on the item alone, so computing it
        per item instead of per token pays when the catalogue is smaller than the batch's tokens."""
        return (not self.training and self.cfg.use_item_table and len(self.layers) == 1
                and self.cfg.num_heads == 1 and self.item_embedding.num_embeddings < items.numel())

    def input_table(self) -> Tensor:
        """in_proj(LayerNorm(E)) for every item, (num_items + 1, in_proj width), padding row zero
        (the block zeroes padded inputs anyway, so a zero row saves that masking).

        Without gradients it is cached until a parameter it reads changes (tensor versions move on
        every in-place update: optimiser steps, test-time alignment and its restore); with gradients
        (the test-time step) it is recomputed, so gradients reach E, the norm and the projection.
        """
        mixer = self.layers[0].mixer
        sources = (self.item_embedding.weight, self.embed_norm.weight, self.embed_norm.bias, mixer.in_proj.weight)

        def compute() -> Tensor:
            rows = mixer.in_proj(self.embed_norm(self.item_embedding.weight[1:]))
            return torch.cat([rows.new_zeros(1, rows.shape[1]), rows])

        if torch.is_grad_enabled() and any(p.requires_grad for p in sources):
            return compute()
        key = tuple((p.data_ptr(), p._version) for p in sources)
        if self._table_key != key:
            with torch.no_grad():
                self._table = compute()
            self._table_key = key
        return self._table

    def item_table(self) -> ItemTable:
        """Tied embeddings, padding row excluded so it never ranks."""
        return ItemTable(self.item_embedding.weight[1:])

    def item_scores(self, o: Tensor) -> Tensor:
        """(..., d) -> (..., num_items) against the item table."""
        return self.item_table().scores(o)

    # --- the two alignment losses ----------------------------------------------------------------
    def time_values(self, gaps: Tensor) -> Tensor:
        if self.cfg.time_transform == "log1p":
            return torch.log1p(gaps.clamp(min=0))
        return gaps

    def time_loss(self, batch: SeqBatch, delta: Tensor, delta_next: Tensor) -> Tensor:
        """L_time (Eq. 14): hinge on pairs (i, j), 2 <= i < j <= n+1, inside blocks of b positions,
        averaged over the pairs and the heads.

        delta: (B, L, H) of positions 1..n (0 at padding), delta_next: (B, H) of step n+1.
        """
        return self.time_loss_term(batch, delta, delta_next).value

    def time_loss_term(self, batch: SeqBatch, delta: Tensor, delta_next: Tensor) -> LossTerm:
        """L_time with its count: (pairs x heads) it is averaged over."""
        mask = batch.mask
        # position i takes part when it and its predecessor are real; step n+1 always does
        no_predecessor = torch.zeros_like(mask[:, :1])
        valid = torch.cat([no_predecessor, mask[:, 1:] & mask[:, :-1], mask[:, -1:]], dim=1)  # (B, L+1)
        d_all = torch.cat([delta, delta_next[:, None]], dim=1).transpose(1, 2)  # (B, H, L+1)
        t_all = self.time_values(torch.cat([batch.gaps, batch.next_gap[:, None]], dim=1))[:, None]  # (B, 1, L+1)
        block = self.cfg.time_block
        pad = (-d_all.shape[-1]) % block  # blocks are aligned to the end, where n+1 sits
        d_all, t_all = F.pad(d_all, (pad, 0)), F.pad(t_all, (pad, 0))
        valid = F.pad(valid[:, None], (pad, 0), value=False)
        d_all, t_all, valid = (v.unflatten(-1, (-1, block)) for v in (d_all, t_all, valid))
        # only the pairs i < j inside a block: half the work of a full (block x block) difference
        first, second = torch.triu_indices(block, block, 1, device=delta.device)
        with torch.no_grad():  # the time gaps are data: nothing to differentiate, nothing to store
            pairs = valid.index_select(-1, first) & valid.index_select(-1, second)
            t_scaled = (t_all.index_select(-1, first) - t_all.index_select(-1, second)) * pairs / self.cfg.time_scale
        d_diff = d_all.index_select(-1, first) - d_all.index_select(-1, second)
        hinge = F.relu(1.0 - d_diff * t_scaled)
        count = pairs.sum() * d_all.shape[1]
        return LossTerm((hinge * pairs).sum() / count.clamp(min=1), count)

    def state_loss(self, trace: BlockTrace, x_next: Tensor, b_next: Tensor, delta_next: Tensor) -> Tensor:
        """L_state (Eq. 20-25): ||h_n - h^b_n||_F^2 / Delta_{n+1}^2, averaged over the batch (with
        several heads, each head's share is divided by its own Delta_{n+1}^2 and the shares are summed).

        x_next: (B, d), b_next: (B, d_s), delta_next: (B, H).
        """
        mixer = self.layers[0].mixer
        h_n = trace.final_state  # (B, H, d_s, P)
        dn = delta_next[:, :, None, None]  # (B, H, 1, 1)
        a, p = mixer.A[:, None, None], mixer.P[:, None, None]  # (H, 1, 1)

        def outer(left: Tensor, x: Tensor) -> Tensor:  # (B, d_s) outer (B, d), split by head -> (B, H, d_s, P)
            return left[:, None, :, None] * x.unflatten(-1, (mixer.heads, mixer.head_dim))[:, :, None, :]

        forward_state = torch.exp(dn * a) * h_n + dn * outer(b_next, x_next)
        p_bar = (-1.0 / a).expand_as(dn) if self.cfg.state_p == "theorem" else torch.exp(dn * p)
        q = mixer.q_proj(trace.x_last)  # (B, d_s)
        backward_state = p_bar * forward_state + dn * outer(q, trace.x_last)
        sq_err = (h_n - backward_state).pow(2).sum(dim=(2, 3))  # (B, H)
        return (sq_err / delta_next.clamp(min=1e-4).pow(2)).sum(dim=1).mean()

    def self_supervised_losses(self, batch: SeqBatch, o_last: Tensor, trace: BlockTrace) -> tuple[Tensor, Tensor]:
        """(L_time, L_state) for the sequences of ``batch`` whose last output is ``o_last`` (B, d)."""
        time, state = self.self_supervised_terms(batch, o_last, trace)
        return time.value, state.value

    def self_supervised_terms(self, batch: SeqBatch, o_last: Tensor, trace: BlockTrace) -> tuple[LossTerm, LossTerm]:
        """L_time and L_state with their counts (pairs x heads; sequences), weighted by the training mu."""
        mixer = self.layers[0].mixer
        x_next, b_next, delta_next = mixer.refeed(o_last, trace.conv_tail)
        time = self.time_loss_term(batch, trace.delta, delta_next)
        time.weight = self.mu_time
        state = LossTerm(self.state_loss(trace, x_next, b_next, delta_next), o_last.shape[0], self.mu_state)
        return time, state

    # --- the SequentialRecommender contract --------------------------------------------------------
    def loss_terms(self, batch: SeqBatch) -> dict[str, LossTerm]:
        """All positions are trained in one causal pass; L_time and L_state at the window's end."""
        o, trace = self.encode(batch.items)
        has_target = batch.targets > 0
        rec = full_cross_entropy(o[has_target], self.item_embedding.weight[1:], batch.targets[has_target] - 1)
        terms = {"rec": LossTerm(rec, has_target.sum())}
        if self.mu_time or self.mu_state:
            terms["time"], terms["state"] = self.self_supervised_terms(batch, o[:, -1], trace)
        return terms

    def encode_for_prediction(self, items: Tensor) -> tuple[Tensor, BlockTrace]:
        """(o_n (B, d), trace): by the fast path unless ``fast_inference`` is off."""
        if self.cfg.fast_inference and not self.cfg.sequential_scan:
            return self.encode_last(items)
        o, trace = self.encode(items)
        return o[:, -1], trace

    def query(self, batch: SeqBatch) -> Tensor:
        return self.encode_for_prediction(batch.items)[0]

    def alignment_loss(self, batch: SeqBatch, mu_time: float, mu_state: float) -> Tensor:
        o_last, trace = self.encode_for_prediction(batch.items)
        time, state = self.self_supervised_losses(batch, o_last, trace)
        return mu_time * time + mu_state * state

    def fast_step_applies(self, batch: SeqBatch) -> bool:
        """Whether ``alignment_gradients`` computes the step by hand: switched on, in eval mode
        (no dropout: the test-time setting), with one layer (a second layer would need the first
        layer's output at every position, which the written-out step never forms) and a batch of at
        least ``t2arec_step.MIN_TOKENS`` positions (below that its fixed costs make it slower)."""
        return (self.cfg.fast_step and not self.training and len(self.layers) == 1
                and not self.cfg.sequential_scan and batch.items.numel() >= t2arec_step.MIN_TOKENS)

    def alignment_gradients(self, batch: SeqBatch, mu_time: float, mu_state: float,
                            params: list[Tensor]) -> tuple[Tensor, list[Tensor]] | None:
        """The loss ``alignment_loss`` and its gradients for ``params``, written out
        (``t2arec_step.alignment_step``: about 2 encodes of the batch, autograd's step 6-7), or None
        when ``fast_step_applies`` is False (the caller uses autograd)."""
        if not self.fast_step_applies(batch):
            return None
        return t2arec_step.alignment_step(self, batch, mu_time, mu_state, params)
