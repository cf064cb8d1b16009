"""Caser's FFT convolutions equal the direct ones: values and gradients, every window length.

``direct_encode`` is the previous implementation, written with the model's own modules: the
vertical filters as a Conv2d with an (L x 1) kernel, one Conv1d per horizontal height k = 1..L and a
max-pool of width L - k + 1 per height.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from t2arec.models.base import SeqBatch
from t2arec.models.caser import Caser, CaserConfig, fft_length

NUM_ITEMS = 25


def direct_encode(model: Caser, items: Tensor, last_only: bool = False) -> Tensor:
    """The convolutions computed directly, position by position: (B, T, d) or (B, 1, d)."""
    L = model.cfg.window
    if last_only:
        padded = F.pad(items[:, -L:], (max(0, L - items.shape[1]), 0))
    else:
        padded = F.pad(items, (L - 1, 0))
    bsz, steps = items.shape[0], padded.shape[1] - L + 1
    emb = model.item_embedding(padded)
    out_v = model.conv_v(emb[:, None]).permute(0, 2, 1, 3).reshape(bsz, steps, -1)
    channels_first = emb.transpose(1, 2)
    out_h = [F.max_pool1d(F.relu(conv(channels_first)), kernel_size=L - k + 1, stride=1)
             for k, conv in enumerate(model.conv_h, start=1)]
    out_h = torch.cat(out_h, dim=1).transpose(1, 2)
    z = F.relu(model.fc1(model.dropout(torch.cat([out_v, out_h], dim=2))))
    return F.relu(model.fc2(z))


def build(window: int, dtype: torch.dtype = torch.float32, dropout: float = 0.0) -> Caser:
    torch.manual_seed(0)
    cfg = CaserConfig(num_items=NUM_ITEMS, embedding_size=12, window=window, num_vertical=3, num_horizontal=4,
                      dropout=dropout)
    model = Caser(cfg).to(dtype)
    with torch.no_grad():  # move the convolution biases off their small defaults so ReLU cuts both ways
        for conv in [model.conv_v, *model.conv_h]:
            conv.bias.normal_(0.0, 0.3)
        model.item_embedding.weight.mul_(5.0)  # N(0, 1/d) rows are tiny: make the slices differ clearly
    return model


def items_batch(length: int) -> Tensor:
    """Left-padded rows: full, short, one item, repeated items (tied slices), padding only."""
    torch.manual_seed(3)
    rows = [torch.randint(1, NUM_ITEMS + 1, (length,)).tolist(), [4, 9, 2], [17], [6, 6, 6, 8, 6, 6, 6, 8, 6], []]
    return torch.tensor([[0] * (length - len(r)) + r[-length:] for r in rows])


def gradients(model: Caser, encode, items: Tensor) -> tuple[Tensor, list[Tensor]]:
    """A loss that reads every output with its own weight; returns (outputs, parameter gradients)."""
    model.zero_grad()
    out = encode(model, items)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(out.dtype)
    (out * weights).sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("window", [1, 2, 3, 5, 8, 13])
@pytest.mark.parametrize("length", [4, 11])
def test_encode_and_gradients_equal_the_direct_convolutions_float64(window, length):
    model = build(window, torch.float64)
    items = items_batch(length)
    fast, fast_grads = gradients(model, lambda m, x: m.encode(x), items)
    direct, direct_grads = gradients(model, direct_encode, items)
    assert fast.shape == direct.shape == (items.shape[0], length, 12)
    assert torch.allclose(fast, direct, atol=1e-12, rtol=0)
    for (name, _), a, b in zip(model.named_parameters(), fast_grads, direct_grads):
        assert torch.allclose(a, b, atol=1e-10, rtol=0), name


@pytest.mark.parametrize("window", [2, 5, 13])
def test_encode_and_gradients_equal_the_direct_convolutions_float32(window):
    model = build(window)
    items = items_batch(11)
    fast, fast_grads = gradients(model, lambda m, x: m.encode(x), items)
    direct, direct_grads = gradients(model, direct_encode, items)
    assert torch.allclose(fast, direct, atol=1e-5, rtol=0)
    for (name, _), a, b in zip(model.named_parameters(), fast_grads, direct_grads):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), name


def test_training_loss_with_dropout_equals_the_direct_convolutions():
    """Dropout draws its mask over the same (B, T, n_v d + n_h L) features in the same order."""
    model = build(5, dropout=0.4).train()
    items = items_batch(11)
    targets = torch.randint(1, NUM_ITEMS + 1, items.shape) * (items > 0)
    batch = SeqBatch(items, torch.zeros(items.shape), torch.zeros(len(items)), targets)
    torch.manual_seed(11)
    fast = model.training_losses(batch)["total"]
    fast.backward()
    fast_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch.manual_seed(11)
    direct = F.cross_entropy(model.item_scores(direct_encode(model, items)[targets > 0]), targets[targets > 0] - 1)
    direct = direct + model.reg_loss()
    direct.backward()
    assert fast.item() == pytest.approx(direct.item(), abs=1e-6)
    for a, p in zip(fast_grads, model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("window", [1, 4, 9])
@pytest.mark.parametrize("length", [3, 9, 14])
def test_score_reads_the_last_window(window, length):
    model = build(window).eval()
    items = items_batch(length)
    no_target = torch.zeros(len(items), dtype=torch.long)
    batch = SeqBatch(items, torch.zeros(items.shape), torch.zeros(len(items)), no_target)
    with torch.no_grad():
        scores = model.score(batch)
        assert torch.allclose(scores, model.item_scores(model.encode(items)[:, -1]), atol=1e-5, rtol=0)
        assert torch.allclose(scores, model.item_scores(direct_encode(model, items, last_only=True)[:, -1]),
                              atol=1e-5, rtol=0)


def test_fft_length_is_the_next_size_without_large_prime_factors():
    def smooth(m: int) -> bool:
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        return m == 1

    for n in range(1, 600):
        m = fft_length(n)
        assert m >= n and smooth(m) and not any(smooth(k) for k in range(n, m))
    assert fft_length(249) == 250 and fft_length(50) == 50 and fft_length(251) == 256
