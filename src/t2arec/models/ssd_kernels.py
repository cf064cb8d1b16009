"""Optional CUDA fast path for the scan: ``mamba_ssm``'s fused SSD kernel, when it is installed.

``mamba_ssm`` is not a dependency (it needs CUDA and a compiler); without it, or on CPU, the
PyTorch scan in ``ssd.py`` runs and nothing changes. The kernel computes the same recurrence::

    h_i = exp(Delta_i A) h_{i-1} + Delta_i B_i (outer) x_i,    y_i = h_i^T C_i

with heads of width P sharing one group of d_s states, and returns the final state as
(batch, heads, P, d_s), which is transposed here to the (batch, heads, d_s, P) of T2ARec's block.
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
    """Same result as ``ssd.scan_chunked(x * delta, delta * a, b, c)`` for each head.

    x: (B, L, H, P) without Delta folded in, delta: (B, L, H), a: A of each head (H,), b, c: (B, L, d_s),
    shared by the heads (one group). Returns y (B, L, H, P) and the final state (B, H, d_s, P).
    """
    if _kernel is None:
        raise RuntimeError("mamba_ssm is not installed: the fused scan kernel is unavailable")
    y, final = _kernel(x.contiguous(), delta.contiguous(), a.reshape(-1).float(),
                       b[:, :, None, :].contiguous(), c[:, :, None, :].contiguous(), chunk_size,
                       return_final_states=True)
    return y, final.transpose(-1, -2)
