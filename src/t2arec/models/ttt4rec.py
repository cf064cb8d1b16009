"""TTT4Rec (Yang, Wang & Ge, 2024, arXiv:2409.19142): Test-Time Training layers for next-item prediction.

The sequence mixer is a TTT layer (Sun et al., 2024, "Learning to (Learn at Test Time): RNNs with
Expressive Hidden States", arXiv:2407.04620): its hidden state is the weight W of a small inner
model f, trained along the sequence by gradient steps on a self-supervised reconstruction loss. The
inner weights are therefore updated on every sequence, at training and at inference, inside the
forward pass. Per head (width f = d / heads):

    q_t, k_t, v_t = theta_Q x_t, theta_K x_t, theta_V x_t      (RoPE on q, k, position = t mod b)
    f_W(u)   = u + LN(g_W(u))         g = u W1 + b1 (TTT-Linear) or GELU(u W1 + b1) W2 + b2 (TTT-MLP)
    l_t(W)   = 1/2 || LN(g_W(k_t)) - (v_t - k_t) ||^2  =  1/2 || f_W(k_t) - v_t ||^2
    lr_t     = base_lr * sigmoid(w_h . x_t + c_h) / f          learnable, per token and head
    mini-batch TTT over chunks of b tokens, with W_0 the weights at the chunk start:
    W_t      = W_0 - eta_i * sum_{s <= t in the chunk} lr_s * grad l_s(W_0),    i = t mod b,
    eta_i    = max(1 / (i + 1) + beta_i, 0)                    (beta learnable, starts at 0)
    z_t      = f_{W_t}(q_t);  the next chunk starts from the W_t of the chunk's last token.

``ttt_dual_form`` computes all W_t of a chunk without materialising them (the TTT paper's dual
form, Sec. 2.5): for TTT-Linear, q_t W_t = q_t W_0 - sum_{s<=t} eta_i lr_s (q_t . k_s) grad_s,
with a lower-triangular mask so position t never sees later tokens of its chunk. The gradient with
respect to the inner model's output is written out (LayerNorm backward of the L2 loss), so the
outer loss back-propagates through the inner updates. The tests check it against a per-token loop
that takes the inner gradients with autograd.

Model (TTT4Rec ``main.py`` + the ttt-lm-pytorch ``TTTModel`` it wraps):

    h = LayerNorm(Dropout(E[v]))                               embedding, eps 1e-12
    Block:  h = h + o_proj(LN_post(TTT(RMSNorm(h))))           sequence mixer, pre-norm residual
            h = h + W_down(SiLU(W_gate a) * W_up a),  a = RMSNorm(h)     SwiGLU feed-forward
    out = RMSNorm(h);  scores = E[1..n] out_t                   tied item embeddings

Defaults and their sources
--------------------------
- ``github.com/ZhaoqiZachYang/TTT4Rec`` ``main.py`` (the ``TTTConfig`` it builds): hidden 64,
  intermediate (SwiGLU) 256, 1 layer, 4 heads, ``ttt_layer_type="mlp"``, ``ttt_base_lr=1.0``,
  ``mini_batch_size=8``, ``rope_theta=1000``, no gate, no pre-conv, separate Q/K projections;
  embedding ``Dropout -> LayerNorm(eps 1e-12)``, N(0, 0.02) init of every Linear/Embedding, CE loss.
- same repository, ``config.yaml``: ``hidden_size: 64``, ``dropout_prob: 0.2`` (embedding only; the
  TTT backbone has no dropout), ``MAX_ITEM_LIST_LENGTH: 50``, Adam lr 1e-3.
- same repository, ``ttt.py`` (copied from github.com/test-time-training/ttt-lm-pytorch): RMSNorm
  eps 1e-6, inner LayerNorm eps 1e-6 with per-head weight 1 / bias 0, ``post_norm`` LayerNorm eps
  1e-6 then ``o_proj``, inner W ~ N(0, 0.02), inner biases 0, lr gate weight N(0, 0.02) / bias 0,
  lr divided by head_dim, token scale 1/(i+1) + learnable bias (clamped at 0), RoPE positions
  ``position % mini_batch_size`` on adjacent pairs, TTT-MLP hidden width 4 * head_dim with tanh-GELU.
- paper (arXiv:2409.19142) Sec. 3: embedding + RoPE, residual blocks (norm, sequence-modelling block,
  feed-forward, residual connections), TTT layer with inner/outer loops and multi-view K, V, Q.
- TTT paper (arXiv:2407.04620) Sec. 2.3-2.7: reconstruction target v - k with LN + residual inside
  f, mini-batch TTT and the dual form, learnable per-token inner learning rate.

Deviations
----------
- Left padding. The reference runs on right-padded RecBole batches and ignores the attention mask
  (padding sits after the real items, so causality alone hides it). Batches here are left-padded, so
  ``encode`` rotates every row so its real items start at column 0, runs the stack, and rotates
  back: chunk boundaries, RoPE positions and token scales are counted from the first real item
  exactly as in the reference, and the same sequence gives the same outputs however much padding
  precedes it. Padded tokens also get inner learning rate 0, so they never update W.
- Training loss: cross-entropy at every position with a target (this library's ``NextItemModel``),
  the reference only scores the last position of each RecBole training sequence.
- The last, partial chunk is padded to b tokens (zero learning rate) instead of being run as a
  shorter chunk; with the triangular mask this gives the same outputs.
- The ttt-lm-pytorch primal/decoding cache path is not reproduced (the dual form serves both).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2arec.models.base import NextItemModel, SeqBatch, init_normal_


@dataclass
class TTT4RecConfig:
    num_items: int = 0  # set from the data when the model is built
    hidden_size: int = 64  # d
    intermediate_size: int = 256  # SwiGLU feed-forward width
    num_layers: int = 1  # num_hidden_layers
    num_heads: int = 4  # num_attention_heads; inner model per head of width d / heads
    ttt_layer_type: str = "mlp"  # "linear" (TTT-Linear) or "mlp" (TTT-MLP, the TTT4Rec code's choice)
    mini_batch_size: int = 8  # b, tokens per inner mini-batch
    ttt_base_lr: float = 1.0
    rope_theta: float = 1000.0
    dropout: float = 0.2  # dropout_prob, on the item embeddings
    norm_eps: float = 1e-6  # RMSNorm / inner LayerNorm / post-norm
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError("the head width must be even for rotary embeddings")
        if self.ttt_layer_type not in ("linear", "mlp"):
            raise ValueError(f"ttt_layer_type must be 'linear' or 'mlp', not {self.ttt_layer_type!r}")
        if self.mini_batch_size < 1:
            raise ValueError("mini_batch_size must be positive")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


# --- the inner model and its gradient -----------------------------------------------------------
def layer_norm(z: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-6) -> Tensor:
    """LayerNorm over the last dim with per-head weight/bias broadcast from (H, 1, f)."""
    mu = z.mean(dim=-1, keepdim=True)
    var = z.var(dim=-1, keepdim=True, unbiased=False)
    return (z - mu) / torch.sqrt(var + eps) * weight + bias


def layer_norm_l2_grad(z: Tensor, target: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-6) -> Tensor:
    """d/dz of 1/2 ||LN(z) - target||^2, row by row (LayerNorm backward written out)."""
    mu = z.mean(dim=-1, keepdim=True)
    std = torch.sqrt(z.var(dim=-1, keepdim=True, unbiased=False) + eps)
    z_hat = (z - mu) / std
    grad_hat = (weight * z_hat + bias - target) * weight  # dL/dz_hat
    return (grad_hat - grad_hat.mean(dim=-1, keepdim=True)
            - z_hat * (grad_hat * z_hat).mean(dim=-1, keepdim=True)) / std


def gelu_tanh_grad(z: Tensor) -> Tensor:
    """Derivative of GELU's tanh approximation."""
    c = math.sqrt(2.0 / math.pi)
    inner = c * (z + 0.044715 * z**3)
    t = torch.tanh(inner)
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * z * z)


