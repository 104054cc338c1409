"""Train step: reads transformed TFRecords, trains the configured variant with ``model.fit``, exports for TF Serving.

It runs unchanged in one process or as one of N workers of a ``TF_CONFIG`` cluster
(``components.train.distribution``); only the chief writes the outputs below.

Layout under ``out_dir`` (``esmm_model.contracts.layout.TrainLayout``):
- ``checkpoints/`` (or the ``checkpoint_dir`` given, e.g. on a work volume keyed by the
  pipeline run): Keras' ``BackupAndRestore`` backup in ``chief/`` (model, optimizers, epoch,
  step in epoch) and ``history.json``; a rerun with the same checkpoints resumes where the
  last one stopped, mid-epoch included (under ParameterServerStrategy exactly with one worker,
  approximately with several: ``_worker_skip``);
- ``tensorboard/train``: scalars ``loss``, ``ctr_loss``, ``ctcvr_loss`` (esmm, esmm_ns,
  division, escm2_*) or ``cvr_loss`` (the others), ``counterfactual_loss`` (escm2_*) and
  ``imputation_loss`` (escm2_dr), ``examples_per_second``, by global step;
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
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from components.artifacts import storage
from components.artifacts.output_dir import require_empty
from components.train import callbacks, distribution
from components.train.callbacks import NonFiniteLossError  # noqa: F401  (what train() raises on a NaN loss)
from esmm_model.config import LABEL_CLICK, LABEL_CONVERSION, Config
from esmm_model.contracts import layout
from esmm_model.contracts.model_record import write_model_record
from esmm_model.errors import InputError
from esmm_model.export import OUTPUTS, save_serving_model
from esmm_model.metrics import esmm_metrics
from esmm_model.model import EsmmModel, model_inputs
from esmm_model.preprocessing import table_sizes
from esmm_model.training import compile_for_training

log = logging.getLogger(__name__)

SHUFFLE_BATCHES = 4
HISTORY_FILE = "history.json"  # beside the checkpoints: the epochs a resumed run has already done


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced."""

    export_dir: Optional[str]  # None on a worker that is not the chief
    step: int
    metrics: dict[str, Any]


