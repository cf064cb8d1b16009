"""Mamba-1's selective scan as a compiled CPU kernel, forward and backward.

The recurrence, per sequence s, channel e and state n (A: (E, N); x, Delta: (B, L, E); B, C: (B, L, N))::

    a_t = exp(Delta_t A)                              decay, in (0, 1] when Delta >= 0 and A < 0
    h_t = a_t h_{t-1} + Delta_t B_t x_t,   h_0 = 0
    y_t = sum_n C_t h_t

Backward, with gy_t = dLoss/dy_t and g_t = dLoss/dh_t (through y_t and through every later state)::

    g_t = gy_t C_t + a_{t+1} g_{t+1},      g_{L+1} = 0
    dC_t     = sum_e gy_t h_t
    dx_t     = Delta_t sum_n g_t B_t
    dB_t     = sum_e g_t Delta_t x_t
    dDelta_t = sum_n g_t (A a_t h_{t-1} + B_t x_t)
    dA       = sum_{s, t} g_t Delta_t a_t h_{t-1}

The kernel runs the loop over positions in C++. A step touches N numbers per channel, so the state
of one (sequence, channel) stays in registers; a pure-PyTorch parallel form instead makes several
passes over (B, L, E, N) tensors (420 MB each at ML-1M shapes) and on a CPU loses to memory
bandwidth. The backward does not read anything stored by the forward beyond its inputs: for each
(sequence, channel) it recomputes the trajectory a_t, h_t (2 x L x N numbers, which stay in cache),
then runs the g recurrence backwards. Threads split the batch: each owns whole sequences, so dB and
dC need no atomics, and dA is summed per sequence into a (B, E, N) buffer that is then reduced in
PyTorch, which keeps the result independent of the number of threads. The forward splits
(sequence, channel) pairs, so a single sequence also uses every thread.

Measured at ML-1M shapes (B = 128, L = 200, E = 128, N = 32, float32, one thread) on the 2-core
development machine while other jobs kept both cores busy, so only the ratios mean much: forward +
backward 0.40 s against 5.5 s for the Python loop; a Mamba4Rec training step 1.4-1.5 s against
5.4-7.8 s.

float32 computes exp with its own inline polynomial (Cephes' expf, about 1 ulp) so that the loop
over states vectorises (a call to the library's expf would not); float64 calls std::exp, as float64
is for tests. No -ffast-math: ``#pragma omp simd`` is what allows summing over states in vector
lanes, and nothing else is reordered. -fno-trapping-math lets the compiler turn the clamps in that
exp into vector selects; nothing here reads floating-point exception flags.

Building: ``torch.utils.cpp_extension.load_inline`` compiles the source at first use (it needs a
C++ compiler and ninja) into torch's extension cache (``TORCH_EXTENSIONS_DIR``, by default
~/.cache/torch_extensions), with -O3, -march=native and OpenMP (linked to the OpenMP runtime torch
has already loaded, and given ``torch.get_num_threads()`` threads). The library is plain C++
without torch headers (about 2 s to build; torch versions without ``no_implicit_headers`` prepend
torch/extension.h, about a minute) called through ctypes, which releases the GIL during the call.
Its name carries a digest of this machine's CPU flags, so a cache shared with another kind of CPU
never loads code built for instructions that CPU lacks. If that build fails, a portable one (-O3,
no OpenMP: one thread) is tried; if that fails too, ``kernel_available()`` warns once and returns
False, and Mamba4Rec falls back to a pure-PyTorch scan. Nothing is compiled when ``t2arec`` is
imported.
"""
from __future__ import annotations

import ctypes
import hashlib
import inspect
import platform
import threading
import warnings

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

