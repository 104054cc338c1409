"""Training throughput: the trainer end to end vs a bare train step fed from memory.

Data: the simulator's default config and preset, simulated, ingested and transformed
once into --work-dir (reused on later runs). For each setting:
- trainer: ``components.train.train`` for two epochs over the transformed TFRecords;
  its second epoch's examples/s (the first pays for tracing and XLA compilation);
- ceiling: the same model, optimizers and ``tf.function`` train step, fed batches
  already parsed and held in memory.
Prints a table; trainer / ceiling is the fraction of the ceiling the input pipeline keeps.

    .venv/bin/python benchmarks/bench_train.py [--rows 300000] [--work-dir /tmp/esmm_bench_train]
"""
from __future__ import annotations

import argparse
import itertools
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import components  # noqa: E402,F401  (exit-time fix for processes that ran tf.Transform)
from components.ingest import ingest  # noqa: E402
from components.simulator import SimulationSpec, simulate  # noqa: E402
from components.train import make_dataset, train  # noqa: E402
from components.transform import transform  # noqa: E402
from esmm_model.config import Config, config_from_dict, load_config  # noqa: E402
from esmm_model.model import EsmmModel  # noqa: E402
from esmm_model.preprocessing import table_sizes  # noqa: E402
from esmm_model.training import build_optimizer_state, build_optimizers, make_train_step  # noqa: E402

SETTINGS = (  # (batch size, jit_compile, embedding optimizer)
    (4096, False, "same"),
    (4096, True, "same"),
    (4096, False, "adagrad"),
    (8192, False, "adagrad"),
)


def prepare(config: Config, rows: int, work_dir: Path) -> tuple[str, str]:
    """Simulate, ingest and transform once; later runs reuse the transformed data."""
    transform_dir, transformed_dir = work_dir / "transform" / "transform_graph", work_dir / "transform" / "transformed"
    if not (transform_dir / "transform_fn").is_dir():
        beam = ["--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
        simulate(SimulationSpec.preset("default", rows=rows), config, work_dir / "raw")
        ingest(config, str(work_dir / "raw"), str(work_dir / "ingest"), beam)
        transform(config, work_dir / "ingest", work_dir / "transform", beam)
    return str(transform_dir), str(transformed_dir)


def with_training(config: Config, **training) -> Config:
    data = config.to_dict()
    data["training"].update(training)
    return config_from_dict(data)


def ceiling(config: Config, transform_dir: str, transformed_dir: str, steps: int = 30) -> float:
    """Examples/s of the bare train step on parsed batches held in memory."""
    keras.utils.set_random_seed(config.training.seed)
    tft_output = tft.TFTransformOutput(transform_dir)
    data = make_dataset(config, tft_output, f"{transformed_dir}/train/*.tfrecord.gz",
                        batch_size=config.training.batch_size)
    batches = [b for b in data.take(8) if int(tf.shape(b[1]["click"])[0]) == config.training.batch_size]
    model = EsmmModel(config, table_sizes(config, tft_output))
    model(batches[0][0])
    optimizers = build_optimizers(config.training)
    build_optimizer_state(model, optimizers)
    step = make_train_step(model, config.training, optimizers)
    for i, (inputs, labels) in enumerate(batches):  # trace and compile every padded shape once
        step(inputs, labels, tf.constant(i, tf.int64))
    started = time.perf_counter()
    for i, (inputs, labels) in zip(range(steps), itertools.cycle(batches)):
        float(step(inputs, labels, tf.constant(i, tf.int64))["loss"])
    return steps * config.training.batch_size / (time.perf_counter() - started)


def trainer(config: Config, transform_dir: str, transformed_dir: str) -> float:
    """Examples/s of the trainer's second epoch (the first one traces and compiles)."""
    with tempfile.TemporaryDirectory() as out:
        result = train(with_training(config, epochs=2), transform_dir, transformed_dir, out, version=1)
    return result.metrics["history"][1]["examples_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300_000, help="simulated impressions (half go to train)")
    parser.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "esmm_bench_train"))
    parser.add_argument("--fresh", action="store_true", help="rebuild the data in --work-dir")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work_dir = Path(args.work_dir)
    if args.fresh:
        shutil.rmtree(work_dir, ignore_errors=True)
    config = load_config("simulator")
    transform_dir, transformed_dir = prepare(config, args.rows, work_dir)
    print(f"model: {config.model.variant}, towers {list(config.model.tower_units)}, emb {config.model.embedding_dim}, "
          f"Adam lr {config.training.learning_rate}; {tf.config.threading.get_inter_op_parallelism_threads() or 'auto'} "
          f"inter-op threads")
    header = f"{'batch':>6} {'jit':>5} {'emb opt':>8} {'trainer ex/s':>13} {'ceiling ex/s':>13} {'fraction':>9}"
    rows = []
    for batch, jit, embedding_optimizer in SETTINGS:
        setting = with_training(config, batch_size=batch, jit_compile=jit, embedding_optimizer=embedding_optimizer,
                                embedding_learning_rate=0.05 if embedding_optimizer == "adagrad" else None)
        bare = ceiling(setting, transform_dir, transformed_dir)
        full = trainer(setting, transform_dir, transformed_dir)
        rows.append(f"{batch:>6} {str(jit):>5} {embedding_optimizer:>8} {full:>13,.0f} {bare:>13,.0f} {full / bare:>9.0%}")
        print(rows[-1], flush=True)
    print("\n" + header + "\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
