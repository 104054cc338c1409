"""A log file per step for a kfp.local run, and one console line per step start and end.

kfp.local prints everything to ``sys.stdout``: its own log lines (through a root-logger handler on
``sys.stdout``) and, line by line, each task subprocess's output, which opens with the executor's
whole input (the config as one JSON line) and holds every library's log. ``TaskLogs`` stands in for
``sys.stdout`` during the run (``contextlib.redirect_stdout``; kfp.local itself is not patched): it
writes each task's lines to ``<run dir>/<task>.log`` and kfp's lines between tasks to
``<run dir>/kfp.log``, ANSI colours stripped, and shows on the console only a line when a step
starts, one when it ends with its wall time, and the lines a task marks for the console
(``components.console.say``, ``components.progress``). Verbose, it also echoes every line.

It follows the tasks by kfp.local's "Executing task 'x'" and "Task 'x' finished with status y" lines,
so it assumes tasks run one at a time, as they do in this pipeline's chain.
"""
from __future__ import annotations

import io
import re
import threading
import time
from pathlib import Path
from typing import Optional, TextIO

from components.console import CONSOLE_MARK

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r" - INFO - Executing task '(?P<task>[^']+)'")
_FINISHED = re.compile(r" - (?:INFO|ERROR) - Task '(?P<task>[^']+)' finished with status (?P<status>\w+)")
_PIPELINE_DONE = re.compile(r" - (?:INFO|ERROR) - Pipeline '[^']+' finished")
# The last line of a Python traceback: "package.module.SomeError: message".
_EXCEPTION = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?(?P<error>[A-Za-z_]\w*(?:Error|Exception|Exit)): (?P<message>.+)$")
KFP_LOG = "kfp.log"


class TaskLogs(io.TextIOBase):
    """A text stream that files kfp.local's output by task (see the module docstring)."""

    def __init__(self, pipeline_root: Path, runs_before: set[Path], console: TextIO, *, echo: bool = False):
        super().__init__()
        self._root, self._before, self._console, self._echo = pipeline_root, set(runs_before), console, echo
        self._lock = threading.Lock()
        self._partial = ""
        self._pending: list[str] = []  # lines before the run directory exists
        self._files: dict[str, TextIO] = {}
        self._task: Optional[str] = None
        self._started = 0.0
        self.run_dir: Optional[Path] = None
        self.seconds: dict[str, float] = {}
        self.failure: Optional[str] = None  # "<task> failed: <error line>; its log: <path>"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            *lines, self._partial = (self._partial + text).split("\n")
            for line in lines:
                self._line(_ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self._console.flush()

    def log_path(self, task: str) -> Optional[Path]:
        return self.run_dir / f"{task}.log" if self.run_dir else None

    def close(self) -> None:
        with self._lock:
            if self._partial:
                self._line(_ANSI.sub("", self._partial))
                self._partial = ""
            if self._pending:  # the run never started a task: keep kfp's lines beside the runs
                self._root.mkdir(parents=True, exist_ok=True)
                (self._root / KFP_LOG).write_text("".join(f"{line}\n" for line in self._pending))
                self._pending = []
            for file in self._files.values():
                file.close()
            self._files.clear()
        super().close()

    def _say(self, line: str) -> None:
        # Not print(): kfp.local swaps builtins.print for one that writes its indent to sys.stdout, this stream.
        self._console.write(f"{line}\n")
        self._console.flush()

    def _line(self, line: str) -> None:
        if self._echo:
            self._say(line)
        started, finished = _STARTED.search(line), _FINISHED.search(line)
        if started:
            self._task, self._started = started.group("task"), time.monotonic()
            self._find_run_dir()
            if not self._echo:
                self._say(f"{self._task}: started")
        elif _PIPELINE_DONE.search(line):
            self._task = None
        self._log(line)
        if finished and finished.group("task") == self._task:
            self._finish(self._task, finished.group("status"))
        elif not self._echo and line.lstrip().startswith(CONSOLE_MARK):
            self._say(line.lstrip()[len(CONSOLE_MARK):])

    def _finish(self, task: str, status: str) -> None:
        seconds = self.seconds[task] = time.monotonic() - self._started
        if status == "SUCCESS":
            if not self._echo:
                self._say(f"{task}: done in {seconds:.1f} s")
            return
        error = self._last_error(task)
        self.failure = f"{task} failed{f': {error}' if error else ''}; its log: {self.log_path(task)}"
        if not self._echo:
            self._say(f"{task}: {status} after {seconds:.1f} s")

    def _last_error(self, task: str) -> Optional[str]:
        path = self.log_path(task)
        if path is None:
            return None
        self._files[task].flush()
        for line in reversed(path.read_text().splitlines()):
            match = _EXCEPTION.match(line.strip())
            if match:
                return f"{match.group('error')}: {match.group('message')}"
        return None

    def _find_run_dir(self) -> None:
        if self.run_dir is not None or not self._root.is_dir():
            return
        new = sorted(p for p in set(self._root.iterdir()) - self._before if p.is_dir())
        if len(new) == 1:
            self.run_dir = new[0]
            self._log_file(None).writelines(f"{line}\n" for line in self._pending)
            self._pending = []

    def _log_file(self, task: Optional[str]) -> TextIO:
        name = task or KFP_LOG
        if name not in self._files:
            self._files[name] = open(self.log_path(task) if task else self.run_dir / KFP_LOG, "a")
        return self._files[name]

    def _log(self, line: str) -> None:
        if self.run_dir is None:
            self._find_run_dir()
        if self.run_dir is None:
            self._pending.append(line)
        else:
            self._log_file(self._task).write(f"{line}\n")
