"""Train step: reads transformed TFRecords, trains the configured variant with ``model.fit``, exports for TF Serving.

``train`` reads as the TFX trainer's ``run_fn`` does: choose the strategy and where to resume,
build the data, build the model, fit with callbacks, export. It runs unchanged in one process
or as one of N workers of a ``TF_CONFIG`` cluster (``components.train.distribution``); only the
chief writes the outputs below.

Layout under ``out_dir`` (``esmm_model.contracts.layout.TrainLayout``):
- ``checkpoints/`` (or the ``checkpoint_dir`` given, e.g. on a work volume keyed by the
  pipeline run): Keras' ``BackupAndRestore`` backup in ``chief/`` (model, optimizers, epoch,
  step in epoch) and ``history.json``; a rerun with the same checkpoints resumes where the
  last one stopped, mid-epoch included (under ParameterServerStrategy exactly with one worker,
  approximately with several: ``_worker_skip``);
- ``tensorboard/train``: scalars ``loss``, ``ctr_loss``, ``ctcvr_loss`` (esmm, esmm_ns,
  division, escm2_*) or ``cvr_loss`` (the others), ``counterfactual_loss`` (escm2_*) and
  ``imputation_loss`` (escm2_dr), ``examples_per_second``, by global step;
- ``tensorboard/eval``: after the epochs ``training.epoch_eval`` names (default: every epoch,
  on a sample of the eval split) and after the last one (the whole split), ``ctr_auc``,
  ``ctcvr_auc``, ``cvr_auc_clicked`` (exact AUCs), ``ctr_logloss``, ``ctcvr_logloss``,
  ``cvr_logloss_clicked``, by global step;
- ``metrics.json``: ``{"variant", "history": [per epoch: epoch, step, train_loss,
  examples_per_second (the epoch's), steady_examples_per_second (after its first
  WARMUP_STEPS steps), epoch_seconds, eval ("whole", "sample" or "none"), eval_seconds, the
  eval metrics], "final": the last epoch's entry with the eval metrics of the whole split}``;
- ``model/<version>/``: the SavedModel (see ``esmm_model.export``), with ``assets.extra/``
  holding ``config.yaml`` and ``metrics.json``.
"""
from __future__ import annotations

import functools
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from components.artifacts import storage
from components.artifacts.output_dir import require_empty
from components.train import callbacks, distribution
from components.train.callbacks import NonFiniteLossError  # noqa: F401  (what train() raises on a NaN loss)
from esmm_model.config import LABEL_CLICK, LABEL_CONVERSION, Config, TrainingConfig
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


@dataclass(frozen=True)
class Placement:
    """The strategy this process trains under, and what it means for the input and the outputs."""

    strategy: tf.distribute.Strategy
    chief: bool  # writes the outputs
    cluster: Optional[distribution.Cluster]  # read under parameter servers only

    @property
    def parameter_servers(self) -> bool:
        return isinstance(self.strategy, tf.distribute.ParameterServerStrategy)

    @property
    def workers(self) -> int:
        """Workers that share fit's steps under parameter servers (a step is one worker's slice of a
        global batch, so an epoch is ``workers`` × the batches); 1 under every other strategy."""
        return len(self.cluster.spec.get("worker", [])) if self.parameter_servers else 1


@dataclass(frozen=True)
class ResumePoint:
    """Where fit starts: the epoch and the step within it that the backup reached (0, 0 without one),
    and the history of the epochs done before it."""

    epoch: int
    step: int
    history: list[dict[str, Any]]
    history_path: str

    @property
    def resumed(self) -> bool:
        return bool(self.epoch or self.step)


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
    placement = choose_strategy(config.training)  # before any other TensorFlow op
    run = functools.partial(_train_placed, config, transform_root, placement=placement, checkpoint_dir=checkpoint_dir,
                            version=version, checkpoint_every=checkpoint_every, log_every=log_every)
    if placement.chief:
        require_empty(str(out_dir), "train", resumable=layout.TrainLayout.OWN_ENTRIES)
        return run(layout.TrainLayout(str(out_dir)))
    # Other workers write their TensorBoard files (and, by default, backups) to a throwaway directory and export
    # nothing; the directory goes when they are done.
    with tempfile.TemporaryDirectory(prefix="esmm-worker-") as throwaway:
        return run(layout.TrainLayout(throwaway))


