"""The trainer's ``model.fit`` callbacks: NaN stop, TensorBoard scalars, per-epoch evaluation and timing,
early stopping that survives a resume, and backups every N steps and at every epoch's end.

Scalars are written with TF's core summary op under the names ``components.train.executor`` documents
(Keras' ``TensorBoard`` callback would rename them ``batch_*``/``epoch_*`` and needs the
tensorboard package, which serving images do not carry).
"""
from __future__ import annotations

import json
import math
import time
from typing import Any, Callable, Optional

import tensorflow as tf
import tf_keras as keras
from tensorflow.core.framework import summary_pb2

from components.artifacts import storage
from components.console import say
from esmm_model.contracts import layout
from esmm_model.errors import EsmmError

SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
    data_class=summary_pb2.DATA_CLASS_SCALAR)
WARMUP_STEPS = 10  # steps of each epoch left out of its steady-state examples/s
# The history entry's timings: they differ between runs that learned the same.
TIMINGS = ("examples_per_second", "steady_examples_per_second", "epoch_seconds", "eval_seconds")
BACKUP_SUBDIR = "chief"  # where BackupAndRestore keeps the chief's (the only read) backup


class NonFiniteLossError(EsmmError):
    """Training produced a NaN or infinite loss."""


def write_scalars(writer: tf.summary.SummaryWriter, values: dict[str, float], step: int) -> None:
    """TensorBoard scalars written with TF's core summary op (the tensorboard package is not needed)."""
    with writer.as_default(step=step):
        for name, value in values.items():
            tf.summary.write(name, tf.constant(value, tf.float32), metadata=SCALAR_METADATA)
    writer.flush()


def global_step(model: keras.Model) -> int:
    """Steps trained so far (the optimizer's step, which the backups carry)."""
    return int(model.optimizer.iterations.numpy())


def fetched(logs: Any) -> dict:
    """The logs as a dict; under ParameterServerStrategy ``fit`` passes a RemoteValue to fetch."""
    return (logs.fetch() if hasattr(logs, "fetch") else logs) or {}


class NonFiniteLoss(keras.callbacks.TerminateOnNaN):
    """TerminateOnNaN that fails the run with one line naming the step and the fix, instead of
    stopping quietly with a model that would be exported. Checked after every step, or only at
    each epoch's end with ``every_step=False``."""

    def __init__(self, variant: str, learning_rate: float, *, every_step: bool = True):
        super().__init__()
        self._variant, self._learning_rate, self._epoch, self._every_step = variant, learning_rate, 0, every_step

    def on_epoch_begin(self, epoch: int, logs: Optional[dict] = None) -> None:
        self._epoch = epoch

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        self._check(logs)

    def on_batch_end(self, batch: int, logs: Optional[dict] = None) -> None:
        if self._every_step:  # not under parameter servers, where it would wait for each step
            self._check(logs)

    def _check(self, logs: Optional[dict]) -> None:
        loss = float(fetched(logs).get("loss", 0.0))  # the epoch's running mean: non-finite once any step was
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"the {self._variant} loss became {loss} at step {global_step(self.model)} "
                f"(epoch {self._epoch + 1}); lower training.learning_rate (now {self._learning_rate}) "
                f"or check the input features")


class TrainScalars(keras.callbacks.Callback):
    """Every ``every`` steps: the loss parts' means over those steps and the epoch's examples/s so
    far, to TensorBoard by global step and, with ``print_progress``, as one plain line."""

    def __init__(self, log_dir: str, every: int, *, print_progress: bool):
        super().__init__()
        # Keras' only switch (private, no public API) to receive the logs as tensors, read every `every` steps.
        self._supports_tf_logs = True
        self._log_dir, self._every, self._print = log_dir, every, print_progress
        self._writer: Optional[tf.summary.SummaryWriter] = None

    def on_train_begin(self, logs: Optional[dict] = None) -> None:
        self._writer = tf.summary.create_file_writer(self._log_dir)

    def on_epoch_begin(self, epoch: int, logs: Optional[dict] = None) -> None:
        self._epoch, self._started, self._batches = epoch, time.perf_counter(), 0
        self._last: tuple[int, dict[str, float]] = (0, {})

    def on_train_batch_end(self, batch: int, logs: Optional[dict] = None) -> None:
        self._batches += 1
        step = global_step(self.model)
        if step % self._every:
            return
        means = {name: float(value) for name, value in fetched(logs).items()}
        # The logs hold running means since the epoch began: the window's mean is their difference.
        seen, before = self._last
        window = {name: (mean * self._batches - before.get(name, 0.0) * seen) / (self._batches - seen)
                  for name, mean in means.items()}
        self._last = (self._batches, means)
        rate = float(self.model.examples_seen.result()) / (time.perf_counter() - self._started)
        write_scalars(self._writer, {**window, "examples_per_second": rate}, step)
        if self._print:
            parts = " ".join(f"{name} {value:.5f}" for name, value in window.items())
            say(f"train: epoch {self._epoch + 1} step {step}: {parts}, {rate:,.0f} examples/s")

    def on_train_end(self, logs: Optional[dict] = None) -> None:
        self._writer.close()


