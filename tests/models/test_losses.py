"""The chunked full-catalogue cross-entropy against PyTorch's, in values and gradients."""
import pytest
import torch
import torch.nn.functional as F

import t2arec.models.losses as losses
from t2arec.models.losses import full_cross_entropy


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("chunk_elements", [50, 1 << 20])  # many chunks (the last one partial), or one
def test_equals_cross_entropy_in_values_and_gradients(monkeypatch, with_bias, chunk_elements):
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", chunk_elements)
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(11, generator=gen, dtype=torch.float64, requires_grad=True) if with_bias else None
    targets = torch.randint(0, 11, (37,), generator=gen)
    ours = full_cross_entropy(hidden, weight, targets, bias)
    logits = hidden @ weight.T + (bias if with_bias else 0)
    reference = F.cross_entropy(logits, targets)
    assert torch.allclose(ours, reference, atol=1e-12)
    inputs = [hidden, weight] + ([bias] if with_bias else [])
    ours_grads = torch.autograd.grad(3.0 * ours, inputs)
    reference_grads = torch.autograd.grad(3.0 * reference, inputs)
    for a, b in zip(ours_grads, reference_grads):
        assert torch.allclose(a, b, atol=1e-12)
    assert torch.autograd.gradcheck(lambda h, w: full_cross_entropy(h, w, targets), (hidden, weight))


def test_no_target_gives_a_zero_loss_that_backpropagates():
    hidden = torch.zeros(0, 4, requires_grad=True)
    weight = torch.randn(5, 4, requires_grad=True)
    loss = full_cross_entropy(hidden, weight, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and hidden.grad is not None
