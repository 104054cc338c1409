"""Evaluation: score the eval split once, TFMA on the scores, exact AUCs, the baseline re-scored, the gate.

The candidate, and the served model when there is one (the version TF Serving's model config labels
``stable``, else the latest version under ``<serving_base>/<model_name>/``), are scored through
``serving_default`` on the *raw* eval split, exactly as TF Serving will call them, in one pass over
the files. TFMA then evaluates the scores in its model-agnostic mode (``ModelSpec.prediction_keys``,
no model inside TFMA): two models, three outputs, slices all / clicked / unclicked, with the baseline diffs and the
thresholds it can check (``components.evaluate.thresholds``). Its input is blocks of scored rows that
share one click value, reduced by vectorised metrics (``components.evaluate.block_metrics``); see
docs/benchmarks.md (Evaluation) for why. The exact rank AUCs come from the same scores.

Outputs under ``out_dir``:
- ``metrics.json``: the candidate's ``{output: {slice: {auc, pr_auc, bce, mean_prediction,
  mean_label, example_count}}}``, ``exact`` (the paper's protocol, as the trainer reports it),
  ``entire_space`` with the simulator's ground truth, ``model`` and ``data`` (what was
  evaluated), and ``baseline``: the served model's metrics on the same rows, same layout,
  with its ``version`` (null when nothing is served);
- ``blessing.json``: the gate's verdict (``esmm_model.contracts.blessing``), judged on those same rows and
  bound to the candidate's fingerprint (``esmm_model.contracts.fingerprint``);
- ``tfma/``: TFMA's result and validation (``tfma.load_eval_result``,
  ``tfma.load_validation_result``);
- ``report.md``, ``report.html``, ``plots/``: see ``components.evaluate.report``.

A slice where a metric is undefined (e.g. a CVR AUC with no conversion) holds NaN, which
the gate treats as a failure.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np
import tensorflow as tf

from components.artifacts import record_counts
from components.artifacts.output_dir import require_empty
from components.beam.runner import make_pipeline
from components.evaluate import thresholds as tfma_thresholds
from components.evaluate.gate import bless
from components.evaluate.report import LABEL_OF, OUTPUTS, SLICES, markdown_tables, thin_index, write_report
from esmm_model.config import LABEL_CLICK, LABEL_CONVERSION, LABEL_CTCVR, Config
from esmm_model.contracts import layout
from esmm_model.contracts.blessing import Blessing, write_blessing
from esmm_model.contracts.fingerprint import model_fingerprint
from esmm_model.contracts.ground_truth import join_ground_truth, load_ground_truth
from esmm_model.contracts.model_config import read_model_config
from esmm_model.contracts.model_store import PushedModel, served_baseline
from esmm_model.errors import EsmmError, InputError
from esmm_model.metrics import average_precision, esmm_metrics, exact_auc, log_loss, paper_aucs, roc_points
from esmm_model.schema import SAMPLE_ID, SERVING_SIGNATURE

CANDIDATE, BASELINE = "candidate", "baseline"
# The slice of each output's headline AUC (the paper's protocol), whose ROC curve goes to the kfp UI.
HEADLINE_SLICE = {"ctr": "all", "cvr": "clicked", "ctcvr": "all"}
ROC_POINTS = 200
# The metrics TFMA computes: components.evaluate.block_metrics class -> our metric name (TFMA's: thresholds.TFMA_NAMES).
BLOCK_METRICS = {"BlockExampleCount": "example_count", "BlockMeanLabel": "mean_label",
                 "BlockMeanPrediction": "mean_prediction", "BlockBinaryCrossentropy": "bce"}
SCORE_BATCH = 8192
PROGRESS_ROWS = 200_000
BLOCK_ROWS = 50_000
_LOG = logging.getLogger(__name__)


@dataclass
class Scores:
    """Every eval row's labels and each model's three outputs, in file order."""

    sample_id: np.ndarray
    click: np.ndarray
    conversion: np.ndarray
    outputs: dict[str, dict[str, np.ndarray]]

    def labels(self) -> dict[str, np.ndarray]:
        """Each output's label, as booleans."""
        click, conversion = self.click.astype(bool), self.conversion.astype(bool)
        return {"ctr": click, "cvr": conversion, "ctcvr": click & conversion}

    def slices(self) -> dict[str, np.ndarray]:
        """The evaluation slices as masks: all, clicked, unclicked."""
        click = self.click.astype(bool)
        return {"all": np.ones_like(click), "clicked": click, "unclicked": ~click}

    @property
    def rows(self) -> int:
        return int(self.click.size)


