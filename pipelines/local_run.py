"""Runs the pipeline locally: kfp.local's SubprocessRunner in this environment, Beam's DirectRunner.

What runs here is what runs on Kubernetes: the same pipeline function, the same components.
Task caching is KFP's backend feature: the compiled pipeline caches every step but the
snapshot and the push. kfp 2.17.0's local runner ships a cache module but its task
dispatcher never consults it, so every local run executes all six steps.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from components import layout
from components.blessing import read_json
from esmm_model.config import portable_config_ref
from esmm_model.errors import EsmmError
from pipelines.pipeline import create_pipeline

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

    @property
    def metrics(self) -> dict[str, Any]:
        return read_json(layout.EvaluationLayout(self.evaluation_dir).metrics, "evaluation metrics")

    def describe(self) -> str:
        from components.evaluation_report import markdown_tables

        push = (f"pushed version {self.pushed['version']} to {self.pushed['path']}" if self.pushed["pushed"]
                else f"not pushed: {self.pushed['reason']}")
        return "\n".join([markdown_tables(self.metrics), "", f"blessing: {self.blessing['status']}",
                          *(f"  {reason}" for reason in self.blessing["reasons"]), push,
                          f"report: {layout.EvaluationLayout(self.evaluation_dir).report_html}",
                          f"run: {self.run_dir}"])


def _absolute(path: str) -> str:
    """A local path made absolute (kfp.local runs each task in its own directory); a URI as it is."""
    return path if "://" in path else str(Path(path).resolve())


@contextlib.contextmanager
def _unset_optional_inputs_allowed() -> Iterator[None]:
    """Lets kfp.local leave an ``Optional`` pipeline parameter unset, as the KFP backend does.

    kfp 2.17.0's local orchestrator fails on a pipeline input that is optional and has no
    default ("Unknown value type"), and refuses None as an argument. Within this context an
    unset one reaches its tasks unset, so each component's own default (None) applies.
    """
    from unittest import mock

    from kfp.local import executor_input_utils
    from kfp.local.orchestrator.orchestrator_utils import OrchestratorUtils

    join = OrchestratorUtils.join_user_inputs_and_defaults.__func__
    construct = executor_input_utils.construct_executor_input
    to_dict = executor_input_utils.executor_input_to_dict

    def join_set_inputs(cls, dag_arguments, dag_inputs_spec):
        unset = [name for name, spec in dag_inputs_spec.parameters.items()
                 if name not in dag_arguments and spec.is_optional and not spec.HasField("default_value")]
        spec = type(dag_inputs_spec)()
        spec.CopyFrom(dag_inputs_spec)
        for name in unset:
            del spec.parameters[name]
        return {**join(cls, dag_arguments, spec), **dict.fromkeys(unset)}

    def construct_without_unset(component_spec, arguments, *args, **kwargs):
        return construct(component_spec, {k: v for k, v in arguments.items() if v is not None}, *args, **kwargs)

    def to_dict_without_unset(executor_input, component_spec):
        """A component's own None default arrives as a null value, which kfp.local casts with int()."""
        trimmed = type(executor_input)()
        trimmed.CopyFrom(executor_input)
        values = trimmed.inputs.parameter_values
        for name in [name for name, value in values.items() if value.WhichOneof("kind") in (None, "null_value")]:
            del values[name]
        return to_dict(trimmed, component_spec)

    with (mock.patch.object(OrchestratorUtils, "join_user_inputs_and_defaults", classmethod(join_set_inputs)),
          mock.patch.object(executor_input_utils, "construct_executor_input", construct_without_unset),
          mock.patch.object(executor_input_utils, "executor_input_to_dict", to_dict_without_unset)):
        yield


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
    arguments come from ``components.beam_runner.beam_args`` inside each step. Checkpoints go
    to ``<out_dir>/work``, keyed by run as on a cluster's work volume.
    """
    from kfp import local

    root = Path(out_dir).resolve() / "kfp_root"
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    before = set(root.iterdir())
    overrides = {"beam_runner": beam_runner, "beam_options": beam_options, "variant": variant, "epochs": epochs,
                 "thresholds": thresholds, "ground_truth": _absolute(ground_truth) if ground_truth else None,
                 "max_rejected_fraction": max_rejected_fraction}
    try:
        with _unset_optional_inputs_allowed():
            create_pipeline(LOCAL_IMAGE)(config_path=portable_config_ref(config_path), input_path=_absolute(input_path),
                              serving_base=_absolute(serving_base), work_root=str(root.parent / "work"),
                              **{name: value for name, value in overrides.items() if value is not None})
    except RuntimeError as exc:  # kfp.local raises RuntimeError naming the failed task; its log is above
        raise EsmmError(f"the local pipeline run failed: {exc}") from None
    (run_dir,) = set(root.iterdir()) - before
    evaluate_dir = _task_dir(run_dir, "evaluate")
    blessing = json.loads((evaluate_dir / "blessing").read_text())
    pushed = json.loads((_task_dir(run_dir, "push") / "pushed").read_text())
    return LocalRun(str(run_dir), str(evaluate_dir / "evaluation"), blessing, pushed)