# --- the kernel ---------------------------------------------------------------------------------
_SOURCE = r"""
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// exp for float as arithmetic only (no call, no branch), so loops over states vectorise:
// exp(v) = 2^k exp(r), k = round(v / ln 2), |r| <= ln(2) / 2, exp(r) by Cephes' expf polynomial.
// 2^k is applied as two factors 2^k1 2^k2 (each a normal float), which gives exp's own overflow to
// inf above 88.72 and gradual underflow below -87.3; the clamp only keeps k a valid int.
inline float exp_inline(float v) {
    const float w = v < -104.0f ? -104.0f : (v > 88.8f ? 88.8f : v);  // NaN passes through
    const float t = w * 1.44269504088896341f;
    const int32_t k = static_cast<int32_t>(t + (t < 0.0f ? -0.5f : 0.5f));  // round half away from 0
    const float kf = static_cast<float>(k);
    const float r = (w - kf * 0.693359375f) - kf * -2.12194440e-4f;  // ln 2 in two parts
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    const int32_t k1 = k >> 1, k2 = k - k1;
    const int32_t bits1 = (k1 + 127) << 23, bits2 = (k2 + 127) << 23;
    float s1, s2;
    std::memcpy(&s1, &bits1, sizeof s1);
    std::memcpy(&s2, &bits2, sizeof s2);
    return p * s1 * s2;
}

inline double exp_inline(double v) { return std::exp(v); }

// y[s, t, e] = sum_n c[s, t, n] h[t, n] for every (s, e); h lives in a stack of N numbers.
template <typename T>
void scan_forward(const T* x, const T* delta, const T* A, const T* b, const T* c, T* y,
                  int64_t B, int64_t L, int64_t E, int64_t N, int threads) {
#pragma omp parallel num_threads(threads)
    {
        std::vector<T> h(N);
#pragma omp for collapse(2) schedule(static)
        for (int64_t s = 0; s < B; ++s) {
            for (int64_t e = 0; e < E; ++e) {
                const T* Ae = A + e * N;
                T* hp = h.data();
                for (int64_t n = 0; n < N; ++n) hp[n] = T(0);
                for (int64_t t = 0; t < L; ++t) {
                    const int64_t i = (s * L + t) * E + e;
                    const T dt = delta[i], u = dt * x[i];
                    const T* bt = b + (s * L + t) * N;
                    const T* ct = c + (s * L + t) * N;
                    T acc = T(0);
#pragma omp simd reduction(+ : acc)
                    for (int64_t n = 0; n < N; ++n) {
                        const T hn = exp_inline(dt * Ae[n]) * hp[n] + u * bt[n];
                        hp[n] = hn;
                        acc += ct[n] * hn;
                    }
                    y[i] = acc;
                }
            }
        }
    }
}

// Gradients of sum(gy * y). Each thread owns whole sequences s: it writes gb[s], gc[s] (sums over
// channels) and gA_seq[s] (E x N, summed over sequences by the caller) without sharing anything.
template <typename T>
void scan_backward(const T* x, const T* delta, const T* A, const T* b, const T* c, const T* gy,
                   T* gx, T* gdelta, T* gA_seq, T* gb, T* gc,
                   int64_t B, int64_t L, int64_t E, int64_t N, int threads) {
#pragma omp parallel num_threads(threads)
    {
        std::vector<T> decay(L * N), state(L * N), zero(N, T(0)), carry(N), gAe(N);
#pragma omp for schedule(static)
        for (int64_t s = 0; s < B; ++s) {
            T* gbs = gb + s * L * N;
            T* gcs = gc + s * L * N;
            for (int64_t j = 0; j < L * N; ++j) { gbs[j] = T(0); gcs[j] = T(0); }
            for (int64_t e = 0; e < E; ++e) {
                const T* Ae = A + e * N;
                // 1. recompute a_t and h_t of this (sequence, channel)
                const T* prev = zero.data();
                for (int64_t t = 0; t < L; ++t) {
                    const int64_t i = (s * L + t) * E + e;
                    const T dt = delta[i], u = dt * x[i];
                    const T* bt = b + (s * L + t) * N;
                    T* at = decay.data() + t * N;
                    T* ht = state.data() + t * N;
#pragma omp simd
                    for (int64_t n = 0; n < N; ++n) {
                        at[n] = exp_inline(dt * Ae[n]);
                        ht[n] = at[n] * prev[n] + u * bt[n];
                    }
                    prev = ht;
                }
                // 2. g_t backwards; carry = a_{t+1} g_{t+1}
                for (int64_t n = 0; n < N; ++n) { carry[n] = T(0); gAe[n] = T(0); }
                for (int64_t t = L - 1; t >= 0; --t) {
                    const int64_t i = (s * L + t) * E + e;
                    const T dt = delta[i], xt = x[i], g_y = gy[i], dx = dt * xt;
                    const T* bt = b + (s * L + t) * N;
                    const T* ct = c + (s * L + t) * N;
                    const T* at = decay.data() + t * N;
                    const T* ht = state.data() + t * N;
                    const T* hprev = t > 0 ? state.data() + (t - 1) * N : zero.data();
                    T* gbt = gbs + t * N;
                    T* gct = gcs + t * N;
                    T* cr = carry.data();
                    T* ga = gAe.data();
                    T sum_gb = T(0), sum_decay = T(0);
#pragma omp simd reduction(+ : sum_gb, sum_decay)
                    for (int64_t n = 0; n < N; ++n) {
                        const T g = cr[n] + g_y * ct[n];
                        const T back = g * at[n] * hprev[n];  // g_t a_t h_{t-1}
                        gct[n] += g_y * ht[n];
                        gbt[n] += g * dx;
                        sum_gb += g * bt[n];
                        sum_decay += back * Ae[n];
                        ga[n] += dt * back;
                        cr[n] = at[n] * g;
                    }
                    gx[i] = dt * sum_gb;
                    gdelta[i] = sum_decay + xt * sum_gb;
                }
                T* gAs = gA_seq + (s * E + e) * N;
                for (int64_t n = 0; n < N; ++n) gAs[n] = gAe[n];
            }
        }
    }
}

}  // namespace

extern "C" {
void scan_forward_f32(const float* x, const float* delta, const float* A, const float* b, const float* c,
                      float* y, int64_t B, int64_t L, int64_t E, int64_t N, int threads) {
    scan_forward<float>(x, delta, A, b, c, y, B, L, E, N, threads);
}
void scan_forward_f64(const double* x, const double* delta, const double* A, const double* b, const double* c,
                      double* y, int64_t B, int64_t L, int64_t E, int64_t N, int threads) {
    scan_forward<double>(x, delta, A, b, c, y, B, L, E, N, threads);
}
void scan_backward_f32(const float* x, const float* delta, const float* A, const float* b, const float* c,
                       const float* gy, float* gx, float* gdelta, float* gA_seq, float* gb, float* gc,
                       int64_t B, int64_t L, int64_t E, int64_t N, int threads) {
    scan_backward<float>(x, delta, A, b, c, gy, gx, gdelta, gA_seq, gb, gc, B, L, E, N, threads);
}
void scan_backward_f64(const double* x, const double* delta, const double* A, const double* b, const double* c,
                       const double* gy, double* gx, double* gdelta, double* gA_seq, double* gb, double* gc,
                       int64_t B, int64_t L, int64_t E, int64_t N, int threads) {
    scan_backward<double>(x, delta, A, b, c, gy, gx, gdelta, gA_seq, gb, gc, B, L, E, N, threads);
}
}
"""

