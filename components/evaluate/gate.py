"""The model-validation gate: bless a candidate, or refuse it with every reason spelled out.

Metrics are the evaluator's nested mapping, addressed by path: ``cvr/clicked/auc`` reads
``metrics["cvr"]["clicked"]["auc"]``. Each ``evaluation.thresholds`` entry applies up to three
rules: ``min`` and ``max`` on the candidate alone, and ``max_regression`` against the baseline,
the currently pushed model re-scored by the evaluator on the same rows (TFX's way: a change
measured on one split, not against metrics recorded on an older one). Where TFMA computed the
metric and checked the threshold (``components.evaluate.thresholds``), the rule's outcome is TFMA's.
The gate fails closed: a metric the candidate lacks, or that is not a finite number, fails.
A change rule is skipped, with its reason recorded, when there is no baseline (the first
model is judged on absolute thresholds alone) or the baseline lacks that metric.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Mapping, Optional

from components.evaluate.thresholds import TfmaVerdicts
from esmm_model.config import EvaluationConfig, Threshold
from esmm_model.contracts.blessing import Blessing, Check

# A regression equal to max_regression passes; this absorbs float noise in baseline - value.
_REGRESSION_TOLERANCE = 1e-9


def bless(candidate_metrics: Mapping[str, Any], baseline_metrics: Optional[Mapping[str, Any]],
          evaluation: EvaluationConfig, *, baseline_version: Optional[int] = None,
          tfma: Optional[TfmaVerdicts] = None, model_fingerprint: Optional[str] = None) -> Blessing:
    """Judges the candidate's metrics against ``evaluation.thresholds``.

    ``baseline_metrics`` are the pushed model's, on the candidate's eval rows; pass None, with
    ``baseline_version`` None, for the first model. ``baseline_version`` names the pushed
    version they came from; the Pusher refuses a blessing whose baseline is no longer the
    served baseline (``served_baseline``). ``tfma``: TFMA's verdicts on the thresholds it checked.
    ``model_fingerprint`` identifies the judged model; the Pusher refuses to push any other.
    """
    checks: list[Check] = []
    for threshold in evaluation.thresholds:
        checks.extend(_check_threshold(threshold, candidate_metrics, baseline_metrics, baseline_version, tfma))
    return Blessing(checks=tuple(checks), baseline_version=baseline_version, model_fingerprint=model_fingerprint)


def _check_threshold(threshold: Threshold, candidate: Mapping[str, Any], baseline: Optional[Mapping[str, Any]],
                     baseline_version: Optional[int], tfma: Optional[TfmaVerdicts]) -> list[Check]:
    path = threshold.metric
    try:
        value = metric_value(candidate, path)
    except KeyError as exc:
        return [Check(path, "present", "fail", f"candidate: {exc.args[0]}")]
    checks = []
    if threshold.min is not None:
        ok = value >= threshold.min
        checks.append(Check(path, "min", "pass" if ok else "fail",
                            f"{path} = {value:.4f} {'>=' if ok else 'is below'} min {threshold.min:.4f}",
                            value=value, bound=threshold.min))
    if threshold.max is not None:
        ok = value <= threshold.max
        checks.append(Check(path, "max", "pass" if ok else "fail",
                            f"{path} = {value:.4f} {'<=' if ok else 'is above'} max {threshold.max:.4f}",
                            value=value, bound=threshold.max))
    if threshold.max_regression is not None:
        checks.append(_check_regression(threshold, threshold.max_regression, value, baseline, baseline_version))
    if tfma is not None and path in tfma.checked:
        checks = [_tfma_outcome(check, tfma) for check in checks]
    return checks


def _tfma_outcome(check: Check, tfma: TfmaVerdicts) -> Check:
    """The check with TFMA's outcome: failed where TFMA's validation failed it, passed otherwise."""
    if check.outcome == "skip":
        return check
    failure = tfma.failures.get((check.metric, check.rule))
    if failure is not None:
        return dataclasses.replace(check, outcome="fail", reason=f"{check.reason} [TFMA: {failure}]")
    return dataclasses.replace(check, outcome="pass", reason=f"{check.reason} [TFMA]")


def _check_regression(threshold: Threshold, delta: float, value: float, baseline: Optional[Mapping[str, Any]],
                      baseline_version: Optional[int]) -> Check:
    path = threshold.metric
    if baseline is None:
        why = ("no pushed model to compare with (first model)" if baseline_version is None
               else f"pushed version {baseline_version} has no recorded metrics")
        return Check(path, "max_regression", "skip", f"{path}: {why}; max_regression not applied", value=value)
    try:
        base = metric_value(baseline, path)
    except KeyError as exc:
        return Check(path, "max_regression", "skip", f"baseline: {exc.args[0]}; max_regression not applied",
                     value=value)
    regression = base - value if threshold.higher_is_better else value - base
    bound = base - delta if threshold.higher_is_better else base + delta
    ok = regression <= delta + _REGRESSION_TOLERANCE
    direction = "higher" if threshold.higher_is_better else "lower"
    against = "the baseline" if baseline_version is None else f"pushed version {baseline_version}"
    verdict = (f"within max_regression {delta:.4f}" if ok
               else f"worse by {regression:.4f}, more than max_regression {delta:.4f}")
    return Check(path, "max_regression", "pass" if ok else "fail",
                 f"{path} = {value:.4f} vs {base:.4f} in {against} ({direction} is better): {verdict}",
                 value=value, bound=bound, baseline=base)


def metric_value(metrics: Mapping[str, Any], path: str) -> float:
    """The finite number at ``path`` (``cvr/clicked/auc``); KeyError saying what is missing otherwise."""
    node: Any = metrics
    walked: list[str] = []
    for part in path.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            where = "/".join(walked) or "the top level"
            known = ", ".join(sorted(map(str, node))) if isinstance(node, Mapping) else f"a {type(node).__name__}"
            raise KeyError(f"{path} is missing: {where} has no {part!r} (it has {known or 'nothing'})")
        node = node[part]
        walked.append(part)
    if isinstance(node, bool) or not isinstance(node, numbers.Real) or not math.isfinite(node):
        raise KeyError(f"{path} is {node!r}, not a finite number")
    return float(node)