@contextlib.contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Adds the wall-clock seconds of the block to ``timings[stage]`` and logs them."""
    started = time.perf_counter()
    yield
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - started
    _LOG.info("evaluate: %s took %.1f s", stage, timings[stage])


@dataclass(frozen=True)
class EvaluationResult:
    """Where the evaluation wrote its artifacts, the metrics, the verdict and what each stage took."""

    out_dir: str
    metrics: dict[str, Any]
    blessing: Blessing
    timings: dict[str, float]

    def table(self) -> str:
        return markdown_tables(self.metrics)

    def headline(self) -> dict[str, float]:
        """The paper's figures (and the baseline's, on the same rows); finite values only."""
        return headline_metrics(self.metrics)


def headline_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """exact AUCs, entire-space and oracle AUCs, and the baseline's exact AUCs on the same rows."""
    figures = {k: v for k, v in metrics["exact"].items() if "_auc" in k}
    figures.update({f"entire_space_{k}": v for k, v in metrics.get("entire_space", {}).items()})
    baseline = metrics.get("baseline") or {}
    figures.update({f"baseline_{k}": v for k, v in baseline.get("exact", {}).items() if "_auc" in k})
    return {k: float(v) for k, v in figures.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def score_split(models: dict[str, str], pattern: str, batch_size: int = SCORE_BATCH) -> Scores:
    """Scores every raw eval example once per model through ``serving_default``, in batches, in one read."""
    loaded = {name: tf.saved_model.load(path) for name, path in models.items()}  # the signatures use their variables
    signatures = {name: model.signatures[SERVING_SIGNATURE] for name, model in loaded.items()}
    spec = {SAMPLE_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
            LABEL_CLICK: tf.io.FixedLenFeature([], tf.int64), LABEL_CONVERSION: tf.io.FixedLenFeature([], tf.int64)}
    files = sorted(tf.io.gfile.glob(pattern))
    columns: dict[str, list] = {SAMPLE_ID: [], LABEL_CLICK: [], LABEL_CONVERSION: []}
    scored: dict[str, dict[str, list]] = {name: {o: [] for o in OUTPUTS} for name in models}
    dataset = (tf.data.TFRecordDataset(files, compression_type="GZIP", num_parallel_reads=min(4, len(files)) or 1)
               .batch(batch_size).prefetch(2))
    started, rows, logged = time.perf_counter(), 0, 0
    for batch in dataset:
        labels = tf.io.parse_example(batch, spec)
        rows += int(batch.shape[0])
        if rows - logged >= PROGRESS_ROWS:
            logged = rows
            _LOG.info("evaluate: scored %d rows (%.0f rows/s)", rows, rows / (time.perf_counter() - started))
        for key in columns:
            columns[key].append(labels[key].numpy())
        for name, serve in signatures.items():
            outputs = serve(examples=batch)
            for output in OUTPUTS:
                scored[name][output].append(outputs[output].numpy())

    def joined(parts: list) -> np.ndarray:
        return np.concatenate(parts) if parts else np.array([])

    return Scores(joined(columns[SAMPLE_ID]), joined(columns[LABEL_CLICK]), joined(columns[LABEL_CONVERSION]),
                  {name: {o: joined(v) for o, v in by_output.items()} for name, by_output in scored.items()})


def write_blocks(scores: Scores, directory: str, block_rows: int = BLOCK_ROWS) -> list[str]:
    """Writes TFMA's input: labels and every model's scores in blocks of rows that share a click value
    (the slicing feature), one Arrow IPC file per block. Returns the files."""
    import pyarrow as pa

    order = np.argsort(scores.click, kind="stable")
    click = scores.click[order].astype(np.int64)
    labels = scores.labels()
    columns = {LABEL_CLICK: click, LABEL_CONVERSION: scores.conversion[order].astype(np.int64),
               LABEL_CTCVR: labels["ctcvr"][order].astype(np.int64)}
    for name, outputs in scores.outputs.items():
        for output in OUTPUTS:
            columns[prediction_key(name, output)] = outputs[output][order].astype(np.float32)
    split = int(np.searchsorted(click, 1))
    blocks = [(a, min(a + block_rows, end)) for start, end in ((0, split), (split, click.size))
              for a in range(start, end, block_rows)]
    schema = pa.schema([(k, pa.list_(pa.from_numpy_dtype(v.dtype))) for k, v in columns.items()])
    tf.io.gfile.makedirs(directory)
    paths = []
    for i, (a, b) in enumerate(blocks):
        offsets = np.arange(b - a + 1, dtype=np.int32)
        batch = pa.RecordBatch.from_arrays([pa.ListArray.from_arrays(offsets, v[a:b]) for v in columns.values()],
                                           schema=schema)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, schema) as writer:
            writer.write_batch(batch)
        paths.append(layout.join(directory, f"block-{i:05d}.arrow"))
        with tf.io.gfile.GFile(paths[-1], "wb") as f:
            f.write(sink.getvalue().to_pybytes())
    return paths