# (extra_cflags, extra_ldflags, name suffix): the fast build first, then one any C++ compiler takes
_BUILDS = (
    (["-O3", "-march=native", "-fno-trapping-math", "-fopenmp"], ["-fopenmp"], "native"),
    (["-O3", "-fno-trapping-math"], [], "portable"),
)
_DTYPES = {torch.float32: "f32", torch.float64: "f64"}

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_failure: str | None = None  # why the kernel is unavailable, once a build has failed


def _cpu_digest() -> str:
    """A short digest of this CPU's kind and instruction-set flags (for code built with -march=native)."""
    described = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            described += next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return hashlib.sha1(described.encode()).hexdigest()[:10]


def _build(cflags: list[str], ldflags: list[str], suffix: str) -> ctypes.CDLL:
    from torch.utils.cpp_extension import load_inline  # imported here: only when a build is wanted

    options = {}
    # the source needs no torch header; older torch always prepends torch/extension.h (a build of ~1 min)
    if "no_implicit_headers" in inspect.signature(load_inline).parameters:
        options["no_implicit_headers"] = True
    path = load_inline(
        name=f"t2arec_selective_scan_{suffix}_{_cpu_digest()}",
        cpp_sources=[_SOURCE], extra_cflags=cflags, extra_ldflags=ldflags,
        is_python_module=False, **options,
    )
    library = ctypes.CDLL(path)
    pointer, size, threads = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for kind in _DTYPES.values():
        forward, backward = getattr(library, f"scan_forward_{kind}"), getattr(library, f"scan_backward_{kind}")
        forward.argtypes, forward.restype = [pointer] * 6 + [size] * 4 + [threads], None
        backward.argtypes, backward.restype = [pointer] * 11 + [size] * 4 + [threads], None
    return library


