import pytest
import torch

from t2arec.models.ttt4rec import TTT4Rec, TTT4RecConfig, layer_norm, ttt_dual_form
from tests.models.batches import (assert_every_parameter_learns, assert_same_gradients, eval_batch, reference_rec_loss,
                                   shift_batch)

NUM_ITEMS = 20
KINDS = ["linear", "mlp"]


def build(kind: str = "linear", dropout: bool = False, **overrides) -> TTT4Rec:
    """A tiny model (d = 16, 2 heads of 8, mini-batches of 4); without ``dropout`` the rate is 0."""
    torch.manual_seed(0)
    kwargs = dict(num_items=NUM_ITEMS, hidden_size=16, intermediate_size=32, num_heads=2, num_layers=2,
                  mini_batch_size=4, ttt_layer_type=kind)
    if not dropout:
        kwargs.update(dropout=0.0)
    return TTT4Rec(TTT4RecConfig(**{**kwargs, **overrides}))


def test_defaults_follow_the_reference_code():
    cfg = TTT4RecConfig()
    assert (cfg.num_items, cfg.hidden_size, cfg.num_layers, cfg.num_heads) == (0, 64, 1, 4)
    assert (cfg.mini_batch_size, cfg.ttt_base_lr, cfg.ttt_layer_type, cfg.dropout) == (8, 1.0, "mlp", 0.2)
    with pytest.raises(ValueError):
        TTT4RecConfig(ttt_layer_type="conv")


