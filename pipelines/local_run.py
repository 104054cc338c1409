"""Runs the pipeline locally: kfp.local's SubprocessRunner in this environment, Beam's DirectRunner.

What runs here is what runs on Kubernetes: the same pipeline function, the same components.
kfp.local's output (the executor input, every library's log) goes to a log file per step in the run
directory; the console shows each step's start and end, and the lines a step marks for it
(``pipelines.task_logs``). Task caching is KFP's backend feature: the compiled pipeline caches every step but the
snapshot and the push. kfp 2.17.0's local runner ships a cache module but its task
dispatcher never consults it, so every local run executes all six steps.
"""
from __future__ import annotations

import contextlib
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from components import console
from esmm_model.config import portable_config_ref
from esmm_model.contracts import layout
from esmm_model.contracts.blessing import read_json
from esmm_model.errors import EsmmError
from pipelines.config import load_config
from pipelines.pipeline import create_pipeline
from pipelines.run_overrides import with_run_overrides
from pipelines.task_logs import TaskLogs

# kfp.local's warning for each task of a component whose base image is not a Python one.
KFP_IMAGE_WARNING = "You may be attemping to run a task that uses custom or non-Python base image"

# The steps' image label under kfp.local: its SubprocessRunner runs the step functions in this Python
# environment and never pulls an image. On a cluster the image is `esmm compile --image`'s, required.
LOCAL_IMAGE = "esmm:local"


@dataclass(frozen=True)
class LocalRun:
    """Where a local run left its artifacts."""

    run_dir: str
    evaluation_dir: str
    blessing: dict[str, Any]
    pushed: dict[str, Any]
    step_seconds: dict[str, float] = field(default_factory=dict)  # wall time of each task, by task name

    @property
    def metrics(self) -> dict[str, Any]:
        return read_json(layout.EvaluationLayout(self.evaluation_dir).metrics, "evaluation metrics")

    @classmethod
    def read(cls, run_dir: Path, step_seconds: Optional[dict[str, float]] = None) -> "LocalRun":
        """The run that left ``run_dir`` (a kfp.local run directory)."""
        evaluate_dir = _task_dir(run_dir, "evaluate")
        blessing = json.loads((evaluate_dir / "blessing").read_text())
        pushed = json.loads((_task_dir(run_dir, "push") / "pushed").read_text())
        return cls(str(run_dir), str(evaluate_dir / "evaluation"), blessing, pushed, dict(step_seconds or {}))

    def describe(self, *, slices: bool = True) -> str:
        """The evaluation's tables (the per-slice one unless not ``slices``), the blessing and the push."""
        from components.evaluate.report import markdown_tables

        push = (f"pushed version {self.pushed['version']} to {self.pushed['path']}" if self.pushed["pushed"]
                else f"not pushed: {self.pushed['reason']}")
        return "\n".join([markdown_tables(self.metrics, slices=slices), "", f"blessing: {self.blessing['status']}",
                          *(f"  {reason}" for reason in self.blessing["reasons"]), push,
                          f"report: {layout.EvaluationLayout(self.evaluation_dir).report_html}"
                          f"{'' if slices else ' (every output and slice)'}",
                          f"run: {self.run_dir} (a log per step: <step>.log)"])


def _absolute(path: str) -> str:
    """A local path made absolute (kfp.local runs each task in its own directory); a URI as it is."""
    return path if "://" in path else str(Path(path).resolve())


def _task_dir(run_dir: Path, task: str) -> Path:
    matches = sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith(task))
    if not matches:
        raise EsmmError(f"the local run in {run_dir} has no output of task {task!r}")
    return matches[0]


def run_local(config_path: str, input_path: str, serving_base: str, out_dir: str, *,
              beam_runner: Optional[str] = None, beam_options: Optional[list[str]] = None,
              variant: Optional[str] = None, epochs: Optional[int] = None,
              thresholds: Optional[list[dict]] = None, ground_truth: Optional[str] = None,
              max_rejected_fraction: Optional[float] = None) -> LocalRun:
    """Runs snapshot -> ingest -> transform -> train -> evaluate -> push under kfp.local and returns the artifacts.

    Every override left None keeps the config's value, as in the compiled pipeline; Beam's
    arguments come from ``components.beam.runner.beam_args`` inside each step. Checkpoints go
    to ``<out_dir>/work``, keyed by run as on a cluster's work volume.
    """
    from kfp import local

    root = Path(out_dir).resolve() / "kfp_root"
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    before = set(root.iterdir())
    # Every parameter gets a value, resolved from the config where the run does not override it: kfp 2.17.0's
    # local orchestrator fails on an optional pipeline parameter left unset ("Unknown value type").
    config = with_run_overrides(load_config(config_path), variant=variant, epochs=epochs, thresholds=thresholds,
                                max_rejected_fraction=max_rejected_fraction)
    arguments = {"beam_runner": beam_runner or config.beam.runner, "beam_options": list(beam_options or ()),
                 "variant": config.model.variant, "epochs": config.training.epochs,
                 "thresholds": config.to_dict()["evaluation"]["thresholds"],
                 "max_rejected_fraction": config.input.max_rejected_fraction,
                 "ground_truth": _absolute(ground_truth) if ground_truth else ""}
    logs = TaskLogs(root, before, sys.stdout, echo=console.verbose())
    try:
        with console.environment({console.STEP_CONSOLE_ENV: "1"}), contextlib.redirect_stdout(logs), \
                warnings.catch_warnings():
            if not console.verbose():  # runs the image's code in this environment, as intended, for every task
                warnings.filterwarnings("ignore", KFP_IMAGE_WARNING, RuntimeWarning)
            create_pipeline(LOCAL_IMAGE)(config_path=portable_config_ref(config_path),
                                         input_path=_absolute(input_path), serving_base=_absolute(serving_base),
                                         work_root=str(root.parent / "work"), **arguments)
    except RuntimeError as exc:  # kfp.local raises RuntimeError naming the failed task
        raise EsmmError(f"the local pipeline run failed: {logs.failure or exc}") from None
    finally:
        logs.close()
    (run_dir,) = set(root.iterdir()) - before
    return LocalRun.read(run_dir, logs.seconds)
