import math

import pytest
import torch

from t2arec.models.base import SeqBatch
from t2arec.models.bert4rec import BERT4Rec, BERT4RecConfig
from t2arec.models.mamba4rec import (
    Mamba4Rec,
    Mamba4RecConfig,
    selective_scan_chunked,
    selective_scan_sequential,
)

NUM_ITEMS = 20


def tiny_bert(**overrides) -> BERT4Rec:
    torch.manual_seed(0)
    cfg = dict(num_items=NUM_ITEMS, max_seq_length=16, hidden_size=8, num_heads=2, inner_size=16,
               hidden_dropout=0.0, attn_dropout=0.0)
    return BERT4Rec(BERT4RecConfig(**{**cfg, **overrides}))


def tiny_mamba(**overrides) -> Mamba4Rec:
    torch.manual_seed(0)
    cfg = dict(num_items=NUM_ITEMS, hidden_size=8, state_size=4, dropout=0.0, chunk_size=4)
    return Mamba4Rec(Mamba4RecConfig(**{**cfg, **overrides}))


def tiny_mamba_chunked(**overrides) -> Mamba4Rec:
    return tiny_mamba(scan="chunked", **overrides)


# "auto" runs the sequential scan on CPU; the chunked scan gets the same model-level tests
MODELS = {"bert4rec": tiny_bert, "mamba4rec": tiny_mamba, "mamba4rec-chunked": tiny_mamba_chunked}


def make_batch(items, targets=None) -> SeqBatch:
    items = torch.as_tensor(items, dtype=torch.long)
    bsz, length = items.shape
    if targets is None:
        targets = torch.zeros(bsz, dtype=torch.long)
    return SeqBatch(items, torch.zeros(bsz, length), torch.zeros(bsz), torch.as_tensor(targets, dtype=torch.long))


def training_batch() -> SeqBatch:
    items = torch.tensor([[0, 0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10], [0, 0, 0, 11, 12, 13]])
    targets = torch.tensor([[0, 0, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11], [0, 0, 0, 12, 13, 14]])
    return make_batch(items, targets)


# --- both models ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_capabilities(name):
    model = MODELS[name]()
    assert model.uses_time is False and model.has_alignment_loss is False


@pytest.mark.parametrize("name", MODELS)
def test_score_shape_excludes_padding_and_mask_token(name):
    model = MODELS[name]().eval()
    scores = model.score(make_batch([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5]]))
    assert scores.shape == (2, NUM_ITEMS)  # items 1..n only: no padding column, no [mask] column
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("name", MODELS)
def test_training_losses_finite_and_backward(name):
    dropout = {"hidden_dropout": 0.2, "attn_dropout": 0.2} if name == "bert4rec" else {"dropout": 0.2}
    model = MODELS[name](**dropout)
    model.train()
    losses = model.training_losses(training_batch())
    assert "total" in losses and torch.isfinite(losses["total"])
    losses["total"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.item_embedding.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", MODELS)
def test_left_padding_invariance_of_score(name):
    model = MODELS[name]().double().eval()
    seqs = [[3, 7, 7, 1, 12, 5], [9, 2]]
    results = []
    for pad in (0, 3, 7):
        width = pad + 6
        rows = [[0] * (width - len(s)) + s for s in seqs]
        with torch.no_grad():
            results.append(model.score(make_batch(rows)))
    for scores in results[1:]:
        assert torch.allclose(scores, results[0], atol=1e-6, rtol=0)


# (model, overrides, lr, steps, threshold on the final loss). BERT4Rec gets a lower learning rate:
# at 1e-2 its post-LN Transformer (weights N(0, 0.02)) saturates its attention and stalls near 1.8.
OVERFIT = {
    "bert4rec": (dict(hidden_size=32, inner_size=64), 2e-3, 300, 1.0),
    "mamba4rec": (dict(hidden_size=16), 1e-2, 200, 0.1),
}


@pytest.mark.parametrize("name", OVERFIT)
def test_overfits_a_deterministic_pattern(name):
    overrides, lr, steps, threshold = OVERFIT[name]
    model = MODELS[name](num_items=10, **overrides)
    # next item = current item + 1, cyclic over 1..10; one window of 7 items per starting item
    seqs = [[(s + t) % 10 + 1 for t in range(7)] for s in range(10)]
    batch = make_batch([[0, 0] + s[:-1] for s in seqs], [[0, 0] + s[1:] for s in seqs])

    def loss_at_fixed_seeds():  # BERT4Rec: the same Cloze masks before and after training
        losses = []
        for seed in range(5):
            torch.manual_seed(100 + seed)
            with torch.no_grad():
                losses.append(model.training_losses(batch)["total"].item())
        return sum(losses) / len(losses)

    model.train()
    start = loss_at_fixed_seeds()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    torch.manual_seed(1)
    for _ in range(steps):
        optimiser.zero_grad()
        model.training_losses(batch)["total"].backward()
        optimiser.step()
    end = loss_at_fixed_seeds()
    assert start > 0.9 * math.log(10)  # chance level at the start
    assert end < threshold, (start, end)
    model.eval()
    with torch.no_grad():
        top = model.score(batch).argmax(dim=1) + 1
    assert torch.equal(top, batch.targets[:, -1])  # the item after each window


# --- BERT4Rec --------------------------------------------------------------------------------------
def test_bert4rec_cloze_mask_hides_real_items_only_and_at_least_one():
    model = tiny_bert(mask_ratio=0.2, ft_ratio=0.0)
    sequence = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 0, 0, 4], [0, 0, 0, 0, 0, 1, 2, 3, 4, 5],
                             [11, 12, 13, 14, 15, 16, 17, 18, 19, 20]])
    torch.manual_seed(0)
    for _ in range(20):
        hidden = model.cloze_mask(sequence)
        assert not (hidden & (sequence == 0)).any()
        assert hidden.sum(dim=1).tolist() == [1, 1, 2]  # max(1, round(0.2 * n_real))


