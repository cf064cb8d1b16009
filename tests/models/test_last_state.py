"""The chunked final state equals the whole-batch convolution and weighted sum, values and gradients."""
import pytest
import torch
import torch.nn.functional as F

from t2arec.models import last_state
from t2arec.models.last_state import chunk_rows, final_state_from_rows
from t2arec.models.ssd import final_state


def reference(rows, items, weight, bias, delta, a, d):
    """Gather every position, F.conv1d with left zero padding, then ssd.final_state."""
    k = weight.shape[1]
    gathered = rows[items].transpose(1, 2)
    pre = F.conv1d(F.pad(gathered, (k - 1, 0)), weight[:, None], bias, groups=rows.shape[1]).transpose(1, 2)
    x, b = torch.split(F.silu(pre), [d, rows.shape[1] - d], dim=-1)
    return final_state(x * delta[..., None], delta * a, b)


def inputs(batch=5, length=9, num_rows=7, d=3, ds=2, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(num_rows, d + ds, generator=g, dtype=torch.float64)
    rows[0] = 0.0
    items = torch.randint(1, num_rows, (batch, length), generator=g)
    items[0, :4] = 0  # left padding
    items[1, :-1] = 0  # a single item
    delta = torch.rand(batch, length, generator=g, dtype=torch.float64) * (items > 0)
    weight = torch.randn(d + ds, k, generator=g, dtype=torch.float64)
    bias = torch.randn(d + ds, generator=g, dtype=torch.float64)
    a = -torch.rand(1, generator=g, dtype=torch.float64) * 3
    return rows, items, weight, bias, delta, a


@pytest.mark.parametrize("cache_tokens", [9, 18, 27, 10_000])  # 1, 2 (last partial), 3 rows per chunk, all
def test_values_and_gradients_equal_the_whole_batch_computation(cache_tokens, monkeypatch):
    monkeypatch.setattr(last_state, "CACHE_TOKENS", cache_tokens)
    rows, items, weight, bias, delta, a = inputs()
    leaves = [t.requires_grad_() for t in (rows, weight, bias, delta, a)]
    got = final_state_from_rows(rows, items, 0, weight, bias, delta, a, 3)
    want = reference(rows, items, weight, bias, delta, a, 3)
    assert torch.allclose(got, want, atol=1e-12)
    probe = torch.randn_like(want)
    got_grads = torch.autograd.grad((got * probe).sum(), leaves)
    want_grads = torch.autograd.grad((want * probe).sum(), leaves)
    # row 0 is the zero row, also read before the start here: its gradient is of no use to anyone
    got_grads, want_grads = (got_grads[0][1:], *got_grads[1:]), (want_grads[0][1:], *want_grads[1:])
    for name, g, w in zip(("rows", "weight", "bias", "delta", "a"), got_grads, want_grads):
        assert torch.allclose(g, w, atol=1e-12), name
        assert g.abs().sum() > 0, name  # every input really receives a gradient


def test_gradcheck_with_several_chunks(monkeypatch):
    monkeypatch.setattr(last_state, "CACHE_TOKENS", 18)
    rows, items, weight, bias, delta, a = inputs(batch=3, length=6)
    leaves = [t.requires_grad_() for t in (rows, weight, bias, delta, a)]
    assert torch.autograd.gradcheck(  # the zero row included: derivatives of this function as written
        lambda r, w, b, dl, aa: final_state_from_rows(r, items, 0, w, b, dl, aa, 3), leaves)


def test_only_requested_gradients_are_computed():
    rows, items, weight, bias, delta, a = inputs()
    rows.requires_grad_()
    out = final_state_from_rows(rows, items, 0, weight, bias, delta, a, 3)
    (grad,) = torch.autograd.grad(out.sum(), [rows])
    assert grad.shape == rows.shape and weight.grad is None


def test_chunk_rows_fills_the_cache_on_cpu_and_takes_everything_elsewhere():
    assert chunk_rows(4096, 200, torch.device("cpu")) == last_state.CACHE_TOKENS // 200
    assert chunk_rows(4096, 100_000, torch.device("cpu")) == 1
    assert chunk_rows(3, 10, torch.device("cpu")) == 3
    assert chunk_rows(4096, 200, torch.device("meta")) == 4096
