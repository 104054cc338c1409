"""Train step: reads transformed TFRecords, trains the configured variant, exports for TF Serving.

Layout under ``out_dir`` (``components.layout.TrainLayout``):
- ``checkpoints/`` (or the ``checkpoint_dir`` given, e.g. on a work volume keyed by the
  pipeline run): the latest checkpoints (model, optimizers, step, epoch, step in epoch) and
  ``history.json``; a rerun with the same checkpoints resumes where the last one stopped,
  mid-epoch included;
- ``tensorboard/train``: scalars ``loss``, ``ctr_loss``, ``ctcvr_loss`` (esmm, esmm_ns,
  division) or ``cvr_loss`` (the others), ``examples_per_second``, by global step;
- ``tensorboard/eval``: after every epoch, over the whole eval split, ``ctr_auc``,
  ``ctcvr_auc``, ``cvr_auc_clicked`` (exact AUCs), ``ctr_logloss``, ``ctcvr_logloss``,
  ``cvr_logloss_clicked``, by global step;
- ``metrics.json``: ``{"variant", "history": [per epoch: epoch, step, train_loss,
  examples_per_second, eval metrics], "final": the last epoch's entry}``;
- ``model/<version>/``: the SavedModel (see ``esmm_model.export``), with ``assets.extra/``
  holding ``config.yaml`` and ``metrics.json``.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from tensorflow.core.framework import summary_pb2
from tqdm import tqdm

from components import layout, storage
from components.output_dir import require_empty
from esmm_model.config import LABEL_CLICK, LABEL_CONVERSION, Config
from esmm_model.errors import EsmmError, InputError
from esmm_model.export import OUTPUTS, save_serving_model
from esmm_model.metrics import esmm_metrics
from esmm_model.model import EsmmModel, model_inputs
from esmm_model.preprocessing import table_sizes
from esmm_model.training import build_optimizer_state, build_optimizers, make_train_step

log = logging.getLogger(__name__)

SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
    data_class=summary_pb2.DATA_CLASS_SCALAR)
SHUFFLE_BATCHES = 4
HISTORY_FILE = "history.json"  # beside the checkpoints: the epochs a resumed run has already done


class NonFiniteLossError(EsmmError):
    """Training produced a NaN or infinite loss."""


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced."""

    export_dir: str
    step: int
    metrics: dict[str, Any]


