import pytest
import torch
import torch.nn.functional as F

from t2arec.models.caser import Caser, CaserConfig
from t2arec.models.gru4rec import GRU4Rec, GRU4RecConfig
from t2arec.models.sasrec import SASRec, SASRecConfig
from tests.models.batches import (assert_every_parameter_learns, assert_same_gradients, eval_batch, reference_rec_loss,
                                   shift_batch, train_batch)

NUM_ITEMS = 20


def build(name: str, dropout: bool = False, **overrides):
    """A tiny model; without ``dropout`` every dropout rate is 0."""
    torch.manual_seed(0)
    if name == "sasrec":
        kwargs = dict(num_items=NUM_ITEMS, max_len=16, hidden_size=16, inner_size=32)
        if not dropout:
            kwargs.update(hidden_dropout=0.0, attn_dropout=0.0)
        return SASRec(SASRecConfig(**{**kwargs, **overrides}))
    if name == "gru4rec":
        kwargs = dict(num_items=NUM_ITEMS, embedding_size=16, hidden_size=24)
        if not dropout:
            kwargs.update(dropout=0.0)
        return GRU4Rec(GRU4RecConfig(**{**kwargs, **overrides}))
    if name == "caser":
        kwargs = dict(num_items=NUM_ITEMS, embedding_size=16, window=4, num_vertical=2, num_horizontal=3)
        if not dropout:
            kwargs.update(dropout=0.0)
        return Caser(CaserConfig(**{**kwargs, **overrides}))
    raise ValueError(name)


MODELS = ["sasrec", "gru4rec", "caser"]