def read_block(path: str) -> Iterator[Any]:
    """One block written by ``write_blocks``, as Arrow RecordBatches (runs on Beam workers)."""
    import pyarrow as pa

    with tf.io.gfile.GFile(path, "rb") as f:
        yield from pa.ipc.open_stream(f.read())


def prediction_key(model: str, output: str) -> str:
    return f"{model}_{output}"


def eval_config(config: Config, models: list[str]):
    """TFMA's EvalConfig: model-agnostic specs reading each model's scores, three slices, the block
    metrics per output, and the thresholds TFMA can check (change thresholds only with a baseline)."""
    from tensorflow_model_analysis.proto import config_pb2

    specs = [config_pb2.ModelSpec(name=name, is_baseline=name == BASELINE, label_keys=dict(LABEL_OF),
                                  prediction_keys={o: prediction_key(name, o) for o in OUTPUTS}) for name in models]
    metrics_specs = []
    for output in OUTPUTS:
        metric_configs = []
        for class_name, name in BLOCK_METRICS.items():
            metric = config_pb2.MetricConfig(class_name=class_name, module="components.evaluate.block_metrics")
            metric.per_slice_thresholds.extend(
                tfma_thresholds.per_slice_thresholds(config.evaluation, output, name, with_change=BASELINE in models))
            metric_configs.append(metric)
        metrics_specs.append(config_pb2.MetricsSpec(output_names=[output], model_names=list(models),
                                                    metrics=metric_configs))
    return config_pb2.EvalConfig(model_specs=specs, slicing_specs=[tfma_thresholds.slicing_spec(s) for s in SLICES],
                                 metrics_specs=metrics_specs)


def block_extractors(config_proto) -> list:
    """TFMA's model-agnostic extractors, without the unbatching one: an extract stays a block of rows."""
    from tensorflow_model_analysis.extractors import (
        example_weights_extractor,
        features_extractor,
        labels_extractor,
        materialized_predictions_extractor,
        slice_key_extractor,
    )

    return [features_extractor.FeaturesExtractor(config_proto), labels_extractor.LabelsExtractor(config_proto),
            example_weights_extractor.ExampleWeightsExtractor(config_proto),
            materialized_predictions_extractor.MaterializedPredictionsExtractor(config_proto),
            slice_key_extractor.SliceKeyExtractor(eval_config=config_proto)]


def run_tfma(config: Config, scores: Scores, out_dir: str, beam_args: list[str], block_rows: int = BLOCK_ROWS):
    """Runs TFMA over the scored blocks; returns ({model: {output: {slice: {metric: value}}}}, ValidationResult)."""
    import apache_beam as beam
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis import constants

    models = list(scores.outputs)
    config_proto = eval_config(config, models)
    out = layout.EvaluationLayout(out_dir)
    blocks_dir = out.tfma_input
    blocks = write_blocks(scores, blocks_dir, block_rows)
    output_path = out.tfma
    try:
        with make_pipeline(beam_args) as p:
            _ = (p | "Blocks" >> beam.Create(blocks)
                 | "ReadBlock" >> beam.FlatMap(read_block)
                 | "EvaluateAndWrite" >> tfma.ExtractEvaluateAndWriteResults(
                     eval_shared_model=[tfma.types.EvalSharedModel(model_name=name, is_baseline=name == BASELINE,
                                                                   model_type=constants.MATERIALIZED_PREDICTION)
                                        for name in models],
                     eval_config=config_proto, extractors=block_extractors(config_proto), output_path=output_path))
    finally:
        tf.io.gfile.rmtree(blocks_dir)
    metrics: dict = {name: {o: {} for o in OUTPUTS} for name in models}
    for name in models:
        # A lone model's results are stored without its name.
        result = tfma.load_eval_result(output_path, model_name=name if len(models) > 1 else None)
        for slice_key, by_output in result.slicing_metrics:
            for output, values in by_output.items():
                flat = values.get("", values)
                metrics[name][output][tfma_thresholds.slice_name(slice_key)] = {
                    ours: _value(flat.get(tfma_thresholds.TFMA_NAMES[ours])) for ours in BLOCK_METRICS.values()}
    return metrics, tfma.load_validation_result(output_path)