def make_dataset(config: Config, tft_output: tft.TFTransformOutput, pattern: str, *, batch_size: int,
                 shuffle_seed: Optional[int] = None) -> tf.data.Dataset:
    """Batches of (model inputs, labels) from transformed GZIP TFRecords: files read in parallel,
    batches parsed in parallel, deterministic order (shuffled by ``shuffle_seed`` when given)."""
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise InputError(f"no transformed examples at {pattern!r}; run `esmm transform` first")
    spec = tft_output.transformed_feature_spec()
    ds = tf.data.Dataset.from_tensor_slices(files).interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP", buffer_size=1 << 22),
        cycle_length=min(len(files), 4), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if shuffle_seed is None:
        ds = ds.batch(batch_size)
    else:
        # Shuffled a window of SHUFFLE_BATCHES batches at a time, vectorised: a per-example
        # shuffle buffer cost more CPU than parsing, and the input pipeline shares the cores
        # with the train step. Window i's order is a pure function of (shuffle_seed, i).
        ds = (ds.batch(SHUFFLE_BATCHES * batch_size).enumerate()
              .map(lambda i, records: tf.random.experimental.stateless_shuffle(
                  records, seed=tf.stack([tf.constant(shuffle_seed, tf.int64), i])),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
              .rebatch(batch_size))
    ds = ds.map(lambda serialized: model_inputs(config, tf.io.parse_example(serialized, spec)),
                                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def evaluate(model: EsmmModel, dataset: tf.data.Dataset) -> dict[str, Any]:
    """Exact metrics over the whole dataset (predictions gathered, then scored once)."""
    predict = tf.function(lambda inputs: model(inputs, training=False), reduce_retracing=True)
    columns: dict[str, list[np.ndarray]] = {name: [] for name in (*OUTPUTS, LABEL_CLICK, LABEL_CONVERSION)}
    for inputs, labels in dataset:
        outputs = predict(inputs)
        for name in OUTPUTS:
            columns[name].append(outputs[name].numpy())
        for name in (LABEL_CLICK, LABEL_CONVERSION):
            columns[name].append(labels[name].numpy())
    c = {name: np.concatenate(values) for name, values in columns.items()}
    return esmm_metrics(c[LABEL_CLICK], c[LABEL_CONVERSION], c["ctr"], c["cvr"], c["ctcvr"])


def _write_scalars(writer: tf.summary.SummaryWriter, values: dict[str, float], step: int) -> None:
    """TensorBoard scalars written with TF's core summary op (the tensorboard package is not needed)."""
    with writer.as_default(step=step):
        for name, value in values.items():
            tf.summary.write(name, tf.constant(value, tf.float32), metadata=SCALAR_METADATA)
    writer.flush()


def train(config: Config, transform_root: str, out_dir: str, *, checkpoint_dir: Optional[str] = None,
          version: Optional[int] = None, checkpoint_every: int = 500, log_every: int = 50) -> TrainResult:
    """Trains ``config.model.variant`` for ``config.training.epochs`` and exports it.

    transform_root: the transform step's output (``components.layout.TransformLayout``);
    out_dir: ``components.layout.TrainLayout``. Resumes from ``checkpoint_dir`` (default
    ``<out_dir>/checkpoints``) when it holds a checkpoint; the history of the epochs done so
    far is kept there too, so a resumed run reports every epoch. An ``out_dir`` holding
    anything but a train run's own files is refused (OutputExistsError).
    version: the export's version directory name (default: seconds since the epoch).
    Raises NonFiniteLossError naming the step when the loss becomes NaN or infinite.
    """
    require_empty(str(out_dir), "train", resumable=layout.TrainLayout.OWN_ENTRIES)
    paths, transformed = layout.TrainLayout(str(out_dir)), layout.TransformLayout(str(transform_root))
    checkpoint_dir = checkpoint_dir or paths.default_checkpoints
    training = config.training
    keras.utils.set_random_seed(training.seed)
    tft_output = tft.TFTransformOutput(transformed.graph)
    eval_data = make_dataset(config, tft_output, transformed.split_pattern(layout.EVAL), batch_size=training.batch_size)
    train_pattern = transformed.split_pattern(layout.TRAIN)

    def epoch_data(epoch: int) -> tf.data.Dataset:
        ds = make_dataset(config, tft_output, train_pattern, batch_size=training.batch_size,
                          shuffle_seed=training.seed + epoch)
        return ds.take(training.steps_per_epoch) if training.steps_per_epoch else ds

    first_eval = _first_batch(eval_data, transformed.split_pattern(layout.EVAL))
    _first_batch(make_dataset(config, tft_output, train_pattern, batch_size=1), train_pattern)
    model = EsmmModel(config, table_sizes(config, tft_output))
    model(first_eval[0])
    optimizers = build_optimizers(training)
    build_optimizer_state(model, optimizers)
    step = tf.Variable(0, dtype=tf.int64, trainable=False)
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    checkpoint = tf.train.Checkpoint(model=model, step=step, epoch=epoch, step_in_epoch=step_in_epoch,
                                     **optimizers.trackables())
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=2)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_consumed()
        log.info("train: resuming from %s at step %d (epoch %d)", manager.latest_checkpoint, int(step), int(epoch) + 1)
    history_path = layout.join(checkpoint_dir, HISTORY_FILE)
    history = (json.loads(storage.read_text(history_path))["history"]
               if manager.latest_checkpoint and tf.io.gfile.exists(history_path) else [])
    train_step = make_train_step(model, training, optimizers)
    train_writer = tf.summary.create_file_writer(paths.tensorboard("train"))
    eval_writer = tf.summary.create_file_writer(paths.tensorboard("eval"))

    while int(epoch) < training.epochs and not _should_stop(history, training.early_stopping_patience):
        e, skip = int(epoch), int(step_in_epoch)
        window: dict[str, list[float]] = {}
        epoch_losses, examples, started = [], 0, time.perf_counter()
        for inputs, labels in tqdm(epoch_data(e).skip(skip), desc=f"epoch {e + 1}/{training.epochs}",
                                   total=training.steps_per_epoch and training.steps_per_epoch - skip, leave=False):
            losses = {name: float(value) for name, value in train_step(inputs, labels, step.value()).items()}
            if not math.isfinite(losses["loss"]):
                raise NonFiniteLossError(
                    f"the {config.model.variant} loss became {losses['loss']} at step {int(step) + 1} (epoch {e + 1}); "
                    f"lower training.learning_rate (now {training.learning_rate}) or check the input features")
            step.assign_add(1)
            step_in_epoch.assign_add(1)
            examples += int(tf.shape(labels[LABEL_CLICK])[0])
            epoch_losses.append(losses["loss"])
            for name, value in losses.items():
                window.setdefault(name, []).append(value)
            if int(step) % log_every == 0:
                rate = examples / (time.perf_counter() - started)
                _write_scalars(train_writer, {**{k: float(np.mean(v)) for k, v in window.items()},
                                              "examples_per_second": rate}, int(step))
                window = {}
            if int(step) % checkpoint_every == 0:
                manager.save(checkpoint_number=int(step))
        seconds = time.perf_counter() - started
        eval_metrics = evaluate(model, eval_data)
        _write_scalars(eval_writer, {k: v for k, v in eval_metrics.items() if isinstance(v, float)}, int(step))
        history.append({"epoch": e + 1, "step": int(step),
                        "train_loss": float(np.mean(epoch_losses)) if epoch_losses else None,
                        "examples_per_second": examples / seconds, **eval_metrics})
        log.info("train: epoch %d: %s", e + 1, json.dumps(history[-1]))
        epoch.assign_add(1)
        step_in_epoch.assign(0)
        manager.save(checkpoint_number=int(step))
        storage.write_text(history_path, json.dumps({"history": history}, indent=2))

    metrics = {"variant": config.model.variant, "history": history, "final": history[-1] if history else None}
    storage.write_text(paths.metrics, json.dumps(metrics, indent=2))
    export_dir = _export(config, model, transformed.graph, paths, version if version is not None else int(time.time()), metrics)
    log.info("train: exported %s", export_dir)
    return TrainResult(export_dir, int(step), metrics)


def _export(config: Config, model: EsmmModel, transform_dir: str, paths: layout.TrainLayout, version: int,
            metrics: dict[str, Any]) -> str:
    """Exports ``<out_dir>/model/<version>/``: written under a non-integer name, then published whole,
    so a server watching ``<out_dir>/model`` never loads a half-written model."""
    final = paths.export_dir(version)
    if tf.io.gfile.exists(final):
        raise InputError(f"model version {final} already exists; pass another version")
    staging = layout.join(paths.export_base, f".staging-{version}")
    storage.remove_if_present(staging)
    save_serving_model(config, model, transform_dir, staging, metrics)
    storage.publish(staging, final)
    return final


def _first_batch(dataset: tf.data.Dataset, pattern: str) -> tuple:
    """The first batch, or InputError naming the split's files when they hold no example."""
    batch = next(iter(dataset), None)
    if batch is None:
        raise InputError(f"no examples in {pattern!r}: the split is empty; re-run ingestion on a log with rows "
                         f"in both time splits")
    return batch


def _should_stop(history: list[dict[str, Any]], patience: Optional[int]) -> bool:
    """Early stopping on eval CTCVR AUC: no improvement in the last ``patience`` epochs."""
    if not patience or len(history) <= patience:
        return False
    best_before = max(h["ctcvr_auc"] for h in history[:-patience])
    return all(not h["ctcvr_auc"] > best_before for h in history[-patience:])
