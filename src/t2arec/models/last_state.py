"""The final state h_n of T2ARec's block from per-item rows, computed in cache-sized row chunks.

At inference and in the test-time step, the block needs from every position only its share of the
final state (``ssd.final_state``):

    [x~, B~] = rows[items]                      per-item input projection (the item table)
    [x, B] = SiLU(depthwise_conv4([x~, B~]))    per position
    h_n = sum_i exp(A sum_{j>i} Delta_j) (Delta_i x_i) outer B_i

Every step above is a full pass over a (batch, length, d + d_s) tensor, and on a CPU each pass is
bound by memory bandwidth, not arithmetic. Doing all of them for a few sequences at a time keeps
the intermediates in cache (docs/performance.md). The backward pass recomputes each chunk instead of storing its
intermediates (activation checkpointing per chunk), for the same reason. Rows are independent, so
chunking changes no value; the convolution written as k shifted multiply-adds sums in a different
order than ``F.conv1d`` (differences of float32 rounding, about 1e-6).

On CUDA the whole batch is one chunk: there, launches cost more than memory traffic.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from t2arec.models.ssd import decay_to_end, final_state

# about 2.5 MB of float32 per (chunk, length, 96) intermediate: several of them fit a 32 MB L3
CACHE_TOKENS = 6400


def chunk_rows(batch: int, length: int, device: torch.device) -> int:
    """Sequences per chunk: all of them on a GPU, about ``CACHE_TOKENS`` tokens' worth on a CPU."""
    if device.type != "cpu":
        return batch
    return max(1, min(batch, CACHE_TOKENS // max(length, 1)))


def _gather(rows: Tensor, padded_items: Tensor) -> Tensor:
    """rows[padded_items]: (b, L + k - 1, width). index_select copies whole rows: on a CPU far faster
    than advanced indexing."""
    return rows.index_select(0, padded_items.reshape(-1)).view(*padded_items.shape, rows.shape[1])


def convolve_into(out: Tensor, gathered: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Causal depthwise convolution as k shifted multiply-adds, written into ``out`` (b, L, C):
    gathered (b, L + k - 1, C), weight (C, k), bias (C,).

    Each tap is made a contiguous vector and expanded to ``out``'s shape: a tap read as a strided
    column of ``weight`` makes every multiply-add about 3 times slower (issue 12). The same
    multiply-adds in the same order, so the values are those of the former form bit for bit.
    """
    k = weight.shape[1]
    length = out.shape[1]
    taps = [weight[:, tap].contiguous().expand_as(out) for tap in range(k)]
    torch.addcmul(bias, gathered[:, k - 1 :], taps[k - 1], out=out)
    for tap in range(k - 1):
        out.addcmul_(gathered[:, tap : tap + length], taps[tap])
    return out


def _convolve(gathered: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Causal depthwise convolution as k shifted multiply-adds: (b, L + k - 1, C) -> (b, L, C)."""
    k = weight.shape[1]
    out = gathered.new_empty(gathered.shape[0], gathered.shape[1] - (k - 1), gathered.shape[2])
    return convolve_into(out, gathered, weight, bias)


def _chunk_state(rows: Tensor, padded_items: Tensor, weight: Tensor, bias: Tensor, delta: Tensor, a: Tensor,
                 d: int) -> Tensor:
    """h_n (b, d_s, d) of a few sequences. padded_items: (b, L + k - 1), the first k-1 point at a
    zero row; rows: (num_rows, d + d_s); weight: (d + d_s, k); bias: (d + d_s,); delta: (b, L)."""
    pre = _convolve(_gather(rows, padded_items), weight, bias)
    x, b = torch.split(F.silu(pre), [d, pre.shape[-1] - d], dim=-1)
    return final_state(x * delta[..., None], delta * a, b)


def _chunk_backward(grad_h: Tensor, rows: Tensor, padded_items: Tensor, weight: Tensor, bias: Tensor,
                    delta: Tensor, a: Tensor, d: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of <grad_h, h_n> for one chunk, written out: the chunk's forward is recomputed
    (nothing stored per token) and each per-token tensor is touched a few times while in cache.

    Returns (rows' gradient (num_rows, C), weight's (C, k), bias' (C,), delta's (b, L), a's (1,)).
    """
    k = weight.shape[1]
    length = delta.shape[1]
    gathered = _gather(rows, padded_items)
    pre = _convolve(gathered, weight, bias)
    x, b = torch.split(F.silu(pre), [d, pre.shape[-1] - d], dim=-1)
    decay = decay_to_end(delta * a)  # the weight of position i in h_n, as in ssd.final_state
    # h = (b * decay)^T (x * delta)
    weighted_b = b * decay[..., None]
    grad_x_delta = weighted_b @ grad_h  # (b, L, d)
    grad_weighted_b = (x * delta[..., None]) @ grad_h.transpose(1, 2)  # (b, L, d_s)
    grad_delta = (grad_x_delta * x).sum(-1)
    # decay_i = exp(a sum_{j>i} delta_j): d/d(delta_j a) collects decay_i's gradient over i < j
    grad_exponent = (grad_weighted_b * b).sum(-1) * decay
    grad_log_decay = F.pad(torch.cumsum(grad_exponent, dim=1)[:, :-1], (1, 0))
    grad_delta = grad_delta + grad_log_decay * a
    grad_a = (grad_log_decay * delta).sum().reshape(1)
    grad_silu = torch.cat([grad_x_delta * delta[..., None], grad_weighted_b * decay[..., None]], dim=-1)
    grad_pre = torch.ops.aten.silu_backward(grad_silu, pre)
    grad_bias = grad_pre.sum((0, 1))
    grad_weight = torch.stack([(grad_pre * gathered[:, tap : tap + length]).sum((0, 1)) for tap in range(k)], 1)
    grad_gathered = torch.zeros_like(gathered)
    for tap in range(k):
        grad_gathered[:, tap : tap + length].addcmul_(grad_pre, weight[:, tap])
    grad_rows = torch.zeros_like(rows).index_add_(0, padded_items.reshape(-1), grad_gathered.view(-1, rows.shape[1]))
    return grad_rows, grad_weight, grad_bias, grad_delta, grad_a


class _ChunkedFinalState(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows: Tensor, weight: Tensor, bias: Tensor, delta: Tensor, a: Tensor,  # noqa: ANN001
                padded_items: Tensor, d: int, step: int) -> Tensor:
        rows = rows.contiguous()  # a column slice of the item table: row gathers want contiguous rows
        ctx.save_for_backward(rows, weight, bias, delta, a, padded_items)
        ctx.d, ctx.step = d, step
        return torch.cat([_chunk_state(rows, padded_items[i : i + step], weight, bias, delta[i : i + step], a, d)
                          for i in range(0, delta.shape[0], step)])

    @staticmethod
    def backward(ctx, grad_h: Tensor):  # noqa: ANN001, ANN205
        rows, weight, bias, delta, a, padded_items = ctx.saved_tensors
        totals = [torch.zeros_like(rows), torch.zeros_like(weight), torch.zeros_like(bias), torch.zeros_like(a)]
        grad_delta = torch.empty_like(delta)
        for i in range(0, delta.shape[0], ctx.step):
            chunk = slice(i, i + ctx.step)
            g_rows, g_weight, g_bias, grad_delta[chunk], g_a = _chunk_backward(
                grad_h[chunk], rows, padded_items[chunk], weight, bias, delta[chunk], a, ctx.d)
            for total, g in zip(totals, (g_rows, g_weight, g_bias, g_a)):
                total.add_(g)
        wanted = ctx.needs_input_grad
        grads = (totals[0], totals[1], totals[2], grad_delta, totals[3])
        return *(g if need else None for g, need in zip(grads, wanted[:5])), None, None, None


def final_state_from_rows(rows: Tensor, items: Tensor, zero_row: int, weight: Tensor, bias: Tensor,
                          delta: Tensor, a: Tensor, d: int) -> Tensor:
    """h_n (B, d_s, d) of sequences ``items`` (B, L) whose pre-convolution inputs are ``rows[items]``.

    rows: (num_rows, d + d_s) with ``rows[zero_row] == 0`` (padding and positions before the start
    read it); weight: (d + d_s, k) depthwise taps, oldest first; bias: (d + d_s,); delta: (B, L),
    0 at padding; a: the scalar A (shape (1,)). Differentiable in rows, weight, bias, delta and a
    (the gradient of ``rows[zero_row]`` also counts the reads before the start; callers keep that row
    a constant zero).
    """
    k = weight.shape[1]
    padded_items = F.pad(items, (k - 1, 0), value=zero_row)
    step = chunk_rows(items.shape[0], items.shape[1], items.device)
    return _ChunkedFinalState.apply(rows, weight, bias, delta, a, padded_items, d, step)
