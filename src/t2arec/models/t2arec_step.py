"""The gradient of T2ARec's test-time loss mu1 L_time + mu2 L_state, written out (issue 12).

Test-time alignment (Algorithm 1) needs the gradient of ``T2ARec.alignment_loss`` with respect to
every parameter. Autograd over that loss is the reference (``model.fast_step=false``) and cost about
7 encodes of the batch (docs/performance.md): the per-token final state is run forward twice and
backward once through a cache-chunked kernel, L_state's (B, d_s, d) states go through a dozen
whole-batch passes, and L_time gathers and scatters its 6 million pairs. Here the same gradient
costs about 2.2 encodes:

0. **Order.** Sequences are sorted by length, so that a chunk of them starts at its longest
   sequence's first real position: left padding adds exactly nothing to h_n or to the losses.
1. **Rows.** Every token's pre-convolution inputs [x~, B~] and dt are rows of a table (the per-item
   table ``in_proj(LayerNorm(E))``, or one row per token when the forward uses no table), built with
   autograd so that its gradient goes back to E, the norm and W_in at the end in one small backward.
2. **Token forward**, in cache-sized chunks of sequences, no autograd: the convolution as one
   ``embedding_bag`` over per-tap scaled copies of the rows, SiLU, and
   h_n = sum_i s_i B_i outer x_i with s_i = Delta_i exp(A sum_{j>i} Delta_j). Nothing per token is
   kept: the backward recomputes a chunk in cache, cheaper than storing (B, L, d + d_s) in memory.
3. **The blocks of L_time without step n+1** depend on the data and Delta alone: their value and
   their gradient for every Delta_i are computed directly, the pairs of a block laid out by fixed
   matrices (``_BlockPairs``: half of the b x b square, no gathers).
4. **The per-sequence part** (autograd, on tensors of one row per sequence): y_n, the norm, the
   FFN, the re-fed step n+1, the last block of L_time and L_state. L_state is factored: its residual
   is ``alpha h_n - u1 v1^T - u2 v2^T`` with ``alpha = 1 - Pbar exp(Delta_{n+1} A)``,
   ``u1 = Delta_{n+1} Pbar B_{n+1}``, ``v1 = x_{n+1}``, ``u2 = Delta_{n+1} q``, ``v2 = x_n``, so its
   squared norm reads h_n only through ||h_n||^2 (from step 2) and h_n [v1 v2] (one pass). h_n enters
   the graph only there and in C_n^T h_n; autograd returns the gradients of those three, and the
   gradient of h_n, ``2 g_hh h_n + g_hv [v1 v2]^T + C_n g_hc^T``, is formed a chunk at a time.
5. **Token backward**, the chunks of step 2, no autograd: from the gradient of h_n to those of every
   token's x, B and s_i, through SiLU to the convolution's output. The convolution is linear in the
   rows, so the gradients of the rows, the taps and the bias all follow from k scatter-adds of that
   output gradient, one per tap (``G_tap[r]``: the sum over the tokens whose window reads row r at
   that tap). Delta's gradient (through s_i and the decays) goes to the rows' dt column.
6. The rows' gradient goes back through the table's own graph.

Sums are taken in another order than autograd's, so the gradients equal the reference's to float
rounding (tests/models/test_t2arec_step.py: float64 to 1e-10; ``benchmarks/fast_paths_equal.py
--compare step``: equal ranks on trained checkpoints). Training never comes here: it keeps
``loss_terms`` and autograd, bit for bit.
"""
from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.profiler import record_function

from t2arec.models.base import SeqBatch
from t2arec.models.ssd import decay_to_end

if TYPE_CHECKING:
    from t2arec.models.t2arec import T2ARec

