"""Quiet by default, verbose on request: what the console shows of the libraries under the project.

A normal run shows the project's own lines only. The switch is the environment variable ``ESMM_VERBOSE``
("1": everything), which ``esmm --verbose`` sets and every child process inherits (kfp.local tasks, Beam's
multi_processing workers):

- TensorFlow 2.21 logs through absl's C++ logging and no longer honours ``TF_CPP_MIN_LOG_LEVEL`` for what it
  logs while loading (oneDNN, "cudart_stub", "failed call to cuInit", absl's "All log messages before
  absl::InitializeLog()"), in this process and in every worker that imports it. ``quiet`` therefore routes
  file descriptor 2, which C++ code and child processes write to, through a thread that drops native INFO and
  WARNING lines and the GPU probe's errors (``NativeStderrFilter``). Python's own ``sys.stderr`` keeps
  writing to the real stream, so a terminal stays a terminal for progress bars.
- Python loggers other than the project's show errors only; the project's show warnings.
- Beam's SDK workers log at ERROR (``worker_log_level``, read by ``components.beam.runner``), so their
  "No semi_persistent_directory found" warnings stay in the worker.
- Inside a kfp.local task ``ESMM_STEP_CONSOLE`` is set (``pipelines.local_run``): lines meant for the console
  (``say``, ``components.progress``) carry ``CONSOLE_MARK``, and the local run shows those and sends the rest
  of the task's output to the task's log file.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import sys
import threading
from typing import Iterator, Optional, TextIO

VERBOSE_ENV = "ESMM_VERBOSE"
STEP_CONSOLE_ENV = "ESMM_STEP_CONSOLE"
CONSOLE_MARK = "[esmm] "
# The project's packages: their loggers keep warnings in quiet mode.
OWN_LOGGERS = ("components", "pipelines", "esmm_model", "serving_client", "benchmarks")
# Set for this process and its children in quiet mode, unless the user set them.
QUIET_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "2", "GRPC_VERBOSITY": "ERROR"}

# absl's C++ line ("I0000 00:00:1796409833.088126   23512 port.cc:153] ...") and TSL's older dated one
# ("2025-09-17 14:44:05.157831: I external/.../cudart_stub.cc:32] ...").
_NATIVE_LINE = re.compile(rb"^(?:(?P<absl>[IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ |"
                          rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: (?P<tsl>[IWEF]) )\S+:\d+\] ")
_ABSL_PREINIT = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# TensorFlow's GPU probe fails on every CPU-only machine and says so at ERROR.
_GPU_PROBE = re.compile(rb"cuInit|cuda_|CUDA")


def verbose() -> bool:
    """Whether this process runs verbose (``ESMM_VERBOSE=1``, set by ``esmm --verbose``)."""
    return os.environ.get(VERBOSE_ENV) == "1"


def worker_log_level() -> Optional[str]:
    """Beam's ``default_sdk_harness_log_level`` for this run's workers: ERROR unless verbose (then Beam's own)."""
    return None if verbose() else "ERROR"


def is_native_noise(line: bytes) -> bool:
    """Whether a line written to file descriptor 2 is a native library's INFO or WARNING line, absl's
    pre-initialisation notice, or TensorFlow's failed GPU probe."""
    if line.rstrip(b"\r") == _ABSL_PREINIT:
        return True
    match = _NATIVE_LINE.match(line)
    if not match:
        return False
    severity = match.group("absl") or match.group("tsl")
    return severity in (b"I", b"W") or (severity == b"E" and bool(_GPU_PROBE.search(line)))


def say(line: str, stream: Optional[TextIO] = None) -> None:
    """Prints one console line (progress, a step's headline); marked inside a kfp.local task, where
    ``pipelines.local_run`` shows marked lines and logs the rest."""
    mark = CONSOLE_MARK if os.environ.get(STEP_CONSOLE_ENV) else ""
    print(f"{mark}{line}", file=stream or sys.stdout, flush=True)


class NativeStderrFilter:
    """Routes file descriptor 2 through a thread that drops ``is_native_noise`` lines; ``sys.stderr``
    writes to the original stream directly. ``close`` restores descriptor 2 and passes on what is left."""

    def __init__(self) -> None:
        sys.stderr.flush()
        self._target = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self._python_stderr = sys.stderr
        sys.stderr = open(os.dup(self._target), "w", buffering=1, encoding=self._python_stderr.encoding,
                          errors="backslashreplace")
        self._out = open(os.dup(self._target), "wb", buffering=0)
        self._thread = threading.Thread(target=self._pump, args=(read,), name="native-stderr-filter", daemon=True)
        self._thread.start()

    def _pump(self, read: int) -> None:
        pending = b""
        with open(read, "rb", buffering=0) as pipe:
            while chunk := pipe.read(1 << 16):
                *lines, pending = (pending + chunk).split(b"\n")
                kept = b"".join(line + b"\n" for line in lines if not is_native_noise(line))
                if kept:
                    self._out.write(kept)
        if pending and not is_native_noise(pending):
            self._out.write(pending)

    def close(self, timeout_s: float = 5.0) -> None:
        sys.stderr.flush()
        os.dup2(self._target, 2)  # closes this process's end of the pipe; live children may still hold theirs
        self._thread.join(timeout_s)
        sys.stderr.close()
        sys.stderr = self._python_stderr
        self._out.close()
        os.close(self._target)


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """These environment variables for the block (child processes inherit them), the old values after."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _python_loggers(verbose_run: bool) -> Iterator[None]:
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in ("", *OWN_LOGGERS)}
    if verbose_run:
        logging.basicConfig(level=logging.INFO)
        root.setLevel(logging.INFO)
    else:
        root.setLevel(logging.ERROR)
        for name in OWN_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        with contextlib.suppress(ImportError):
            from absl import logging as absl_logging

            absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name or None).setLevel(level)


@contextlib.contextmanager
def quiet(verbose_run: bool = False) -> Iterator[None]:
    """Quiet (or, with ``verbose_run``, verbose) console for the block; enter it before TensorFlow or Beam
    load. The native filter is skipped when Python's stderr is already redirected (a test capturing it)."""
    values = {VERBOSE_ENV: "1" if verbose_run else "0"}
    if not verbose_run:
        values.update({name: value for name, value in QUIET_ENVIRONMENT.items() if name not in os.environ})
    with environment(values), _python_loggers(verbose_run):
        native = (NativeStderrFilter() if not verbose_run and sys.stderr is sys.__stderr__ and sys.stderr is not None
                  else None)
        try:
            yield
        finally:
            if native:
                native.close()


_process_quiet = False


def quiet_process() -> None:
    """``quiet`` for the rest of this process, verbose when ``ESMM_VERBOSE=1``: for scripts (the benchmarks) that
    import TensorFlow at module level; call it before those imports. Once per process: later calls (a script
    importing another) do nothing."""
    global _process_quiet
    if _process_quiet:
        return
    _process_quiet = True
    stack = contextlib.ExitStack()
    stack.enter_context(quiet(verbose()))
    atexit.register(stack.close)
