"""What the benchmarks print about the machine they ran on (imported by the scripts in this folder, which Python
runs with this folder first on ``sys.path``)."""
from __future__ import annotations

import platform
from pathlib import Path


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` shows them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