def ttt_dual_form(
    q: Tensor, k: Tensor, v: Tensor, lr: Tensor, token_eta: Tensor, params: dict[str, Tensor],
    ln_weight: Tensor, ln_bias: Tensor, eps: float = 1e-6,
) -> Tensor:
    """Mini-batch TTT in the dual form.

    q, k, v: (B, H, L, f) with L a multiple of b = len(token_eta); lr: (B, H, L) per-token inner
    learning rates (0 = the token does not update W); token_eta: (b,) scale of position i in its
    chunk; params: initial inner weights, "W1" (H, f, m), "b1" (H, 1, m) and for TTT-MLP also
    "W2" (H, m, f), "b2" (H, 1, f); ln_weight / ln_bias: (H, f). Returns z = f_{W_t}(q_t), (B, H, L, f).
    """
    batch, heads, length, _ = q.shape
    b = token_eta.shape[0]
    if length % b:
        raise ValueError(f"sequence length {length} is not a multiple of the mini-batch size {b}")
    mlp = "W2" in params
    ln_w, ln_b = ln_weight[:, None], ln_bias[:, None]  # (H, 1, f)
    state = {name: p.unsqueeze(0).expand(batch, *p.shape) for name, p in params.items()}
    causal = torch.ones(b, b, dtype=torch.bool, device=q.device).tril()
    outputs = []
    for start in range(0, length, b):
        qc, kc, vc = (t[:, :, start:start + b] for t in (q, k, v))
        # eta[i, s] = token_eta[i] * lr[s] for s <= i: the step size with which token s's gradient
        # enters the weights seen by token i
        eta = (token_eta[:, None] * lr[:, :, None, start:start + b]).masked_fill(~causal, 0.0)  # (B, H, b, b)
        w1, b1 = state["W1"], state["b1"]
        z1 = kc @ w1 + b1
        if mlp:
            x2 = F.gelu(z1, approximate="tanh")
            z2 = x2 @ state["W2"] + state["b2"]
            grad_z2 = layer_norm_l2_grad(z2, vc - kc, ln_w, ln_b, eps)
            grad_z1 = (grad_z2 @ state["W2"].transpose(-1, -2)) * gelu_tanh_grad(z1)
        else:
            grad_z1 = layer_norm_l2_grad(z1, vc - kc, ln_w, ln_b, eps)
        # layer 1: q_i W1_i + b1_i = q_i W1_0 + b1_0 - sum_s eta[i, s] (q_i . k_s + 1) grad_s
        z1_bar = qc @ w1 + b1 - (eta * (qc @ kc.transpose(-1, -2)) + eta) @ grad_z1
        last = eta[:, :, -1, :, None]  # (B, H, b, 1): the steps that reach the chunk's last token
        new_state = {
            "W1": w1 - (last * kc).transpose(-1, -2) @ grad_z1,
            "b1": b1 - (last * grad_z1).sum(dim=-2, keepdim=True),
        }
        out = z1_bar
        if mlp:
            x2_bar = F.gelu(z1_bar, approximate="tanh")
            out = (x2_bar @ state["W2"] + state["b2"]
                   - (eta * (x2_bar @ x2.transpose(-1, -2)) + eta) @ grad_z2)
            new_state["W2"] = state["W2"] - (last * x2).transpose(-1, -2) @ grad_z2
            new_state["b2"] = state["b2"] - (last * grad_z2).sum(dim=-2, keepdim=True)
        outputs.append(qc + layer_norm(out, ln_w, ln_b, eps))
        state = new_state
    return torch.cat(outputs, dim=2)


