"""components.progress: plain lines in a log, a bar only on a terminal."""
import io

from components import progress as progress_module
from components.progress import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_plain_lines_and_a_final_count(monkeypatch):
    clock = iter([0.0, 10.0, 31.0, 40.0, 70.0, 71.0])
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(clock))
    log = io.StringIO()
    assert list(progress(range(4), "simulate: impressions", "row", stream=log)) == [0, 1, 2, 3]
    lines = log.getvalue().splitlines()
    assert lines == ["simulate: impressions: 2 of 4 rows, 15.5 s/row",  # under one a second: seconds per row
                     "simulate: impressions: 4 of 4 rows, 17.5 s/row",
                     "simulate: impressions: 4 of 4 rows in 71.0 s"]
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()


def test_a_fast_loop_reports_units_per_second(monkeypatch):
    ticks = iter(range(1_000))
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(ticks) * 0.35)
    log = io.StringIO()
    assert len(list(progress(range(100), "ingest", "row", stream=log))) == 100
    assert log.getvalue().splitlines()[0] == "ingest: 86 of 100 rows, 3 row/s"  # 86 rows in 30.1 s


def test_a_terminal_gets_a_bar():
    terminal = _Terminal()
    assert list(progress(iter(range(3)), "simulate: users", "user", total=3, stream=terminal)) == [0, 1, 2]
    assert "\r" in terminal.getvalue()
