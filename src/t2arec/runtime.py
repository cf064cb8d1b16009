"""Process-wide settings that make long CPU jobs faster.

Training allocates and frees the same large buffers at every step. With glibc's defaults, blocks
above a size threshold are mapped fresh from the kernel on every allocation and returned on every
free, so each step pays a page fault per 4 KiB page touched: on the development machine that made
a T2ARec training step on MovieLens-1M shapes 30% slower and Mamba4Rec's 50% slower
(docs/performance.md). ``keep_freed_memory`` asks glibc to serve every allocation from its heap and
to keep freed memory for reuse. The process's resident size then stays at its peak instead of
shrinking between steps.

Weights and optimiser moments that decay towards zero (some of Caser's convolution filters, for one)
become subnormal floats after some thousands of steps, and x86 cores compute on subnormals many times
slower: Caser's ML-1M epochs went from about 45 s to about 90 s after epoch 7 for this reason alone
(docs/performance.md). ``flush_denormals`` makes PyTorch treat them as zero on the CPU; they are below
1.2e-38 and carry nothing a recommender can use.

Both are called by the command line and the benchmark scripts, never on import.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """On Linux with glibc: no mmap'd blocks, no trimming of the heap. Returns whether it applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def flush_denormals() -> bool:
    """Subnormal floats read and written as zero on the CPU (every thread of PyTorch's pool).
    Returns whether the CPU supports it (x86 with SSE3, ARM)."""
    import torch

    return torch.set_flush_denormal(True)
