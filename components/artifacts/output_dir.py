"""The one policy for a step's output directory: it must be empty, or the step refuses to run.

A step writing into a directory that holds an earlier run would mix the two (Beam replaces
only shards with the same names), and replacing a directory that a user pointed at by
mistake would delete it. So every step (ingest, transform, train, evaluate) starts only in
a missing or empty directory and otherwise fails with one line. Training is the one
continuation: a train directory holding its own checkpoints is resumed (``components.train.executor``).
"""
from __future__ import annotations

import tensorflow as tf

from components.artifacts import storage
from esmm_model.errors import EsmmError

_SHOWN = 3


class OutputExistsError(EsmmError):
    """The output directory already holds files."""


def require_empty(out_dir: str, step: str, resumable: frozenset[str] = frozenset()) -> None:
    """Raises OutputExistsError naming ``out_dir`` and what it holds, unless it is missing or empty.

    ``resumable``: entries the step itself continues from (train's checkpoints and logs), allowed.
    """
    if not tf.io.gfile.isdir(out_dir):
        if tf.io.gfile.exists(out_dir):
            raise OutputExistsError(f"{step} output {out_dir!r} is a file, not a directory")
        return
    entries = sorted({entry.rstrip("/") for entry in tf.io.gfile.listdir(out_dir)} - resumable)
    if entries:
        shown = ", ".join(entries[:_SHOWN]) + (f" and {len(entries) - _SHOWN} more" if len(entries) > _SHOWN else "")
        raise OutputExistsError(f"{step} output directory {out_dir!r} is not empty (it holds {shown}); steps never "
                                f"write over an earlier run: delete it or choose another directory")


def clear_task_output(path: str) -> None:
    """Empties a kfp task's own output artifact before its step writes it.

    KFP hands a retried pod the same output URI, and that artifact belongs to this task
    alone: whatever it holds was left by an attempt that failed part-way. Without this,
    ``require_empty`` would refuse every retry of ingest, transform and evaluate.
    """
    storage.remove_if_present(path)
