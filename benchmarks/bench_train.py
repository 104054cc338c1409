"""Training throughput and quality: the trainer end to end vs a bare train step fed from memory.

Data: the simulator's default config and preset, simulated, ingested and transformed
once into --work-dir (reused on later runs). Two table sizes:
- ``small``: esmm_model/configs/simulator.yaml's exact vocabularies (about 53k embedding rows);
- ``aliccp``: every table that reads an Ali-CCP field hashed into ALICCP_HASH_BUCKETS[field], the sizes
  aliccp.yaml hashed the full Ali-CCP into before it sized its tables from the data (user 500k,
  item 1M, shop 500k, brand 300k, category 100k hash buckets; 3.3M rows over the simulator's
  tables, one per feature; the simulator has no intention or cross fields). This is the cost per step at Ali-CCP scale.
For each setting:
- trainer: ``components.train.executor.train`` for two epochs over the transformed TFRecords;
  its second epoch's examples/s (the first pays for tracing) and its eval AUCs after 2 epochs;
- ceiling: the same model, optimizers and train step (``model.train_step`` in one ``tf.function``), fed batches
  already parsed and held in memory.
Prints a table; trainer / ceiling is the fraction of the ceiling the input pipeline keeps.

    .venv/bin/python benchmarks/bench_train.py [--rows 200000] [--tables aliccp] [--work-dir DIR]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components import console  # noqa: E402

console.quiet_process()  # before TensorFlow or Beam load; ESMM_VERBOSE=1 shows their lines

import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
import tf_keras as keras  # noqa: E402

from components.devtools.simulator import SimulationSpec, simulate  # noqa: E402
from components.ingest.executor import ingest  # noqa: E402
from components.train.executor import make_dataset, train  # noqa: E402
from components.transform.executor import transform  # noqa: E402
from esmm_model.config import Config, config_from_dict, load_config  # noqa: E402
from esmm_model.contracts import layout  # noqa: E402
from esmm_model.model import EsmmModel  # noqa: E402
from esmm_model.preprocessing import table_sizes  # noqa: E402
from esmm_model.training import bare_train_step, compile_for_training  # noqa: E402
from load_average import load_avg_short  # noqa: E402

SETTINGS = {  # tables -> (batch size, jit_compile, embedding optimizer, embedding learning rate)
    "small": ((4096, False, "same", None), (4096, False, "lazy_adam", None), (4096, False, "adagrad", 0.05)),
    "aliccp": ((4096, False, "same", None), (4096, False, "lazy_adam", None), (4096, False, "adagrad", 0.05)),
}
BEAM = ["--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]


# Hash buckets per Ali-CCP field: the table sizes esmm_model/configs/aliccp.yaml gave the full dataset
# before it sized its tables from the data (`preprocessing: auto`).
ALICCP_HASH_BUCKETS = {"101": 500_000, "109_14": 100_000, "110_14": 500_000, "127_14": 300_000,
                       "150_14": 100_000, "205": 1_000_000, "206": 100_000, "207": 500_000, "210": 100_000,
                       "216": 300_000, "508": 100_000, "509": 100_000, "702": 100_000, "853": 100_000}


def aliccp_sized(config: Config) -> Config:
    """``config`` with each embedding table read from an Ali-CCP field hashed into as many
    buckets as ALICCP_HASH_BUCKETS gives that field (a shared group takes its largest member's)."""
    sizes = ALICCP_HASH_BUCKETS
    table_size: dict[str, int] = {}
    for feature in config.features:
        if feature.source in sizes:
            table_size[feature.table_name] = max(table_size.get(feature.table_name, 0), sizes[feature.source])
    data = config.to_dict()
    for feature, plain in zip(config.features, data["features"]):
        if feature.table_name in table_size:
            plain["preprocessing"] = {"hash_buckets": table_size[feature.table_name]}
    return config_from_dict(data)


def prepare(config: Config, rows: int, work_dir: Path, name: str) -> layout.TransformLayout:
    """Simulate and ingest once, transform once per table layout; later runs reuse the data."""
    ingested = layout.IngestLayout(str(work_dir / "ingest"))
    transformed = layout.TransformLayout(str(work_dir / ("transform" if name == "small" else f"transform_{name}")))
    if not tf.io.gfile.exists(ingested.counts):
        simulate(SimulationSpec.for_preset("baseline", rows=rows), config, work_dir / "raw")
        ingest(config, str(work_dir / "raw"), ingested.root, BEAM)
    if not tf.io.gfile.isdir(layout.join(transformed.graph, "transform_fn")):
        transform(config, ingested.root, transformed.root, BEAM)
    return transformed


def with_training(config: Config, **training) -> Config:
    data = config.to_dict()
    data["training"].update(training)
    return config_from_dict(data)


def ceiling(config: Config, transformed: layout.TransformLayout, steps: int = 30) -> float:
    """Examples/s of the bare train step on parsed batches held in memory."""
    keras.utils.set_random_seed(config.training.seed)
    tft_output = tft.TFTransformOutput(transformed.graph)
    data = make_dataset(config, tft_output, transformed.split_pattern(layout.TRAIN),
                        batch_size=config.training.batch_size)
    batches = [b for b in data.take(8) if int(tf.shape(b[1]["click"])[0]) == config.training.batch_size]
    model = EsmmModel(config, table_sizes(config, tft_output))
    model(batches[0][0])
    compile_for_training(model, config.training)
    step = bare_train_step(model)
    for inputs, labels in batches:  # trace and compile every padded shape once
        step(inputs, labels)
    started = time.perf_counter()
    for _, (inputs, labels) in zip(range(steps), itertools.cycle(batches)):
        float(step(inputs, labels)["loss"])
    return steps * config.training.batch_size / (time.perf_counter() - started)


def trainer(config: Config, transformed: layout.TransformLayout) -> dict:
    """The trainer's second epoch (the first one traces and compiles): examples/s and eval metrics."""
    with tempfile.TemporaryDirectory() as out:
        result = train(with_training(config, epochs=2), transformed.root, out, version=1)
    return result.metrics["history"][1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="simulated impressions (half go to train)")
    parser.add_argument("--tables", choices=["small", "aliccp", "both"], default="both",
                        help="embedding table sizes: the simulator's vocabularies, Ali-CCP's hash tables, or both")
    parser.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "esmm_bench_train"))
    parser.add_argument("--fresh", action="store_true", help="rebuild the data in --work-dir")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work_dir = Path(args.work_dir)
    if args.fresh:
        shutil.rmtree(work_dir, ignore_errors=True)
    base = load_config("simulator")
    configs = {"small": base, "aliccp": aliccp_sized(base)}
    print(f"model: {base.model.variant}, towers {list(base.model.tower_units)}, emb {base.model.embedding_dim}, "
          f"Adam lr {base.training.learning_rate}, 2 epochs over {args.rows // 2:,} train rows")
    header = (f"{'tables':>7} {'rows':>10} {'batch':>6} {'emb opt':>14} {'trainer ex/s':>13} {'ceiling ex/s':>13} "
              f"{'fraction':>9} {'CTR AUC':>8} {'CTCVR AUC':>10} {'CVR AUC clk':>12} {'load avg':>15}")
    rows = []
    for tables in (("small", "aliccp") if args.tables == "both" else (args.tables,)):
        config = configs[tables]
        transformed = prepare(config, args.rows, work_dir, tables)
        table_rows = sum(table_sizes(config, tft.TFTransformOutput(transformed.graph)).values())
        for batch, jit, embedding_optimizer, embedding_rate in SETTINGS[tables]:
            setting = with_training(config, batch_size=batch, jit_compile=jit, embedding_optimizer=embedding_optimizer,
                                    embedding_learning_rate=embedding_rate)
            bare = ceiling(setting, transformed)
            full = trainer(setting, transformed)
            label = embedding_optimizer + (f" {embedding_rate:g}" if embedding_rate else "")
            load = load_avg_short()
            rows.append(f"{tables:>7} {table_rows:>10,} {batch:>6} {label:>14} {full['examples_per_second']:>13,.0f} "
                        f"{bare:>13,.0f} {full['examples_per_second'] / bare:>9.0%} {full['ctr_auc']:>8.4f} "
                        f"{full['ctcvr_auc']:>10.4f} {full['cvr_auc_clicked']:>12.4f} {load:>15}")
            print(rows[-1], flush=True)
    print("\n" + header + "\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