def _train_placed(config: Config, transform_root: str, paths: layout.TrainLayout, *, placement: Placement,
                  checkpoint_dir: Optional[str], version: Optional[int], checkpoint_every: int,
                  log_every: int) -> TrainResult:
    """``train`` once the strategy is chosen, writing to ``paths``."""
    training = config.training
    transformed = layout.TransformLayout(str(transform_root))
    checkpoint_dir = checkpoint_dir or paths.default_checkpoints
    keras.utils.set_random_seed(training.seed)

    # Data
    tft_output = tft.TFTransformOutput(transformed.graph)
    train_pattern, eval_pattern = transformed.split_pattern(layout.TRAIN), transformed.split_pattern(layout.EVAL)
    eval_data = make_dataset(config, tft_output, eval_pattern, batch_size=training.batch_size)
    example_inputs = _first_batch(eval_data, eval_pattern)[0]
    _first_batch(make_dataset(config, tft_output, train_pattern, batch_size=1), train_pattern)
    examples = _count_examples(train_pattern)
    steps_per_epoch = _steps_per_epoch(examples, training.batch_size, training.steps_per_epoch,
                                       placement.strategy.num_replicas_in_sync)
    fit_steps = steps_per_epoch * placement.workers
    start = resume_point(checkpoint_dir, fit_steps)

    # Model
    sizes = table_sizes(config, tft_output)
    print("train: embedding tables (rows): " + ", ".join(f"{name} {rows:,}" for name, rows in sizes.items())
          + f"; {sum(sizes.values()):,} in all", flush=True)
    model = build_model(config, sizes, example_inputs, placement.strategy)
    predict = predictor(model, eval_data.element_spec[0])
    evaluate_whole = functools.partial(exact_eval_metrics, predict, eval_data)

    # Fit
    if start.resumed:
        print(f"train: resuming from {checkpoint_dir} at epoch {start.epoch + 1}, step {start.step} of {fit_steps}",
              flush=True)
    if start.epoch < training.epochs and not callbacks.should_stop(start.history, training.early_stopping_patience):
        if placement.parameter_servers:
            tables = model.embedding_tables()
            print(f"train: parameter servers: {placement.cluster.parameter_servers}, "
                  f"{sum(hasattr(t, 'variables') for t in tables)} of {len(tables)} embedding tables partitioned, "
                  f"{placement.workers} worker(s)", flush=True)
        data = training_dataset(config, tft_output, train_pattern, placement, start, steps_per_epoch,
                                in_memory=hold_in_memory(training, placement, examples, steps_per_epoch))
        sample = make_dataset(config, tft_output, eval_pattern, batch_size=training.batch_size,
                              limit=training.epoch_eval.rows).cache()  # parsed once, scored after each epoch
        evaluate = epoch_evaluator(training, evaluate_whole, functools.partial(exact_eval_metrics, predict, sample))
        fit(model, data, epochs=training.epochs, initial_epoch=start.epoch, steps_per_epoch=fit_steps,
            callbacks=fit_callbacks(config, paths, placement, start, checkpoint_dir, evaluate,
                                    checkpoint_every=checkpoint_every, log_every=log_every))
    else:
        callbacks.restore_backup(model, checkpoint_dir)

    # Export
    history = start.history
    metrics = {"variant": config.model.variant, "history": history,
               "final": final_entry(history, evaluate_whole, callbacks.global_step(model))}
    if not placement.chief:
        return TrainResult(None, callbacks.global_step(model), metrics)
    storage.write_text(paths.metrics, json.dumps(metrics, indent=2))
    export_dir = export_model(config, model, sizes, example_inputs, transformed.graph, paths,
                              version if version is not None else int(time.time()), metrics)
    log.info("train: exported %s", export_dir)
    return TrainResult(export_dir, callbacks.global_step(model), metrics)