def test_bert4rec_fine_tuning_rows_hide_only_the_last_item():
    model = tiny_bert(ft_ratio=1.0)
    sequence = torch.tensor([[0, 0, 1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])
    hidden = model.cloze_mask(sequence)
    expected = torch.zeros_like(hidden)
    expected[:, -1] = True
    assert torch.equal(hidden, expected)


def test_bert4rec_training_is_seeded_by_the_global_rng():
    model = tiny_bert()
    batch = training_batch()
    torch.manual_seed(5)
    a = model.training_losses(batch)["total"]
    torch.manual_seed(5)
    b = model.training_losses(batch)["total"]
    assert torch.equal(a, b)


def test_bert4rec_cloze_loss_matches_a_hand_computation():
    model = tiny_bert(ft_ratio=0.0).double()
    batch = training_batch()
    torch.manual_seed(3)
    loss = model.training_losses(batch)["total"]
    torch.manual_seed(3)
    sequence = torch.cat([batch.items, batch.targets[:, -1:]], dim=1)  # the window plus its last target
    hidden = model.cloze_mask(sequence)
    o = model.encode(sequence.masked_fill(hidden, NUM_ITEMS + 1))[hidden]
    logits = o @ model.item_embedding.weight[1 : NUM_ITEMS + 1].T + model.output_bias
    expected = torch.nn.functional.cross_entropy(logits, sequence[hidden] - 1)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)


def test_bert4rec_attention_ignores_padding_tokens():
    model = tiny_bert().double().eval()
    tokens = torch.tensor([[0, 0, 3, 4, NUM_ITEMS + 1]])
    changed = tokens.clone()
    changed[0, :2] = 0
    with torch.no_grad():
        base = model.encode(tokens)[:, 2:]
        # replace the padding embedding row: real positions must not change
        model.item_embedding.weight[0].normal_()
        after = model.encode(changed)[:, 2:]
    assert torch.allclose(base, after, atol=1e-12, rtol=0)