def rotate_pairs(x: Tensor, positions: Tensor, theta: float) -> Tensor:
    """RoPE on adjacent pairs (x_{2j}, x_{2j+1}) at angle position * theta^(-2j/f). x: (B, H, L, f), positions: (L,)."""
    f = x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, f, 2, dtype=x.dtype, device=x.device) / f)
    angle = positions.to(x.dtype)[:, None] * inv_freq  # (L, f/2)
    cos, sin = angle.cos(), angle.sin()
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


# --- the model ----------------------------------------------------------------------------------
def pick_columns(x: Tensor, pick: Tensor) -> Tensor:
    """x: (B, L, d), pick: (B, 1) column indices -> (B, 1, d), x[b, pick[b]]."""
    return x.gather(1, pick[..., None].expand(-1, -1, x.shape[-1]))


class TTTLayer(nn.Module):
    """Multi-head TTT sequence mixer (TTT-Linear or TTT-MLP), then post-LayerNorm and output projection."""

    def __init__(self, cfg: TTT4RecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, h, f = cfg.hidden_size, cfg.num_heads, cfg.head_dim
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d, d, bias=False) for _ in range(3))
        self.o_proj = nn.Linear(d, d, bias=False)
        self.lr_weight = nn.Parameter(torch.empty(h, d))  # learnable inner learning rate gate
        self.lr_bias = nn.Parameter(torch.empty(h))
        self.token_eta_bias = nn.Parameter(torch.empty(cfg.mini_batch_size))
        self.register_buffer("token_eta_base", 1.0 / torch.arange(1, cfg.mini_batch_size + 1), persistent=False)
        inner = 4 * f if cfg.ttt_layer_type == "mlp" else f
        self.W1 = nn.Parameter(torch.empty(h, f, inner))
        self.b1 = nn.Parameter(torch.empty(h, 1, inner))
        if cfg.ttt_layer_type == "mlp":
            self.W2 = nn.Parameter(torch.empty(h, inner, f))
            self.b2 = nn.Parameter(torch.empty(h, 1, f))
        self.ttt_norm_weight = nn.Parameter(torch.empty(h, f))
        self.ttt_norm_bias = nn.Parameter(torch.empty(h, f))
        self.post_norm = nn.LayerNorm(d, eps=cfg.norm_eps)

    def reset_ttt_parameters(self) -> None:
        std = self.cfg.initializer_range
        with torch.no_grad():
            nn.init.normal_(self.lr_weight, std=std)
            nn.init.zeros_(self.lr_bias)
            nn.init.zeros_(self.token_eta_bias)
            for name in self.inner_names:
                param = getattr(self, name)
                nn.init.normal_(param, std=std) if name.startswith("W") else nn.init.zeros_(param)
            nn.init.ones_(self.ttt_norm_weight)
            nn.init.zeros_(self.ttt_norm_bias)

    @property
    def inner_names(self) -> tuple[str, ...]:
        return ("W1", "b1", "W2", "b2") if self.cfg.ttt_layer_type == "mlp" else ("W1", "b1")

    def token_eta(self) -> Tensor:
        return torch.clamp_min(self.token_eta_base + self.token_eta_bias, 0.0)

    def forward(self, x: Tensor, mask: Tensor, pick: Tensor | None = None) -> Tensor:
        """x: (B, L, d) right-padded (real items first), mask: (B, L) bool -> (B, L, d).

        With ``pick`` (B, 1) column indices the result is (B, 1, d), row b's output at column
        pick[b]: the inner updates still run over every position, the post-norm and o_proj there only.
        """
        cfg = self.cfg
        batch, length, _ = x.shape
        b = cfg.mini_batch_size
        pad = (-length) % b
        if pad:  # complete the last chunk with inert tokens (zero learning rate, never read)
            x = F.pad(x, (0, 0, 0, pad))
            mask = F.pad(mask, (0, pad))
        total = length + pad

        def heads(t: Tensor) -> Tensor:  # (B, L, d) -> (B, H, L, f)
            return t.view(batch, total, cfg.num_heads, cfg.head_dim).transpose(1, 2)

        positions = torch.arange(total, device=x.device) % b
        q = rotate_pairs(heads(self.q_proj(x)), positions, cfg.rope_theta)
        k = rotate_pairs(heads(self.k_proj(x)), positions, cfg.rope_theta)
        v = heads(self.v_proj(x))
        gate = torch.sigmoid(torch.einsum("bld,hd->bhl", x, self.lr_weight) + self.lr_bias[:, None])
        lr = cfg.ttt_base_lr * gate / cfg.head_dim * mask[:, None, :].to(x.dtype)
        params = {name: getattr(self, name) for name in self.inner_names}
        z = ttt_dual_form(q, k, v, lr, self.token_eta(), params, self.ttt_norm_weight, self.ttt_norm_bias,
                          cfg.norm_eps)
        z = z.transpose(1, 2).reshape(batch, total, cfg.hidden_size)[:, :length]
        if pick is not None:
            z = pick_columns(z, pick)
        return self.o_proj(self.post_norm(z))


