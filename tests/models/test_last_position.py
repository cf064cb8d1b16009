"""``score`` computes the last position only; it must equal the full ``encode(...)[:, -1]`` path.

Every model's final layer (or what follows its recurrence) runs at the last position when scoring.
These tests compare ``score`` with the scores read off the full per-position encoding, on batches
with left padding, rows shorter than the batch, a single-item row and an all-padding row, with
every parameter perturbed away from its initialisation (zero biases and unit norms would hide
a residual or a norm applied at the wrong position).
"""
from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import Tensor, nn

from t2arec.models.base import SeqBatch
from t2arec.models.bert4rec import BERT4Rec, BERT4RecConfig
from t2arec.models.caser import Caser, CaserConfig
from t2arec.models.gru4rec import GRU4Rec, GRU4RecConfig
from t2arec.models.sasrec import SASRec, SASRecConfig
from t2arec.models.tim4rec import TiM4Rec, TiM4RecConfig
from t2arec.models.ttt4rec import TTT4Rec, TTT4RecConfig

NUM_ITEMS = 30
LENGTH = 11  # not a multiple of TTT's mini-batch (8) nor of TiM4Rec's chunk (4)


def perturbed(model: nn.Module) -> nn.Module:
    """Add N(0, 0.1) noise to every parameter, keep the padding row at zero, switch to eval."""
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
        model.item_embedding.weight[0].zero_()
    return model.eval()


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "sasrec-2": lambda: SASRec(SASRecConfig(num_items=NUM_ITEMS, max_len=LENGTH, hidden_size=16, inner_size=32,
                                            hidden_dropout=0.0, attn_dropout=0.0)),
    "sasrec-1-relu": lambda: SASRec(SASRecConfig(num_items=NUM_ITEMS, max_len=LENGTH, num_layers=1, hidden_size=16,
                                                 inner_size=32, hidden_act="relu")),
    "sasrec-3": lambda: SASRec(SASRecConfig(num_items=NUM_ITEMS, max_len=LENGTH, num_layers=3, num_heads=4,
                                            hidden_size=16, inner_size=32)),
    "bert4rec-2": lambda: BERT4Rec(BERT4RecConfig(num_items=NUM_ITEMS, max_seq_length=LENGTH, hidden_size=16,
                                                  inner_size=32)),
    "bert4rec-1": lambda: BERT4Rec(BERT4RecConfig(num_items=NUM_ITEMS, max_seq_length=LENGTH, num_layers=1,
                                                  hidden_size=16, inner_size=32)),
    "gru4rec-1": lambda: GRU4Rec(GRU4RecConfig(num_items=NUM_ITEMS, embedding_size=16, hidden_size=24)),
    "gru4rec-2": lambda: GRU4Rec(GRU4RecConfig(num_items=NUM_ITEMS, embedding_size=16, hidden_size=24,
                                               num_layers=2)),
    "tim4rec-2": lambda: TiM4Rec(TiM4RecConfig(num_items=NUM_ITEMS, hidden_size=8, state_size=4, head_dim=4,
                                               chunk_size=4)),
    "tim4rec-1-notime": lambda: TiM4Rec(TiM4RecConfig(num_items=NUM_ITEMS, hidden_size=8, state_size=4, head_dim=4,
                                                      chunk_size=4, num_layers=1, use_time=False)),
    "ttt4rec-mlp": lambda: TTT4Rec(TTT4RecConfig(num_items=NUM_ITEMS, hidden_size=16, intermediate_size=32)),
    "ttt4rec-linear-2": lambda: TTT4Rec(TTT4RecConfig(num_items=NUM_ITEMS, hidden_size=16, intermediate_size=32,
                                                      num_layers=2, ttt_layer_type="linear")),
    "caser-4": lambda: Caser(CaserConfig(num_items=NUM_ITEMS, embedding_size=16, window=4, num_vertical=2,
                                         num_horizontal=3)),
}


def batch_of(rows: list[list[int]], length: int = LENGTH) -> SeqBatch:
    """Left-padded evaluation batch with gaps of epoch scale (0 at the first real item and at padding)."""
    torch.manual_seed(2)
    items = torch.tensor([[0] * (length - len(r)) + r for r in rows], dtype=torch.long)
    real = items > 0
    first = real & ~torch.cat([torch.zeros_like(real[:, :1]), real[:, :-1]], dim=1)
    gaps = torch.rand(items.shape) * 1e6 * (real & ~first)
    return SeqBatch(items, gaps, torch.zeros(len(rows)), torch.zeros(len(rows), dtype=torch.long))


ROWS = [
    [5, 3, 9, 12, 1, 30, 7, 7, 2, 18, 4],  # the full length
    [8, 2, 25, 6],                          # shorter: left padding
    [17],                                   # one item
    [4, 4, 4, 11, 29, 3, 1, 2],             # one chunk and a bit
    [],                                     # padding only
]


def full_path_scores(model: nn.Module, batch: SeqBatch) -> Tensor:
    """The previous implementation of ``score``: every position encoded, the last one read."""
    if isinstance(model, BERT4Rec):
        mask_column = torch.full_like(batch.items[:, :1], model.mask_token)
        tokens = model.fit_length(torch.cat([batch.items, mask_column], dim=1))
        return model.item_scores(model.encode(tokens)[:, -1])
    if isinstance(model, TiM4Rec):
        return model.item_scores(model.encode(batch.items, batch.gaps)[:, -1])
    return model.item_scores(model.encode(batch.items)[:, -1])


@pytest.mark.parametrize("name", list(BUILDERS))
def test_score_equals_the_last_position_of_the_full_encoding(name):
    model = perturbed(BUILDERS[name]())
    with torch.no_grad():
        for batch in (batch_of(ROWS), batch_of(ROWS[:4], length=14), batch_of([ROWS[1]], length=4)):
            expected = full_path_scores(model, batch)
            scores = model.score(batch)
            assert scores.shape == expected.shape == (batch.items.shape[0], NUM_ITEMS)
            assert torch.isfinite(scores).all()
            assert torch.allclose(scores, expected, atol=1e-5, rtol=0), (scores - expected).abs().max()


def last_position_module(model: nn.Module) -> nn.Module:
    """A position-wise module after the last sequence mixer: at scoring it must see one position."""
    if isinstance(model, (SASRec, BERT4Rec)):
        return model.layers[-1].w1
    if isinstance(model, GRU4Rec):
        return model.dense
    if isinstance(model, TiM4Rec):
        return model.layers[-1].ffn.w1
    if isinstance(model, TTT4Rec):
        return model.layers[-1].ffn.down
    return model.fc1  # Caser


@pytest.mark.parametrize("name", list(BUILDERS))
def test_score_runs_the_final_position_wise_layers_once_per_sequence(name):
    model = perturbed(BUILDERS[name]())
    seen: list[tuple[int, ...]] = []
    hook = last_position_module(model).register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape)))
    try:
        with torch.no_grad():
            model.score(batch_of(ROWS))
    finally:
        hook.remove()
    assert seen and all(shape[:-1] in ((len(ROWS), 1), (len(ROWS),)) for shape in seen), seen


@pytest.mark.parametrize("name", ["sasrec-2", "bert4rec-2", "tim4rec-2", "ttt4rec-mlp"])
def test_training_still_encodes_every_position(name):
    """The default path (training) is unchanged: one output per input column."""
    model = BUILDERS[name]()
    batch = batch_of(ROWS)
    out = model.encode(batch.items, batch.gaps) if isinstance(model, TiM4Rec) else model.encode(batch.items)
    assert out.shape[:2] == batch.items.shape