def check_example_counts(tfma_metrics: dict, scores: Scores) -> None:
    """Fails when TFMA counted other rows than were scored, in any model, output or slice.

    The exact metrics come from the scores; TFMA's thresholds and tables from what its Beam
    pipeline saw. A runner that lost or repeated input would make the two disagree silently.
    """
    expected = {name: int(mask.sum()) for name, mask in scores.slices().items()}
    for model, by_output in tfma_metrics.items():
        for output, by_slice in by_output.items():
            for slice_name, values in by_slice.items():
                counted = values.get("example_count", float("nan"))
                if slice_name in expected and math.isfinite(counted) and int(counted) != expected[slice_name]:
                    raise EsmmError(f"evaluation: TFMA counted {int(counted):,} rows in slice {slice_name!r} of "
                                    f"{model}/{output} where {expected[slice_name]:,} were scored; its Beam "
                                    "pipeline lost or repeated input, so its metrics and thresholds are not trusted")


def _value(entry: Optional[dict]) -> float:
    if entry and "doubleValue" in entry:
        return float(entry["doubleValue"])
    return float("nan")


def add_exact_aucs(metrics: dict[str, Any], scores: Scores, model: str) -> None:
    """Adds exact ROC AUC and PR AUC (average precision) to every output and slice of ``model``.

    TFMA's AUCs integrate a confusion matrix over a threshold grid, uniform on [0, 1] by
    default: pCTCVR (~1e-3) then falls into a handful of buckets and its AUC is off by
    several points. The scores give exact rank statistics instead, over the whole split.
    """
    labels = scores.labels()
    for output in OUTPUTS:
        predicted = scores.outputs[model][output]
        for slice_name, mask in scores.slices().items():
            entry = metrics[output].setdefault(slice_name, {})
            entry["auc"] = exact_auc(labels[output][mask], predicted[mask])
            entry["pr_auc"] = average_precision(labels[output][mask], predicted[mask])


def headline_roc(scores: Scores, model: str = CANDIDATE, points: int = ROC_POINTS) -> dict[str, dict[str, Any]]:
    """Each output's ROC curve on its headline slice, thinned to ``points``: fpr, tpr and the score threshold."""
    labels, slices = scores.labels(), scores.slices()
    curves = {}
    for output, slice_name in HEADLINE_SLICE.items():
        mask = slices[slice_name]
        fpr, tpr, threshold = roc_points(labels[output][mask], scores.outputs[model][output][mask])
        index = thin_index(fpr.size, points + 1)
        curves[output] = {"slice": slice_name, "fpr": fpr[index].tolist(), "tpr": tpr[index].tolist(),
                          "threshold": threshold[index].tolist()}
    return curves


def entire_space_metrics(scores: Scores, model: str, truth: np.ndarray) -> dict[str, float]:
    """CVR AUC against would_convert over all impressions, and the oracle AUCs; ``truth`` is the ground truth
    joined to the scored rows ([n, 3]: p_click, p_cvr, would_convert)."""
    p_click, p_cvr, would_convert = truth[:, 0], truth[:, 1], truth[:, 2].astype(bool)
    click = scores.click.astype(bool)
    cvr = scores.outputs[model]["cvr"]
    oracle = paper_aucs(click, scores.conversion, p_click, p_cvr, p_click * p_cvr, would_convert)
    return {
        "cvr_auc": exact_auc(would_convert, cvr),
        "cvr_auc_unclicked": exact_auc(would_convert[~click], cvr[~click]),
        "cvr_bce": log_loss(would_convert, cvr),
        "oracle_ctr_auc_all": oracle["ctr_auc"],
        "oracle_ctcvr_auc_all": oracle["ctcvr_auc"],
        "oracle_cvr_auc_clicked": oracle["cvr_auc_clicked"],
        "oracle_cvr_auc": oracle["entire_space_cvr_auc"],
        "mean_p_cvr_true": float(p_cvr.mean()),
        "mean_p_cvr_predicted": float(cvr.mean()),
    }