class SwiGLU(nn.Module):
    def __init__(self, d: int, inner: int) -> None:
        super().__init__()
        self.gate = nn.Linear(d, inner, bias=False)
        self.up = nn.Linear(d, inner, bias=False)
        self.down = nn.Linear(inner, d, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class TTTBlock(nn.Module):
    """Pre-norm residual block: h + TTT(RMSNorm(h)), then h + SwiGLU(RMSNorm(h))."""

    def __init__(self, cfg: TTT4RecConfig) -> None:
        super().__init__()
        self.seq_norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.ttt = TTTLayer(cfg)
        self.ffn_norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.ffn = SwiGLU(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, h: Tensor, mask: Tensor, pick: Tensor | None = None) -> Tensor:
        """h: (B, L, d), mask: (B, L) -> (B, L, d); with ``pick`` (B, 1) column indices (B, 1, d),
        the block's output at those columns (the FFN runs there only)."""
        mixed = self.ttt(self.seq_norm(h), mask, pick)
        h = (h if pick is None else pick_columns(h, pick)) + mixed
        return h + self.ffn(self.ffn_norm(h))


class TTT4Rec(NextItemModel):
    uses_time = False
    has_alignment_loss = False

    def __init__(self, cfg: TTT4RecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_embedding = nn.Embedding(cfg.num_items + 1, cfg.hidden_size, padding_idx=0)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.embed_norm = nn.LayerNorm(cfg.hidden_size, eps=1e-12)
        self.layers = nn.ModuleList(TTTBlock(cfg) for _ in range(cfg.num_layers))
        self.final_norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_normal_(self, std=self.cfg.initializer_range)
        for layer in self.layers:
            layer.ttt.reset_ttt_parameters()
        for module in self.modules():
            if isinstance(module, nn.RMSNorm):
                nn.init.ones_(module.weight)

    def encode(self, items: Tensor, last_only: bool = False) -> Tensor:
        """items (B, L) left-padded -> outputs (B, L, d); position t sees items up to t only.

        Each row is rotated so that its real items start at column 0 (chunks and RoPE positions
        count from the first real item, as in the right-padded reference), then rotated back;
        outputs at padding positions are 0. With ``last_only`` the result is (B, 1, d), the output
        of the last column: the last block's TTT runs over every position, its post-norm, o_proj and
        FFN and the final norm only at each row's last real item.
        """
        batch, length = items.shape
        mask = items > 0
        n_pad = length - mask.sum(dim=1, keepdim=True)  # (B, 1); padding is on the left
        cols = torch.arange(length, device=items.device)
        to_front = (cols + n_pad) % length  # right-padded column j holds left-padded column j + n_pad
        front_items = items.gather(1, to_front)
        front_mask = cols < (length - n_pad)
        hidden = self.embed_norm(self.embed_dropout(self.item_embedding(front_items)))
        # the last real item of a row, in the rotated columns (an all-padding row: any column, zeroed below)
        last = (length - n_pad - 1).clamp(min=0) if last_only else None
        for i, layer in enumerate(self.layers):
            hidden = layer(hidden, front_mask, last if i == len(self.layers) - 1 else None)
        if last_only and not self.layers:
            hidden = pick_columns(hidden, last)
        hidden = self.final_norm(hidden)
        if last_only:
            return hidden * mask[:, -1:, None].to(hidden.dtype)
        back = ((cols - n_pad) % length)[..., None].expand(-1, -1, hidden.shape[-1])
        # padding positions would receive the outputs of the trailing inert tokens, which have seen
        # the whole row; they are set to 0 so that no output depends on a later item
        return hidden.gather(1, back) * mask[..., None].to(hidden.dtype)

    def query(self, batch: SeqBatch) -> Tensor:
        return self.encode(batch.items, last_only=True)[:, -1]
