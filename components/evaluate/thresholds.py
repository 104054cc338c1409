"""The gate's thresholds as TFMA MetricThresholds, and TFMA's validation result read back as verdicts.

A threshold in ``evaluation.thresholds`` addresses ``<output>/<slice>/<metric>``. Where TFMA
computes the metric (``bce``, ``mean_prediction``, ``mean_label``, ``example_count``; see
``components.evaluate.block_metrics``), it becomes a per-slice TFMA ``MetricThreshold``: ``min``/``max``
a value threshold, ``max_regression`` a change threshold against the baseline model with the
metric's direction. TFMA checks them, and ``verdicts`` turns its ValidationResult into the
failed rules that ``esmm_model.contracts.blessing`` reports. Every other metric (the exact AUCs, the
entire-space ones) is checked by the blessing itself, with the same keys.
"""
from __future__ import annotations

from dataclasses import dataclass

from esmm_model.config import LABEL_CLICK, EvaluationConfig, Threshold

SLICE_VALUES = {"all": None, "clicked": 1, "unclicked": 0}
# Our metric name -> TFMA's (block_metrics) name.
TFMA_NAMES = {"bce": "binary_crossentropy", "mean_prediction": "mean_prediction", "mean_label": "mean_label",
              "example_count": "example_count"}


@dataclass(frozen=True)
class TfmaVerdicts:
    """Which thresholds TFMA checked (metric paths) and the rules it failed: (path, rule) -> TFMA's message."""

    checked: frozenset[str]
    failures: dict[tuple[str, str], str]


def slicing_spec(slice_name: str):
    """The TFMA SlicingSpec of one of our slices."""
    from tensorflow_model_analysis.proto import config_pb2

    value = SLICE_VALUES[slice_name]
    if value is None:
        return config_pb2.SlicingSpec()
    return config_pb2.SlicingSpec(feature_values={LABEL_CLICK: str(value)})


def slice_name(slice_key: tuple) -> str:
    """Our name for a TFMA slice key: () -> all, (('click', 1),) -> clicked, (('click', 0),) -> unclicked."""
    if not slice_key:
        return "all"
    ((_, value),) = slice_key
    return "clicked" if int(value) == 1 else "unclicked"


def tfma_checked(threshold: Threshold) -> bool:
    """True when TFMA computes this threshold's metric, on one of our outputs and slices."""
    parts = threshold.metric.split("/")
    return len(parts) == 3 and parts[1] in SLICE_VALUES and parts[2] in TFMA_NAMES


def per_slice_thresholds(evaluation: EvaluationConfig, output: str, metric: str, *, with_change: bool) -> list:
    """TFMA PerSliceMetricThresholds for ``output``'s ``metric`` (our name); change thresholds only ``with_change``."""
    from tensorflow_model_analysis.proto import config_pb2

    found = []
    for threshold in evaluation.thresholds:
        if not tfma_checked(threshold):
            continue
        t_output, t_slice, t_metric = threshold.metric.split("/")
        if (t_output, t_metric) != (output, metric):
            continue
        metric_threshold = config_pb2.MetricThreshold()
        if threshold.min is not None:
            metric_threshold.value_threshold.lower_bound.value = threshold.min
        if threshold.max is not None:
            metric_threshold.value_threshold.upper_bound.value = threshold.max
        if threshold.max_regression is not None and with_change:
            change = metric_threshold.change_threshold
            if threshold.higher_is_better:
                change.direction = config_pb2.MetricDirection.HIGHER_IS_BETTER
                change.absolute.value = -threshold.max_regression
            else:
                change.direction = config_pb2.MetricDirection.LOWER_IS_BETTER
                change.absolute.value = threshold.max_regression
        if metric_threshold.ByteSize():
            found.append(config_pb2.PerSliceMetricThreshold(slicing_specs=[slicing_spec(t_slice)],
                                                            threshold=metric_threshold))
    return found


def verdicts(evaluation: EvaluationConfig, validation) -> TfmaVerdicts:
    """Reads TFMA's ValidationResult: every failure as (metric path, rule) -> TFMA's message."""
    ours = {theirs: name for name, theirs in TFMA_NAMES.items()}
    failures: dict[tuple[str, str], str] = {}
    for per_slice in validation.metric_validations_per_slice:
        key = tuple((k.column, k.int64_value if k.HasField("int64_value") else k.bytes_value)
                    for k in per_slice.slice_key.single_slice_keys)
        where = slice_name(key)
        for failure in per_slice.failures:
            metric_key = failure.metric_key
            path = f"{metric_key.output_name}/{where}/{ours.get(metric_key.name, metric_key.name)}"
            if metric_key.is_diff:
                rule = "max_regression"
            else:
                bounds = failure.metric_threshold.value_threshold
                value = failure.metric_value.double_value.value
                below = bounds.HasField("lower_bound") and value < bounds.lower_bound.value
                rule = "min" if below else "max"
            failures[(path, rule)] = failure.message or f"{path} failed TFMA's {rule} threshold"
    checked = frozenset(t.metric for t in evaluation.thresholds if tfma_checked(t))
    return TfmaVerdicts(checked, failures)
