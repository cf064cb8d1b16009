import pytest
import torch

from t2arec.models.ssd import final_state, scan_chunked, scan_sequential, segment_sums


def random_inputs(batch=3, length=37, d=8, d_state=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, d, generator=g, dtype=dtype)
    log_decay = -torch.rand(batch, length, generator=g, dtype=dtype) * 2
    b = torch.randn(batch, length, d_state, generator=g, dtype=dtype)
    c = torch.randn(batch, length, d_state, generator=g, dtype=dtype)
    return x, log_decay, b, c


def test_segment_sums_hand_case():
    a = torch.tensor([1.0, 2.0, 3.0])
    s = segment_sums(a)
    inf = float("-inf")
    expected = torch.tensor([[0.0, inf, inf], [2.0, 0.0, inf], [5.0, 3.0, 0.0]])
    assert torch.equal(s, expected)


def test_sequential_loop_hand_case():
    # one channel, one state: h1 = 1*2 = 2, h2 = e^{-1}*2 + 1*3
    x = torch.tensor([[[2.0], [3.0]]])
    a = torch.tensor([[0.0, -1.0]])
    b = torch.ones(1, 2, 1)
    c = torch.full((1, 2, 1), 0.5)
    y, h = scan_sequential(x, a, b, c)
    h2 = torch.exp(torch.tensor(-1.0)) * 2 + 3
    assert torch.allclose(y[0, :, 0], torch.stack([torch.tensor(1.0), 0.5 * h2]))
    assert torch.allclose(h[0, 0, 0], h2)


@pytest.mark.parametrize("chunk", [1, 5, 16, 37, 64])
def test_chunked_equals_sequential(chunk):
    x, a, b, c = random_inputs()
    y_ref, h_ref = scan_sequential(x, a, b, c)
    y, h = scan_chunked(x, a, b, c, chunk_size=chunk)
    assert torch.allclose(y, y_ref, atol=1e-5, rtol=0)
    assert torch.allclose(h, h_ref, atol=1e-5, rtol=0)


def test_chunked_gradients_equal_sequential():
    inputs = [t.clone().requires_grad_(True) for t in random_inputs(length=29)]
    y_ref, h_ref = scan_sequential(*inputs)
    weight_y, weight_h = torch.randn_like(y_ref), torch.randn_like(h_ref)
    grads_ref = torch.autograd.grad((y_ref * weight_y).sum() + (h_ref * weight_h).sum(), inputs)
    y, h = scan_chunked(*inputs, chunk_size=8)
    grads = torch.autograd.grad((y * weight_y).sum() + (h * weight_h).sum(), inputs)
    for g, g_ref in zip(grads, grads_ref):
        assert torch.allclose(g, g_ref, atol=1e-5, rtol=0)


def test_chunked_float32_close_to_float64_reference():
    x, a, b, c = random_inputs(length=50)
    y_ref, _ = scan_sequential(x, a, b, c)
    y, _ = scan_chunked(*(t.float() for t in (x, a, b, c)), chunk_size=16)
    assert torch.allclose(y.double(), y_ref, atol=1e-4, rtol=1e-5)


def test_final_state_equals_the_loop_and_its_gradients():
    x, a, b, c = random_inputs()
    leaves = [t.clone().requires_grad_() for t in (x, a, b)]
    direct = final_state(*leaves)
    _, reference = scan_sequential(x, a, b, c)
    assert torch.allclose(direct, reference, atol=1e-10)
    weights = torch.randn_like(reference)
    grads = torch.autograd.grad((direct * weights).sum(), leaves)
    ref_leaves = [t.clone().requires_grad_() for t in (x, a, b)]
    ref_grads = torch.autograd.grad((scan_sequential(*ref_leaves, c)[1] * weights).sum(), ref_leaves)
    for got, want in zip(grads, ref_grads):
        assert torch.allclose(got, want, atol=1e-9)


def test_final_state_hand_case():
    # h2 = e^{-1} * (1 * 2) + 1 * 3, as in the loop's hand case
    x = torch.tensor([[[2.0], [3.0]]])
    h = final_state(x, torch.tensor([[0.0, -1.0]]), torch.ones(1, 2, 1))
    assert torch.allclose(h, torch.tensor([[[2.0 * torch.e**-1 + 3.0]]]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused kernel needs CUDA")
def test_fused_kernel_equals_the_pytorch_scan():
    from t2arec.models import ssd_kernels

    if ssd_kernels._kernel is None:
        pytest.skip("mamba_ssm is not installed")
    x, _, b, c = random_inputs(batch=4, length=100, d=64, d_state=32, dtype=torch.float32)
    delta = torch.rand(4, 100) * 0.1
    a = torch.tensor([-2.0])
    x, delta, a, b, c = (t.cuda() for t in (x, delta, a, b, c))
    y, h = ssd_kernels.scan_kernel(x, delta, a, b, c, chunk_size=64)
    y_ref, h_ref = scan_chunked(x * delta[..., None], delta * a, b, c, chunk_size=64)
    assert torch.allclose(y, y_ref, atol=1e-3, rtol=1e-3)
    assert torch.allclose(h, h_ref, atol=1e-3, rtol=1e-3)


def test_without_the_kernel_the_pytorch_scan_runs():
    from t2arec.models import ssd_kernels

    assert not ssd_kernels.kernel_available(torch.zeros(1))  # a CPU tensor never takes the kernel path
