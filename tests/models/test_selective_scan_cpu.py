"""The compiled CPU selective scan equals the reference loop in values and gradients, and Mamba4Rec
falls back to the pure-PyTorch scan when the kernel cannot be built."""
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from t2arec.models import mamba4rec, selective_scan_cpu
from t2arec.models.mamba4rec import Mamba4Rec, Mamba4RecConfig, selective_scan, selective_scan_sequential
from t2arec.models.selective_scan_cpu import selective_scan_kernel
from tests.models.batches import eval_batch, train_batch


@pytest.fixture(scope="module")
def kernel():
    """Builds the kernel once (a few seconds the first time on a machine, then torch's cache).

    Without a C++ compiler the tests that need the kernel are skipped; with one, a failed build is a
    failure. The fallback tests run either way."""
    if not selective_scan_cpu.kernel_available():
        compiler = os.environ.get("CXX", "c++")
        if shutil.which(compiler) is None:
            pytest.skip(f"no C++ compiler ({compiler}): the kernel cannot be built")
        pytest.fail(f"the kernel failed to build: {selective_scan_cpu._failure}")


def scan_inputs(dtype, batch=3, length=13, channels=6, n_state=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, channels, generator=g, dtype=dtype)
    delta = torch.rand(batch, length, channels, generator=g, dtype=dtype) * 0.5
    A = -torch.rand(channels, n_state, generator=g, dtype=dtype) * 4 - 0.1
    b = torch.randn(batch, length, n_state, generator=g, dtype=dtype)
    c = torch.randn(batch, length, n_state, generator=g, dtype=dtype)
    return [t.requires_grad_(True) for t in (x, delta, A, b, c)]


def values_and_gradients(scan, inputs, weight):
    y = scan(*inputs)
    return y, torch.autograd.grad((y * weight).sum(), inputs)


# (batch, length, channels, states): the small default, one position, one sequence, a length that is
# a multiple of nothing, 32 states (two AVX-512 vectors) plus a remainder of 1 and of 7 states
SHAPES = [(3, 13, 6, 5), (2, 1, 4, 3), (1, 17, 5, 4), (2, 97, 3, 33), (4, 31, 8, 39), (3, 50, 7, 32)]
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
needs_kernel = pytest.mark.usefixtures("kernel")


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_values_and_gradients_equal_the_loop(dtype, shape):
    inputs = scan_inputs(dtype, *shape)
    weight = torch.randn(shape[:3], dtype=dtype, generator=torch.Generator().manual_seed(1))
    y, grads = values_and_gradients(selective_scan_kernel, inputs, weight)
    y_ref, grads_ref = values_and_gradients(selective_scan_sequential, inputs, weight)
    tol = TOLERANCE[dtype]
    assert y.dtype == dtype and y.shape == y_ref.shape
    assert torch.allclose(y, y_ref, atol=tol, rtol=tol)
    for name, g, g_ref in zip(("x", "delta", "A", "b", "c"), grads, grads_ref):
        assert g.shape == g_ref.shape, name
        assert torch.allclose(g, g_ref, atol=tol, rtol=tol), (name, (g - g_ref).abs().max().item())
        if not (name == "A" and shape[1] == 1):  # with one position h_0 = 0 is all A multiplies
            assert g.abs().sum() > 0, name  # every input really receives a gradient


@needs_kernel
def test_results_do_not_depend_on_the_number_of_threads():
    # each thread owns whole (sequence, channel) pairs in the forward and whole sequences in the
    # backward, and dA is reduced per sequence: the same operations in the same order, bit for bit
    inputs = scan_inputs(torch.float32, batch=5, length=23, channels=7, n_state=9)
    weight = torch.randn(5, 23, 7)
    previous = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 3):  # 3: more threads than cores here, and an uneven split of 5 sequences
            torch.set_num_threads(threads)
            results.append(values_and_gradients(selective_scan_kernel, inputs, weight))
    finally:
        torch.set_num_threads(previous)
    (y1, grads1), (y3, grads3) = results
    assert torch.equal(y1, y3) and all(torch.equal(g1, g3) for g1, g3 in zip(grads1, grads3))


@needs_kernel
def test_gradcheck():
    inputs = scan_inputs(torch.float64, batch=2, length=5, channels=3, n_state=2)
    assert torch.autograd.gradcheck(selective_scan_kernel, inputs)


