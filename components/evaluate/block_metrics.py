"""TFMA metrics vectorised over row blocks: one extract carries thousands of scored rows.

TFMA's own metrics take one example per extract; its per-example path (unbatch, slice keys,
preprocessing, fan-out, one ``add_input`` per metric, model and output) measured about
2-5 ms of Python per row here, so a million rows took hours. The evaluator instead hands
TFMA extracts that each hold a block of rows sharing one value of every slicing feature,
and these metrics reduce a block with NumPy: the count, label, prediction and log-loss sums
per model and output. TFMA still slices, combines, diffs against the baseline model and
checks the thresholds. The values equal TFMA's ExampleCount, MeanLabel, MeanPrediction and
BinaryCrossentropy (unweighted) computed example by example.
"""
from __future__ import annotations

from typing import Any, Optional

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis.metrics import metric_types, metric_util
from tensorflow_model_analysis.proto import config_pb2

EXAMPLE_COUNT = "example_count"
MEAN_LABEL = "mean_label"
MEAN_PREDICTION = "mean_prediction"
BINARY_CROSSENTROPY = "binary_crossentropy"
_SUMS = "_block_sums"
# Keras' BinaryCrossentropy clips probabilities to [eps, 1 - eps] with this epsilon.
_EPSILON = 1e-7


class _Sums:
    """Row count and sums of labels, predictions and log losses for one model and output."""

    __slots__ = ("rows", "labels", "predictions", "log_loss")

    def __init__(self) -> None:
        self.rows, self.labels, self.predictions, self.log_loss = 0, 0.0, 0.0, 0.0


class _BlockSumsCombiner(beam.CombineFn):
    """Adds up a block of rows at a time with NumPy."""

    def __init__(self, key: metric_types.MetricKey, eval_config: Optional[config_pb2.EvalConfig]):
        self._key = key
        self._eval_config = eval_config

    def create_accumulator(self) -> _Sums:
        return _Sums()

    def add_input(self, accumulator: _Sums, element: metric_types.StandardMetricInputs) -> _Sums:
        for label, prediction, _ in metric_util.to_label_prediction_example_weight(
                element, eval_config=self._eval_config, model_name=self._key.model_name,
                output_name=self._key.output_name, flatten=False, squeeze=False):
            y = np.asarray(label, np.float64).ravel()
            p = np.asarray(prediction, np.float64).ravel()
            if y.size != p.size:
                raise ValueError(f"{self._key.model_name}/{self._key.output_name}: a block has {y.size} labels "
                                 f"but {p.size} predictions")
            clipped = np.clip(p, _EPSILON, 1.0 - _EPSILON)
            accumulator.rows += y.size
            accumulator.labels += float(y.sum())
            accumulator.predictions += float(p.sum())
            accumulator.log_loss += float(-(y * np.log(clipped) + (1.0 - y) * np.log1p(-clipped)).sum())
        return accumulator

    def merge_accumulators(self, accumulators) -> _Sums:
        merged = _Sums()
        for acc in accumulators:
            merged.rows += acc.rows
            merged.labels += acc.labels
            merged.predictions += acc.predictions
            merged.log_loss += acc.log_loss
        return merged

    def extract_output(self, accumulator: _Sums) -> dict[metric_types.MetricKey, _Sums]:
        return {self._key: accumulator}


def _sums(eval_config, model_name: str, output_name: str, example_weighted: bool) -> metric_types.MetricComputation:
    key = metric_types.MetricKey(name=_SUMS, model_name=model_name, output_name=output_name,
                                 example_weighted=example_weighted)
    return metric_types.MetricComputation(keys=[key], preprocessors=None,
                                          combiner=_BlockSumsCombiner(key, eval_config))


def _derived(value_of):
    """A per-key computation function: the shared sums, then ``value_of(sums)`` under the metric's name."""
    def computations(name: str, eval_config=None, model_name: str = "", output_name: str = "", sub_key=None,
                     aggregation_type=None, class_weights=None, example_weighted: bool = False,
                     **_: Any) -> metric_types.MetricComputations:
        sums = _sums(eval_config, model_name, output_name, example_weighted)
        key = metric_types.MetricKey(name=name, model_name=model_name, output_name=output_name,
                                     sub_key=sub_key, example_weighted=example_weighted)
        (sums_key,) = sums.keys

        def result(metrics: dict) -> dict:
            total = metrics[sums_key]
            return {key: value_of(total) if total.rows else float("nan")}

        return [sums, metric_types.DerivedMetricComputation(keys=[key], result=result)]

    return computations


class BlockExampleCount(metric_types.Metric):
    """Rows in the slice (each extract holds many)."""

    def __init__(self, name: str = EXAMPLE_COUNT):
        super().__init__(metric_util.merge_per_key_computations(_derived(lambda s: float(s.rows))), name=name)


class BlockMeanLabel(metric_types.Metric):
    """Mean label over the slice's rows."""

    def __init__(self, name: str = MEAN_LABEL):
        super().__init__(metric_util.merge_per_key_computations(_derived(lambda s: s.labels / s.rows)), name=name)


class BlockMeanPrediction(metric_types.Metric):
    """Mean prediction over the slice's rows."""

    def __init__(self, name: str = MEAN_PREDICTION):
        super().__init__(metric_util.merge_per_key_computations(_derived(lambda s: s.predictions / s.rows)), name=name)


class BlockBinaryCrossentropy(metric_types.Metric):
    """Mean binary cross-entropy over the slice's rows, probabilities clipped as Keras does."""

    def __init__(self, name: str = BINARY_CROSSENTROPY):
        super().__init__(metric_util.merge_per_key_computations(_derived(lambda s: s.log_loss / s.rows)), name=name)


for _metric in (BlockExampleCount, BlockMeanLabel, BlockMeanPrediction, BlockBinaryCrossentropy):
    metric_types.register_metric(_metric)