def make_dataset(config: Config, tft_output: tft.TFTransformOutput, pattern: str, *, batch_size: int,
                 shuffle_seed: Optional[int] = None, shards: tuple[int, int] = (1, 0)) -> tf.data.Dataset:
    """Batches of (model inputs, labels) from transformed GZIP TFRecords: files read in parallel,
    batches parsed in parallel, deterministic order (shuffled by ``shuffle_seed`` when given).

    shards: (count, index): of every batch of n records, only rows [index·n/count, (index+1)·n/count)
    are parsed and kept (one worker's part of a global batch); batches of fewer than count
    records are dropped, so every worker sees the same number of non-empty batches."""
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
                  records, seed=tf.stack([tf.cast(shuffle_seed, tf.int64), i])),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
              .rebatch(batch_size))
    count, index = shards
    if count > 1:
        def part(records: tf.Tensor) -> tf.Tensor:
            n = tf.shape(records, out_type=tf.int64)[0]
            return records[index * n // count:(index + 1) * n // count]

        ds = ds.filter(lambda records: tf.shape(records)[0] >= count).map(part)
    ds = ds.map(lambda serialized: model_inputs(config, tf.io.parse_example(serialized, spec)),
                                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def exact_eval_metrics(model: EsmmModel, dataset: tf.data.Dataset) -> dict[str, Any]:
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


def train(config: Config, transform_root: str, out_dir: str, *, checkpoint_dir: Optional[str] = None,
          version: Optional[int] = None, checkpoint_every: int = 500, log_every: int = 50) -> TrainResult:
    """Trains ``config.model.variant`` for ``config.training.epochs`` with ``model.fit`` and exports it.

    transform_root: the transform step's output (``esmm_model.contracts.layout.TransformLayout``);
    out_dir: ``esmm_model.contracts.layout.TrainLayout``. Resumes from ``checkpoint_dir`` (default
    ``<out_dir>/checkpoints``) when it holds a backup (written every ``checkpoint_every`` steps
    and at every epoch's end, under every strategy), mid-epoch included; the history of the
    epochs done so far is kept there too, so a resumed run reports every epoch. An ``out_dir``
    holding anything but a train run's own files is refused (OutputExistsError).
    version: the export's version directory name (default: seconds since the epoch).
    Raises NonFiniteLossError naming the step when the loss becomes NaN or infinite.
    """
    if checkpoint_every < 1:
        raise InputError(f"checkpoint_every: a backup every {checkpoint_every} steps; give a positive number")
    strategy = distribution.strategy_for(config.training)
    chief = distribution.is_chief(strategy)
    parameter_servers = isinstance(strategy, tf.distribute.ParameterServerStrategy)
    if chief:
        require_empty(str(out_dir), "train", resumable=layout.TrainLayout.OWN_ENTRIES)
    # Other workers write their TensorBoard files to a throwaway directory and export nothing.
    paths = layout.TrainLayout(str(out_dir) if chief else tempfile.mkdtemp(prefix="esmm-worker-"))
    transformed = layout.TransformLayout(str(transform_root))
    checkpoint_dir = checkpoint_dir or paths.default_checkpoints
    training = config.training
    keras.utils.set_random_seed(training.seed)
    tft_output = tft.TFTransformOutput(transformed.graph)
    eval_data = make_dataset(config, tft_output, transformed.split_pattern(layout.EVAL), batch_size=training.batch_size)
    train_pattern = transformed.split_pattern(layout.TRAIN)
    first_eval = _first_batch(eval_data, transformed.split_pattern(layout.EVAL))
    _first_batch(make_dataset(config, tft_output, train_pattern, batch_size=1), train_pattern)
    replicas = strategy.num_replicas_in_sync
    steps_per_epoch = _steps_per_epoch(train_pattern, training.batch_size, training.steps_per_epoch, replicas)

    sizes = table_sizes(config, tft_output)
    print("train: embedding tables (rows): " + ", ".join(f"{name} {rows:,}" for name, rows in sizes.items())
          + f"; {sum(sizes.values()):,} in all", flush=True)
    with strategy.scope():
        model = EsmmModel(config, sizes)
        model(first_eval[0])
        compile_for_training(model, training)
    # Under parameter servers a step is one worker's slice of a global batch: an epoch is `workers` x the steps.
    cluster = distribution.read_cluster() if parameter_servers else None
    workers = len(cluster.spec.get("worker", [])) if parameter_servers else 1
    fit_steps = steps_per_epoch * workers
    first_epoch, first_step = callbacks.backed_up_position(checkpoint_dir, fit_steps)
    history_path = layout.join(checkpoint_dir, HISTORY_FILE)
    resumed = (first_epoch or first_step) and tf.io.gfile.exists(history_path)
    history = [h for h in (json.loads(storage.read_text(history_path))["history"] if resumed else [])
               if h["epoch"] <= first_epoch]  # an epoch saved after the last backup is redone
    if first_epoch or first_step:
        print(f"train: resuming from {checkpoint_dir} at epoch {first_epoch + 1}, step {first_step} of {fit_steps}",
              flush=True)
    if first_epoch < training.epochs and not callbacks.should_stop(history, training.early_stopping_patience):
        def stream(shards: tuple[int, int]) -> tf.data.Dataset:
            """One stream over the remaining epochs, each reshuffled by its own seed, entered where
            the backup left off: fit runs steps_per_epoch batches per epoch from it (under parameter
            servers each worker its share of fit's steps_per_epoch; see _worker_skip)."""
            skip = _worker_skip(first_step, workers) if parameter_servers else first_step
            return (tf.data.Dataset.range(first_epoch, training.epochs).flat_map(
                lambda epoch: make_dataset(config, tft_output, train_pattern, batch_size=training.batch_size,
                                           shuffle_seed=training.seed + epoch, shards=shards).take(steps_per_epoch))
                .skip(skip).prefetch(tf.data.AUTOTUNE))

        if parameter_servers:  # each worker its own slices of the batches; a step is one worker's slice
            tables = model.embedding_tables()
            print(f"train: parameter servers: {cluster.parameter_servers}, "
                  f"{sum(hasattr(t, 'variables') for t in tables)} of {len(tables)} embedding tables partitioned, "
                  f"{workers} worker(s)", flush=True)
            data = keras.utils.experimental.DatasetCreator(
                lambda context: stream((context.num_input_pipelines, context.input_pipeline_id)).repeat())
        elif replicas == 1:
            data = stream((1, 0))
        else:  # each worker reads every global batch's records and parses its own slice of them
            data = strategy.distribute_datasets_from_function(
                lambda context: stream((context.num_input_pipelines, context.input_pipeline_id)),
                tf.distribute.InputOptions(experimental_fetch_to_device=False))
        interactive = sys.stdout.isatty()
        model.fit(data, epochs=training.epochs, initial_epoch=first_epoch, steps_per_epoch=fit_steps,
                  verbose=1 if interactive else 2, callbacks=[
                      callbacks.NonFiniteLoss(config.model.variant, training.learning_rate,
                                              every_step=not parameter_servers),
                      callbacks.TrainScalars(paths.tensorboard("train"), log_every, print_progress=not interactive),
                      callbacks.EpochEvaluation(lambda: exact_eval_metrics(model, eval_data),
                                                paths.tensorboard("eval"), history, history_path, write=chief),
                      *([callbacks.ResumedEarlyStopping(training.early_stopping_patience, history)]
                        if training.early_stopping_patience else []),
                      callbacks.EpochBackupAndRestore(checkpoint_dir, save_freq=checkpoint_every,
                                                      delete_checkpoint=False)])
    else:
        callbacks.restore_backup(model, checkpoint_dir)

    metrics = {"variant": config.model.variant, "history": history, "final": history[-1] if history else None}
    if not chief:
        return TrainResult(None, callbacks.global_step(model), metrics)
    storage.write_text(paths.metrics, json.dumps(metrics, indent=2))
    trained = _copy_weights(model, _local_model(config, sizes, first_eval[0]))
    export_dir = _export(config, trained, transformed.graph, paths,
                         version if version is not None else int(time.time()), metrics)
    log.info("train: exported %s", export_dir)
    return TrainResult(export_dir, callbacks.global_step(model), metrics)


def _worker_skip(first_step: int, workers: int) -> int:
    """Batches each worker's stream skips when a parameter-server run resumes ``first_step`` steps
    into an epoch: its share of them. Exact with one worker; with several, the coordinator gave the
    steps to whichever worker was free, so a worker may have done a batch or two more or fewer than
    its share (asynchronous training has no fixed split of an epoch among workers)."""
    return first_step // workers


def _steps_per_epoch(pattern: str, batch_size: int, configured: Optional[int], shards: int) -> int:
    """Batches in one pass over the split's examples (counted), at most ``configured``; a last
    batch too small to give each of ``shards`` workers a row is dropped (``make_dataset``)."""
    files = sorted(tf.io.gfile.glob(pattern))
    examples = int(tf.data.TFRecordDataset(files, compression_type="GZIP", num_parallel_reads=4)
                   .reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
    batches = -(-examples // batch_size) - (0 < examples % batch_size < shards)
    return min(batches, configured) if configured else batches


def _export(config: Config, model: EsmmModel, transform_dir: str, paths: layout.TrainLayout, version: int,
            metrics: dict[str, Any]) -> str:
    """Exports ``<out_dir>/model/<version>/``: written under a non-integer name, then published whole,
    so a server watching ``<out_dir>/model`` never loads a half-written model."""
    final = paths.export_dir(version)
    if tf.io.gfile.exists(final):
        raise InputError(f"model version {final} already exists; pass another version")
    staging = layout.join(paths.export_base, f".staging-{version}")
    storage.remove_if_present(staging)
    save_serving_model(config, model, transform_dir, staging)
    write_model_record(staging, config, metrics)
    storage.publish(staging, final)
    return final


def _local_model(config: Config, sizes: dict[str, int], inputs: dict[str, tf.Tensor]) -> EsmmModel:
    """A built model without optimizers, created outside any strategy's scope: what is exported."""
    local = EsmmModel(config, sizes)
    local(inputs)
    return local


def _copy_weights(model: EsmmModel, local: EsmmModel) -> EsmmModel:
    """``local`` with ``model``'s trained weights (a partitioned table's shards joined), nothing of
    training's state: the export holds what serving needs."""
    tracked = {id(v) for metric in model.metrics for v in metric.variables}
    values, joined = [], set()
    for variable in model.weights:
        if id(variable) in tracked:
            continue
        # A table partitioned over parameter servers lists its shards one by one: join them.
        container = getattr(variable, "_sharded_container", None)
        if container is None:
            values.append(variable.numpy())
        elif id(container()) not in joined:
            joined.add(id(container()))
            values.append(np.concatenate([shard.numpy() for shard in container().variables]))
    local.set_weights(values)
    return local


def _first_batch(dataset: tf.data.Dataset, pattern: str) -> tuple:
    """The first batch, or InputError naming the split's files when they hold no example."""
    batch = next(iter(dataset), None)
    if batch is None:
        raise InputError(f"no examples in {pattern!r}: the split is empty; re-run ingestion on a log with rows "
                         f"in both time splits")
    return batch
