"""``CPU_ALLOCATOR_ENV``, which the demo and the robustness benchmark give nnU-Net's commands on a CPU: with it, a
process that allocates and frees a tensor-sized block again and again reuses the block instead of faulting its pages
in anew each time (counted as the process's minor page faults).

The block comes from glibc's ``malloc`` through ctypes, as a CPU tensor's does (``posix_memalign``), not from numpy:
numpy asks for transparent huge pages on large arrays, and a 2 MiB-aligned block then faults in 32 huge pages, so few
that the count no longer tells a reused block from a new one."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nnunet_missingmod.demo.pipeline import CPU_ALLOCATOR_ENV

REPEAT_ALLOCATION = """
import ctypes
import resource
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 64 * 2 ** 20  # above glibc's largest default mmap threshold (32 MiB)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)  # touch every page, as filling a tensor does
    libc.free(block)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def minor_faults(extra_env: dict) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    result = subprocess.run([sys.executable, "-c", REPEAT_ALLOCATION], env=dict(env, **extra_env),
                            capture_output=True, text=True, check=True)
    return int(result.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_blocks_are_reused_instead_of_faulted_in_again():
    default = minor_faults({})
    tuned = minor_faults(CPU_ALLOCATOR_ENV)
    assert tuned * 5 < default, (tuned, default)
    for name, value in CPU_ALLOCATOR_ENV.items():  # either threshold alone still hands the block back
        assert minor_faults({name: value}) * 5 > default
