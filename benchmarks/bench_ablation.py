"""Ablations of the shipped ESMM, one change at a time, on the simulator with ground truth.

Each row changes one thing against esmm_model/configs/simulator.yaml (as shipped) and trains ESMM for
--seeds seeds with the experiment machinery (``components.devtools.experiment``: the trainer's
optimizers, train step and windowed shuffle on the transformed train split held in memory),
then prints the four AUCs as mean ± std and the change of each mean against the shipped row.
Rows that change preprocessing (shared tables, exact user vocabulary) get their own
tf.Transform run into --work-dir, once.

    .venv/bin/python benchmarks/bench_ablation.py --work-dir DIR [--rows 200000] [--seeds 3] [--only NAME ...]
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components import console  # noqa: E402

console.quiet_process()  # before TensorFlow or Beam load; ESMM_VERBOSE=1 shows their lines

import tensorflow as tf  # noqa: E402

from components.devtools.experiment import METRICS, fit_and_predict, load_data, oracle_scores, score  # noqa: E402
from components.devtools.simulator import GROUND_TRUTH_FILE, SimulationSpec, simulate  # noqa: E402
from components.ingest.executor import ingest  # noqa: E402
from components.transform.executor import transform  # noqa: E402
from esmm_model.config import Config, config_from_dict, load_config, with_overrides  # noqa: E402
from esmm_model.contracts import layout  # noqa: E402
from load_average import load_avg_short  # noqa: E402
from overrides import apply_overrides  # noqa: E402

BEAM = ["--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]


def unshared(config: Config) -> Config:
    """Every feature its own table: no sharing between history lists and candidate ids."""
    data = config.to_dict()
    for feature in data["features"]:
        feature.pop("shared_embedding", None)
    return config_from_dict(data)


def exact_user_vocab(config: Config) -> Config:
    """user_id looked up in an exact vocabulary instead of hashed into buckets."""
    data = config.to_dict()
    for feature in data["features"]:
        if feature["name"] == "user_id":
            feature["preprocessing"] = {"vocab": {"oov_buckets": 1}}
    return config_from_dict(data)


def other_combiner(config: Config) -> Config:
    """Weighted lists pooled by the other combiner: summed if the config mean-pools them, else mean-pooled."""
    data = config.to_dict()
    for feature in data["features"]:
        if feature["kind"] == "weighted_ids":
            feature["combiner"] = "sum" if feature.get("combiner") == "mean" else "mean"
    return config_from_dict(data)


def other_table_optimizer(config: Config) -> Config:
    """Dense Adam on the tables if the config uses lazy_adam there, else lazy_adam."""
    lazy = config.training.embedding_optimizer == "lazy_adam"
    return with_overrides(config, {"training": {"embedding_optimizer": "same" if lazy else "lazy_adam"}})


def table_rate(config: Config) -> float:
    """The tables' learning rate as the trainer resolves it: their own, else the dense one."""
    return config.training.embedding_learning_rate or config.training.learning_rate


# name -> (how the config changes, whether preprocessing changes, shuffle)
def training_at(**training) -> Callable[[Config], Config]:
    """The config with these ``training`` values."""
    return lambda c: with_overrides(c, {"training": training})


def tables_at(rate: float) -> Callable[[Config], Config]:
    """The tables' LazyAdam at ``rate``, the dense layers at the shipped rate."""
    return training_at(embedding_learning_rate=rate)


def dense_at(rate: float) -> Callable[[Config], Config]:
    """The dense layers at ``rate``, the tables kept at the rate they train at now."""
    return lambda c: with_overrides(c, {"training": {"learning_rate": rate, "embedding_learning_rate": table_rate(c)}})


