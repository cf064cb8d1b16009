"""Optional CUDA fast path for the scan: ``mamba_ssm``'s fused SSD kernel, when it is installed.

``mamba_ssm`` is not a dependency (it needs CUDA and a compiler); without it, or on CPU, the
PyTorch scan in ``ssd.py`` runs and nothing changes. The kernel computes the same recurrence::

    h_i = exp(Delta_i A) h_{i-1} + Delta_i B_i (outer) x_i,    y_i = h_i^T C_i

with one head of width d and one group of d_s states, and returns the final state as
(batch, heads, d, d_s), which is transposed here to the (batch, d_s, d) of ``ssd.py``.
"""
from __future__ import annotations

from torch import Tensor

try:  # import-guarded: CUDA-only, optional
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as _kernel
except Exception:  # ImportError, or a broken CUDA/Triton install
    _kernel = None


def kernel_available(x: Tensor) -> bool:
    """True when the fused kernel can run on ``x`` (installed, and ``x`` lives on a CUDA device)."""
    return _kernel is not None and x.is_cuda


def scan_kernel(x: Tensor, delta: Tensor, a: Tensor, b: Tensor, c: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Same result as ``ssd.scan_chunked(x * delta, delta * a, b, c)``.

    x: (B, L, d) without Delta folded in, delta: (B, L), a: the scalar A (shape (1,)), b, c: (B, L, d_s).
    Returns y (B, L, d) and the final state (B, d_s, d).
    """
    if _kernel is None:
        raise RuntimeError("mamba_ssm is not installed: the fused scan kernel is unavailable")
    y, final = _kernel(x[:, :, None, :].contiguous(), delta[:, :, None].contiguous(), a.reshape(1).float(),
                       b[:, :, None, :].contiguous(), c[:, :, None, :].contiguous(), chunk_size,
                       return_final_states=True)
    return y[:, :, 0, :], final[:, 0].transpose(1, 2)
