"""Where a training step's time goes: input (read, parse), the step's parts, per-epoch evaluation.

Data: bench_train's simulated, ingested and transformed split in --work-dir (made on first use).
Each part runs alone, on the config's shapes (default esmm_model/configs/simulator.yaml), and
reports wall and process CPU time per example:
- read: the GZIP TFRecords of the train split, decompressed and counted;
- read + parse: ``make_dataset`` (vectorised ``parse_example`` per batch, weighted lists padded);
- from memory: an epoch of ``batches_from_memory`` once ``parsed_windows`` holds the split (what
  every epoch after the first costs when ``training.input_cache_rows`` admits the split);
- step parts on one parsed batch held in memory: the embedding lookups and pooling (forward
  of the tables only), the forward pass and loss, forward and backward (gradients computed,
  not applied), and the whole train step (``model.train_step``: plus the optimizers' update);
- evaluation: ``exact_eval_metrics`` over the whole eval split and over the default sample.
Prints one table with the load average.

    .venv/bin/python benchmarks/profile_train.py [--rows 200000] [--work-dir DIR] [--set key=value ...]
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components import console  # noqa: E402

console.quiet_process()  # before TensorFlow or Beam load; ESMM_VERBOSE=1 shows their lines

import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402

from bench_train import prepare  # noqa: E402
from components.train.executor import (  # noqa: E402
    batches_from_memory,
    build_model,
    exact_eval_metrics,
    make_dataset,
    parsed_windows,
    predictor,
)
from esmm_model.config import load_config  # noqa: E402
from esmm_model.contracts import layout  # noqa: E402
from esmm_model.losses import variant_loss  # noqa: E402
from esmm_model.preprocessing import table_sizes  # noqa: E402
from esmm_model.training import bare_train_step  # noqa: E402
from load_average import load_avg_short  # noqa: E402
from overrides import apply_overrides  # noqa: E402


def timed(run: Callable[[], int]) -> tuple[float, float, int]:
    """(wall s, process CPU s, examples) of ``run``, which returns the examples it handled."""
    wall, cpu = time.perf_counter(), time.process_time()
    examples = run()
    return time.perf_counter() - wall, time.process_time() - cpu, examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="simulated impressions (half go to train)")
    parser.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "esmm_bench_train"))
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each step part")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = load_config("simulator")
    transformed = prepare(config, args.rows, Path(args.work_dir), "small")
    config = apply_overrides(config, args.set)
    training = config.training
    tft_output = tft.TFTransformOutput(transformed.graph)
    train_pattern, eval_pattern = transformed.split_pattern(layout.TRAIN), transformed.split_pattern(layout.EVAL)
    rows: list[tuple[str, float, float, int]] = []

    def report(name: str, result: tuple[float, float, int]) -> None:
        wall, cpu, examples = result
        rows.append((name, wall, cpu, examples))
        print(f"{name}: {examples:,} examples, {wall:.2f} s wall, {cpu:.2f} s CPU", flush=True)

    files = sorted(tf.io.gfile.glob(train_pattern))
    report("read (decompress)", timed(lambda: int(tf.data.TFRecordDataset(files, compression_type="GZIP")
                                                  .batch(training.batch_size)
                                                  .reduce(tf.constant(0, tf.int64),
                                                          lambda n, b: n + tf.shape(b, out_type=tf.int64)[0]))))

    def parse_epoch() -> int:
        return sum(int(tf.shape(labels["click"])[0]) for _, labels in
                   make_dataset(config, tft_output, train_pattern, batch_size=training.batch_size, shuffle_seed=1))

    parse_epoch()  # trace once
    report("read + shuffle + parse + pad (make_dataset)", timed(parse_epoch))
    windows = parsed_windows(tft_output, train_pattern, training.batch_size)

    def memory_epoch() -> int:
        return sum(int(tf.shape(labels["click"])[0]) for _, labels in
                   batches_from_memory(config, windows, training.batch_size, 1))

    memory_epoch()  # reads, parses and holds the split
    report("shuffle + gather + pad from memory (later epochs)", timed(memory_epoch))

    batches = [b for b in make_dataset(config, tft_output, train_pattern, batch_size=training.batch_size).take(4)]
    inputs, labels = batches[0]
    n = int(tf.shape(labels["click"])[0])
    model = build_model(config, table_sizes(config, tft_output), inputs)

    lookups = tf.function(lambda x: model.ctr_embeddings(x))
    forward = tf.function(lambda x, y: variant_loss(config.model, y, model(x, training=True),
                                                    tf.constant([1, 2], tf.int64))["loss"])

    @tf.function
    def gradients(x, y):
        with tf.GradientTape() as tape:
            loss = variant_loss(config.model, y, model(x, training=True), tf.constant([1, 2], tf.int64))["loss"]
        return tape.gradient(loss, model.trainable_variables)

    step = bare_train_step(model)
    parts = (("step: embedding lookups + pooling", lambda: lookups(inputs)),
             ("step: forward + loss", lambda: forward(inputs, labels)),
             ("step: forward + backward", lambda: gradients(inputs, labels)),
             ("step: whole train_step (+ optimizer update)", lambda: step(inputs, labels)))
    for name, part in parts:
        tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, part())  # trace

        def repeat(part=part) -> int:
            for _ in range(args.steps):
                out = part()
            tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, out)
            return args.steps * n
        report(name, timed(repeat))

    eval_data = make_dataset(config, tft_output, eval_pattern, batch_size=training.batch_size)
    predict = predictor(model, eval_data.element_spec[0])
    exact_eval_metrics(predict, eval_data.take(1))
    report("eval: whole split", timed(lambda: exact_eval_metrics(predict, eval_data)["examples"]))
    sample = make_dataset(config, tft_output, eval_pattern, batch_size=training.batch_size,
                          limit=training.epoch_eval.rows).cache()
    report("eval: sample, first pass (parse + cache)", timed(lambda: exact_eval_metrics(predict, sample)["examples"]))
    report("eval: sample, cached", timed(lambda: exact_eval_metrics(predict, sample)["examples"]))

    load = load_avg_short()
    print(f"\nbatch {training.batch_size}, embedding_optimizer {training.embedding_optimizer}; load average {load}\n")
    print("| part | examples | wall µs/example | CPU µs/example | examples/s |")
    print("|---|---|---|---|---|")
    for name, wall, cpu, examples in rows:
        print(f"| {name} | {examples:,} | {1e6 * wall / examples:.1f} | {1e6 * cpu / examples:.1f} | "
              f"{examples / wall:,.0f} |")


if __name__ == "__main__":
    main()