@pytest.mark.parametrize("kind", KINDS)
def test_capabilities_and_score_shape(kind):
    model = build(kind).eval()
    assert model.uses_time is False and model.has_alignment_loss is False
    batch = eval_batch([[0, 0, 0, 3, 5, 7], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 9]])
    with torch.no_grad():
        scores = model.score(batch)
    assert scores.shape == (3, NUM_ITEMS)
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("kind", KINDS)
def test_training_losses_are_finite_and_backpropagate(kind):
    model = build(kind, dropout=True).train()
    batch = shift_batch([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [4, 5, 6], [7, 8]], length=9)
    batch.items[2] = 0  # a row of padding only (no targets)
    batch.targets[2] = 0
    losses = model.training_losses(batch)
    assert set(losses) == {"rec", "total"} and torch.isfinite(losses["total"])
    losses["total"].backward()
    # every parameter learns, among them the inner model's initial weights and its learning-rate gate
    assert_every_parameter_learns(model)
    assert model.item_embedding.weight.grad[0].abs().sum() == 0  # padding row never learns
    # the value against an independent computation, dropout off (same weights, still training mode)
    plain = build(kind).train()
    losses = plain.training_losses(batch)
    reference = reference_rec_loss(plain.encode(batch.items), plain.item_embedding.weight, batch.targets)
    assert losses["rec"].item() == pytest.approx(reference.item(), rel=1e-5)
    assert_same_gradients(plain, losses["rec"], reference)
    assert losses["total"].item() == pytest.approx(reference.item(), rel=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_left_padding_is_an_exact_no_op(kind):
    model = build(kind).eval()
    sequence = [3, 9, 4, 1, 7, 12, 5, 2, 8, 6, 11]  # 11 items: chunks of 4 are not aligned with the end
    with torch.no_grad():
        scores = [model.score(eval_batch([[0] * pad + sequence])) for pad in (0, 3, 7)]
        # padding of different lengths inside one batch, too
        batch = eval_batch([[0] * 7 + sequence, [0] * 4 + sequence + [1, 2, 3]])
        batched = model.score(batch)
    for other in scores[1:]:
        torch.testing.assert_close(other, scores[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(batched[:1], scores[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_causality(kind):
    model = build(kind).eval()
    items = torch.tensor([[0, 0, 5, 3, 9, 4, 1, 7, 12, 5, 2, 8, 6], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]])
    with torch.no_grad():
        base = model.encode(items)
        for t in (2, 5, 7, 10):  # inside and at the edges of chunks of 4 (counted from the first item)
            changed = items.clone()
            changed[:, t + 1:] = torch.randint(1, NUM_ITEMS + 1, changed[:, t + 1:].shape)
            out = model.encode(changed)
            torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], atol=1e-6, rtol=0)
            assert not torch.allclose(out[:, t + 1:], base[:, t + 1:])  # later positions do see the change


# --- the inner update against a per-token loop --------------------------------------------------
def inner_forward(u, params, kind):
    """g_W(u) for the inner model, params broadcast over (B, H)."""
    if kind == "linear":
        return u @ params["W1"] + params["b1"]
    hidden = torch.nn.functional.gelu(u @ params["W1"] + params["b1"], approximate="tanh")
    return hidden @ params["W2"] + params["b2"]


def naive_ttt(q, k, v, lr, token_eta, params, ln_w, ln_b, kind):
    """One token at a time: gradients by autograd at the chunk's initial weights, accumulated with
    the tokens' learning rates, scaled by eta_i; z_t = q_t + LN(g_{W_t}(q_t))."""
    batch, heads, length, _ = q.shape
    b = token_eta.shape[0]
    ln_w, ln_b = ln_w[:, None], ln_b[:, None]
    state = {n: p.unsqueeze(0).expand(batch, *p.shape).clone() for n, p in params.items()}
    outputs = []
    for start in range(0, length, b):
        initial = {n: p.detach().requires_grad_() for n, p in state.items()}
        accumulated = {n: torch.zeros_like(p) for n, p in state.items()}
        for i in range(b):
            t = start + i
            kt, vt, qt = k[:, :, t:t + 1], v[:, :, t:t + 1], q[:, :, t:t + 1]
            with torch.enable_grad():  # the loop may run inside a no_grad forward
                pred = layer_norm(inner_forward(kt, initial, kind), ln_w, ln_b)
                loss = 0.5 * ((pred - (vt - kt)) ** 2).sum()
                grads = torch.autograd.grad(loss, list(initial.values()))
            current = {}
            for (name, p0), g in zip(initial.items(), grads):
                accumulated[name] = accumulated[name] + lr[:, :, t, None, None] * g
                current[name] = p0.detach() - token_eta[i] * accumulated[name]
            outputs.append(qt + layer_norm(inner_forward(qt, current, kind), ln_w, ln_b))
        state = current
    return torch.cat(outputs, dim=2)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk", [1, 4])
def test_dual_form_matches_a_per_token_loop(kind, chunk):
    torch.manual_seed(1)
    batch, heads, length, f = 2, 2, 12, 6
    m = 4 * f if kind == "mlp" else f
    q, k, v = (torch.randn(batch, heads, length, f, dtype=torch.float64) for _ in range(3))
    lr = torch.rand(batch, heads, length, dtype=torch.float64)
    lr[0, :, :3] = 0.0  # tokens that must not update W
    token_eta = 1.0 / torch.arange(1, chunk + 1, dtype=torch.float64) + 0.1 * torch.rand(chunk, dtype=torch.float64)
    params = {"W1": 0.3 * torch.randn(heads, f, m, dtype=torch.float64),
              "b1": 0.1 * torch.randn(heads, 1, m, dtype=torch.float64)}
    if kind == "mlp":
        params.update(W2=0.3 * torch.randn(heads, m, f, dtype=torch.float64),
                      b2=0.1 * torch.randn(heads, 1, f, dtype=torch.float64))
    ln_w = 1.0 + 0.1 * torch.randn(heads, f, dtype=torch.float64)
    ln_b = 0.1 * torch.randn(heads, f, dtype=torch.float64)
    dual = ttt_dual_form(q, k, v, lr, token_eta, params, ln_w, ln_b)
    naive = naive_ttt(q, k, v, lr, token_eta, params, ln_w, ln_b, kind)
    torch.testing.assert_close(dual, naive, atol=1e-5, rtol=0)
    # the inner weights really move: with a zero learning rate everywhere the output differs
    frozen = ttt_dual_form(q, k, v, torch.zeros_like(lr), token_eta, params, ln_w, ln_b)
    assert (frozen - dual).abs().max() > 1e-3


def test_layer_outputs_match_the_loop_in_the_model():
    """The model's TTT layer (projections, RoPE, learnable lr, padding) feeds ttt_dual_form exactly
    what the loop reproduces: swap the dual form for the loop and compare the model outputs."""
    import t2arec.models.ttt4rec as module

    model = build("linear").double().eval()
    items = torch.tensor([[0, 0, 0, 5, 3, 9, 4, 1, 7, 12, 5], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]])
    with torch.no_grad():
        dual = model.encode(items)

    def loop(q, k, v, lr, token_eta, params, ln_w, ln_b, eps=1e-6):
        return naive_ttt(q, k, v, lr, token_eta, params, ln_w, ln_b, "linear")

    original = module.ttt_dual_form
    module.ttt_dual_form = loop
    try:
        with torch.no_grad():
            looped = model.encode(items)
    finally:
        module.ttt_dual_form = original
    torch.testing.assert_close(dual, looped, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_overfits_a_fixed_batch(kind):
    model = build(kind).train()
    torch.manual_seed(0)
    sequences = [torch.randint(1, NUM_ITEMS + 1, (n,)).tolist() for n in (9, 7, 5, 9, 6, 8)]
    batch = shift_batch(sequences, length=8)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    start = model.training_losses(batch)["total"].item()
    for _ in range(80):  # 1-3 s on one thread; the loss is near 0.015 by then
        optimiser.zero_grad()
        loss = model.training_losses(batch)["total"]
        loss.backward()
        optimiser.step()
    assert start > 2.5  # about log(20) at initialisation
    assert loss.item() < 0.1  # memorised: well below 5% of the starting loss