EPOCH_AUCS = (("ctr_auc", "CTR AUC"), ("ctcvr_auc", "CTCVR AUC"), ("cvr_auc_clicked", "CVR AUC clicked"))


def epoch_line(entry: dict[str, Any]) -> str:
    """One history entry as a console line: loss, speed, time, and the eval AUCs and what they scored
    (the whole eval split or a sample; ``history.json`` keeps every field)."""
    loss = "n/a" if entry["train_loss"] is None else f"{entry['train_loss']:.5f}"
    steady = entry["steady_examples_per_second"]
    speed = f"{entry['examples_per_second']:,.0f} examples/s" + (f" (steady {steady:,.0f})" if steady else "")
    line = f"train: epoch {entry['epoch']} (step {entry['step']}): loss {loss}, {speed}, {entry['epoch_seconds']:.1f} s"
    if entry["eval"] == "none":
        return line
    aucs = ", ".join(f"{label} {entry[key]:.4f}" for key, label in EPOCH_AUCS if entry.get(key) is not None)
    return (f"{line}; eval ({entry['eval']}, {entry['examples']:,} rows, {entry['eval_seconds']:.1f} s): "
            f"{aucs or 'no AUC (one class only)'}")


class EpochEvaluation(keras.callbacks.Callback):
    """After every epoch: an entry appended to ``history`` (saved to ``history_path`` beside the
    checkpoints and printed as one line) with the epoch's train loss, its wall time and examples/s
    (the evaluation excluded), the steady-state examples/s after its first WARMUP_STEPS steps (the
    first epoch's tracing and the input pipeline's start-up excluded; None under parameter servers,
    whose steps run asynchronously, or in a shorter epoch), and the eval metrics ``evaluate(epoch)``
    returns (None: no evaluation after this epoch), which also go to TensorBoard and into the
    logs as ``val_<metric>`` (early stopping reads them)."""

    def __init__(self, evaluate: Callable[[int], Optional[dict[str, Any]]], log_dir: str,
                 history: list[dict[str, Any]], history_path: str, *, write: bool = True):
        super().__init__()
        self._supports_tf_logs = True  # no per-step conversion of the logs (it would wait for every step)
        self._evaluate, self._log_dir, self.history, self._history_path = evaluate, log_dir, history, history_path
        self._write = write

    def on_train_begin(self, logs: Optional[dict] = None) -> None:
        self._writer = tf.summary.create_file_writer(self._log_dir)
        self._asynchronous = isinstance(self.model.distribute_strategy, tf.distribute.ParameterServerStrategy)

    def on_epoch_begin(self, epoch: int, logs: Optional[dict] = None) -> None:
        self._started, self._batches, self._warm = time.perf_counter(), 0, None

    def on_train_batch_end(self, batch: int, logs: Optional[dict] = None) -> None:
        self._batches += 1
        if self._batches == WARMUP_STEPS and not self._asynchronous:
            self._warm = (time.perf_counter(), float(self.model.examples_seen.result()))

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        ended = time.perf_counter()
        seconds = ended - self._started
        examples = float(self.model.examples_seen.result())
        steady = None
        if self._warm is not None and self._batches > WARMUP_STEPS:
            steady = (examples - self._warm[1]) / (ended - self._warm[0])
        step = global_step(self.model)
        metrics = self._evaluate(epoch)
        loss = (logs or {}).get("loss")
        self.history.append({"epoch": epoch + 1, "step": step, "train_loss": float(loss) if loss is not None else None,
                             "examples_per_second": examples / seconds, "steady_examples_per_second": steady,
                             "epoch_seconds": seconds,
                             **({"eval": "none"} if metrics is None else
                                {"eval_seconds": time.perf_counter() - ended, **metrics})})
        if metrics is not None:
            write_scalars(self._writer, {k: v for k, v in metrics.items() if isinstance(v, float)}, step)
            if logs is not None:
                logs.update({f"val_{name}": value for name, value in metrics.items() if name != "eval"})
        if self._write:
            storage.write_text(self._history_path, json.dumps({"history": self.history}, indent=2))
        say(epoch_line(self.history[-1]))

    def on_train_end(self, logs: Optional[dict] = None) -> None:
        self._writer.close()


