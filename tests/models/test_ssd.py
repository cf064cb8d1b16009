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


def _fused_kernel():
    """The ssd_kernels module when its fused kernel can run here (CUDA and mamba_ssm), else None."""
    if not torch.cuda.is_available():
        return None
    from t2arec.models import ssd_kernels

    return ssd_kernels if ssd_kernels._kernel is not None else None


needs_fused_kernel = pytest.mark.skipif(_fused_kernel() is None, reason="the fused kernel needs CUDA and mamba_ssm")


def kernel_inputs(seed=0):
    x, _, b, c = random_inputs(batch=4, length=100, d=64, d_state=32, dtype=torch.float32, seed=seed)
    delta = torch.rand(4, 100, generator=torch.Generator().manual_seed(seed + 1)) * 0.1
    a = torch.tensor([-2.0])
    return [t.cuda() for t in (x, delta, a, b, c)]


def kernel_call(ssd_kernels, x, delta, a, b, c):
    """The kernel on one head, read back in the shapes of ``scan_chunked``."""
    y, h = ssd_kernels.scan_kernel(x[:, :, None], delta[..., None], a, b, c, chunk_size=64)
    return y[:, :, 0], h[:, 0]


@needs_fused_kernel
def test_fused_kernel_equals_the_pytorch_scan():
    ssd_kernels = _fused_kernel()
    x, delta, a, b, c = kernel_inputs()
    y, h = kernel_call(ssd_kernels, x, delta, a, b, c)
    y_ref, h_ref = scan_chunked(x * delta[..., None], delta * a, b, c, chunk_size=64)
    assert torch.allclose(y, y_ref, atol=1e-3, rtol=1e-3)
    assert torch.allclose(h, h_ref, atol=1e-3, rtol=1e-3)


@needs_fused_kernel
def test_fused_kernel_gradients_equal_the_pytorch_scan():
    """Training on CUDA backpropagates through the kernel: its gradients with respect to x, Delta,
    A, B and C must be those of the PyTorch scan (through the outputs and the final state)."""
    ssd_kernels = _fused_kernel()
    leaves = [t.clone().requires_grad_(True) for t in kernel_inputs(seed=3)]
    ref_leaves = [t.clone().requires_grad_(True) for t in leaves]
    y, h = kernel_call(ssd_kernels, *leaves)
    x, delta, a, b, c = ref_leaves
    y_ref, h_ref = scan_chunked(x * delta[..., None], delta * a, b, c, chunk_size=64)
    g = torch.Generator(device="cuda").manual_seed(0)
    weight_y = torch.randn(y_ref.shape, generator=g, device="cuda")
    weight_h = torch.randn(h_ref.shape, generator=g, device="cuda")
    grads = torch.autograd.grad((y * weight_y).sum() + (h * weight_h).sum(), leaves)
    grads_ref = torch.autograd.grad((y_ref * weight_y).sum() + (h_ref * weight_h).sum(), ref_leaves)
    for name, got, want in zip(("x", "delta", "A", "B", "C"), grads, grads_ref):
        assert got.shape == want.shape, name
        scale = want.abs().max().clamp(min=1.0)
        assert torch.allclose(got, want, atol=1e-3 * scale, rtol=1e-3), name


def test_without_the_kernel_the_pytorch_scan_runs(monkeypatch):
    """On CPU, with ``use_kernels`` on (the default) and even with mamba_ssm "installed", the block
    never calls the fused kernel: the PyTorch chunked scan computes its output, which equals the
    sequential reference."""
    import t2arec.models.t2arec as t2arec_module
    from t2arec.models import ssd_kernels
    from t2arec.models.t2arec import T2ARec, T2ARecConfig

    def kernel_must_not_run(*args, **kwargs):
        raise AssertionError("the fused CUDA kernel was called on CPU tensors")

    monkeypatch.setattr(ssd_kernels, "_kernel", kernel_must_not_run)  # as if mamba_ssm were installed
    monkeypatch.setattr(t2arec_module, "scan_kernel", kernel_must_not_run)
    chunked_calls = []

    def counting_scan(*args, **kwargs):
        chunked_calls.append(args[0].shape)
        return scan_chunked(*args, **kwargs)

    monkeypatch.setattr(t2arec_module, "scan_chunked", counting_scan)
    torch.manual_seed(0)
    cfg = T2ARecConfig(num_items=20, hidden_size=8, state_size=4, dropout=0.0, chunk_size=4, use_kernels=True)
    model = T2ARec(cfg).double()
    reference = T2ARec(T2ARecConfig(**{**vars(cfg), "sequential_scan": True})).double()
    reference.load_state_dict(model.state_dict())
    items = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 5, 6, 7, 8, 9]])
    out, trace = model.encode(items)
    assert chunked_calls == [(2, 9, 8)]  # the block's scan was the PyTorch chunked one
    out_ref, trace_ref = reference.encode(items)
    assert torch.allclose(out, out_ref, atol=1e-10, rtol=0)
    assert torch.allclose(trace.final_state, trace_ref.final_state, atol=1e-10, rtol=0)
