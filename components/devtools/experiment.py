"""Seeded comparisons of model variants on one dataset, scored against the simulator's ground truth.

The machinery behind ``esmm experiment`` (the paper's Table 2 and Figure 3), the ablations
and the learning curve. Each run trains with the trainer's own pieces
(``components.train.executor``: ``build_model``, ``fit`` with its NaN stop, the windowed
shuffle) on the transformed train split, parsed once and held in memory so that seeds ×
variants do not re-read TFRecords; it scores the raw eval split through the tf.Transform
graph, joined to the ground truth by ``sample_id``.

Four figures per run: CVR AUC on clicked eval impressions, CTCVR AUC and CTR AUC on all of
them (the paper's protocol), and the entire-space CVR AUC against ``would_convert``.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from components.progress import progress
from components.train.callbacks import NonFiniteLoss
from components.train.executor import build_model, fit, shuffle_windows
from esmm_model.config import LABEL_CLICK, LABEL_CONVERSION, Config, with_overrides
from esmm_model.contracts import layout
from esmm_model.contracts.ground_truth import join_ground_truth, load_ground_truth
from esmm_model.errors import InputError
from esmm_model.metrics import paper_aucs
from esmm_model.model import PAD_MULTIPLE, EsmmModel, model_inputs
from esmm_model.preprocessing import table_sizes
from esmm_model.schema import SAMPLE_ID, feature_spec
from esmm_model.variants import VARIANTS

log = logging.getLogger(__name__)

ROWS = {spec.table_row: name for name, spec in VARIANTS.items()}
# Rows whose pCTCVR is their own pCTR · pCVR; the others' pCTR comes from the CTR_NETWORK_ROW network.
ESMM_ROWS = tuple(spec.table_row for spec in VARIANTS.values() if spec.ctcvr_from_towers)
CTR_NETWORK_ROW = "BASE"
METRICS = {"cvr_auc_clicked": "CVR AUC on clicked", "ctcvr_auc": "CTCVR AUC",
           "entire_space_cvr_auc": "entire-space CVR AUC", "ctr_auc": "CTR AUC"}
SWEEP_ROWS = ("BASE", "ESMM-NS", "ESMM")
SWEEP_FRACTIONS = (0.1, 0.25, 0.5, 1.0)


@dataclass
class Split:
    """A whole split in memory: model inputs (weighted lists padded to the longest list, with
    each row's list length), labels and, for eval, the ground truth."""

    inputs: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    truth: Optional[np.ndarray] = None  # [n, 3]: p_click, p_cvr, would_convert

    def __len__(self) -> int:
        return len(self.labels[LABEL_CLICK])

    def rows(self, rows: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The rows as a model batch; weighted lists cut to the batch's longest, rounded up as the trainer pads."""
        inputs = {}
        for name, column in self.inputs.items():
            if name in self.lengths:
                length = max(int(self.lengths[name][rows].max()), 1)
                column = column[:, :-(-length // PAD_MULTIPLE) * PAD_MULTIPLE]
            inputs[name] = column[rows]
        return inputs, {name: values[rows] for name, values in self.labels.items()}

    def batch(self, rows: np.ndarray) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
        """``rows`` as tensors."""
        inputs, labels = self.rows(rows)
        return ({name: tf.constant(value) for name, value in inputs.items()},
                {name: tf.constant(value) for name, value in labels.items()})

    def dataset(self, orders: list[np.ndarray], batch_size: int) -> tf.data.Dataset:
        """Batches of (inputs, labels) of ``batch_size`` rows in each order in turn (one per epoch; each
        order's last batch may be smaller), gathered from memory ahead of the train step."""
        def batches():
            for order in orders:
                for start in range(0, len(order), batch_size):
                    yield self.rows(order[start:start + batch_size])

        def spec(columns: dict[str, np.ndarray]) -> dict[str, tf.TensorSpec]:
            return {name: tf.TensorSpec((None,) * value.ndim, tf.as_dtype(value.dtype))
                    for name, value in columns.items()}

        return tf.data.Dataset.from_generator(
            batches, output_signature=(spec(self.inputs), spec(self.labels))).prefetch(2)


@dataclass
class Data:
    """The train and eval splits of one transformed dataset, for one config's feature layout."""

    config: Config
    table_sizes: dict[str, int]
    train: Split
    eval: Split


def _collect(config: Config, transformed_batches, sample_ids: Optional[list] = None) -> Split:
    """Concatenates transformed batches (weighted lists sparse) into a Split."""
    inputs: dict[str, list[np.ndarray]] = {}
    lengths: dict[str, list[np.ndarray]] = {}
    labels: dict[str, list[np.ndarray]] = {}
    weighted = {f.name: f.weight_name for f in config.features if f.kind == "weighted_ids"}
    for transformed in transformed_batches:
        batch_inputs, batch_labels = model_inputs(config, transformed)
        n = int(tf.shape(batch_labels[LABEL_CLICK])[0])
        for name in weighted:
            rows = transformed[name].indices[:, 0].numpy()
            lengths.setdefault(name, []).append(np.bincount(rows, minlength=n))
        for name, value in batch_inputs.items():
            inputs.setdefault(name, []).append(value.numpy())
        for name, value in batch_labels.items():
            labels.setdefault(name, []).append(value.numpy())
    if not labels:
        raise InputError("the split holds no examples")
    merged = {}
    for name, parts in inputs.items():
        if parts[0].ndim == 2:
            width = max(p.shape[1] for p in parts)
            parts = [np.pad(p, [(0, 0), (0, width - p.shape[1])]) for p in parts]
        merged[name] = np.concatenate(parts)
    split_lengths = {name: np.concatenate(lengths[name]) for name in weighted}
    split_lengths.update({weight: split_lengths[name] for name, weight in weighted.items()})
    return Split(merged, split_lengths, {name: np.concatenate(parts) for name, parts in labels.items()})


def load_data(config: Config, transform_root: str, ingest_dir: str, ground_truth: Optional[str], *,
              batch_size: int = 8192) -> Data:
    """Reads the transformed train split and the raw eval split (transformed here, to keep
    ``sample_id``), and joins eval to the ground truth when given."""
    transformed = layout.TransformLayout(transform_root)
    tft_output = tft.TFTransformOutput(transformed.graph)
    train_files = sorted(tf.io.gfile.glob(transformed.split_pattern(layout.TRAIN)))
    eval_files = sorted(tf.io.gfile.glob(layout.IngestLayout(ingest_dir).split_pattern(layout.EVAL)))
    for files, where in ((train_files, transformed.transformed), (eval_files, ingest_dir)):
        if not files:
            raise InputError(f"no examples under {where!r}; run `esmm ingest` and `esmm transform` first")
    spec = tft_output.transformed_feature_spec()
    train = _collect(config, (tf.io.parse_example(records, spec) for records in
                              tf.data.TFRecordDataset(train_files, compression_type="GZIP").batch(batch_size)))
    raw_spec = feature_spec(config)
    transform = tf.function(tft_output.transform_raw_features)
    sample_ids: list[np.ndarray] = []

    def eval_batches():
        for records in tf.data.TFRecordDataset(eval_files, compression_type="GZIP").batch(batch_size):
            raw = tf.io.parse_example(records, raw_spec)
            sample_ids.append(raw[SAMPLE_ID].numpy())
            yield transform(raw)

    evaluation = _collect(config, eval_batches())
    if ground_truth:
        evaluation.truth = join_ground_truth(load_ground_truth(ground_truth), np.concatenate(sample_ids), ground_truth)
    return Data(config, table_sizes(config, tft_output), train, evaluation)


def epoch_order(rows: np.ndarray, batch_size: int, shuffle: str, seed: int) -> np.ndarray:
    """One epoch's row order: ``window`` shuffles windows of SHUFFLE_BATCHES batches in place
    with the trainer's own shuffle (``components.train.executor.shuffle_windows``, the same
    seed as its epoch's); ``full`` permutes the whole split."""
    if shuffle == "full":
        return np.random.default_rng(seed).permutation(rows)
    windows = shuffle_windows(tf.data.Dataset.from_tensor_slices(rows), batch_size, seed)
    return np.concatenate(list(windows.as_numpy_iterator()))


@dataclass
class Run:
    """One trained model's eval predictions and training speed."""

    predictions: dict[str, np.ndarray]
    examples_per_second: float
    seconds: float


class EpochProgress(keras.callbacks.Callback):
    """One training's epochs as progress: a bar on a terminal, else a line at most every 30 s."""

    def __init__(self, desc: str, epochs: int) -> None:
        super().__init__()
        self._ticks = progress(range(epochs), desc, "epoch")

    def on_train_begin(self, logs: Optional[dict] = None) -> None:
        next(self._ticks, None)

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        next(self._ticks, None)


def fit_and_predict(data: Data, config: Config, *, seed: int, fraction: float = 1.0,
                    shuffle: str = "window") -> Run:
    """Trains ``config``'s variant on a ``fraction`` of the train rows (drawn by ``seed``) for
    ``training.epochs`` with the trainer's model, compile and ``fit`` (epoch e shuffled by
    ``seed + e``, as the trainer's), and predicts the eval split. Raises NonFiniteLossError
    when an epoch ends with a NaN or infinite loss."""
    training = config.training
    keras.utils.set_random_seed(seed)
    rows = np.arange(len(data.train))
    if fraction < 1.0:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(rows, size=max(1, int(round(fraction * len(rows)))), replace=False))
    batch_size = training.batch_size
    model = build_model(config, data.table_sizes, data.train.batch(rows[:batch_size])[0])
    orders = [epoch_order(rows, batch_size, shuffle, seed + epoch) for epoch in range(training.epochs)]
    started = time.perf_counter()
    fit(model, data.train.dataset(orders, batch_size), epochs=training.epochs,
        steps_per_epoch=-(-len(rows) // batch_size), verbose=0,
        callbacks=[NonFiniteLoss(config.model.variant, training.learning_rate, every_step=False),
                   EpochProgress(f"experiment: {config.model.variant} seed {seed} fraction {fraction:g}",
                                 training.epochs)])
    seconds = time.perf_counter() - started
    return Run(predict(model, data.eval), training.epochs * len(rows) / seconds, seconds)


def predict(model: EsmmModel, split: Split, batch_size: int = 16384) -> dict[str, np.ndarray]:
    """ctr, cvr, ctcvr for every row of the split."""
    @tf.function(reduce_retracing=True)
    def call(inputs):
        return model(inputs, training=False)

    parts: dict[str, list[np.ndarray]] = {"ctr": [], "cvr": [], "ctcvr": []}
    for start in range(0, len(split), batch_size):
        outputs = call(split.batch(np.arange(start, min(start + batch_size, len(split))))[0])
        for name in parts:
            parts[name].append(outputs[name].numpy())
    return {name: np.concatenate(values) for name, values in parts.items()}


def score(split: Split, ctr: np.ndarray, cvr: np.ndarray, ctcvr: np.ndarray) -> dict[str, float]:
    """The four AUCs of METRICS over the whole eval split (entire-space CVR needs ground truth)."""
    would_convert = split.truth[:, 2] if split.truth is not None else None
    return paper_aucs(split.labels[LABEL_CLICK], split.labels[LABEL_CONVERSION], ctr, cvr, ctcvr, would_convert)


def oracle_scores(split: Split) -> dict[str, float]:
    """The four AUCs of the true probabilities: the ceiling."""
    p_click, p_cvr = split.truth[:, 0], split.truth[:, 1]
    return score(split, p_click, p_cvr, p_click * p_cvr)


@dataclass
class Result:
    """Per-run figures of an experiment: (row, seed, fraction) -> metrics."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    oracle: dict[str, float] = field(default_factory=dict)

    def values(self, row: str, metric: str, fraction: float = 1.0) -> np.ndarray:
        return np.array([r[metric] for r in self.runs if r["row"] == row and r["fraction"] == fraction])

    def summary(self, rows: tuple[str, ...], fraction: float = 1.0) -> dict[str, dict[str, tuple[float, float, int]]]:
        """row -> metric -> (mean, std across repeats with ddof 1 (NaN for one repeat), repeats)."""
        out = {}
        for row in rows:
            out[row] = {}
            for metric in METRICS:
                values = self.values(row, metric, fraction)
                std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
                out[row][metric] = (float(np.mean(values)), std, len(values))
        return out


def run_experiment(data: Data, *, repeats: int = 5, rows: tuple[str, ...] = tuple(ROWS),
                   fractions: tuple[float, ...] = (1.0,), sweep_rows: tuple[str, ...] = SWEEP_ROWS,
                   seed: Optional[int] = None, progress: Callable[[str], None] = log.info) -> Result:
    """Trains every row for ``repeats`` seeds on the full train split, and ``sweep_rows`` at each
    fraction < 1. Non-ESMM rows' pCTCVR is pCTR × pCVR with pCTR from one separately trained
    CTR network per seed and fraction: BASE's, whose CTR network has its own tables and loss."""
    unknown = [r for r in (*rows, *sweep_rows) if r not in ROWS]
    if unknown:
        raise InputError(f"unknown variant {unknown[0]!r}; choose from {', '.join(ROWS)}")
    base_seed = data.config.training.seed if seed is None else seed
    result = Result(oracle=oracle_scores(data.eval) if data.eval.truth is not None else {})
    sweep = [f for f in fractions if f < 1.0]
    full_rows = tuple(rows) + tuple(r for r in sweep_rows if sweep and r not in rows)
    plan = [(1.0, r) for r in full_rows] + [(f, r) for f in sorted(sweep, reverse=True) for r in sweep_rows]
    total, done = repeats * len(plan), 0
    for i in range(repeats):
        run_seed = base_seed + i
        for fraction in sorted({f for f, _ in plan}, reverse=True):
            planned = [r for f, r in plan if f == fraction]
            needs_ctr = any(r not in ESMM_ROWS for r in planned)
            order = ([CTR_NETWORK_ROW] if needs_ctr else []) + [r for r in planned if r != CTR_NETWORK_ROW]
            shared_ctr = None
            for row in order:
                config = with_overrides(data.config, {"model": {"variant": ROWS[row]},
                                                      "training": {"seed": run_seed}})
                run = fit_and_predict(data, config, seed=run_seed, fraction=fraction)
                p = run.predictions
                if row == CTR_NETWORK_ROW:
                    shared_ctr = p["ctr"]
                ctr, ctcvr = (p["ctr"], p["ctcvr"]) if row in ESMM_ROWS else (shared_ctr, shared_ctr * p["cvr"])
                figures = score(data.eval, ctr, p["cvr"], ctcvr)
                if row in planned:
                    done += 1
                    result.runs.append({"row": row, "seed": run_seed, "fraction": fraction, **figures,
                                        "examples_per_second": run.examples_per_second, "seconds": run.seconds})
                    progress(f"experiment: {done}/{total} {row} seed {run_seed} fraction {fraction:g}: "
                             + ", ".join(f"{k} {v:.4f}" for k, v in figures.items()) + f" ({run.seconds:.0f} s)")
    return result


def read_runs(paths: list[str]) -> Result:
    """A Result from the runs.csv (and the oracle.json beside the first) of earlier experiments,
    e.g. seeds or variants run in parallel processes."""
    result = Result()
    for path in paths:
        if not tf.io.gfile.exists(path):
            raise InputError(f"runs file {path!r} does not exist")
        with tf.io.gfile.GFile(path) as f:
            for run in csv.DictReader(f):
                result.runs.append({k: v if k == "row" else int(v) if k == "seed" else float(v)
                                    for k, v in run.items()})
    oracle = os.path.join(os.path.dirname(paths[0]), "oracle.json")
    if tf.io.gfile.exists(oracle):
        with tf.io.gfile.GFile(oracle) as f:
            result.oracle = json.loads(f.read())
    return result


def _cell(mean: float, std: float) -> str:
    return f"{mean:.4f} ± {std:.4f}" if math.isfinite(std) else f"{mean:.4f}"


def table2_markdown(result: Result, rows: tuple[str, ...]) -> str:
    """The paper's Table 2 columns plus entire-space CVR AUC and CTR AUC, mean ± std over repeats."""
    summary = result.summary(rows)
    lines = ["| model | " + " | ".join(METRICS.values()) + " |", "|---|" + "---|" * len(METRICS)]
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(_cell(*summary[row][m][:2]) for m in METRICS) + " |")
    if result.oracle:
        lines.append("| oracle (true probabilities) | " + " | ".join(f"{result.oracle[m]:.4f}" for m in METRICS) + " |")
    return "\n".join(lines) + "\n"


def sweep_markdown(result: Result, rows: tuple[str, ...], fractions: tuple[float, ...]) -> str:
    """Mean ± std of each metric by training fraction, one table per metric."""
    blocks = []
    for metric, title in METRICS.items():
        lines = [f"**{title}**", "", "| model | " + " | ".join(f"{f:.0%}" for f in fractions) + " |",
                 "|---|" + "---|" * len(fractions)]
        for row in rows:
            cells = []
            for f in fractions:
                values = result.values(row, metric, f)
                cells.append(_cell(float(np.mean(values)),
                                   float(np.std(values, ddof=1)) if len(values) > 1 else math.nan))
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def write_outputs(result: Result, out_dir: str, rows: tuple[str, ...], sweep_rows: tuple[str, ...],
                  fractions: tuple[float, ...]) -> dict[str, str]:
    """table2.md, table2.csv, table2.png, runs.csv, oracle.json and, with a sweep, sparsity.md and sparsity.png."""
    tf.io.gfile.makedirs(out_dir)
    paths = {name: os.path.join(out_dir, name)
             for name in ("table2.md", "table2.csv", "table2.png", "runs.csv", "oracle.json")}
    with tf.io.gfile.GFile(paths["oracle.json"], "w") as f:
        f.write(json.dumps(result.oracle))
    with tf.io.gfile.GFile(paths["table2.md"], "w") as f:
        f.write(table2_markdown(result, rows))
    summary = result.summary(rows)
    with tf.io.gfile.GFile(paths["table2.csv"], "w") as f:
        writer = csv.writer(f)
        writer.writerow(["model", *(f"{m}_{s}" for m in METRICS for s in ("mean", "std")), "repeats"])
        for row in rows:
            writer.writerow([row, *(f"{v:.6f}" for m in METRICS for v in summary[row][m][:2]),
                             summary[row]["ctr_auc"][2]])
        if result.oracle:
            writer.writerow(["oracle", *(f"{v:.6f}" for m in METRICS for v in (result.oracle[m], 0.0)), 1])
    with tf.io.gfile.GFile(paths["runs.csv"], "w") as f:
        writer = csv.DictWriter(f, fieldnames=list(result.runs[0]))
        writer.writeheader()
        writer.writerows(result.runs)
    _plot_table2(summary, result.oracle, rows, paths["table2.png"])
    sweep = [f for f in fractions if f < 1.0]
    if sweep:
        fractions = tuple(sorted(set(fractions) | {1.0}))
        paths["sparsity.md"] = os.path.join(out_dir, "sparsity.md")
        paths["sparsity.png"] = os.path.join(out_dir, "sparsity.png")
        with tf.io.gfile.GFile(paths["sparsity.md"], "w") as f:
            f.write(sweep_markdown(result, sweep_rows, fractions))
        _plot_sweep(result, sweep_rows, fractions, paths["sparsity.png"])
    return paths


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(buffer.getvalue())


def _plot_table2(summary, oracle: dict[str, float], rows: tuple[str, ...], path: str) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.6))
    for ax, (metric, title) in zip(axes, METRICS.items()):
        means = [summary[r][metric][0] for r in rows]
        stds = [0.0 if not math.isfinite(summary[r][metric][1]) else summary[r][metric][1] for r in rows]
        ax.bar(range(len(rows)), means, yerr=stds, capsize=3,
               color=["tab:orange" if r in ESMM_ROWS else "tab:blue" for r in rows])
        if metric in oracle:
            ax.axhline(oracle[metric], color="black", linestyle="--", linewidth=1, label="oracle")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xticks(range(len(rows)), rows, rotation=45, ha="right", fontsize=8)
        low = min(m - s for m, s in zip(means, stds))
        ax.set_ylim(max(0.0, low - 0.05), max([*means, oracle.get(metric, 0.0)]) + 0.03)
        ax.set_title(title, fontsize=10)
    fig.suptitle("mean ± std over repeats")
    _save(fig, path)
    plt.close(fig)


def _plot_sweep(result: Result, rows: tuple[str, ...], fractions: tuple[float, ...], path: str) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.6))
    for ax, (metric, title) in zip(axes, METRICS.items()):
        for row in rows:
            values = [result.values(row, metric, f) for f in fractions]
            ax.errorbar([100 * f for f in fractions], [np.mean(v) for v in values],
                        yerr=[np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values], marker="o", capsize=3,
                        label=row)
        ax.set_xscale("log")
        ax.set_xticks([100 * f for f in fractions], [f"{f:.0%}" for f in fractions])
        ax.set_xlabel("training impressions sampled")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)