def choose_strategy(training: TrainingConfig) -> Placement:
    """The strategy from ``TF_CONFIG`` and ``training.distribution`` (``components.train.distribution``),
    whether this process is the chief, and the cluster under parameter servers."""
    strategy = distribution.strategy_for(training)
    cluster = (distribution.read_cluster() if isinstance(strategy, tf.distribute.ParameterServerStrategy)
               else None)
    return Placement(strategy, distribution.is_chief(strategy), cluster)


def resume_point(checkpoint_dir: str, fit_steps: int) -> ResumePoint:
    """Where the backup in ``checkpoint_dir`` left off (``fit_steps`` steps per epoch) and the history
    of the epochs finished by then; an epoch whose history was saved after the last backup is redone."""
    epoch, step = callbacks.backed_up_position(checkpoint_dir, fit_steps)
    history_path = layout.join(checkpoint_dir, HISTORY_FILE)
    history = []
    if (epoch or step) and tf.io.gfile.exists(history_path):
        history = [h for h in json.loads(storage.read_text(history_path))["history"] if h["epoch"] <= epoch]
    return ResumePoint(epoch, step, history, history_path)


def build_model(config: Config, sizes: dict[str, int], example_inputs: dict[str, tf.Tensor],
                strategy: Optional[tf.distribute.Strategy] = None) -> EsmmModel:
    """The variant's model under ``strategy``'s scope, built on ``example_inputs`` and compiled with
    the config's optimizers (their state created, so a backup restores eagerly)."""
    with (strategy or tf.distribute.get_strategy()).scope():
        model = EsmmModel(config, sizes)
        model(example_inputs)
        compile_for_training(model, config.training)
    return model


