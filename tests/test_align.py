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