@needs_kernel
def test_non_contiguous_and_mixed_dtype_inputs():
    x, delta, A, b, c = scan_inputs(torch.float64, batch=2, length=9, channels=4, n_state=3)
    # a transposed x, a float32 A: made contiguous and promoted to float64 differentiably
    x_t = x.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
    A32 = A.detach().float().requires_grad_()
    y = selective_scan_kernel(x_t, delta, A32, b, c)
    y_ref = selective_scan_sequential(x, delta, A32.double(), b, c)
    assert y.dtype == torch.float64 and torch.allclose(y, y_ref, atol=1e-10)
    gx, gA = torch.autograd.grad(y.sum(), [x_t, A32])
    gx_ref, gA_ref = torch.autograd.grad(y_ref.sum(), [x, A32])
    assert gA.dtype == torch.float32 and torch.allclose(gA, gA_ref) and torch.allclose(gx, gx_ref, atol=1e-10)


@needs_kernel
def test_exp_over_the_float_range():
    # one channel, one state, x = 0: h_1 = Delta_1 b_1 x_1 = 1, then y_2 = exp(Delta_2 A) h_1 = exp(Delta_2 A)
    args = torch.tensor([-120.0, -104.5, -100.0, -88.0, -87.0, -20.0, -0.3466, -1e-6, 0.0, 1e-6, 0.3466, 20.0,
                         88.0, 88.7, 88.75, 100.0])
    length = 2
    x = torch.zeros(len(args), length, 1)
    x[:, 0] = 1.0
    delta = torch.stack([torch.ones(len(args)), args], dim=1)[..., None]
    A = torch.ones(1, 1)
    b, c = torch.ones(len(args), length, 1), torch.ones(len(args), length, 1)
    y = selective_scan_kernel(x, delta, A, b, c)[:, 1, 0]
    want = torch.exp(args)
    assert torch.equal(torch.isinf(y), torch.isinf(want))
    finite = torch.isfinite(want)
    assert torch.allclose(y[finite], want[finite], rtol=3e-7, atol=1e-44)
    y_nan = selective_scan_kernel(x[:1], torch.full_like(delta[:1], float("nan")), A, b[:1], c[:1])
    assert torch.isnan(y_nan).all()


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_left_padding_is_an_exact_no_op(dtype):
    pad = 6
    x, delta, A, b, c = (t.detach() for t in scan_inputs(dtype, batch=2, length=11, channels=5, n_state=4))
    padded = [torch.cat([torch.zeros_like(t[:, :pad]), t], dim=1) for t in (x, delta)]
    padded += [A] + [torch.cat([torch.randn_like(t[:, :pad]), t], dim=1) for t in (b, c)]  # b, c arbitrary there
    leaves = [t.requires_grad_() for t in (x, delta, A, b, c)]
    padded_leaves = [t.requires_grad_() for t in padded]
    weight = torch.randn(2, 11, 5, dtype=dtype)
    y, grads = values_and_gradients(selective_scan_kernel, leaves, weight)
    weight_padded = torch.cat([torch.randn(2, pad, 5, dtype=dtype), weight], dim=1)
    y_pad, grads_pad = values_and_gradients(selective_scan_kernel, padded_leaves, weight_padded)
    assert torch.equal(y_pad[:, pad:], y) and not y_pad[:, :pad].any()
    for name, g, g_pad in zip(("x", "delta", "b", "c"), [grads[i] for i in (0, 1, 3, 4)],
                              [grads_pad[i] for i in (0, 1, 3, 4)]):
        assert torch.equal(g_pad[:, pad:], g), name
    assert torch.equal(grads_pad[2], grads[2])  # A
    assert not grads_pad[0][:, :pad].any() and not grads_pad[4][:, :pad].any()  # nothing came from padding


# --- in Mamba4Rec ---------------------------------------------------------------------------------
NUM_ITEMS = 20


def tiny_mamba(**overrides) -> Mamba4Rec:
    torch.manual_seed(0)
    cfg = dict(num_items=NUM_ITEMS, hidden_size=8, state_size=4, dropout=0.0, chunk_size=4)
    return Mamba4Rec(Mamba4RecConfig(**{**cfg, **overrides}))