def hold_in_memory(training: TrainingConfig, placement: Placement, examples: int, steps_per_epoch: int) -> bool:
    """Whether the parsed train split is held in memory after the first epoch (``training_dataset``):
    in one process, when every epoch reads the whole split and it has at most
    ``training.input_cache_rows`` examples."""
    whole_split = steps_per_epoch == -(-examples // training.batch_size)
    return (placement.strategy.num_replicas_in_sync == 1 and not placement.parameter_servers and whole_split
            and examples <= training.input_cache_rows)


def training_dataset(config: Config, tft_output: tft.TFTransformOutput, pattern: str, placement: Placement,
                     start: ResumePoint, steps_per_epoch: int, *, in_memory: bool = False) -> Any:
    """fit's input: one stream over the epochs left, each reshuffled by its own seed, entered where the
    backup left off; fit runs ``steps_per_epoch`` batches per epoch from it. Under several replicas
    each worker reads every global batch's records and parses its own slice of them; under parameter
    servers each worker its own slices, a step being one worker's slice (see ``_worker_skip``).
    ``in_memory`` (one process only): the split is read and parsed once, by the first epoch, and
    later epochs draw the same batches from memory (``parsed_windows``, ``batches_from_memory``)."""
    training = config.training
    skip = _worker_skip(start.step, placement.workers) if placement.parameter_servers else start.step
    if in_memory:
        windows = parsed_windows(tft_output, pattern, training.batch_size)
        return (tf.data.Dataset.range(start.epoch, training.epochs).flat_map(
            lambda epoch: batches_from_memory(config, windows, training.batch_size, training.seed + epoch))
                .skip(skip).prefetch(tf.data.AUTOTUNE))

    def stream(shards: tuple[int, int]) -> tf.data.Dataset:
        return (tf.data.Dataset.range(start.epoch, training.epochs).flat_map(
            lambda epoch: make_dataset(config, tft_output, pattern, batch_size=training.batch_size,
                                       shuffle_seed=training.seed + epoch, shards=shards).take(steps_per_epoch))
                .skip(skip).prefetch(tf.data.AUTOTUNE))

    if placement.parameter_servers:
        return keras.utils.experimental.DatasetCreator(
            lambda context: stream((context.num_input_pipelines, context.input_pipeline_id)).repeat())
    if placement.strategy.num_replicas_in_sync == 1:
        return stream((1, 0))
    return placement.strategy.distribute_datasets_from_function(
        lambda context: stream((context.num_input_pipelines, context.input_pipeline_id)),
        tf.distribute.InputOptions(experimental_fetch_to_device=False))


def make_dataset(config: Config, tft_output: tft.TFTransformOutput, pattern: str, *, batch_size: int,
                 shuffle_seed: Optional[int] = None, shards: tuple[int, int] = (1, 0),
                 limit: Optional[int] = None) -> tf.data.Dataset:
    """Batches of (model inputs, labels) from transformed GZIP TFRecords: files read in parallel,
    each batch parsed by one vectorised ``parse_example``, batches parsed in parallel and
    prefetched, deterministic order (shuffled by ``shuffle_seed`` when given).

    shards: (count, index): of every batch of n records, only rows [index·n/count, (index+1)·n/count)
    are parsed and kept (one worker's part of a global batch); batches of fewer than count
    records are dropped, so every worker sees the same number of non-empty batches.
    limit: only the first ``limit`` records in read order."""
    spec = tft_output.transformed_feature_spec()
    ds = _records(pattern)
    if limit is not None:
        ds = ds.take(limit)
    ds = ds.batch(batch_size) if shuffle_seed is None else shuffle_windows(ds, batch_size, shuffle_seed)
    count, index = shards
    if count > 1:
        def part(records: tf.Tensor) -> tf.Tensor:
            n = tf.shape(records, out_type=tf.int64)[0]
            return records[index * n // count:(index + 1) * n // count]

        ds = ds.filter(lambda records: tf.shape(records)[0] >= count).map(part)
    ds = ds.map(lambda serialized: model_inputs(config, tf.io.parse_example(serialized, spec)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def shuffle_windows(elements: tf.data.Dataset, batch_size: int, seed: int) -> tf.data.Dataset:
    """Batches of ``batch_size`` elements, shuffled a window of SHUFFLE_BATCHES batches at a time,
    vectorised: a per-example shuffle buffer cost more CPU than parsing, and the input pipeline
    shares the cores with the train step. Window i's order is a pure function of (seed, i)."""
    return (elements.batch(SHUFFLE_BATCHES * batch_size).enumerate()
            .map(lambda i, window: tf.random.experimental.stateless_shuffle(
                window, seed=tf.stack([tf.cast(seed, tf.int64), i])),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .rebatch(batch_size))


def parsed_windows(tft_output: tft.TFTransformOutput, pattern: str, batch_size: int) -> tf.data.Dataset:
    """The split's records in windows of SHUFFLE_BATCHES batches, as ``shuffle_windows`` cuts them,
    each parsed by one ``parse_example`` (lists as ragged rows) and held in memory once read whole."""
    spec = tft_output.transformed_feature_spec()

    def parse(records: tf.Tensor) -> dict[str, Any]:
        return {name: tf.RaggedTensor.from_sparse(value) if isinstance(value, tf.SparseTensor) else value
                for name, value in tf.io.parse_example(records, spec).items()}

    return (_records(pattern).batch(SHUFFLE_BATCHES * batch_size)
            .map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).cache())


def batches_from_memory(config: Config, windows: tf.data.Dataset, batch_size: int, seed: int) -> tf.data.Dataset:
    """One epoch of (model inputs, labels) from ``parsed_windows``: the batches ``make_dataset`` gives
    with ``shuffle_seed=seed``, in the same order (window i's rows permuted by the same stateless
    shuffle of (seed, i), then cut into batches), gathered from memory instead of parsed again."""
    def window_batches(i: tf.Tensor, window: dict[str, Any]) -> tf.data.Dataset:
        rows = tf.shape(window[LABEL_CLICK], out_type=tf.int64)[0]
        order = tf.random.experimental.stateless_shuffle(tf.range(rows), seed=tf.stack([tf.cast(seed, tf.int64), i]))
        return tf.data.Dataset.range(0, rows, batch_size).map(
            lambda first: {name: tf.gather(value, order[first:first + batch_size]) for name, value in window.items()})

    def inputs(parsed: dict[str, Any]) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
        return model_inputs(config, {name: value.to_sparse() if isinstance(value, tf.RaggedTensor) else value
                                     for name, value in parsed.items()})

    return (windows.enumerate().flat_map(window_batches)
            .map(inputs, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))


def fit(model: EsmmModel, data: Any, *, epochs: int, steps_per_epoch: int, callbacks: list[keras.callbacks.Callback],
        initial_epoch: int = 0, verbose: Optional[int] = None) -> None:
    """``model.fit``: Keras' progress bar on a terminal (``verbose`` unset); elsewhere nothing of Keras' own, since
    ``TrainScalars`` and ``EpochEvaluation`` already print the plain step and epoch lines."""
    model.fit(data, epochs=epochs, initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
              verbose=(1 if sys.stdout.isatty() else 0) if verbose is None else verbose, callbacks=callbacks)


def fit_callbacks(config: Config, paths: layout.TrainLayout, placement: Placement,
                  start: ResumePoint, checkpoint_dir: str, evaluate: Callable[[int], Optional[dict[str, Any]]], *,
                  checkpoint_every: int, log_every: int) -> list[keras.callbacks.Callback]:
    """NaN stop (every step, or every epoch under parameter servers, where a check would wait for each
    step), TensorBoard scalars (plain progress lines when stdout is not a terminal), the epochs'
    evaluations into ``start.history``, early stopping when configured, and backups."""
    training = config.training
    return [
        callbacks.NonFiniteLoss(config.model.variant, training.learning_rate,
                                every_step=not placement.parameter_servers),
        callbacks.TrainScalars(paths.tensorboard("train"), log_every, print_progress=not sys.stdout.isatty()),
        callbacks.EpochEvaluation(evaluate, paths.tensorboard("eval"), start.history, start.history_path,
                                  write=placement.chief),
        *([callbacks.ResumedEarlyStopping(training.early_stopping_patience, start.history)]
          if training.early_stopping_patience else []),
        callbacks.EpochBackupAndRestore(checkpoint_dir, save_freq=checkpoint_every, delete_checkpoint=False)]


def epoch_evaluator(training: TrainingConfig, whole: Callable[[], dict[str, Any]],
                    sample: Callable[[], dict[str, Any]]) -> Callable[[int], Optional[dict[str, Any]]]:
    """What is scored after epoch ``epoch`` (from 0), by ``training.epoch_eval``: the whole eval split
    after the last epoch; after every ``every_epochs``-th the sample (mode sample) or the whole split
    (mode every); nothing otherwise (None). Each result says which it scored under ``eval``."""
    plan = training.epoch_eval

    def evaluate(epoch: int) -> Optional[dict[str, Any]]:
        if epoch + 1 == training.epochs or (plan.mode == "every" and (epoch + 1) % plan.every_epochs == 0):
            return {"eval": "whole", **whole()}
        if plan.mode == "sample" and (epoch + 1) % plan.every_epochs == 0:
            return {"eval": "sample", **sample()}
        return None

    return evaluate


def final_entry(history: list[dict[str, Any]], whole: Callable[[], dict[str, Any]], step: int) -> dict[str, Any]:
    """The last epoch's entry with the eval metrics of the whole split: as it is when its evaluation
    scored the whole split, otherwise (early stopping after a sampled epoch, a rerun without
    history) with the whole split scored now."""
    last = history[-1] if history else {"step": step}
    if last.get("eval") == "whole":
        return last
    started = time.perf_counter()
    metrics = whole()
    return {**last, "eval": "whole", "eval_seconds": time.perf_counter() - started, **metrics}


def predictor(model: EsmmModel, input_spec: dict[str, tf.TensorSpec]) -> Callable[[dict], dict[str, tf.Tensor]]:
    """``model``'s inference as one ``tf.function`` traced once for batches of ``input_spec``
    (every epoch's evaluation reuses it: tracing the model took longer than scoring a sample)."""
    return tf.function(lambda inputs: model(inputs, training=False), input_signature=[input_spec])


def exact_eval_metrics(predict: Callable[[dict], dict[str, tf.Tensor]], dataset: tf.data.Dataset) -> dict[str, Any]:
    """Exact metrics of ``predict`` (``predictor``) over the whole dataset (predictions gathered, then
    scored once)."""
    columns: dict[str, list[np.ndarray]] = {name: [] for name in (*OUTPUTS, LABEL_CLICK, LABEL_CONVERSION)}
    for inputs, labels in dataset:
        outputs = predict(inputs)
        for name in OUTPUTS:
            columns[name].append(outputs[name].numpy())
        for name in (LABEL_CLICK, LABEL_CONVERSION):
            columns[name].append(labels[name].numpy())
    c = {name: np.concatenate(values) for name, values in columns.items()}
    return esmm_metrics(c[LABEL_CLICK], c[LABEL_CONVERSION], c["ctr"], c["cvr"], c["ctcvr"])


def export_model(config: Config, model: EsmmModel, sizes: dict[str, int], example_inputs: dict[str, tf.Tensor],
                 transform_dir: str, paths: layout.TrainLayout, version: int, metrics: dict[str, Any]) -> str:
    """Exports ``<out_dir>/model/<version>/``: the trained weights (a partitioned table's shards
    joined) in a model built outside any strategy, without optimizers; written under a non-integer
    name, then published whole, so a server watching ``<out_dir>/model`` never loads a half-written model."""
    final = paths.export_dir(version)
    if tf.io.gfile.exists(final):
        raise InputError(f"model version {final} already exists; pass another version")
    local = EsmmModel(config, sizes)
    local(example_inputs)
    local.set_weights(_trained_weights(model))
    staging = layout.join(paths.export_base, f".staging-{version}")
    storage.remove_if_present(staging)
    save_serving_model(config, local, transform_dir, staging)
    write_model_record(staging, config, metrics)
    storage.publish(staging, final)
    return final


def _trained_weights(model: EsmmModel) -> list[np.ndarray]:
    """``model``'s weights in ``get_weights`` order with a partitioned table's shards joined, and
    nothing of training's state (the metrics' variables)."""
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
    return values


def _worker_skip(first_step: int, workers: int) -> int:
    """Batches each worker's stream skips when a parameter-server run resumes ``first_step`` steps
    into an epoch: its share of them. Exact with one worker; with several, the coordinator gave the
    steps to whichever worker was free, so a worker may have done a batch or two more or fewer than
    its share (asynchronous training has no fixed split of an epoch among workers)."""
    return first_step // workers


def _records(pattern: str) -> tf.data.Dataset:
    """The serialized examples of a split's GZIP TFRecords, files read in parallel, in a fixed order."""
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise InputError(f"no transformed examples at {pattern!r}; run `esmm transform` first")
    return tf.data.Dataset.from_tensor_slices(files).interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP", buffer_size=1 << 22),
        cycle_length=min(len(files), 4), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _count_examples(pattern: str) -> int:
    files = sorted(tf.io.gfile.glob(pattern))
    return int(tf.data.TFRecordDataset(files, compression_type="GZIP", num_parallel_reads=4)
               .reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))


def _steps_per_epoch(examples: int, batch_size: int, configured: Optional[int], shards: int) -> int:
    """Batches in one pass over the split's ``examples``, at most ``configured``; a last batch too
    small to give each of ``shards`` workers a row is dropped (``make_dataset``)."""
    batches = -(-examples // batch_size) - (0 < examples % batch_size < shards)
    return min(batches, configured) if configured else batches


def _first_batch(dataset: tf.data.Dataset, pattern: str) -> tuple:
    """The first batch, or InputError naming the split's files when they hold no example."""
    batch = next(iter(dataset), None)
    if batch is None:
        raise InputError(f"no examples in {pattern!r}: the split is empty; re-run ingestion on a log with rows "
                         f"in both time splits")
    return batch
