"""A real read-only folder for the commands under test: a read-only bind mount in a private mount namespace when the
tests run as root (root ignores ``chmod 0555``), else the folder's permissions. Nothing outlives the command: the
mount exists only in the namespace of the command's process."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Mapping, Sequence

import pytest

_MOUNT_READ_ONLY = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'


def run_in_read_only_folder(folder: Path, argv: Sequence[str], env: Mapping[str, str]) -> subprocess.CompletedProcess:
    """Run ``argv`` while ``folder`` (an existing folder) cannot be written to; skips the test, saying why, where
    neither way is available."""
    folder.mkdir(parents=True, exist_ok=True)
    argv = [str(a) for a in argv]
    if os.geteuid() != 0:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            return subprocess.run(argv, env=dict(env), capture_output=True, text=True, timeout=600)
        finally:
            folder.chmod(mode)
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare, "-m", "sh", "-c", _MOUNT_READ_ONLY, str(folder), "true"],
                           capture_output=True, text=True) if unshare else None
    if probe is None or probe.returncode != 0:
        pytest.skip("running as root without a private mount namespace (unshare -m, mount): a read-only folder "
                    f"cannot be made here ({probe.stderr.strip() if probe else 'no unshare'})")
    return subprocess.run([unshare, "-m", "sh", "-c", _MOUNT_READ_ONLY, str(folder), *argv], env=dict(env),
                          capture_output=True, text=True, timeout=600)
