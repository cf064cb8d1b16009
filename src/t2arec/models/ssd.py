"""The scalar-decay state-space scan of Mamba-2 (single head), in plain PyTorch.

Recurrence, per sequence, with ``h_0 = 0``::

    h_i = exp(a_i) * h_{i-1} + B_i (outer) x_i        h_i in R^{d_s x d}
    y_i = h_i^T C_i

where ``a_i = Delta_i * A <= 0`` is the log decay, and the caller folds ``Delta_i`` into ``x_i``.

Two algorithms compute it:

- ``scan_sequential``: the loop above, the reference the tests compare against.
- ``scan_chunked``: the state-space-duality ("SSD") form: inside chunks of ``Q`` positions the
  output is a masked, decay-weighted attention ``(C B^T * L) X``; between chunks only the
  ``d_s x d`` states are passed on. It is what training and inference use.

Both return the outputs ``y`` (batch, length, d) and the final state ``h_n`` (batch, d_s, d).

- ``final_state``: ``h_n`` alone, as one weighted sum ``h_n = sum_i exp(sum_{k>i} a_k) B_i (outer) x_i``.
  Prediction needs only the last position, so inference and test-time alignment use it instead of
  the scan: one batched matmul, no per-position outputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def scan_sequential(x: Tensor, log_decay: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """Reference loop. x: (B, L, d), log_decay: (B, L), b, c: (B, L, d_s)."""
    batch, length, d = x.shape
    state = x.new_zeros(batch, b.shape[-1], d)
    outputs = []
    for i in range(length):
        decay = torch.exp(log_decay[:, i])[:, None, None]
        state = decay * state + b[:, i, :, None] * x[:, i, None, :]
        outputs.append(torch.einsum("bn,bnd->bd", c[:, i], state))
    return torch.stack(outputs, dim=1), state


def decay_to_end(log_decay: Tensor) -> Tensor:
    """exp(sum_{k>i} a_k), (B, L): how much of position i's input is left in h_n.

    The suffix sums are accumulated from the end (no differences of prefix sums, so no cancellation).
    """
    from_here = torch.flip(torch.cumsum(torch.flip(log_decay, (1,)), dim=1), (1,))  # sum_{k>=i} a_k
    return torch.exp(F.pad(from_here[:, 1:], (0, 1)))  # sum_{k>i} a_k, 0 for the last position


def final_state(x: Tensor, log_decay: Tensor, b: Tensor) -> Tensor:
    """h_n of the recurrence without computing any y. x: (B, L, d), log_decay: (B, L), b: (B, L, d_s).

    Position i enters with weight ``decay_to_end(log_decay)[:, i]``.
    """
    weighted_b = b * decay_to_end(log_decay)[..., None]  # (B, L, d_s)
    return weighted_b.transpose(1, 2) @ x  # (B, d_s, d)


def segment_sums(log_decay: Tensor) -> Tensor:
    """Pairwise sums of log decays: out[..., i, j] = sum_{k=j+1..i} a_k for j <= i, -inf above.

    (..., Q) -> (..., Q, Q). Summing a masked copy avoids the cancellation of cumsum differences.
    """
    q = log_decay.shape[-1]
    repeated = log_decay[..., None].expand(*log_decay.shape, q)  # [..., k, j] = a_k
    strictly_below = torch.tril(torch.ones(q, q, dtype=torch.bool, device=log_decay.device), -1)
    sums = torch.cumsum(repeated.masked_fill(~strictly_below, 0.0), dim=-2)
    on_or_below = torch.tril(torch.ones(q, q, dtype=torch.bool, device=log_decay.device), 0)
    return sums.masked_fill(~on_or_below, float("-inf"))


def scan_chunked(
    x: Tensor, log_decay: Tensor, b: Tensor, c: Tensor, chunk_size: int = 64
) -> tuple[Tensor, Tensor]:
    """SSD scan. Same contract as ``scan_sequential``.

    The sequence is left-padded with zeros (no input, decay 1) to a multiple of ``chunk_size``,
    which changes nothing because the recurrence starts from a zero state.
    """
    batch, length, d = x.shape
    q = min(chunk_size, length)
    pad = (-length) % q
    if pad:
        x = F.pad(x, (0, 0, pad, 0))
        b = F.pad(b, (0, 0, pad, 0))
        c = F.pad(c, (0, 0, pad, 0))
        log_decay = F.pad(log_decay, (pad, 0))
    chunks = x.shape[1] // q
    x = x.reshape(batch, chunks, q, d)
    b = b.reshape(batch, chunks, q, -1)
    c = c.reshape(batch, chunks, q, -1)
    a = log_decay.reshape(batch, chunks, q)
    a_cum = torch.cumsum(a, dim=-1)  # (B, K, Q)

    # 1. Inside each chunk: y_i += sum_{j<=i} (C_i . B_j) exp(sum_{j<k<=i} a_k) x_j
    decay_matrix = torch.exp(segment_sums(a))  # (B, K, Q, Q)
    scores = torch.einsum("bkin,bkjn->bkij", c, b) * decay_matrix
    y = torch.einsum("bkij,bkjd->bkid", scores, x)

    # 2. The state each chunk would leave behind if it started from zero.
    decay_to_end = torch.exp(a_cum[..., -1:] - a_cum)  # (B, K, Q)
    chunk_states = torch.einsum("bkjn,bkj,bkjd->bknd", b, decay_to_end, x)

    # 3. Pass states from chunk to chunk: S_k = exp(sum a over chunk k) S_{k-1} + chunk_state_k.
    chunk_decay = torch.exp(a_cum[..., -1])  # (B, K)
    if chunks == 1:
        final_state = chunk_states[:, 0]
        return y.reshape(batch, -1, d)[:, pad:], final_state
    states_in = []
    state = torch.zeros_like(chunk_states[:, 0])
    for k in range(chunks):
        states_in.append(state)
        state = chunk_decay[:, k, None, None] * state + chunk_states[:, k]
    incoming = torch.stack(states_in, dim=1)  # (B, K, d_s, d): state entering each chunk

    # 4. What the incoming state adds to each position: C_i . (exp(a_cum_i) S_in).
    y = y + torch.einsum("bkin,bknd,bki->bkid", c, incoming, torch.exp(a_cum))
    return y.reshape(batch, -1, d)[:, pad:], state