BATCH = train_batch([[0, 0, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 5, 6, 7, 8, 9], [0, 0, 0, 0, 0, 0, 0, 11, 12]],
                    [[0, 0, 4, 5, 6, 7, 8, 9, 10], [2, 3, 4, 5, 6, 7, 8, 9, 10], [0, 0, 0, 0, 0, 0, 0, 12, 13]])


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_model_with_the_kernel_equals_the_model_with_the_loop(num_layers, dtype):
    model = tiny_mamba(num_layers=num_layers, scan="kernel").to(dtype)
    reference = tiny_mamba(num_layers=num_layers, scan="sequential").to(dtype)
    reference.load_state_dict(model.state_dict())
    tol = TOLERANCE[dtype]
    loss, loss_ref = model.training_losses(BATCH)["total"], reference.training_losses(BATCH)["total"]
    assert torch.allclose(loss, loss_ref, atol=tol, rtol=tol)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    grads_ref = torch.autograd.grad(loss_ref, list(reference.parameters()))
    for (name, _), g, g_ref in zip(model.named_parameters(), grads, grads_ref):
        # the SSM's gradients are as small as 1e-13 at initialisation: tolerances relative to each tensor
        assert torch.allclose(g, g_ref, atol=tol * g_ref.abs().max().item(), rtol=tol), name
    model.eval(), reference.eval()
    with torch.no_grad():
        assert torch.allclose(model.score(BATCH), reference.score(BATCH), atol=tol, rtol=0)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_score_from_the_last_position_equals_the_full_encoding(num_layers, dtype):
    model = tiny_mamba(num_layers=num_layers, dropout=0.3).to(dtype).eval()
    batch = eval_batch([[0, 0, 0, 4, 9, 2], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 7]])
    with torch.no_grad():
        full = model.item_scores(model.encode(batch.items)[:, -1])  # what score() computed before
        last = model.score(batch)
        assert model.encode(batch.items, last_only=True).shape == (3, 1, 8)
    assert last.shape == (3, NUM_ITEMS)
    assert torch.allclose(last, full, atol=1e-5 if dtype == torch.float32 else 1e-12, rtol=0)


@needs_kernel
def test_auto_takes_the_kernel_on_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(mamba4rec, "selective_scan_kernel", lambda *a: calls.append("kernel") or selective_scan_kernel(*a))
    monkeypatch.setattr(mamba4rec, "selective_scan_chunked", lambda *a, **k: pytest.fail("chunked scan used"))
    tiny_mamba().training_losses(BATCH)
    assert calls == ["kernel"]


def test_auto_falls_back_to_the_chunked_scan_when_the_kernel_is_unavailable(monkeypatch):
    chunked = mamba4rec.selective_scan_chunked
    calls = []
    monkeypatch.setattr(selective_scan_cpu, "kernel_available", lambda: False)
    monkeypatch.setattr(mamba4rec, "selective_scan_kernel", lambda *a: pytest.fail("kernel used"))
    monkeypatch.setattr(mamba4rec, "selective_scan_chunked", lambda *a, **k: calls.append("chunked") or chunked(*a, **k))
    model, reference = tiny_mamba(), tiny_mamba(scan="sequential")
    loss, loss_ref = model.training_losses(BATCH)["total"], reference.training_losses(BATCH)["total"]
    assert calls == ["chunked"] and torch.allclose(loss, loss_ref, atol=1e-5)


def test_a_failed_build_warns_once_and_falls_back(monkeypatch):
    def no_compiler(*args):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(selective_scan_cpu, "_library", None)
    monkeypatch.setattr(selective_scan_cpu, "_failure", None)
    monkeypatch.setattr(selective_scan_cpu, "_build", no_compiler)
    with pytest.warns(RuntimeWarning, match="pure-PyTorch scan.*Ninja is required") as record:
        assert selective_scan_cpu.kernel_available() is False
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would be an error here
        assert selective_scan_cpu.kernel_available() is False
        inputs = scan_inputs(torch.float64)
        y = selective_scan(*inputs, scan="auto", chunk_size=4)
    assert torch.allclose(y, selective_scan_sequential(*inputs), atol=1e-10)
    with pytest.raises(RuntimeError, match="unavailable"):
        selective_scan(*inputs, scan="kernel")


def test_importing_t2arec_compiles_nothing():
    code = ("import t2arec, t2arec.models, t2arec.cli\n"
            "from t2arec.models import selective_scan_cpu as k\n"
            "assert k._library is None and k._failure is None\n")
    source_root = str(Path(mamba4rec.__file__).parents[2])  # this checkout's src, not another install
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source_root, os.environ.get("PYTHONPATH", "")]),
           "TORCH_EXTENSIONS_DIR": "/nonexistent/t2arec-test"}  # and a build would have to fail
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_unknown_scan_is_rejected():
    with pytest.raises(ValueError, match="scan must be one of"):
        Mamba4RecConfig(scan="parallel")