def model_metrics(scores: Scores, model: str, tfma_metrics: dict, truth: Optional[np.ndarray]) -> dict[str, Any]:
    """One model's metrics: TFMA's per output and slice, the exact AUCs, and the entire-space ones."""
    metrics: dict[str, Any] = tfma_metrics[model]
    add_exact_aucs(metrics, scores, model)
    out = scores.outputs[model]
    metrics["exact"] = esmm_metrics(scores.click, scores.conversion, out["ctr"], out["cvr"], out["ctcvr"])
    if truth is not None:
        metrics["entire_space"] = entire_space_metrics(scores, model, truth)
    return metrics


def read_training_record(model_dir: str) -> dict[str, Any]:
    """The trainer's metrics.json exported with the model (history per epoch), empty when absent."""
    path = layout.record_file(model_dir, layout.RECORD_METRICS)
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def served_model(config: Config, serving_base: str) -> Optional[PushedModel]:
    """The baseline to re-score: the version TF Serving's model config (``push.model_config_file``) labels
    ``stable``, else the latest pushed version."""
    config_file = config.push.model_config_file
    model_config = read_model_config(config_file, config.push.model_name) if config_file else None
    return served_baseline(serving_base, config.push.model_name, model_config, config_file or "")


def evaluate(config: Config, model_dir: str, ingest_dir: str, out_dir: str, beam_args: list[str], *,
             serving_base: Optional[str] = None, ground_truth: Optional[str] = None,
             block_rows: int = BLOCK_ROWS) -> EvaluationResult:
    """Evaluates ``model_dir`` on ``<ingest_dir>/eval``, with the model served under ``serving_base``
    (if any) re-scored on the same rows as the baseline; writes metrics, blessing, report and plots."""
    if not tf.io.gfile.exists(layout.join(model_dir, layout.SAVED_MODEL_PB)):
        raise InputError(f"{model_dir!r} is not a SavedModel directory (no saved_model.pb)")
    pattern, out = layout.IngestLayout(ingest_dir).split_pattern(layout.EVAL), layout.EvaluationLayout(out_dir)
    if not tf.io.gfile.glob(pattern):
        raise InputError(f"no eval examples match {pattern!r}; run `esmm ingest` first")
    require_empty(out_dir, "evaluate")
    tf.io.gfile.makedirs(out_dir)
    timings: dict[str, float] = {}
    served = served_model(config, serving_base) if serving_base else None
    models = {CANDIDATE: model_dir, **({BASELINE: served.path} if served else {})}
    _LOG.info("evaluate: scoring %s with %s", pattern, ", ".join(f"{k} ({v})" for k, v in models.items()))
    with _timed(timings, "score"):
        scores = score_split(models, pattern)
    if not scores.rows:
        raise InputError(f"the eval files matching {pattern!r} hold no examples")
    with _timed(timings, "tfma"):
        tfma_metrics, validation = run_tfma(config, scores, out_dir, beam_args, block_rows)
        check_example_counts(tfma_metrics, scores)
    with _timed(timings, "exact"):
        truth = (join_ground_truth(load_ground_truth(ground_truth), scores.sample_id, ground_truth)
                 if ground_truth else None)
        metrics = model_metrics(scores, CANDIDATE, tfma_metrics, truth)
        metrics["baseline"] = None
        if served:
            metrics["baseline"] = {"version": served.version, "path": served.path,
                                   **model_metrics(scores, BASELINE, tfma_metrics, truth)}
    labels = scores.labels()
    metrics["model"] = {"path": model_dir, **{k: v for k, v in read_training_record(model_dir).items() if k != "final"}}
    metrics["data"] = {"eval_rows": scores.rows, "eval_clicks": int(labels["ctr"].sum()),
                       "eval_conversions": int(labels["ctcvr"].sum()),
                       "ingest": record_counts.read_ingest_counts(ingest_dir) or {}}
    blessing = bless(metrics, metrics["baseline"], config.evaluation,
                     baseline_version=served.version if served else None,
                     tfma=tfma_thresholds.verdicts(config.evaluation, validation),
                     model_fingerprint=model_fingerprint(model_dir))
    write_blessing(blessing, out.blessing)
    with _timed(timings, "report"):
        write_report(metrics, scores, blessing, out_dir)
    with tf.io.gfile.GFile(out.metrics, "w") as f:
        f.write(json.dumps(finite_or_none(metrics), indent=2))
    with tf.io.gfile.GFile(out.roc, "w") as f:
        f.write(json.dumps(headline_roc(scores)))
    return EvaluationResult(out_dir, metrics, blessing, timings)


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN: undefined metrics are written as null."""
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
