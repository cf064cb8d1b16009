"""T2ARec's written-out test-time step (models/t2arec_step.py) against autograd over alignment_loss."""
import dataclasses

import pytest
import torch

from t2arec.align import AlignConfig, aligned, score_batch
from t2arec.models.base import SeqBatch
from t2arec.models.t2arec import T2ARec, T2ARecConfig


@pytest.fixture(autouse=True)
def written_out_at_any_size(monkeypatch):
    """The written-out step on these small batches (the model leaves batches below MIN_TOKENS to autograd)."""
    monkeypatch.setattr("t2arec.models.t2arec_step.MIN_TOKENS", 0)


def trained_like(dtype=torch.float64, num_items=30, **overrides) -> T2ARec:
    """A small model whose parameters are all moved off their initial values (P = 0, D = 1, zero
    biases would hide terms of the gradient)."""
    torch.manual_seed(0)
    cfg = T2ARecConfig(num_items=num_items, hidden_size=8, state_size=4, dropout=0.0, chunk_size=4,
                       **{"output_gate": True, **overrides})
    model = T2ARec(cfg).to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.item_embedding.weight[0].zero_()  # padding row, as training leaves it
    return model


def random_batch(num_items=30, rows=11, length=37, dtype=torch.float64, seed=1) -> SeqBatch:
    """Left-padded sequences of many lengths: full, empty of history but one item, shorter than the
    convolution kernel, shorter and longer than a time block; gaps of seconds to days."""
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, num_items + 1, (rows, length), generator=g)
    for row, real in enumerate([length, 1, 2, 3, 9, 15, 16, 17, 20, 30, length - 1][:rows]):
        items[row, : length - real] = 0
    gaps = torch.rand(rows, length, generator=g, dtype=dtype) * 1e4 * (items > 0)
    return SeqBatch(items, gaps, torch.rand(rows, generator=g, dtype=dtype) * 1e4,
                    torch.randint(1, num_items + 1, (rows,), generator=g))


def both_gradients(model: T2ARec, batch: SeqBatch, mu_time=0.3, mu_state=0.7):
    """(loss, gradients) of the written-out step and of autograd over alignment_loss, every parameter."""
    params = [p for p in model.parameters() if p.requires_grad]
    fast = model.alignment_gradients(batch, mu_time, mu_state, params)
    assert fast is not None, "the written-out step did not run"
    loss = model.alignment_loss(batch, mu_time, mu_state)
    reference = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
    return fast, (loss, reference)


def assert_close(model: T2ARec, fast, reference, rtol: float) -> None:
    """Loss and every parameter's gradient agree to ``rtol`` of that gradient's largest entry (a
    parameter the loss does not reach, P with Pbar = -1/A, must get exactly zero)."""
    (loss, grads), (ref_loss, ref_grads) = fast, reference
    assert abs(float(loss) - float(ref_loss.detach())) <= rtol * abs(float(ref_loss.detach()))
    for (name, _), got, want in zip(model.named_parameters(), grads, ref_grads):
        assert got.shape == want.shape and got.dtype == want.dtype, name
        scale = float(want.abs().max())
        assert float((got - want).abs().max()) <= rtol * scale, name
    assert sum(float(g.abs().max()) > 0 for g in ref_grads) >= len(ref_grads) - 1  # at most P unreached


CASES = [
    {},  # the defaults: output gate, one head, learned P, log1p, blocks of 16, the per-item table
    {"output_gate": False},
    {"single_layer_residual": True},
    {"num_heads": 2},  # several heads: no per-item table, one row per token
    {"num_heads": 4, "output_gate": False, "single_layer_residual": True},
    {"state_p": "theorem"},
    {"time_transform": "identity", "time_scale": 1000.0},
    {"time_block": 5},  # odd blocks: every offset once
    {"time_block": 2},
    {"conv_kernel": 2},
    {"use_item_table": False},
    {"expand": 2},  # the mixer twice as wide as the embeddings: W_in d -> 2d + ..., W_out 2d -> d
    {"expand": 2, "num_heads": 2, "output_gate": False},
]


@pytest.mark.parametrize("overrides", CASES)
@pytest.mark.parametrize("cache_tokens", [None, 40])
def test_written_out_gradients_equal_autograd_in_float64(overrides, cache_tokens, monkeypatch):
    if cache_tokens:  # a few sequences per chunk: chunks of different lengths, the last one partial
        monkeypatch.setattr("t2arec.models.t2arec_step.CACHE_TOKENS", cache_tokens)
        monkeypatch.setattr("t2arec.models.t2arec_step.TIME_CHUNK_TOKENS", cache_tokens)
    model = trained_like(**overrides)
    batch = random_batch()
    fast, reference = both_gradients(model, batch)
    assert_close(model, fast, reference, rtol=1e-10)


@pytest.mark.parametrize("overrides", [{}, {"num_heads": 2}])
def test_the_catalogue_larger_than_the_batch_uses_rows_per_token(overrides):
    model = trained_like(num_items=500, **overrides)
    batch = random_batch(num_items=500, rows=4, length=20)
    assert not model.use_table(batch.items)
    fast, reference = both_gradients(model, batch)
    assert_close(model, fast, reference, rtol=1e-10)


