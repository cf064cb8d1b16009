"""Process-wide CPU settings, each checked in a fresh interpreter so the flag does not leak into other tests."""
import platform
import subprocess
import sys

import pytest

SUBNORMAL_PRODUCT = """
import torch
torch.set_num_threads(2)
{setup}
values = torch.full((2_000_000,), 1e-39) * torch.ones(2_000_000)  # large enough to be split between threads
print(int((values != 0).sum()))
"""


def count_nonzero_subnormals(setup: str) -> int:
    out = subprocess.run([sys.executable, "-c", SUBNORMAL_PRODUCT.format(setup=setup)],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"),
                    reason="flush-to-zero is an x86/ARM feature")
def test_flush_denormals_zeroes_subnormals_on_every_thread():
    assert count_nonzero_subnormals("") == 2_000_000  # without it, subnormals survive (and are slow)
    setup = "from t2arec.runtime import flush_denormals\nassert flush_denormals()"
    assert count_nonzero_subnormals(setup) == 0


def test_keep_freed_memory_applies_on_linux_glibc():
    from t2arec.runtime import keep_freed_memory

    applied = keep_freed_memory()
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert applied
    else:
        assert applied is False