ABLATIONS = {
    "shipped": (lambda c: c, False, "window"),
    "embedding init N(0, 1e-4)": (lambda c: with_overrides(c, {"model": {"embedding_init_stddev": 1e-4}}), False,
                                  "window"),
    "no shared tables": (unshared, True, "window"),
    "user_id exact vocabulary (not 20k hash buckets)": (exact_user_vocab, True, "window"),
    "tables: dense Adam <-> lazy_adam": (other_table_optimizer, False, "window"),
    "tables: adagrad 0.05": (training_at(embedding_optimizer="adagrad", embedding_learning_rate=0.05), False, "window"),
    "full shuffle (not 4-batch windows)": (lambda c: c, False, "full"),
    "weighted lists: sum <-> mean pooling": (other_combiner, False, "window"),
    "learning rate 0.002": (training_at(learning_rate=0.002), False, "window"),
    "tables: lazy_adam at 0.004 (rest at the shipped rate)": (tables_at(0.004), False, "window"),
    "tables: lazy_adam at 0.008 (rest at the shipped rate)": (tables_at(0.008), False, "window"),
    "learning rate 0.0005": (training_at(learning_rate=0.0005), False, "window"),
    "dense layers at 0.0015 (tables at the shipped rate)": (dense_at(0.0015), False, "window"),
    "dense layers at 0.002 (tables at the shipped rate)": (dense_at(0.002), False, "window"),
    "dense layers at 0.0007 (tables at the shipped rate)": (dense_at(0.0007), False, "window"),
    "tables: lazy_adam at 0.003 (rest at the shipped rate)": (tables_at(0.003), False, "window"),
    "tables: lazy_adam at 0.005 (rest at the shipped rate)": (tables_at(0.005), False, "window"),
    "towers: dropout 0.1": (lambda c: with_overrides(c, {"model": {"dropout": 0.1}}), False, "window"),
    "no shared tables, dense layers at 0.0015 (tables at the shipped rate)": (
        lambda c: dense_at(0.0015)(unshared(c)), True, "window"),
    "both rates doubled (dense/tables ratio kept)": (
        lambda c: with_overrides(c, {"training": {"learning_rate": 2 * c.training.learning_rate,
                                                  "embedding_learning_rate": 2 * table_rate(c)}}), False, "window"),
}
# Rows that combine a preprocessing change with another: they reuse that change's transform.
SAME_TRANSFORM_AS = {"no shared tables, dense layers at 0.0015 (tables at the shipped rate)": "no shared tables"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="simulated impressions (half go to train)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "esmm_bench_ablation"))
    parser.add_argument("--base", default="simulator", help="the config ablated")
    parser.add_argument("--only", action="append", help="run only these rows (repeatable)")
    parser.add_argument("--skip-shipped", action="store_true", help="leave out the shipped row (no deltas then)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="change the ablated config first, e.g. model.embedding_init_stddev=0.0001 (repeatable)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work_dir = Path(args.work_dir)
    base = apply_overrides(load_config(args.base), args.set)
    if not (work_dir / "ingest" / "counts.json").is_file():
        simulate(SimulationSpec.for_preset("baseline", rows=args.rows), base, work_dir / "raw")
        ingest(base, str(work_dir / "raw"), str(work_dir / "ingest"), BEAM)
    names = [n for n in ABLATIONS if (n == "shipped" and not args.skip_shipped) or not args.only or n in args.only]
    loaded: dict[str, object] = {}
    results: dict[str, list[dict[str, float]]] = {}
    oracle = None
    started = time.perf_counter()
    for name in names:
        change, preprocessing, shuffle = ABLATIONS[name]
        config = change(base)
        words = re.findall(r"[a-z0-9]+", SAME_TRANSFORM_AS.get(name, name))
        key = "transform_" + "_".join(words) if preprocessing else "transform"
        if key not in loaded:
            out = work_dir / key
            if not tf.io.gfile.isdir(layout.join(layout.TransformLayout(str(out)).graph, "transform_fn")):
                transform(config, str(work_dir / "ingest"), str(out), BEAM)
            loaded[key] = load_data(config, str(out), str(work_dir / "ingest"),
                                    str(work_dir / "raw" / GROUND_TRUTH_FILE))
        data = loaded[key]
        oracle = oracle or oracle_scores(data.eval)
        results[name] = []
        for i in range(args.seeds):
            seed = config.training.seed + i
            run = fit_and_predict(data, with_overrides(config, {"training": {"seed": seed}}), seed=seed,
                                  shuffle=shuffle)
            results[name].append(score(data.eval, **run.predictions))
            print(f"{name} seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in results[name][-1].items())
                  + f" ({run.seconds:.0f} s, {run.examples_per_second:,.0f} ex/s)", flush=True)
    load = load_avg_short()
    print(f"\n{args.seeds} seeds each, {time.perf_counter() - started:.0f} s, load average {load}\n")
    print("| change (one at a time) | " + " | ".join(METRICS.values()) + " |")
    print("|---|" + "---|" * len(METRICS))
    print("| oracle (true probabilities) | " + " | ".join(f"{oracle[m]:.4f}" for m in METRICS) + " |")
    shipped = {m: float(np.mean([r[m] for r in results["shipped"]])) for m in METRICS} if "shipped" in results else None
    for name, runs in results.items():
        cells = []
        for metric in METRICS:
            values = [r[metric] for r in runs]
            mean, std = float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
            delta = "" if name == "shipped" or shipped is None else f" ({mean - shipped[metric]:+.4f})"
            cells.append((f"{mean:.4f} ± {std:.4f}" if len(values) > 1 else f"{mean:.4f}") + delta)
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
