"""The load average as the benchmarks print it beside every timing."""
from __future__ import annotations

import os


def load_avg() -> str:
    """The 1-, 5- and 15-minute load averages, e.g. ``0.85 1.90 1.87``."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
