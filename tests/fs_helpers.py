"""A real small file system for disk-full tests: a tmpfs of a few MB (needs root and mount, as in CI)."""
from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


@contextmanager
def small_filesystem(folder: Path, size_kb: int = 1024) -> Iterator[Path]:
    """``folder`` as a tmpfs of ``size_kb`` KB for the block; skips the test, saying why, where mounting is not
    allowed."""
    if os.geteuid() != 0:
        pytest.skip("disk-full test needs root to mount a small tmpfs (CI runs it as root)")
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or mounted.returncode})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path, leave_bytes: int = 0) -> None:
    """Fill the file system of ``folder`` up to ``leave_bytes`` free (a filler file that tests leave in place)."""
    stats = os.statvfs(folder)
    free = stats.f_bfree * stats.f_frsize
    with open(folder / "filler", "wb") as f:
        f.write(b"\0" * max(free - leave_bytes, 0))
