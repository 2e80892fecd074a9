"""``CPU_ALLOCATOR_ENV``, which the demo and the robustness benchmark give nnU-Net's commands on a CPU: with it, a
process that allocates and frees a tensor-sized block again and again reuses the block instead of faulting its pages
in anew each time (counted as the process's minor page faults)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nnunet_missingmod.demo.pipeline import CPU_ALLOCATOR_ENV

REPEAT_ALLOCATION = """
import resource
import numpy as np
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    block = np.ones(64 * 2 ** 20 // 8)  # 64 MiB, above glibc's largest default mmap threshold (32 MiB)
    del block
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