def _summary(error: Exception) -> str:
    """The informative end of a build error: torch's message starts with long compiler command lines."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and "-isystem" not in line]
    return f"{type(error).__name__}: {' | '.join(lines)[-400:]}"


def kernel_available() -> bool:
    """Whether the compiled kernel can run. The first call builds (or loads from torch's cache) the
    library; if no build succeeds it warns once, and every later call returns False at once."""
    global _library, _failure
    if _library is not None:
        return True
    if _failure is not None:
        return False
    with _lock:
        if _library is None and _failure is None:
            errors = []
            for cflags, ldflags, suffix in _BUILDS:
                try:
                    _library = _build(cflags, ldflags, suffix)
                    break
                except Exception as error:  # no compiler, no ninja, an unsupported flag, a failed load...
                    errors.append(f"{suffix} build: {_summary(error)}")
            else:
                _failure = "; ".join(errors)
                warnings.warn("the compiled CPU selective scan is unavailable, Mamba4Rec uses a pure-PyTorch "
                              f"scan instead ({_failure})", RuntimeWarning, stacklevel=2)
    return _library is not None


def kernel_supports(x: Tensor) -> bool:
    """Whether the kernel takes tensors like ``x`` (a CPU float32/float64 tensor), built or not."""
    return x.device.type == "cpu" and x.dtype in _DTYPES


class _SelectiveScan(torch.autograd.Function):
    """The kernel's forward and backward as one autograd node. Inputs: contiguous, one dtype."""

    @staticmethod
    def forward(ctx, x: Tensor, delta: Tensor, A: Tensor, b: Tensor, c: Tensor) -> Tensor:
        batch, length, channels = x.shape
        y = torch.empty_like(x)
        getattr(_library, f"scan_forward_{_DTYPES[x.dtype]}")(
            *(t.data_ptr() for t in (x, delta, A, b, c, y)), batch, length, channels, A.shape[1],
            torch.get_num_threads())
        ctx.save_for_backward(x, delta, A, b, c)
        return y

    @staticmethod
    @once_differentiable  # the kernel's backward is not itself differentiable
    def backward(ctx, grad_y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        x, delta, A, b, c = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        batch, length, channels = x.shape
        grad_x, grad_delta = torch.empty_like(x), torch.empty_like(delta)
        grad_b, grad_c = torch.empty_like(b), torch.empty_like(c)
        grad_a_per_sequence = x.new_empty(batch, *A.shape)  # (B, E, N), summed below
        getattr(_library, f"scan_backward_{_DTYPES[x.dtype]}")(
            *(t.data_ptr() for t in (x, delta, A, b, c, grad_y, grad_x, grad_delta, grad_a_per_sequence,
                                     grad_b, grad_c)),
            batch, length, channels, A.shape[1], torch.get_num_threads())
        return grad_x, grad_delta, grad_a_per_sequence.sum(dim=0), grad_b, grad_c


def selective_scan_kernel(x: Tensor, delta: Tensor, A: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """The compiled scan; same contract as ``mamba4rec.selective_scan_sequential``.

    x, delta: (B, L, E); A: (E, N); b, c: (B, L, N) -> y (B, L, E), all on the CPU. Inputs are
    promoted to one floating dtype (float32 or float64) and made contiguous, both differentiably.
    Raises RuntimeError if the kernel cannot be built (see ``kernel_available``).
    """
    dtype = x.dtype
    for t in (delta, A, b, c):
        dtype = torch.promote_types(dtype, t.dtype)
    if dtype not in _DTYPES or any(t.device.type != "cpu" for t in (x, delta, A, b, c)):
        raise ValueError(f"the CPU scan kernel takes float32 or float64 CPU tensors, not {dtype} on {x.device}")
    batch, length, channels = x.shape
    n_state = A.shape[-1]
    if delta.shape != x.shape or A.shape != (channels, n_state) or b.shape != (batch, length, n_state) \
            or c.shape != b.shape:
        raise ValueError(f"inconsistent shapes: x {tuple(x.shape)}, delta {tuple(delta.shape)}, A {tuple(A.shape)}, "
                         f"b {tuple(b.shape)}, c {tuple(c.shape)}")
    if not kernel_available():
        raise RuntimeError(f"the compiled CPU selective scan is unavailable: {_failure}")
    return _SelectiveScan.apply(*(t.to(dtype).contiguous() for t in (x, delta, A, b, c)))
