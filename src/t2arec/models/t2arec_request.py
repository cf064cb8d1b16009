"""T2ARec's test-time step taken per request, for all the requests of a batch at once.

Batch scope (``align.scope = "batch"``, the paper's Algorithm 1) takes one step on the mean loss of
the whole batch, so a user's scores depend on who else is in the batch. Request scope takes, for
every request r (one user in evaluation, the users of one HTTP body or one input line in serving),
the same step on the loss of r's users only, from the trained parameters theta_0:

    theta_r = theta_0 - alpha * grad L_r(theta_0)        L_r = mu1 L_time(r) + mu2 L_state(r)

and predicts r's users with theta_r. Nothing is a Python loop over requests: every parameter gets a
leading request dimension (R, ...), the forward pass runs with each row's own parameters (batched
matrix products, ``torch.bmm``), the per-request losses are summed, and one backward pass gives every
request its own gradient, because L_r depends on theta_r alone (the per-request "deltas").

The item embedding E (num_items + 1, d) is not copied per request. A request's loss reads only the
rows of the items in its histories, so only those rows get a gradient: each request carries the rows
it reads, ``rows`` (R, U, d), U the most distinct items of a request in the batch. Scoring is tied to
E, so request r's scores are q_u . (E + dE_r)^T = q_u . E^T + q_u . dE_r^T, the ordinary product with
the trained table plus a sparse correction on r's own items (``t2arec.scoring.CorrectedScores``).

Batch invariance: a request's numbers must not depend on the other requests of the batch (a service
answer must be reproducible). Every per-row computation here has the same shapes whatever the batch
holds (inputs are always padded to ``max_len``), matrix products are ``bmm`` over rows (each row its
own product of fixed size; MKL computes them independently), the per-request sums add only that
request's rows, and the product with E is made at least ``MIN_ROWS`` rows and ``MIN_COLUMNS`` items
(``models.base``: MKL's kernels for small products round differently). Measured: a request alone
and among others gives bit-identical scores (``tests/test_align_request.py``).

The math mirrors ``T2ARec.encode_last`` and ``T2ARec.self_supervised_losses`` (eval mode: no dropout),
written with per-row parameters; tests pin it to the model's own code (per-request gradients equal the
autograd gradient of ``T2ARec.alignment_loss`` on that request alone, in float64).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from t2arec.models.base import SeqBatch, SequentialRecommender
from t2arec.models.t2arec import T2ARec, fold_heads

EMBEDDING = "item_embedding.weight"
# PyTorch's elementwise CPU kernels run a vectorised loop over blocks of 2 SIMD vectors (32 float32 on
# AVX-512) and a scalar loop over the remainder, and the two round transcendental functions (exp,
# SiLU, softplus, GELU, ...) differently in the last bit. Where a row's values fall depends on the
# whole tensor's size, so the same row would round differently alone and in a batch. ``_pointwise``
# flattens and zero-pads its input to a multiple of this, so that (on one thread) every element
# takes the vectorised path, forward and backward.
VECTOR_BLOCK = 64


def _pointwise(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``fn`` (elementwise) of ``x``, computed on a flat copy padded to a multiple of ``VECTOR_BLOCK``."""
    n = x.numel()
    if n % VECTOR_BLOCK == 0:  # nothing to pad: the flat contiguous tensor is all whole blocks already
        return fn(x.reshape(-1)).view(x.shape)
    flat = F.pad(x.reshape(-1), (0, (-n) % VECTOR_BLOCK))
    return fn(flat)[:n].view(x.shape)


def _silu(x: Tensor) -> Tensor:
    return _pointwise(F.silu, x)


def _softplus(x: Tensor) -> Tensor:
    return _pointwise(F.softplus, x)


def _exp(x: Tensor) -> Tensor:
    return _pointwise(torch.exp, x)


