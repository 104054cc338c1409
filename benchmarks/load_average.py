"""The load average as the benchmarks print it beside every timing."""
from __future__ import annotations

import os


def load_avg() -> str:
    """The 1-, 5- and 15-minute load averages, e.g. ``0.85 1.90 1.87``."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def load_avg_short() -> str:
    """The same to one decimal, slash-separated, as the results tables print it, e.g. ``0.9/1.9/1.9``."""
    return "/".join(f"{x:.1f}" for x in os.getloadavg())
