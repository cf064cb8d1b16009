import numpy as np
import pytest
import torch

from t2arec.align import AlignConfig, aligned, score_batch
from t2arec.models.base import SeqBatch
from t2arec.models.t2arec import T2ARec, T2ARecConfig


def setup():
    torch.manual_seed(0)
    model = T2ARec(T2ARecConfig(num_items=30, hidden_size=8, state_size=4, chunk_size=4)).eval()
    items = torch.randint(1, 31, (6, 7))
    items[0, :3] = 0
    batch = SeqBatch(items, torch.rand(6, 7) * 1000, torch.rand(6) * 1000, torch.randint(1, 31, (6,)))
    return model, batch


def test_alignment_changes_predictions_and_restores_every_parameter_bit_for_bit():
    model, batch = setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain, _ = score_batch(model, batch, None)
    adapted, stats = score_batch(model, batch, AlignConfig(lr=1.0, mu_time=1.0, mu_state=1.0))
    assert stats is not None and stats.param_shift > 0
    assert (adapted - plain).abs().max() > 1e-4
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    again, _ = score_batch(model, batch, None)
    assert torch.equal(again, plain)


def test_param_shift_of_one_sgd_step_is_lr_times_gradient_norm():
    model, batch = setup()
    cfg = AlignConfig(lr=0.5, mu_time=0.3, mu_state=0.2)
    loss = model.alignment_loss(batch, cfg.mu_time, cfg.mu_state)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
    grad_norm = torch.sqrt(sum((g**2).sum() for g in grads)).item()
    with aligned(model, batch, cfg) as stats:
        pass
    assert abs(stats.param_shift - 0.5 * grad_norm) < 1e-5 * max(1.0, grad_norm)


def test_adam_first_step_moves_each_coordinate_by_about_lr():
    model, batch = setup()
    cfg = AlignConfig(lr=1e-3, optimizer="adam")
    weight = model.layers[0].mixer.q_proj.weight
    start = weight.detach().clone()
    with aligned(model, batch, cfg):
        moved = (weight.detach() - start).abs()
        assert moved.max() <= 1e-3 + 1e-9
        assert moved.max() > 0.9e-3
    assert torch.equal(weight, start)


def test_parameters_restored_even_when_prediction_fails():
    model, batch = setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with aligned(model, batch, AlignConfig(lr=1.0)):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_zero_steps_or_disabled_means_no_alignment():
    model, batch = setup()
    plain, _ = score_batch(model, batch, None)
    for cfg in (AlignConfig(steps=0, lr=1.0), AlignConfig(enabled=False, lr=1.0)):
        scores, stats = score_batch(model, batch, cfg)
        assert stats is None and torch.equal(scores, plain)


class TargetlessBatch(SeqBatch):
    """A batch whose targets raise when read: whatever touches them fails the test."""

    @property
    def targets(self):
        raise AssertionError("test-time alignment read batch.targets")

    @targets.setter
    def targets(self, value):
        pass  # the dataclass __init__ assigns them; they are never stored


def aligned_outcome(model, batch, cfg):
    """The adapted parameters and the scores predicted with them."""
    with aligned(model, batch, cfg):
        params = [p.detach().clone() for p in model.parameters()]
        with torch.no_grad():
            scores = model.score(batch)
    return params, scores


def test_alignment_never_reads_the_targets():
    model, batch = setup()
    cfg = AlignConfig(lr=1.0, mu_time=1.0, mu_state=1.0)
    loss = model.alignment_loss(batch, cfg.mu_time, cfg.mu_state)
    params, scores = aligned_outcome(model, batch, cfg)
    assert any(not torch.equal(p, q) for p, q in zip(params, model.parameters()))  # the step moved something
    garbage = [torch.full_like(batch.targets, 10**6), torch.randint(-5, 0, (6, 7)), torch.empty(0)]
    for targets in garbage:
        other = SeqBatch(batch.items, batch.gaps, batch.next_gap, targets)
        assert torch.equal(model.alignment_loss(other, cfg.mu_time, cfg.mu_state), loss)
        other_params, other_scores = aligned_outcome(model, other, cfg)
        assert all(torch.equal(p, q) for p, q in zip(params, other_params))
        assert torch.equal(other_scores, scores)
    blind = TargetlessBatch(batch.items, batch.gaps, batch.next_gap, batch.targets)
    assert torch.equal(model.alignment_loss(blind, cfg.mu_time, cfg.mu_state), loss)
    blind_params, blind_scores = aligned_outcome(model, blind, cfg)
    assert all(torch.equal(p, q) for p, q in zip(params, blind_params))
    blind_scores_again, _ = score_batch(model, blind, cfg)
    assert torch.equal(blind_scores, scores) and torch.equal(blind_scores_again, scores)


@pytest.mark.parametrize("start_in_training", [True, False])
def test_evaluation_aligns_in_eval_mode_and_restores_the_mode(monkeypatch, start_in_training):
    from t2arec.data.batching import Examples
    from t2arec.evaluate import evaluate

    model, batch = setup()
    model.train(start_in_training)
    examples = Examples(batch.items.numpy(), batch.gaps.numpy(), batch.next_gap.numpy(), batch.targets.numpy(),
                        np.arange(6), np.arange(6, dtype=np.float64))
    modes = []

    def recording(original):
        def record(*args, **kwargs):
            mode = (model.training, [m.training for m in model.modules()])
            out = original(*args, **kwargs)
            if out is not None:  # a step was computed here (alignment_gradients may decline)
                modes.append(mode)
            return out
        return record

    # the step goes through the model's written-out gradients or the loss and autograd: record either
    monkeypatch.setattr(model, "alignment_loss", recording(model.alignment_loss))
    monkeypatch.setattr(model, "alignment_gradients", recording(model.alignment_gradients))
    result = evaluate(model, examples, AlignConfig(lr=1.0, steps=2), batch_size=4)
    assert len(modes) == 4  # two batches, two steps each
    assert all(not training and not any(submodules) for training, submodules in modes)  # dropout off
    assert result.param_shift and all(shift > 0 for shift in result.param_shift)
    assert model.training is start_in_training
    assert all(m.training is start_in_training for m in model.modules())