def should_stop(history: list[dict[str, Any]], patience: Optional[int]) -> bool:
    """Early stopping on eval CTCVR AUC: no improvement in the last ``patience`` epochs."""
    if not patience or len(history) <= patience:
        return False
    best_before = max(h["ctcvr_auc"] for h in history[:-patience])
    return all(not h["ctcvr_auc"] > best_before for h in history[-patience:])


class ResumedEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping on ``val_ctcvr_auc`` whose patience counts the epochs a resumed run did before."""

    def __init__(self, patience: int, history: list[dict[str, Any]]):
        super().__init__(monitor="val_ctcvr_auc", mode="max", patience=patience)
        self._before = [h["ctcvr_auc"] for h in history]

    def on_train_begin(self, logs: Optional[dict] = None) -> None:
        super().on_train_begin(logs)
        for value in self._before:
            self.wait += 1
            if self._is_improvement(value, self.best):
                self.best, self.wait = value, 0


class EpochBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore every ``save_freq`` steps (an int) and also at every epoch's end, so a
    resumed run never repeats a finished epoch (its history is already saved), under every strategy
    the trainer runs. Under ParameterServerStrategy, where Keras' own backs up per epoch only, the
    chief (the coordinator) first waits for the steps it has scheduled (``ClusterCoordinator.join``),
    so a backup holds exactly the steps it records; that drains the workers' queues once per backup.
    Keras has no public API for a mid-epoch backup under parameter servers, so this extends
    BackupAndRestore's own private members (its batch count, training state and ``_backup``)."""

    def _coordinated(self) -> bool:
        return isinstance(self.model.distribute_strategy, tf.distribute.ParameterServerStrategy)

    def on_train_batch_end(self, batch: int, logs: Optional[dict] = None) -> None:
        if not self._coordinated():
            super().on_train_batch_end(batch, logs)
            return
        self._batches_count += 1
        if self._batches_count >= self.save_freq:
            self._batches_count = 0
            self._coordinated_backup(batch)

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        if not self._coordinated():
            self._backup(epoch=epoch)
        else:  # fit has joined the epoch's steps: record its last one, as on_train_batch_begin does elsewhere
            self._coordinated_backup(self.params["steps"] - 1)

    def _coordinated_backup(self, batch: int) -> None:
        # The strategy's one coordinator: the constructor returns the instance fit already made.
        tf.distribute.experimental.coordinator.ClusterCoordinator(self.model.distribute_strategy).join()
        self._training_state._ckpt_saved_batch.assign(batch)
        self._backup(epoch=self._current_epoch, batch=batch)


def backed_up_position(backup_dir: str, steps_per_epoch: int) -> tuple[int, int]:
    """(epoch, step within it) where ``fit`` resumes from ``backup_dir``, as BackupAndRestore
    computes it: (0, 0) without a backup. The input stream must start there."""
    latest = latest_backup(backup_dir)
    if not latest:
        return 0, 0
    reader = tf.train.load_checkpoint(latest)
    epoch = int(reader.get_tensor("ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE"))
    batch = int(reader.get_tensor("ckpt_saved_batch/.ATTRIBUTES/VARIABLE_VALUE"))
    if batch < 0:
        return max(epoch, 0), 0
    return (epoch + 1, 0) if batch >= steps_per_epoch - 1 else (epoch, batch + 1)


def restore_backup(model: keras.Model, backup_dir: str) -> None:
    """Restores the model (optimizers included) from the backup, when nothing is left to train."""
    latest = latest_backup(backup_dir)
    if latest:
        tf.train.Checkpoint(model=model).restore(latest).expect_partial()


def latest_backup(backup_dir: str) -> Optional[str]:
    """The backup checkpoint a resumed run restores (None without one)."""
    return tf.train.latest_checkpoint(layout.join(backup_dir, BACKUP_SUBDIR))