def _decay_to_end(log_decay: Tensor) -> Tensor:
    """``ssd.decay_to_end`` with the batch-invariant exp: (B, L) -> exp(sum_{k>i} a_k)."""
    from_here = torch.flip(torch.cumsum(torch.flip(log_decay, (1,)), dim=1), (1,))
    return _exp(F.pad(from_here[:, 1:], (0, 1)))


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Each row with its own Linear: x (B, T, in), weight (B, out, in), bias (B, out) -> (B, T, out).

    A single output column is a dot product per position, computed elementwise: ``bmm`` of one batch
    element with one column becomes a matrix-vector product, which rounds differently from the same
    element inside a larger ``bmm``."""
    if weight.shape[1] == 1:
        out = (x * weight[:, :1, :]).sum(-1, keepdim=True)
        return out if bias is None else out + bias[:, None, :]
    out = torch.bmm(x, weight.transpose(1, 2))
    return out if bias is None else out + bias[:, None, :]


def _layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """LayerNorm over the last dim with per-row affine parameters: x (B, ..., d), weight/bias (B, d)."""
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    return F.layer_norm(x, x.shape[-1:], eps=eps) * weight.view(shape) + bias.view(shape)


def _causal_conv(inputs: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Causal depthwise convolution with per-row taps, as k shifted multiply-adds.

    inputs (B, L, C), weight (B, C, k) oldest tap first, bias (B, C) -> (B, L, C).
    """
    k = weight.shape[-1]
    length = inputs.shape[1]
    padded = F.pad(inputs, (0, 0, k - 1, 0))
    out = bias[:, None, :] + padded[:, k - 1:] * weight[:, None, :, k - 1]
    for tap in range(k - 1):
        out = out + padded[:, tap:tap + length] * weight[:, None, :, tap]
    return out


