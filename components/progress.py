"""Progress of a long loop that reads well on a terminal and in a log.

On a terminal (stderr is a TTY) a tqdm bar; anywhere else, e.g. a pod's log or a CI job, one plain
line at most every ``every_s`` seconds and one at the end, with no carriage returns or refreshes
(``components.console.say``: inside a kfp.local task, lines the local run shows on its console).
"""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, Optional, TextIO, TypeVar

from tqdm import tqdm

from components.console import say

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, unit: str, *, total: Optional[int] = None, every_s: float = 30.0,
             stream: Optional[TextIO] = None) -> Iterator[T]:
    """Yields ``items``, reporting how many were done (of ``total``, default ``len(items)`` when it has one)."""
    stream = stream or sys.stderr
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if stream.isatty():
        yield from tqdm(items, desc=desc, unit=unit, total=total, leave=False, mininterval=2, file=stream)
        return
    of = f" of {total:,}" if total is not None else ""
    started = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            say(f"{desc}: {done:,}{of} {unit}s, {_rate(done, now - started, unit)}", stream)
    elapsed = time.monotonic() - started
    say(f"{desc}: {done:,}{of} {unit}s in {elapsed:.1f} s", stream)


def _rate(done: int, seconds: float, unit: str) -> str:
    """Units per second, or seconds per unit when fewer than one a second (epochs, not rows)."""
    per_second = done / seconds
    return f"{per_second:,.0f} {unit}/s" if per_second >= 1 else f"{seconds / done:,.1f} s/{unit}"