def test_short_windows_and_a_zero_weight():
    """Windows shorter than the kernel and than a block; mu_time = 0 cuts L_time's paths (its
    gradients are zero, not missing)."""
    model = trained_like()
    batch = random_batch(rows=4, length=3)
    fast, reference = both_gradients(model, batch)
    assert_close(model, fast, reference, rtol=1e-10)
    params = [p for p in model.parameters() if p.requires_grad]
    loss, grads = model.alignment_gradients(batch, 0.0, 0.7, params)
    ref = torch.autograd.grad(model.alignment_loss(batch, 0.0, 0.7), params, allow_unused=True,
                              materialize_grads=True)
    for got, want in zip(grads, ref):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("overrides", [{}, {"num_heads": 2, "single_layer_residual": True}])
def test_float32_gradients_within_1e5(overrides):
    """In float32 both paths round; against the float64 gradient the written-out one is within 1e-5
    of each gradient's scale, or no further off than autograd's own float32 gradient is (D's
    gradient is a small difference of larger terms, where both lose digits)."""
    model = trained_like(dtype=torch.float32, **overrides)
    batch = random_batch(dtype=torch.float32)
    (loss, grads), (ref_loss, ref_grads) = both_gradients(model, batch)
    exact = trained_like(dtype=torch.float64, **overrides)
    exact.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    batch64 = SeqBatch(batch.items, batch.gaps.double(), batch.next_gap.double(), batch.targets)
    (exact_loss, exact_grads), _ = both_gradients(exact, batch64)
    assert abs(float(loss) - float(exact_loss)) <= 1e-5 * abs(float(exact_loss))
    for (name, _), got, ref, want in zip(model.named_parameters(), grads, ref_grads, exact_grads):
        error, ref_error = float((got.double() - want).abs().max()), float((ref.double() - want).abs().max())
        assert error <= max(1e-5 * float(want.abs().max()), 2 * ref_error), name


def test_only_the_batch_items_rows_of_the_embedding_move():
    model = trained_like()
    batch = random_batch(rows=3, length=6)
    params = [p for p in model.parameters() if p.requires_grad]
    _, grads = model.alignment_gradients(batch, 0.3, 0.7, params)
    grad_e = grads[[p is model.item_embedding.weight for p in params].index(True)]
    touched = torch.zeros(model.cfg.num_items + 1, dtype=torch.bool)
    touched[batch.items.unique()] = True
    touched[0] = False
    assert (grad_e[~touched] == 0).all() and (grad_e[touched].abs().sum(1) > 0).all()


def test_alignment_takes_the_written_out_step_and_predicts_as_autograd_does(monkeypatch):
    model = trained_like(dtype=torch.float32)
    batch = random_batch(dtype=torch.float32)
    cfg = AlignConfig(lr=2.0, mu_time=1.0, mu_state=1.0)
    reference_model = _reference(model)
    assert reference_model.alignment_gradients(batch, 1.0, 1.0, list(reference_model.parameters())) is None

    def no_autograd(*args, **kwargs):
        raise AssertionError("alignment_loss called: the written-out step was not used")

    monkeypatch.setattr(model, "alignment_loss", no_autograd)
    with aligned(model, batch, cfg) as stats:
        adapted = [p.detach().clone() for p in model.parameters()]
    with aligned(reference_model, batch, cfg) as ref_stats:
        ref_adapted = [p.detach().clone() for p in reference_model.parameters()]
    assert stats.param_shift > 1e-3 and abs(stats.param_shift - ref_stats.param_shift) <= 1e-5 * ref_stats.param_shift
    assert abs(stats.loss_before - ref_stats.loss_before) <= 1e-5 * abs(ref_stats.loss_before)
    for got, want in zip(adapted, ref_adapted):
        assert torch.allclose(got, want, rtol=0, atol=1e-6)
    scores, _ = score_batch(model, batch, cfg)
    ref_scores, _ = score_batch(reference_model, batch, cfg)
    plain, _ = score_batch(model, batch, None)
    assert (scores - plain).abs().max() > 1e-3  # the step changed the predictions
    assert (scores - ref_scores).abs().max() <= 1e-5


class NoHook(T2ARec):
    """T2ARec as a model that offers only its loss (no written-out gradients)."""

    has_alignment_gradients = False

    def alignment_gradients(self, *args, **kwargs):
        raise AssertionError("alignment_gradients called on a model that does not offer it")


def test_models_without_the_hook_and_cases_the_hook_declines_use_autograd(monkeypatch):
    batch = random_batch(dtype=torch.float32)
    cfg = AlignConfig(lr=2.0, mu_time=1.0, mu_state=1.0)
    base = trained_like(dtype=torch.float32)
    expected, _ = score_batch(_reference(base), batch, cfg)
    hookless = NoHook(base.cfg).eval()
    hookless.load_state_dict(base.state_dict())
    scores, _ = score_batch(hookless, batch, cfg)
    assert torch.equal(scores, expected)  # autograd, bit for bit

    two_layers = trained_like(dtype=torch.float32, num_layers=2)
    assert two_layers.alignment_gradients(batch, 1.0, 1.0, list(two_layers.parameters())) is None
    assert score_batch(two_layers, batch, cfg)[1].param_shift > 0
    training = trained_like(dtype=torch.float32).train()  # dropout on: not the test-time setting
    assert training.alignment_gradients(batch, 1.0, 1.0, list(training.parameters())) is None
    monkeypatch.setattr("t2arec.models.t2arec_step.MIN_TOKENS", batch.items.numel() + 1)  # a batch too small
    assert base.alignment_gradients(batch, 1.0, 1.0, list(base.parameters())) is None
    assert torch.equal(score_batch(base, batch, cfg)[0], expected)


def _reference(model: T2ARec) -> T2ARec:
    reference = T2ARec(dataclasses.replace(model.cfg, fast_step=False)).eval()
    reference.load_state_dict(model.state_dict())
    return reference
