"""BERT4Rec (Sun et al., CIKM 2019): a bidirectional Transformer trained with the Cloze task.

Reads top to bottom like the paper (Sec. 3) and RecBole's implementation of it:

    e_i = Dropout(LayerNorm(E[v_i] + P[p_i]))            embedding; p_i counts back from the end
    h = Trm_L(... Trm_1(e))                                post-LN Transformer layers, bidirectional
                                                           attention over the real (non-padding) tokens
    o_i = LayerNorm(GELU(W_o h_i + b_o))                   output layer (Sec. 3.5; the LayerNorm as in
                                                           the authors' code and RecBole)
    logits_i = o_i E[1..n]^T + b                           tied item embeddings + item bias

Training (Cloze, Sec. 3.6): the window's items plus its last target form the sequence; a share
``mask_ratio`` of its real items (at least one) is replaced by the [mask] token, item ``n + 1``,
and the model predicts them with cross-entropy over items 1..n. With probability ``ft_ratio`` a
sequence instead masks only its last item, the paper's samples that "work like fine-tuning" for
next-item prediction. Scoring appends [mask] after the last input and reads the logits there.

Batches are left-padded, so positions are counted from the end (the last token has position 0):
left padding changes no real token's position and attention never looks at padding, which makes
``score`` invariant to the amount of padding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2arec.models.base import ItemTable, LossTerm, SeqBatch, SequentialRecommender, init_normal_
from t2arec.models.layers import TransformerLayer
from t2arec.models.losses import full_cross_entropy


@dataclass
class BERT4RecConfig:
    num_items: int = 0  # set from the data when the model is built
    max_seq_length: int = 50  # input window length L; the encoder sees L + 1 tokens (window + target or [mask])
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    inner_size: int = 256  # feed-forward width
    hidden_dropout: float = 0.2
    attn_dropout: float = 0.2
    mask_ratio: float = 0.2  # share of a sequence's real items replaced by [mask] in the Cloze task
    ft_ratio: float = 0.5  # probability that a training sequence masks only its last item

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})")
        if not 0.0 < self.mask_ratio <= 1.0:
            raise ValueError("mask_ratio must be in (0, 1]")
        if not 0.0 <= self.ft_ratio <= 1.0:
            raise ValueError("ft_ratio must be in [0, 1]")


class BERT4Rec(SequentialRecommender):
    uses_time = False
    has_alignment_loss = False
    scores_by_table = True

    def __init__(self, cfg: BERT4RecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.mask_token = cfg.num_items + 1  # row n + 1 of the embedding table; never scored
        self.max_tokens = cfg.max_seq_length + 1
        self.item_embedding = nn.Embedding(cfg.num_items + 2, cfg.hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_tokens, cfg.hidden_size)
        self.embed_norm = nn.LayerNorm(cfg.hidden_size, eps=1e-12)
        self.embed_dropout = nn.Dropout(cfg.hidden_dropout)
        self.layers = nn.ModuleList(
            TransformerLayer(cfg.hidden_size, cfg.num_heads, cfg.inner_size, cfg.hidden_dropout, cfg.attn_dropout)
            for _ in range(cfg.num_layers))
        self.output_dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.output_norm = nn.LayerNorm(cfg.hidden_size, eps=1e-12)
        self.output_bias = nn.Parameter(torch.zeros(cfg.num_items))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_normal_(self, std=0.02)
        nn.init.zeros_(self.output_bias)

    # --- encoding -------------------------------------------------------------------------------
    def fit_length(self, tokens: Tensor) -> Tensor:
        """Keep the last ``max_seq_length + 1`` tokens (the positional table's size)."""
        return tokens[:, -self.max_tokens :]

    def encode(self, tokens: Tensor, last_only: bool = False) -> Tensor:
        """tokens (B, T) left-padded, T <= max_seq_length + 1 -> output transform o (B, T, d).

        With ``last_only`` the result is (B, 1, d), the last token's (the [mask] when scoring): the
        final layer runs that one query over all keys, and its FFN and the output layer run there
        only. The earlier layers are bidirectional and need every position.
        """
        length = tokens.shape[1]
        positions = torch.arange(length - 1, -1, -1, device=tokens.device)  # the last token is position 0
        h = self.item_embedding(tokens) + self.position_embedding(positions)[None]
        h = self.embed_dropout(self.embed_norm(h))
        allowed = (tokens > 0)[:, None, None, :]  # bidirectional: every query sees every real token
        for i, layer in enumerate(self.layers):
            h = layer(h, allowed, last_only=last_only and i == len(self.layers) - 1)
        if last_only:
            h = h[:, -1:]  # (a no-op after a last-only layer; needed with no layers)
        return self.output_norm(F.gelu(self.output_dense(h)))

    def item_table(self) -> ItemTable:
        """Rows 1..n of the tied table (padding and [mask] never rank) and the item bias."""
        return ItemTable(self.item_embedding.weight[1 : self.cfg.num_items + 1], self.output_bias)

    def item_scores(self, o: Tensor) -> Tensor:
        """(..., d) -> (..., num_items) against the item table."""
        return self.item_table().scores(o)

    # --- the Cloze task ------------------------------------------------------------------------
    def cloze_mask(self, sequence: Tensor) -> Tensor:
        """(B, T) left-padded items -> (B, T) bool, the positions to hide. Uses torch's global RNG.

        Each sequence hides round(mask_ratio * its real items), at least one, chosen uniformly;
        with probability ``ft_ratio`` it hides only its last item instead.
        """
        real = sequence > 0
        n_real = real.sum(dim=1)
        n_mask = torch.minimum((n_real * self.cfg.mask_ratio).round().long().clamp(min=1), n_real)
        keys = torch.rand(sequence.shape, device=sequence.device).masked_fill(~real, 2.0)  # padding sorts last
        rank = keys.argsort(dim=1).argsort(dim=1)
        cloze = (rank < n_mask[:, None]) & real
        last_only = torch.zeros_like(cloze)
        last_only[:, -1] = real[:, -1]
        fine_tune = torch.rand(sequence.shape[0], device=sequence.device) < self.cfg.ft_ratio
        return torch.where(fine_tune[:, None], last_only, cloze)

    # --- the SequentialRecommender contract --------------------------------------------------------
    def loss_terms(self, batch: SeqBatch) -> dict[str, LossTerm]:
        """Cloze loss on the window's sequence: its inputs followed by its last target.

        (Training windows end with a target; a row whose last target is 0 simply has one padding
        token on the right, which attention ignores.)
        """
        sequence = self.fit_length(torch.cat([batch.items, batch.targets[:, -1:]], dim=1))
        hidden = self.cloze_mask(sequence)
        o = self.encode(sequence.masked_fill(hidden, self.mask_token))
        rec = full_cross_entropy(o[hidden], self.item_embedding.weight[1 : self.cfg.num_items + 1],
                                 sequence[hidden] - 1, bias=self.output_bias)
        return {"rec": LossTerm(rec, hidden.sum())}  # a mean over the hidden positions

    def query(self, batch: SeqBatch) -> Tensor:
        """The output at a [mask] appended after the inputs."""
        mask_column = torch.full_like(batch.items[:, :1], self.mask_token)
        tokens = self.fit_length(torch.cat([batch.items, mask_column], dim=1))
        return self.encode(tokens, last_only=True)[:, -1]