# below this many positions in the batch (sequences x length) autograd's step is as fast or faster
# (measured on the ML-100K and ML-1M checkpoints, one thread: the crossover lies between 16 and 32
# sequences of 200 positions and between 32 and 64 of 50), so T2ARec.fast_step_applies leaves it
MIN_TOKENS = 4096
# tokens per chunk of the token passes (steps 2 and 5): twice last_state.CACHE_TOKENS measured faster
# here (the chunk's (n, L, d + d_s) tensors of about 5 MB stay in the 32 MB L3; fewer, larger ops)
CACHE_TOKENS = 12_800
# tokens per chunk of L_time's inner blocks: (chunk, blocks, b/2 * b) pair tensors of about 800 kB
TIME_CHUNK_TOKENS = 25_600
# when a dict, each part of the step adds its seconds (wall clock) under its name (benchmarks/tta_breakdown.py)
part_seconds: dict[str, float] | None = None


def _chunks(lengths: Tensor, length: int) -> Iterator[tuple[slice, int]]:
    """Cache-sized chunks of sequences sorted by length: (rows, longest real length in them), the
    chunks of empty sequences left out."""
    step = lengths.shape[0] if lengths.device.type != "cpu" else max(1, CACHE_TOKENS // max(length, 1))
    longest = lengths[step - 1:: step].tolist() + ([int(lengths[-1])] if lengths.shape[0] % step else [])
    for i, real in zip(range(0, lengths.shape[0], step), longest):
        if real > 0:
            yield slice(i, i + step), int(real)


@contextlib.contextmanager
def _part(name: str) -> Iterator[None]:
    """A named part of the step: a profiler range, and its seconds in ``part_seconds`` when that is set."""
    start = time.perf_counter()
    with record_function(f"t2arec.step.{name}"):
        yield
    if part_seconds is not None:
        part_seconds[name] = part_seconds.get(name, 0.0) + time.perf_counter() - start


class _Convolution:
    """The depthwise convolution of the gathered rows, as one ``embedding_bag`` per chunk.

    The convolution is linear in the rows: pre_t = bias + sum_tap w_tap * rows[index_{t + tap}]
    (positions padded by k - 1 on the left). With one scaled copy of the rows per tap and the bias
    as one more row, that is a sum of k + 1 rows of a (k R + 1, C) table: ``embedding_bag`` gathers
    and sums them in one pass, where a gather and k multiply-adds take k + 1 passes over the chunk's
    (n, L, C) tensor (``last_state.convolve_into``). Products and sums are rounded in a different
    order than those (float rounding, not bit for bit).
    """

    def __init__(self, rows: Tensor, taps: Tensor, bias: Tensor) -> None:
        """rows: (R, C); taps: (C, k), oldest first; bias: (C,)."""
        self.num_rows, self.k = rows.shape[0], taps.shape[1]
        self.rows, self.taps = rows, taps
        self.table = torch.cat([rows * taps[:, tap] for tap in range(self.k)] + [bias[None]])
        self.tap_offsets = torch.arange(self.k, device=rows.device) * self.num_rows

    def __call__(self, padded_index: Tensor) -> Tensor:
        """padded_index: (n, L + k - 1) rows read, row 0 (zero) before the start -> (n, L, C)."""
        n, length = padded_index.shape[0], padded_index.shape[1] - self.k + 1
        bags = padded_index.unfold(1, self.k, 1) + self.tap_offsets  # (n, L, k): window of t, tap by tap
        bags = F.pad(bags, (0, 1), value=self.k * self.num_rows)  # and the bias row
        return F.embedding_bag(bags.view(n * length, self.k + 1), self.table, mode="sum").view(n, length, -1)


@dataclass
class _TokenForward:
    """What the token forward (step 2) leaves for the rest (B batch, L length, H heads of P channels).

    h: (B, H, d_s, P), h_n; h_sq: (B, H), ||h_n||^2 per head; conv: the convolution, which the
    backward runs again (recomputing a chunk in cache is cheaper than storing (B, L, d + d_s)).
    """

    h: Tensor
    h_sq: Tensor
    conv: _Convolution


def alignment_step(model: "T2ARec", batch: SeqBatch, mu_time: float, mu_state: float,
                   params: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """(loss, gradients) of ``mu_time * L_time + mu_state * L_state`` on ``batch``, as
    ``model.alignment_loss`` and autograd would give them, for ``params`` (zeros for a parameter the
    loss does not reach). The model must be in eval mode with one layer (``T2ARec.fast_step_applies``).
    """
    cfg = model.cfg
    layer = model.layers[0]
    mixer = layer.mixer
    # sequences sorted by length, so that a chunk of them can skip the left padding they all share
    # (padding adds exactly nothing to h_n or to the losses); the gradients do not depend on the order
    lengths, order = torch.sort((batch.items > 0).sum(1), stable=True)
    items, gaps, next_gap = batch.items[order], batch.gaps[order], batch.next_gap[order]
    bsz, length = items.shape
    d, ds, k, heads = cfg.inner_size, cfg.state_size, cfg.conv_kernel, mixer.heads
    gate = d if cfg.output_gate else 0
    xb_cols = slice(gate, gate + d + ds)

    with _part("rows"), torch.enable_grad():
        rows, index = _token_rows(model, items)  # (R, width) with autograd; (B, L) row of each token
    table = rows.detach()
    padded_index = F.pad(index, (k - 1, 0), value=0)  # row 0 is zero: positions before the start
    mask = items > 0
    maskf = mask.to(table.dtype)[..., None]

    with _part("deltas"), torch.no_grad():
        dt_bias, a = mixer.dt_bias.detach(), mixer.A.detach()
        dt = table[:, -heads:].index_select(0, index.reshape(-1)).view(bsz, length, heads) + dt_bias
        delta = F.softplus(dt) * maskf  # (B, L, H), as the forward computes it
        by_head = (delta * a).transpose(1, 2).reshape(bsz * heads, length)
        weight = decay_to_end(by_head).view(bsz, heads, length).transpose(1, 2)  # exp(A sum_{j>i} Delta_j)
        share = weight * delta  # s_i: position i's weight in h_n

    with _part("time_inner"), torch.no_grad():
        time_data = _TimeData.of(model, items, gaps, next_gap)
        inner_sum, inner_grad = _time_inner(delta, time_data, cfg.time_block, lengths)

    with _part("tokens_forward"), torch.no_grad():
        tokens = _tokens_forward(table[:, xb_cols].contiguous(), padded_index, mixer, share, lengths)

    with _part("sequences"), torch.enable_grad():
        seq = _sequence_part(model, items, table, padded_index, tokens, delta, time_data, inner_sum, mu_time, mu_state)

    with _part("tokens_backward"), torch.no_grad():
        grad_tap, grad_share = _tokens_backward(tokens, padded_index, table.shape[0], share, seq, lengths)
        conv_w = mixer.conv.weight.detach()[: d + ds, 0, :]
        rows_xb = table[:, xb_cols]
        grad_rows = seq.grad_rows
        grad_rows[:, xb_cols] += sum(grad_tap[tap] * conv_w[:, tap] for tap in range(k))
        grad_conv_w = torch.zeros_like(mixer.conv.weight)
        grad_conv_w[: d + ds, 0, :] = torch.stack([(rows_xb * grad_tap[tap]).sum(0) for tap in range(k)], 1)
        grad_conv_b = torch.zeros_like(mixer.conv.bias)
        grad_conv_b[: d + ds] = grad_tap[k - 1].sum(0)  # every token reads exactly one row at each tap
        # Delta reaches h_n through s_i = Delta_i w_i and through the weights w_j (j < i) that it decays
        grad_share_weight = grad_share * share
        decayed_before = F.pad(torch.cumsum(grad_share_weight, dim=1)[:, :-1], (0, 0, 1, 0))  # sum_{j<i}
        grad_delta = grad_share * weight + a * decayed_before
        grad_delta += (mu_time / time_data.count) * inner_grad
        grad_delta[:, length - seq.last_delta_grad.shape[1]:] += seq.last_delta_grad
        grad_a = (decayed_before * delta).sum((0, 1))
        grad_dt = torch.ops.aten.softplus_backward(grad_delta * maskf, dt, 1.0, 20.0)
        grad_dt_rows = torch.zeros(table.shape[0], heads, dtype=table.dtype, device=table.device)
        grad_dt_rows.index_add_(0, index.reshape(-1), grad_dt.reshape(-1, heads))
        grad_rows[:, -heads:] += grad_dt_rows

    with _part("rows_backward"):
        row_params = [p for p in (model.item_embedding.weight, model.embed_norm.weight, model.embed_norm.bias,
                                  mixer.in_proj.weight) if p.requires_grad]
        row_grads = torch.autograd.grad(rows, row_params, grad_rows, allow_unused=True) if row_params else ()

    grads: dict[int, Tensor] = {}

    def add(p: Tensor, g: Tensor | None) -> None:
        if g is not None:
            grads[id(p)] = grads[id(p)] + g if id(p) in grads else g

    for p, g in zip(seq.params, seq.param_grads):
        add(p, g)
    for p, g in zip(row_params, row_grads):
        add(p, g)
    add(mixer.conv.weight, grad_conv_w)
    add(mixer.conv.bias, grad_conv_b)
    add(mixer.dt_bias, grad_dt.sum((0, 1)))
    add(mixer.A_log, grad_a * a)  # A = -exp(A_log): dA / dA_log = A
    return seq.loss, [grads.get(id(p), torch.zeros_like(p)) for p in params]


def _token_rows(model: "T2ARec", items: Tensor) -> tuple[Tensor, Tensor]:
    """The in-projection rows every token reads, and which row each token reads.

    With the per-item table (the forward's choice, ``T2ARec.use_table``): ``input_table()``, recomputed
    with gradients, and the items themselves. Otherwise one row per token, ``in_proj(embed(items))``
    zeroed at padding as ``encode_last`` does, after a zero row 0: token (b, i) reads row 1 + b L + i,
    padding row 0. Returns rows (R, width) and index (B, L).
    """
    if model.use_table(items):
        return model.input_table(), items
    mixer = model.layers[0].mixer
    projection = mixer.in_proj(model.embed(items))
    projection = projection * (items > 0)[..., None].to(projection.dtype)
    width = projection.shape[-1]
    rows = torch.cat([projection.new_zeros(1, width), projection.reshape(-1, width)])
    index = torch.arange(1, items.numel() + 1, device=items.device).view(items.shape) * (items > 0)
    return rows, index


@dataclass
class _TimeData:
    """L_time's data, without gradients: for every position 1..n+1 (left-padded to whole blocks of b)
    the transformed time T_i, whether it takes part, and the number of pairs (times heads) the loss
    is averaged over. t, valid: (B, 1, nb, b)."""

    t: Tensor
    valid: Tensor
    count: float
    scale: float  # lambda

    @classmethod
    def of(cls, model: "T2ARec", items: Tensor, gaps: Tensor, next_gap: Tensor) -> "_TimeData":
        """items, gaps (B, L), next_gap (B,), as in ``SeqBatch``."""
        mask, block = items > 0, model.cfg.time_block
        no_predecessor = torch.zeros_like(mask[:, :1])
        valid = torch.cat([no_predecessor, mask[:, 1:] & mask[:, :-1], mask[:, -1:]], dim=1)  # (B, L+1)
        t = model.time_values(torch.cat([gaps, next_gap[:, None]], dim=1))
        pad = (-t.shape[1]) % block  # as time_loss_term: blocks aligned to the end, where n+1 sits
        t, valid = F.pad(t, (pad, 0))[:, None], F.pad(valid, (pad, 0), value=False)[:, None]
        t, valid = t.unflatten(-1, (-1, block)), valid.unflatten(-1, (-1, block))
        in_block = valid.sum(-1, dtype=torch.int64)
        pairs = int((in_block * (in_block - 1) // 2).sum()) * model.layers[0].mixer.heads
        return cls(t, valid, float(max(pairs, 1)), model.cfg.time_scale)


@functools.lru_cache(maxsize=16)
def _pair_matrices(block: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """``_BlockPairs``' (diff, both, back) for blocks of ``block`` positions, built once per block size."""
    offsets = block // 2
    column = torch.arange(offsets * block, device=device)
    delta, i = column // block + 1, column % block
    column, delta, i = (v[(2 * delta < block) | (i < block - delta)] for v in (column, delta, i))  # b/2: i < b/2
    first = torch.zeros(block, offsets * block, dtype=dtype, device=device)
    partner = torch.zeros_like(first)
    first[i, column] = 1.0
    partner[(i + delta) % block, column] = 1.0
    return first - partner, first + partner, (partner - first).T


class _BlockPairs:
    """Fixed matrices that lay out the pairs of a block of b positions as b/2 rows of b entries.

    Each unordered pair {i, k} of a block is entry (delta, i) with k = (i + delta) mod b for one offset
    delta in 1..b/2 (at delta = b/2, for even b, only i < b/2: the other half repeats those pairs;
    their columns are zero). A block's values v (..., b) times ``diff`` (b, b/2 * b) give v_i - v_k
    for every pair, exactly (one subtraction; the other terms are zeros), times ``both`` give
    v_i + v_k, and a gradient per pair g (..., b/2 * b) times ``back`` gives, at each position,
    sum of +g over the pairs where it is k minus sum over those where it is i.
    """

    def __init__(self, block: int, dtype: torch.dtype, device: torch.device) -> None:
        self.diff, self.both, self.back = _pair_matrices(block, dtype, device)

    def hinges(self, d: Tensor, t: Tensor, valid: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor]:
        """d (..., b), t and valid broadcastable to it -> z = 1 - (d_i - d_k) ts_ik per pair (the hinge is
        max(0, z)), the pair mask (1.0 when both positions take part) and ts_ik = (T_i - T_k) pair / lambda,
        each (..., b/2 * b). Per pair the arithmetic of ``T2ARec.time_loss_term``, up to exact
        negations (a pair taken in the other order negates both differences, not their product)."""
        pairs = (valid.to(d.dtype) @ self.both == 2).to(d.dtype)
        t_scaled = (t @ self.diff) * pairs / scale
        return 1.0 - (d @ self.diff) * t_scaled, pairs, t_scaled


def _time_inner(delta: Tensor, data: _TimeData, block: int, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """The blocks of L_time without step n+1 (step 3): the sum of their hinges and its gradient with
    respect to every Delta_i, (B, L, H) (zero in the last block's positions). lengths: (B,), sorted.

    The hinge max(0, 1 - (d_i - d_k) ts_ik) of a pair has gradient -ts_ik for d_i and +ts_ik for d_k
    when it is active (``_BlockPairs`` sums them per position). A chunk of sequences starts at the
    first block that holds a pair of its longest sequence.
    """
    bsz, length, heads = delta.shape
    grad = torch.zeros_like(delta)
    inner_positions = length + 1 - block  # positions 1..n+1-b belong to the blocks before the last
    total = delta.new_zeros(())
    if inner_positions <= 0 or block < 2:
        return total, grad
    pad = (-(length + 1)) % block
    d_inner = F.pad(delta[:, :inner_positions].transpose(1, 2), (pad, 0)).unflatten(-1, (-1, block))  # (B, H, nb-1, b)
    t_inner, valid_inner = data.t[..., :-1, :], data.valid[..., :-1, :]
    inner_blocks = d_inner.shape[2]
    pairs_of = _BlockPairs(block, delta.dtype, delta.device)
    grad_blocks = delta.new_zeros(bsz, heads, inner_blocks, block)
    step = max(1, TIME_CHUNK_TOKENS // max(length, 1))
    for i in range(0, bsz, step):
        # the first pair of a sequence of real length n is at position L - n + 2 of the (L + 1) positions
        first = (pad + length - int(lengths[min(i + step, bsz) - 1]) + 1) // block
        if first >= inner_blocks:
            continue
        rows = (slice(i, i + step), slice(None), slice(first, None))
        z, pairs, t_scaled = pairs_of.hinges(d_inner[rows], t_inner[rows], valid_inner[rows], data.scale)
        total += (F.relu(z) * pairs).sum()
        grad_blocks[rows] = torch.where(z > 0, t_scaled, 0.0) @ pairs_of.back  # 0 off the pairs
    grad[:, :inner_positions] = grad_blocks.flatten(-2)[..., pad:].transpose(1, 2)
    return total, grad


def _tokens_forward(rows_xb: Tensor, padded_index: Tensor, mixer: torch.nn.Module, share: Tensor,
                    lengths: Tensor) -> _TokenForward:
    """h_n of every sequence (step 2), a chunk of sequences at a time, from the first real position
    of the chunk's longest sequence on.

    rows_xb: (R, d + d_s) the [x~, B~] columns of the rows; padded_index: (B, L + k - 1), row 0 before
    the start; share: (B, L, H), s_i; lengths: (B,) real lengths, sorted.
    """
    bsz, length, heads = share.shape
    d, ds, p = mixer.cfg.inner_size, mixer.cfg.state_size, mixer.head_dim
    conv = _Convolution(rows_xb, mixer.conv.weight.detach()[: d + ds, 0, :], mixer.conv.bias.detach()[: d + ds])
    h = rows_xb.new_zeros(bsz, heads, ds, p)
    h_sq = rows_xb.new_zeros(bsz, heads)
    for chunk, real in _chunks(lengths, length):
        x, b = torch.split(F.silu(conv(padded_index[chunk, length - real:])), [d, ds], dim=-1)
        state = _state(x, b, share[chunk, length - real:], heads).view(-1, ds, heads, p).transpose(1, 2)
        h[chunk] = state
        h_sq[chunk] = state.pow(2).sum((-2, -1))  # while the chunk's state is in cache
    return _TokenForward(h=h, h_sq=h_sq, conv=conv)


def _state(x: Tensor, b: Tensor, share: Tensor, heads: int) -> Tensor:
    """sum_i s_i B_i outer x_i: x (n, L, d), b (n, L, d_s), share (n, L, H) -> (n, d_s, d), head h in
    columns h P .. (h + 1) P."""
    if heads == 1:
        return (b * share).transpose(1, 2) @ x  # scale the narrower operand
    return b.transpose(1, 2) @ (x * share.repeat_interleave(x.shape[-1] // heads, dim=-1))


@dataclass
class _SequencePart:
    """The per-sequence part's loss and gradients (step 4).

    params, param_grads: the module parameters it reaches and their gradients; grad_rows: (R, width),
    from the last k tokens' rows; last_delta_grad: (B, m, H), of the last m = min(b - 1, L) Delta_i
    (L_time's last block); and the gradient of h_n in factored form, 2 h_sq_grad h_n + left right^T:
    h_sq_grad (B, H), left (B, H, d_s, 3), right (B, H, P, 3).
    """

    loss: Tensor
    params: list[Tensor]
    param_grads: tuple[Tensor | None, ...]
    grad_rows: Tensor
    last_delta_grad: Tensor
    h_sq_grad: Tensor
    left: Tensor
    right: Tensor


def _sequence_part(model: "T2ARec", items: Tensor, table: Tensor, padded_index: Tensor, tokens: _TokenForward,
                   delta: Tensor, time_data: _TimeData, inner_sum: Tensor, mu_time: float,
                   mu_state: float) -> _SequencePart:
    """Everything after h_n, with autograd on tensors of one row per sequence (step 4).

    The same modules as ``encode_last`` and ``self_supervised_terms`` compute y_n, o_n and step n+1;
    L_state is factored (module docstring), L_time's last block is computed as ``time_loss_term``
    does, and the inner blocks enter as the constant ``inner_sum``.
    """
    cfg = model.cfg
    layer = model.layers[0]
    mixer = layer.mixer
    bsz, length, heads = delta.shape
    d, ds, k, p = cfg.inner_size, cfg.state_size, cfg.conv_kernel, mixer.head_dim
    gate = d if cfg.output_gate else 0
    h = tokens.h
    rows = table.detach().requires_grad_()
    h_sq = tokens.h_sq.detach().requires_grad_()
    probe_c = h.new_zeros(bsz, heads, p, requires_grad=True)  # d loss / d (C_n^T h_n)
    probe_v = h.new_zeros(bsz, heads, ds, 2, requires_grad=True)  # d loss / d (h_n [v1 v2])
    block = cfg.time_block
    m = min(block - 1, length)
    last_delta = delta[:, length - m:].detach().requires_grad_()

    # y_n, o_n: as forward_last and T2ARecLayer.forward_last. The kernel windows ending at n and at
    # n+1 (below) are k multiply-adds of (B, C) rows each (an einsum there loops over the channels)
    conv_rows = rows[:, gate: gate + mixer.conv_channels]
    tail = [conv_rows.index_select(0, padded_index[:, j]) for j in range(-k, 0)]  # k x (B, C), oldest first
    taps = [mixer.conv.weight[:, 0, j] for j in range(k)]

    def window_conv(window: list[Tensor]) -> Tensor:  # k rows (B, C), oldest first -> SiLU(conv) (B, C)
        pre = mixer.conv.bias
        for row, tap in zip(window, taps):
            pre = torch.addcmul(pre, row, tap)
        return F.silu(pre)

    x_last, _, c_last = mixer.split_conv_output(window_conv(tail))
    h_folded = h.view(bsz * heads, ds, p)  # one (d_s, P) state per sequence and head
    c_heads = c_last[:, None].expand(bsz, heads, ds).reshape(bsz * heads, 1, ds)
    y = (torch.bmm(c_heads, h_folded).view(bsz, heads, p) + probe_c).flatten(1) + mixer.skip(x_last)
    if gate:
        y = y * F.silu(rows[:, :gate].index_select(0, padded_index[:, -1]))
    a = layer.dropout(mixer.out_proj(y)[:, None])
    if layer.residual:
        a = a + model.embed(items[:, -1:])
    o_last = layer.ffn(layer.norm(a))[:, -1]
    # step n+1 (Eq. 11), as T2AMambaBlock.refeed
    _, conv_new, dt_next = mixer.split_projection(mixer.in_proj(o_last))
    x_next, b_next, _ = mixer.split_conv_output(window_conv(tail[1:] + [conv_new]))
    delta_next = F.softplus(dt_next + mixer.dt_bias)  # (B, H)

    # L_time: the last block, from Delta_{n-m+1..n} and Delta_{n+1} (left-padded to b positions)
    d_last = torch.cat([last_delta, delta_next[:, None]], dim=1).transpose(1, 2)  # (B, H, m + 1)
    d_last = F.pad(d_last, (block - m - 1, 0))[..., None, :]  # (B, H, 1, b)
    z, pairs, _ = _BlockPairs(block, d_last.dtype, d_last.device).hinges(
        d_last, time_data.t[..., -1:, :], time_data.valid[..., -1:, :], time_data.scale)
    time = (inner_sum + (F.relu(z) * pairs).sum()) / time_data.count

    # L_state, factored: ||alpha h - u1 v1^T - u2 v2^T||^2 per head, with
    # ||u1 v1^T + u2 v2^T||^2 = sum_{a, b} (u_a . u_b)(v_a . v_b)
    dn = delta_next  # (B, H)
    p_bar = (-1.0 / mixer.A).expand_as(dn) if cfg.state_p == "theorem" else torch.exp(dn * mixer.P)
    alpha = 1.0 - p_bar * torch.exp(dn * mixer.A)
    q = mixer.q_proj(x_last)
    u1, u2 = (dn * p_bar)[..., None] * b_next[:, None], dn[..., None] * q[:, None]  # (B, H, d_s)
    v1, v2 = x_next.view(bsz, heads, p), x_last.view(bsz, heads, p)  # (B, H, P)
    v = torch.stack([v1, v2], dim=-1)  # (B, H, P, 2)
    hv = torch.bmm(h_folded, v.view(bsz * heads, p, 2)).view(bsz, heads, ds, 2) + probe_v  # h_n [v1 v2]
    cross = (u1 * hv[..., 0]).sum(-1) + (u2 * hv[..., 1]).sum(-1)  # <h_n, u1 v1^T + u2 v2^T>
    low_rank = ((u1 * u1).sum(-1) * (v1 * v1).sum(-1) + 2 * (u1 * u2).sum(-1) * (v1 * v2).sum(-1)
                + (u2 * u2).sum(-1) * (v2 * v2).sum(-1))
    sq_err = alpha.pow(2) * h_sq - 2 * alpha * cross + low_rank  # (B, H)
    state = (sq_err / dn.clamp(min=1e-4).pow(2)).sum(dim=1).mean()

    loss = mu_time * time + mu_state * state
    params = [p_ for p_ in model.parameters() if p_.requires_grad]
    leaves = [rows, last_delta, h_sq, probe_c, probe_v]
    grads = torch.autograd.grad(loss, params + leaves, allow_unused=True)
    # a leaf the loss does not reach (mu_time or mu_state 0 can cut a path) has gradient zero
    grad_rows, grad_last, grad_h_sq, grad_c, grad_v = (torch.zeros_like(leaf) if g is None else g
                                                       for leaf, g in zip(leaves, grads[len(params):]))
    param_grads = grads[: len(params)]
    with torch.no_grad():
        left = torch.cat([grad_v, c_heads.detach().view(bsz, heads, ds, 1)], dim=-1)  # (B, H, d_s, 3)
        right = torch.cat([v.detach(), grad_c[..., None]], dim=-1)  # (B, H, P, 3)
    return _SequencePart(loss=loss.detach(), params=params, param_grads=param_grads, grad_rows=grad_rows,
                         last_delta_grad=grad_last, h_sq_grad=grad_h_sq, left=left, right=right)


def _tokens_backward(tokens: _TokenForward, padded_index: Tensor, num_rows: int, share: Tensor,
                     seq: _SequencePart, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """From the gradient of h_n back to the convolution's output and the shares (step 5), over the
    same chunks as ``_tokens_forward``.

    Returns the scatter of the convolution output's gradient by row and tap, (k, R, d + d_s):
    ``[tap, r] = sum of grad pre_t over the tokens t whose window reads row r at tap`` (the gradients of
    the rows, taps and bias all follow from it), and the gradient of every s_i, (B, L, H).
    """
    h = tokens.h
    bsz, length, heads = share.shape
    width = tokens.conv.rows.shape[1]
    ds, p = h.shape[2], h.shape[3]
    d = width - ds
    k = padded_index.shape[1] - length + 1
    grad_tap = h.new_zeros(k, num_rows, width)
    grad_share = torch.zeros_like(share)
    for chunk, real in _chunks(lengths, length):
        n = h[chunk].shape[0]
        index = padded_index[chunk, length - real:]  # (n, real + k - 1)
        # the gradient of h_n for these sequences, (n, d_s, d) with head h in columns h P .. (h + 1) P
        grad_h = torch.addcmul(seq.left[chunk] @ seq.right[chunk].transpose(-1, -2),
                               h[chunk], 2 * seq.h_sq_grad[chunk][..., None, None])
        grad_h = grad_h.transpose(1, 2).reshape(n, ds, d)
        pre = tokens.conv(index)  # (n, real, d + d_s), recomputed
        x, b = torch.split(F.silu(pre), [d, ds], dim=-1)
        s = share[chunk, length - real:]
        grad_x_unscaled = b @ grad_h  # (n, real, d): d loss / d x_i = s_i grad_h^T B_i
        grad_out = torch.empty_like(pre)  # [d loss / d x, d loss / d B]: the SiLU outputs' gradient
        if heads == 1:
            grad_b_unscaled = x @ grad_h.transpose(1, 2)  # (n, real, d_s)
            # d loss / d s_i = B_i^T grad_h x_i, read off the narrower product
            grad_share[chunk, length - real:] = (grad_b_unscaled * b).sum(-1, keepdim=True)
            torch.mul(grad_x_unscaled, s, out=grad_out[..., :d])
            torch.mul(grad_b_unscaled, s, out=grad_out[..., d:])
        else:
            s_wide = s.repeat_interleave(p, dim=-1)  # (n, real, d): each head's s over its P channels
            grad_share[chunk, length - real:] = (grad_x_unscaled * x).view(n, real, heads, p).sum(-1)
            torch.mul(grad_x_unscaled, s_wide, out=grad_out[..., :d])
            grad_out[..., d:] = (x * s_wide) @ grad_h.transpose(1, 2)
        grad_pre = torch.ops.aten.silu_backward(grad_out, pre).view(-1, width)
        for tap in range(k):
            grad_tap[tap].index_add_(0, index[:, tap: tap + real].reshape(-1), grad_pre)
    return grad_tap, grad_share