def test_bert4rec_long_windows_keep_the_last_tokens():
    model = tiny_bert(max_seq_length=4).double().eval()
    long = make_batch([[9, 8, 7, 1, 2, 3, 4]])
    short = make_batch([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(model.score(long), model.score(short), atol=1e-12, rtol=0)


# --- Mamba4Rec --------------------------------------------------------------------------------------
def random_scan_inputs(dtype, batch=3, length=13, channels=6, n_state=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, channels, generator=g, dtype=dtype)
    delta = torch.rand(batch, length, channels, generator=g, dtype=dtype) * 0.5
    A = -torch.rand(channels, n_state, generator=g, dtype=dtype) * 4 - 0.1
    b = torch.randn(batch, length, n_state, generator=g, dtype=dtype)
    c = torch.randn(batch, length, n_state, generator=g, dtype=dtype)
    return [t.requires_grad_(True) for t in (x, delta, A, b, c)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk", [1, 4, 5, 13, 64])
def test_mamba_chunked_scan_equals_sequential_values_and_gradients(dtype, chunk):
    inputs = random_scan_inputs(dtype)
    y_ref = selective_scan_sequential(*inputs)
    weight = torch.randn_like(y_ref)
    grads_ref = torch.autograd.grad((y_ref * weight).sum(), inputs)
    y = selective_scan_chunked(*inputs, chunk_size=chunk)
    grads = torch.autograd.grad((y * weight).sum(), inputs)
    assert torch.allclose(y, y_ref, atol=1e-5, rtol=0)
    for g, g_ref in zip(grads, grads_ref):
        assert torch.allclose(g, g_ref, atol=1e-5, rtol=1e-5)


def test_mamba_sequential_scan_hand_case():
    # one channel, one state, A = -1: h1 = 0.5 * 2 * 4 = 4, h2 = e^{-1} h1 + 1 * 1 * 3
    x = torch.tensor([[[4.0], [3.0]]])
    delta = torch.tensor([[[0.5], [1.0]]])
    A = torch.tensor([[-1.0]])
    b = torch.tensor([[[2.0], [1.0]]])
    c = torch.tensor([[[1.0], [0.5]]])
    y = selective_scan_sequential(x, delta, A, b, c)
    h2 = math.exp(-1.0) * 4.0 + 3.0
    assert torch.allclose(y[0, :, 0], torch.tensor([4.0, 0.5 * h2]))


def test_mamba_model_with_chunked_scan_equals_sequential_model():
    model = tiny_mamba(num_layers=2, scan="chunked").double().eval()
    reference = tiny_mamba(num_layers=2, scan="sequential").double().eval()
    reference.load_state_dict(model.state_dict())
    batch = make_batch([[0, 0, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 5, 6, 7, 8, 9]],
                       [[0, 0, 4, 5, 6, 7, 8, 9, 10], [2, 3, 4, 5, 6, 7, 8, 9, 10]])
    assert torch.allclose(model.score(batch), reference.score(batch), atol=1e-10, rtol=0)
    loss, loss_ref = model.training_losses(batch)["total"], reference.training_losses(batch)["total"]
    grads = torch.autograd.grad(loss, list(model.parameters()))
    grads_ref = torch.autograd.grad(loss_ref, list(reference.parameters()))
    for g, g_ref in zip(grads, grads_ref):
        assert torch.allclose(g, g_ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("scan", ["sequential", "chunked"])
def test_mamba_stacked_layers_keep_left_padding_invariance(scan):
    model = tiny_mamba(num_layers=2, scan=scan).double().eval()
    a = model.score(make_batch([[4, 9, 2]]))
    b = model.score(make_batch([[0, 0, 0, 0, 0, 4, 9, 2]]))
    assert torch.allclose(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("scan", ["sequential", "chunked"])
def test_mamba_is_causal(scan):
    model = tiny_mamba(scan=scan).double().eval()
    items = torch.tensor([[3, 4, 5, 6, 7]])
    changed = items.clone()
    changed[0, -1] = 11
    assert torch.allclose(model.encode(items)[:, :-1], model.encode(changed)[:, :-1], atol=1e-12, rtol=0)


def test_mamba_initialisation():
    model = tiny_mamba(hidden_size=32, state_size=4)
    mixer = model.layers[0].mixer
    assert mixer.dt_proj.in_features == 2  # ceil(32 / 16)
    assert torch.allclose(mixer.A, -torch.arange(1.0, 5.0).expand(64, 4))
    assert torch.equal(mixer.D, torch.ones(64))
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-3 - 1e-7 and dt.max() <= 1e-1 + 1e-7
    recbole = tiny_mamba(dt_init="recbole").layers[0].mixer
    assert torch.equal(recbole.dt_proj.bias, torch.zeros_like(recbole.dt_proj.bias))
