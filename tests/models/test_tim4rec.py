import pytest
import torch

from t2arec.models.base import SeqBatch
from t2arec.models.tim4rec import TiM4Rec, TiM4RecConfig


def tiny_model(**overrides) -> TiM4Rec:
    torch.manual_seed(0)
    settings = {"num_items": 20, "hidden_size": 8, "state_size": 4, "head_dim": 4, "num_layers": 2,
                "dropout": 0.0, "time_dropout": 0.0, "chunk_size": 4, **overrides}
    return TiM4Rec(TiM4RecConfig(**settings))


def make_batch(items, gaps, next_gap=None, targets=None, dtype=torch.float32) -> SeqBatch:
    items = torch.tensor(items, dtype=torch.long)
    next_gap = [0.0] * items.shape[0] if next_gap is None else next_gap
    return SeqBatch(items, torch.tensor(gaps, dtype=dtype), torch.tensor(next_gap, dtype=dtype),
                    torch.zeros(items.shape[0], dtype=torch.long) if targets is None else torch.tensor(targets))


# epoch-scale gaps (seconds) so that log1p matters
SEQ = [3, 7, 7, 1, 12, 5]
GAPS = [0.0, 60.0, 5.0, 3600.0, 10.0, 86400.0 * 400]


def test_config_defaults_follow_the_reference():
    cfg = TiM4RecConfig()
    assert cfg.num_items == 0 and cfg.hidden_size == 64 and cfg.state_size == 32 and cfg.num_heads == 4
    assert cfg.num_layers == 2 and cfg.dropout == 0.2 and cfg.chunk_size == 32
    with pytest.raises(ValueError):
        TiM4RecConfig(head_dim=48)


def test_score_shape():
    model = tiny_model().eval()
    batch = make_batch([[0, 0] + SEQ, [1, 2, 3, 4, 5, 6, 7, 8]], [[0.0, 0.0] + GAPS, [0.0] + [30.0] * 7])
    assert model.uses_time and not model.has_alignment_loss
    assert model.score(batch).shape == (2, 20)


def test_training_losses_finite_and_backward():
    model = tiny_model(dropout=0.2, time_dropout=0.2).train()
    batch = make_batch([[0, 0] + SEQ, [1, 2, 3, 4, 5, 6, 7, 8]], [[0.0, 0.0] + GAPS, [0.0] + [1.7e9] * 7],
                       targets=[[0, 0, 7, 7, 1, 12, 5, 9], [2, 3, 4, 5, 6, 7, 8, 9]])
    losses = model.training_losses(batch)
    assert torch.isfinite(losses["total"])
    losses["total"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    mixer = model.layers[0].mixer
    assert mixer.time_conv1.weight.grad.abs().sum() > 0  # the time path is trained
    assert mixer.dt_bias.grad.abs().sum() > 0


@pytest.mark.parametrize("activation", ["hardswish", "silu"])
def test_left_padding_is_a_no_op(activation):
    model = tiny_model(activation=activation).eval()
    outputs = []
    for pad in (0, 3, 7):
        batch = make_batch([[0] * pad + SEQ], [[0.0] * pad + GAPS])
        with torch.no_grad():
            outputs.append(model.score(batch))
    for scores in outputs[1:]:
        assert torch.allclose(scores, outputs[0], atol=1e-6, rtol=0)


def test_padding_is_a_no_op_inside_a_mixed_batch():
    model = tiny_model().eval()
    with torch.no_grad():
        alone = model.score(make_batch([SEQ], [GAPS]))
        mixed = model.score(make_batch([[0, 0, 0] + SEQ, [1, 2, 3, 4, 5, 6, 7, 8, 9]],
                                       [[0.0] * 3 + GAPS, [0.0] + [5.0] * 8]))
    assert torch.allclose(mixed[0], alone[0], atol=1e-6, rtol=0)


def test_gaps_change_the_scores():
    # at initialisation the time path is almost closed (N(0, 0.02) projections, small B, C and Delta:
    # the scores move by ~1e-11), as in the reference; perturb the weights to get a trained-like model
    model = tiny_model().eval()
    torch.manual_seed(2)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
        a = model.score(make_batch([SEQ], [GAPS]))
        b = model.score(make_batch([SEQ], [[0.0, 1.0, 1.0, 1.0, 1.0, 1.0]]))
    assert (a - b).abs().max() > 2e-5  # ~1e-4 here; float32 rounding of equal inputs gives exactly 0


def test_without_time_gaps_are_ignored():
    model = tiny_model(use_time=False).eval()
    with torch.no_grad():
        a = model.score(make_batch([SEQ], [GAPS]))
        b = model.score(make_batch([SEQ], [[0.0, 1.0, 1.0, 1.0, 1.0, 1.0]]))
    assert torch.equal(a, b)


def test_scores_are_causal():
    """Changing the last item and gap changes nothing at earlier positions."""
    model = tiny_model().eval()
    items = torch.tensor([SEQ, SEQ[:-1] + [9]])
    gaps = torch.tensor([GAPS, GAPS[:-1] + [3.0]])
    with torch.no_grad():
        hidden = model.encode(items, gaps)
    assert torch.allclose(hidden[0, :-1], hidden[1, :-1], atol=1e-6)


def test_chunked_equals_sequential_scan():
    model = tiny_model().double().eval()
    reference = tiny_model(sequential_scan=True).double().eval()
    reference.load_state_dict(model.state_dict())
    batch = make_batch([[0, 0, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 5, 6, 7, 8, 9]],
                       [[0.0, 0, 0] + [100.0] * 6, [0.0] + [2.0, 3e5, 7.0, 1.0, 9e4, 1.0, 60.0, 8.0]],
                       dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(model.score(batch), reference.score(batch), atol=1e-10)


def test_overfits_a_fixed_batch():
    model = tiny_model().train()
    torch.manual_seed(1)
    items = torch.randint(1, 21, (8, 8))
    targets = torch.roll(items, -1, dims=1)
    targets[:, -1] = torch.randint(1, 21, (8,))
    gaps = torch.rand(8, 8) * 1e5
    gaps[:, 0] = 0.0
    batch = SeqBatch(items, gaps, torch.ones(8), targets)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    start = model.training_losses(batch)["total"].item()
    for _ in range(120):
        optimiser.zero_grad()
        loss = model.training_losses(batch)["total"]
        loss.backward()
        optimiser.step()
    assert start > 2.5  # about log(20) at initialisation
    assert loss.item() < 0.3