def _conv_at_end(window: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The convolution of the window (B, k, C) that ends at one position: (B, C)."""
    return (window.transpose(1, 2) * weight).sum(-1) + bias


def _pad_window(window: Tensor, k: int) -> Tensor:
    """Zeros before the start when a sequence is shorter than the kernel: (B, <=k, C) -> (B, k, C)."""
    return F.pad(window, (0, 0, k - window.shape[1], 0)) if window.shape[1] < k else window


class RowParameters:
    """The model's parameters with one copy per row of the batch: ``self[name]`` is (B, *shape)."""

    def __init__(self, per_request: dict[str, Tensor], request_of_row: Tensor, identity: bool) -> None:
        self.per_request, self.request_of_row, self.identity = per_request, request_of_row, identity
        self._rows: dict[str, Tensor] = {}

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._rows:
            tensor = self.per_request[name]
            # each row its own request, in order: the request's tensor is already one per row
            self._rows[name] = tensor if self.identity else tensor.index_select(0, self.request_of_row)
        return self._rows[name]


class T2ARecRequests:
    """Per-request parameters of a T2ARec for the rows of one batch, and the functional forward pass.

    ``tensors`` are what a test-time step updates (all (R, ...)): one per trainable parameter except E,
    then the item rows ``rows`` (R, U, d). ``loss()`` gives the per-request alignment losses (R,),
    ``query()`` each row's o_n (B, d) with the current per-request parameters.

    batch: the rows (B, L); request_of_row: (B,) int64 in 0..R-1, every request with at least one row.
    """

    def __init__(self, model: T2ARec, batch: SeqBatch, request_of_row: Tensor, num_requests: int,
                 mu_time: float, mu_state: float) -> None:
        if model.training:
            raise ValueError("per-request alignment runs in eval mode (no dropout), as test-time alignment does")
        if (reason := request_scope_unsupported(model)) is not None:
            raise ValueError(reason)
        self.model, self.batch, self.mu_time, self.mu_state = model, batch, mu_time, mu_state
        self.request_of_row, self.num_requests = request_of_row, num_requests
        rows = len(request_of_row)
        self.identity = num_requests == rows and bool(
            torch.equal(request_of_row, torch.arange(rows, device=request_of_row.device)))
        self.users_per_request = torch.bincount(request_of_row, minlength=num_requests)
        self.names = [n for n, p in model.named_parameters() if p.requires_grad and n != EMBEDDING]
        params = dict(model.named_parameters())
        self.start = {n: params[n].detach() for n in self.names}
        # the trained parameters, one (contiguous) copy per request: the step updates them in place
        self.current = {n: self.start[n].expand(num_requests, *self.start[n].shape).clone() for n in self.names}
        self._item_rows(model.item_embedding.weight.detach(), batch.items)

    # --- the items each request reads ---------------------------------------------------------------------
    def _item_rows(self, embedding: Tensor, items: Tensor) -> None:
        """``self.items`` (R, U): each request's distinct items ascending, 0-padded (item 0, padding, is
        always among them); ``self.token_row`` (B, L): each token's row in the flat (R * U) rows;
        ``self.rows_start`` / ``self.rows`` (R, U, d): E at those items, trained and current."""
        vocabulary = embedding.shape[0]
        keys = self.request_of_row[:, None] * vocabulary + items  # distinct per (request, item)
        unique, inverse = torch.unique(keys.reshape(-1), sorted=True, return_inverse=True)
        request = unique // vocabulary
        first = torch.searchsorted(unique, request * vocabulary)  # where each key's request begins
        local = torch.arange(len(unique), device=unique.device) - first
        width = int(local.max()) + 1
        self.items = torch.zeros(self.num_requests, width, dtype=torch.int64, device=items.device)
        self.items[request, local] = unique % vocabulary
        self.token_row = (request * width + local)[inverse].view(items.shape)
        self.rows_start = embedding.index_select(0, self.items.reshape(-1)).view(self.num_requests, width, -1)
        self.rows = self.rows_start.clone()

    @property
    def tensors(self) -> list[Tensor]:
        return [self.current[n] for n in self.names] + [self.rows]

    # --- the forward pass with per-row parameters (T2ARec.encode_last in eval mode) ----------------------
    def _row_params(self) -> RowParameters:
        return RowParameters(self.current, self.request_of_row, self.identity)

    def _heads_state(self, mixer, x: Tensor, delta: Tensor, b: Tensor, a: Tensor) -> Tensor:  # noqa: ANN001
        """h_n of every head (``T2AMambaBlock.final_state_of_heads``, per-row A (B, H)): (B, H, d_s, P)."""
        bsz, length, _ = x.shape
        x_delta = fold_heads(x.view(bsz, length, mixer.heads, mixer.head_dim) * delta[..., None])
        log_decay = fold_heads((delta * a[:, None, :])[..., None])[..., 0]
        b_heads = fold_heads(b[:, :, None].expand(bsz, length, mixer.heads, b.shape[-1]))
        h = (b_heads * _decay_to_end(log_decay)[..., None]).transpose(1, 2) @ x_delta  # ssd.final_state
        return h.view(bsz, mixer.heads, *h.shape[1:])

    def _skip(self, mixer, x: Tensor, d_skip: Tensor) -> Tensor:  # noqa: ANN001
        """D x with per-row D (B, H): (B, d) -> (B, d)."""
        return (x.unflatten(-1, (mixer.heads, mixer.head_dim)) * d_skip[:, :, None]).flatten(-2)

    def _mixer_last(self, p: RowParameters, prefix: str, mixer, hidden: Tensor,  # noqa: ANN001
                    mask: Tensor) -> tuple[Tensor, tuple]:
        """``T2AMambaBlock.forward_last``: (W_out y_n) (B, 1, d) and the trace pieces, from the block's
        input (B, L, d).

        The in-projection is computed by column group, each where it is read: [x~, B~] and dt at every
        position, C~ at the last k, the gate z at the last one (as ``TokenInputs.take`` reads them), so
        no slice of a (B, L, width) projection, nor its backward, is ever made."""
        d, ds, k, heads = mixer.cfg.inner_size, mixer.cfg.state_size, mixer.cfg.conv_kernel, mixer.heads
        gate = d if mixer.cfg.output_gate else 0
        channels = mixer.conv_channels  # d + 2 d_s
        maskf = mask.to(hidden.dtype)[..., None]
        w_in = p[prefix + "in_proj.weight"]  # (B, gate + channels + H, d)
        weight, bias = p[prefix + "conv.weight"][:, :, 0], p[prefix + "conv.bias"]  # (B, C, k), (B, C)
        xb_in = _linear(hidden, w_in[:, gate:gate + d + ds]) * maskf  # (B, L, d + d_s), zero at padding
        dt = _linear(hidden, w_in[:, gate + channels:])  # (B, L, H)
        delta = _softplus(dt + p[prefix + "dt_bias"][:, None, :]) * maskf
        c_tail = _linear(hidden[:, -k:], w_in[:, gate + d + ds:gate + channels]) * maskf[:, -k:]
        tail = _pad_window(torch.cat([xb_in[:, -k:], c_tail], dim=-1), k)  # (B, k, C): the window ending at n
        x_last, _, c_last = mixer.split_conv_output(_silu(_conv_at_end(tail, weight, bias)))
        xb = _causal_conv(xb_in, weight[:, :d + ds], bias[:, :d + ds])
        x, b = torch.split(_silu(xb), [d, ds], dim=-1)
        h_n = self._heads_state(mixer, x, delta, b, -_exp(p[prefix + "A_log"]))
        bsz = h_n.shape[0]
        # C_n . h_n per head: one (1, d_s) x (d_s, P) product per row and head
        read = torch.bmm(c_last[:, None, None, :].expand(bsz, heads, 1, ds).reshape(-1, 1, ds),
                         h_n.reshape(-1, ds, mixer.head_dim)).view(bsz, -1)
        y = read + self._skip(mixer, x_last, p[prefix + "D"])
        if gate:
            z_last = _linear(hidden[:, -1:], w_in[:, :gate])[:, 0] * maskf[:, -1]
            y = y * _silu(z_last)
        trace = (delta, tail[:, 1:], x_last, h_n)
        return _linear(y[:, None], p[prefix + "out_proj.weight"]), trace

    def _ffn(self, p: RowParameters, prefix: str, layer, a: Tensor) -> Tensor:  # noqa: ANN001
        """``FeedForward`` (eval): LayerNorm(W2 GELU(W1 a) + a) with per-row weights."""
        inner = _pointwise(F.gelu, _linear(a, p[prefix + "ffn.w1.weight"], p[prefix + "ffn.w1.bias"]))
        out = _linear(inner, p[prefix + "ffn.w2.weight"], p[prefix + "ffn.w2.bias"]) + a
        return _layer_norm(out, p[prefix + "ffn.norm.weight"], p[prefix + "ffn.norm.bias"], layer.ffn.norm.eps)

    def _encode_last(self, p: RowParameters) -> tuple[Tensor, tuple]:
        """o_n (B, d) and the block's trace (delta, conv_tail, x_n, h_n), as ``T2ARec.encode_last``
        (one layer, checked by the constructor)."""
        model, items = self.model, self.batch.items
        layer, prefix = model.layers[0], "layers.0."
        mask = items > 0
        tokens = self.rows.reshape(-1, self.rows.shape[-1]).index_select(0, self.token_row.reshape(-1))
        hidden = _layer_norm(tokens.view(*items.shape, -1), p["embed_norm.weight"], p["embed_norm.bias"],
                             model.embed_norm.eps)  # (B, L, d)
        mixed, trace = self._mixer_last(p, prefix + "mixer.", layer.mixer, hidden, mask)
        a = mixed + hidden[:, -1:] if layer.residual else mixed
        a = _layer_norm(a, p[prefix + "norm.weight"], p[prefix + "norm.bias"], layer.norm.eps)
        return self._ffn(p, prefix, layer, a)[:, 0], trace

    def query(self) -> Tensor:
        """o_n (B, d) of every row with its request's current parameters."""
        return self._encode_last(self._row_params())[0]

    # --- the alignment losses, per row and then per request ------------------------------------------------
    def _refeed(self, p: RowParameters, o_last: Tensor, conv_tail: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``T2AMambaBlock.refeed``, per-row parameters: x (B, d), B (B, d_s), Delta (B, H) of step n+1."""
        mixer = self.model.layers[0].mixer
        prefix = "layers.0.mixer."
        _, conv_new, dt = mixer.split_projection(_linear(o_last[:, None], p[prefix + "in_proj.weight"])[:, 0])
        k = mixer.cfg.conv_kernel
        window = _pad_window(torch.cat([conv_tail[:, -(k - 1):], conv_new[:, None]], dim=1), k)
        x, b, _ = mixer.split_conv_output(_silu(_conv_at_end(window, p[prefix + "conv.weight"][:, :, 0],
                                                              p[prefix + "conv.bias"])))
        return x, b, _softplus(dt + p[prefix + "dt_bias"])

    def _time_rows(self, delta: Tensor, delta_next: Tensor) -> tuple[Tensor, Tensor]:
        """L_time's hinge sum and pair count of each row (B,), (B,): ``T2ARec.time_loss_term`` without
        the sum over the batch."""
        model, batch = self.model, self.batch
        mask = batch.mask
        no_predecessor = torch.zeros_like(mask[:, :1])
        valid = torch.cat([no_predecessor, mask[:, 1:] & mask[:, :-1], mask[:, -1:]], dim=1)
        d_all = torch.cat([delta, delta_next[:, None]], dim=1).transpose(1, 2)  # (B, H, L+1)
        gaps = torch.cat([batch.gaps, batch.next_gap[:, None]], dim=1)
        # ``T2ARec.time_values`` with the batch-invariant log1p
        times = _pointwise(torch.log1p, gaps.clamp(min=0)) if model.cfg.time_transform == "log1p" else gaps
        t_all = times[:, None]
        block = model.cfg.time_block
        pad = (-d_all.shape[-1]) % block
        d_all, t_all = F.pad(d_all, (pad, 0)), F.pad(t_all, (pad, 0))
        valid = F.pad(valid[:, None], (pad, 0), value=False)
        d_all, t_all, valid = (v.unflatten(-1, (-1, block)) for v in (d_all, t_all, valid))
        first, second = torch.triu_indices(block, block, 1, device=delta.device)
        with torch.no_grad():
            pairs = valid.index_select(-1, first) & valid.index_select(-1, second)
            t_scaled = (t_all.index_select(-1, first) - t_all.index_select(-1, second)) * pairs / model.cfg.time_scale
        d_diff = d_all.index_select(-1, first) - d_all.index_select(-1, second)
        hinge = F.relu(1.0 - d_diff * t_scaled)
        return (hinge * pairs).sum(dim=(1, 2, 3)), pairs.sum(dim=(1, 2, 3)).to(delta.dtype) * d_all.shape[1]

    def _state_rows(self, p: RowParameters, trace: tuple, x_next: Tensor, b_next: Tensor,
                    delta_next: Tensor) -> Tensor:
        """``T2ARec.state_loss`` of each row (B,), before the mean over the batch."""
        mixer = self.model.layers[0].mixer
        prefix = "layers.0.mixer."
        _, _, x_last, h_n = trace
        dn = delta_next[:, :, None, None]
        a = -_exp(p[prefix + "A_log"])[:, :, None, None]

        def outer(left: Tensor, x: Tensor) -> Tensor:
            return left[:, None, :, None] * x.unflatten(-1, (mixer.heads, mixer.head_dim))[:, :, None, :]

        forward_state = _exp(dn * a) * h_n + dn * outer(b_next, x_next)
        if self.model.cfg.state_p == "theorem":
            p_bar = (-1.0 / a).expand_as(dn)
        else:
            p_bar = _exp(dn * p[prefix + "P"][:, :, None, None])
        q = _linear(x_last[:, None], p[prefix + "q_proj.weight"])[:, 0]
        backward_state = p_bar * forward_state + dn * outer(q, x_last)
        sq_err = (h_n - backward_state).pow(2).sum(dim=(2, 3))
        return (sq_err / delta_next.clamp(min=1e-4).pow(2)).sum(dim=1)

    def loss(self) -> Tensor:
        """(R,) mu1 L_time + mu2 L_state of each request's rows with its current parameters: exactly
        ``T2ARec.alignment_loss`` of the request's rows alone (means over that request only)."""
        p = self._row_params()
        o_last, trace = self._encode_last(p)
        x_next, b_next, delta_next = self._refeed(p, o_last, trace[1])
        hinge, pairs = self._time_rows(trace[0], delta_next)
        state = self._state_rows(p, trace, x_next, b_next, delta_next)
        zeros = hinge.new_zeros(self.num_requests)
        pairs_r = zeros.index_add(0, self.request_of_row, pairs)
        time_r = zeros.index_add(0, self.request_of_row, hinge) / pairs_r.clamp(min=1)
        state_r = zeros.index_add(0, self.request_of_row, state) / self.users_per_request.to(state.dtype)
        return self.mu_time * time_r + self.mu_state * state_r

    # --- what the step did ----------------------------------------------------------------------------------
    def shift(self) -> Tensor:
        """(R,) L2 norm of each request's parameter change over all parameters (E's rows included)."""
        total = (self.rows - self.rows_start).pow(2).sum(dim=(1, 2))
        for n in self.names:
            total = total + (self.current[n] - self.start[n]).pow(2).flatten(1).sum(1)
        return total.sqrt()

    def corrections(self, query: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The sparse part of the scores: q_u . dE_r[j] for every row u and every item j its request
        changed. Returns (rows (M,), 0-based items (M,), values (M,)); padding (item 0) is left out."""
        change = self.rows - self.rows_start  # (R, U, d): zero on every item r does not read
        per_row = change if self.identity else change.index_select(0, self.request_of_row)
        values = (query[:, None, :] * per_row).sum(-1)  # (B, U): each an independent length-d dot product
        items = self.items if self.identity else self.items.index_select(0, self.request_of_row)
        keep = items > 0
        rows = torch.arange(len(query), device=query.device)[:, None].expand_as(items)
        return rows[keep], items[keep] - 1, values[keep]


ADAPTERS: dict[type, Callable[..., T2ARecRequests]] = {T2ARec: T2ARecRequests}


def request_adapter(model: SequentialRecommender) -> Callable[..., T2ARecRequests] | None:
    """The per-request implementation of a model's test-time step, or None when it has none."""
    return ADAPTERS.get(type(model))


def request_scope_unsupported(model: SequentialRecommender) -> str | None:
    """Why ``model`` cannot take a test-time step per request (align.scope=request), or None when it can.

    Checked when a checkpoint is loaded for serving, so that a service refuses to start instead of
    failing on its first aligned request."""
    if request_adapter(model) is None:
        return f"{type(model).__name__} has no per-request test-time alignment; use align.scope=batch"
    layers = len(getattr(model, "layers", ()))
    if layers != 1:
        return (f"per-request alignment (align.scope=request) is implemented for one T2ARec layer "
                f"(the spec's model), not {layers}; use align.scope=batch")
    return None