@pytest.mark.parametrize("name", MODELS)
def test_capabilities_and_score_shape(name):
    model = build(name).eval()
    assert model.uses_time is False and model.has_alignment_loss is False
    batch = eval_batch([[0, 0, 0, 3, 5, 7], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 9]])
    with torch.no_grad():
        scores = model.score(batch)
    assert scores.shape == (3, NUM_ITEMS)  # items 1..num_items: the padding item has no column
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("name", MODELS)
def test_training_losses_are_finite_and_backpropagate(name):
    model = build(name, dropout=True).train()  # the configs' own dropout rates
    # a row whose first positions are all padding: attention rows there must not become NaN
    # and a row of padding only (no targets), which must not break packing or attention either
    batch = shift_batch([[1, 2, 3, 4, 5, 6, 7], [4, 9, 2], [11, 12], [13]], length=6)
    losses = model.training_losses(batch)
    assert "total" in losses and all(torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    assert_every_parameter_learns(model)
    assert model.item_embedding.weight.grad[0].abs().sum() == 0  # padding row never learns
    # the values against an independent computation, dropout off (same weights, still training mode)
    plain = build(name).train()
    losses = plain.training_losses(batch)
    reference = reference_rec_loss(plain.encode(batch.items), plain.item_embedding.weight, batch.targets)
    assert losses["rec"].item() == pytest.approx(reference.item(), rel=1e-5)
    assert_same_gradients(plain, losses["rec"], reference)
    extra = 0.0
    if name == "caser":  # RecBole's regulariser: reg_weight * sum of the unsquared L2 norms of the weights
        weights = [plain.item_embedding.weight, plain.conv_v.weight, plain.fc1.weight, plain.fc2.weight,
                   *(conv.weight for conv in plain.conv_h)]
        extra = plain.cfg.reg_weight * sum(torch.linalg.vector_norm(w).item() for w in weights)
        assert losses["reg"].item() == pytest.approx(extra, rel=1e-5)
    assert losses["total"].item() == pytest.approx(reference.item() + extra, rel=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_left_padding_does_not_change_scores(name):
    model = build(name).eval()
    seq, short = [3, 7, 7, 1, 12, 5], [8, 2]  # longer and shorter than Caser's window of 4
    with torch.no_grad():
        for s in (seq, short):
            scores = [model.score(eval_batch([[0] * pad + s])) for pad in (0, 3, 7)]
            for other in scores[1:]:
                assert torch.allclose(other, scores[0], atol=1e-6, rtol=0)
        # the same holds inside a batch where the rows have different amounts of padding
        mixed = model.score(eval_batch([[0] * 4 + seq, [0] * 8 + short]))
        assert torch.allclose(mixed[0], model.score(eval_batch([seq]))[0], atol=1e-6, rtol=0)
        assert torch.allclose(mixed[1], model.score(eval_batch([short]))[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_training_position_matches_score_of_the_prefix(name):
    """The output trained at position t is the score of the sequence cut after t (causality)."""
    model = build(name).eval()
    items = [[0, 0, 5, 6, 7, 8, 9, 10]]
    targets = [[0, 0, 6, 7, 8, 9, 10, 11]]
    with torch.no_grad():
        for t in range(2, 8):
            only_t = [[targets[0][i] if i == t else 0 for i in range(8)]]
            rec = model.training_losses(train_batch(items, only_t))["rec"]
            prefix_scores = model.score(eval_batch([items[0][: t + 1]]))
            expected = F.cross_entropy(prefix_scores, torch.tensor([targets[0][t] - 1]))
            assert rec.item() == pytest.approx(expected.item(), abs=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_padding_item_never_ranks(name):
    model = build(name).eval()
    batch = eval_batch([[0, 0, 4, 5, 6, 7]])
    with torch.no_grad():
        before = model.score(batch)
        model.item_embedding.weight[0].fill_(100.0)  # a huge padding row neither ranks nor leaks in
        after = model.score(batch)
    assert before.shape == after.shape == (1, NUM_ITEMS)
    assert torch.allclose(before, after, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_overfits_a_deterministic_pattern(name):
    # next item = item + 3 (mod 20, in 1..20): every target is determined by the previous item
    def chain(start, n):
        out = [start]
        for _ in range(n - 1):
            out.append((out[-1] + 2) % NUM_ITEMS + 1)
        return out

    batch = shift_batch([chain(1, 7), chain(5, 6), chain(9, 5), chain(14, 7), chain(18, 4)], length=6)
    model = build(name, **({"num_layers": 1} if name == "sasrec" else {})).train()  # 1 layer: faster
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(200):
        optimizer.zero_grad()
        losses = model.training_losses(batch)
        losses["total"].backward()
        optimizer.step()
        first = losses["rec"].item() if first is None else first
    with torch.no_grad():
        final = model.training_losses(batch)["rec"].item()
    assert first > 2.5  # about ln 20 at the start
    assert final < 0.2


def test_sasrec_refuses_more_items_than_positions():
    model = build("sasrec", max_len=4).eval()
    model.score(eval_batch([[0, 0, 1, 2, 3, 4]]))  # 4 real items fit, padding needs no position
    with pytest.raises(ValueError, match="max_len"):
        model.score(eval_batch([[1, 2, 3, 4, 5]]))


def test_caser_window_by_hand():
    """One window computed literally: vertical sums over rows, horizontal k-row slices max-pooled."""
    model = build("caser", window=3).double().eval()
    items = torch.tensor([[0, 0, 0, 6, 2, 9]])
    with torch.no_grad():
        out = model.encode(items, last_only=True)[0, -1]
        window = model.item_embedding.weight[[6, 2, 9]]  # (L, d)
        vertical = [(model.conv_v.weight[v, 0, :, 0, None] * window).sum(0) + model.conv_v.bias[v] for v in range(2)]
        horizontal = []
        for k, conv in enumerate(model.conv_h, start=1):  # conv.weight: (n_h, d, k)
            for f in range(3):
                slices = [(conv.weight[f].T * window[s : s + k]).sum() + conv.bias[f] for s in range(3 - k + 1)]
                horizontal.append(torch.relu(torch.stack(slices)).max())
        features = torch.cat([torch.cat(vertical), torch.stack(horizontal)])
        expected = torch.relu(model.fc2(torch.relu(model.fc1(features))))
    assert torch.allclose(out, expected, atol=1e-12)
