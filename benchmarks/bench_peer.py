"""Side by side on the same rows, per simulator story: DeepCTR 0.9.4's ESMM (the peer), our trainer, and the oracle.

The protocol (dev/test): every config and default is chosen on dev worlds, drawn with data seed 7
(the dev preset ``baseline`` and, from round 8 on, the other stories' worlds at that seed too) and
models trained with seeds 42-44; results are reported on every story (``components/simulator.py``,
docs/simulator.md), each world drawn with data seed 2001 and models trained with seeds 1001-1005,
none of which any choice ever used. ``--protocol dev`` runs ``--presets`` (default: the dev preset)
at the dev data seed with the dev seeds (for choosing); ``--protocol test`` (the default) runs
``--presets`` (default: all) at the test data seed with the test seeds (for reporting).

Data per story: simulated at the story's ``--size`` (1m: 1M rows) or ``--rows``, ingested and
transformed once into --work-dir with our config (``--config``, default simulator.yaml; time split:
the earlier half trains); later runs reuse them, found by the config's name and a digest of its
``input`` and ``features`` (a changed preprocessing gets new ones). Per seed:
- ours: ``components.train.executor.train`` (the production trainer, the config plus --set overrides),
  scored through the exported ``serving_default`` on the raw eval split;
- peer: ``deepctr.models.multitask.ESMM`` in .peer-venv (``make peer-venv``, run with
  TF_USE_LEGACY_KERAS=1) on the same train and eval rows, decoded from the same ingested
  TFRecords with exact per-field vocabularies of the train split (DeepCTR's usual setup:
  one table per field, weighted lists as ``VarLenSparseFeat(combiner="sum")`` with their
  weights, price z-scored as a ``DenseFeat``, the hour bucketed as ours is); same towers,
  embedding size, Adam learning rate, batch size and epochs;
- oracle: the simulator's true probabilities.
``--peer-learning-rate`` (repeatable) gives the peer its own Adam learning rate(s), one peer row
each; by default it uses our config's dense rate. So when our rate moves from the issue's 1e-3,
the peer can be run at both and is not handicapped by a rate tuned for us.
``--tables aliccp`` sizes every embedding table as esmm_model/configs/aliccp.yaml sizes its Ali-CCP field
(2.4M rows, ``bench_train.aliccp_sized``) for both: ours hashes into them, the peer's exact ids index
tables of the same sizes, shared as ours are (one vocabulary per shared group, DeepCTR's
``embedding_name``). That is the cost a user pays at Ali-CCP scale, where exact vocabularies
hold millions of ids too.
Prints progress as plain lines, then one table per story: the four AUCs (CTR, CTCVR, CVR on
clicked, entire-space CVR against would_convert) and train examples/s (mean over epochs after
the first), mean ± std over seeds, with the load average.

    make peer-venv
    .venv/bin/python benchmarks/bench_peer.py [--protocol test|dev] [--presets baseline,clickbait,...] \\
        [--size 1m|small] [--rows N] [--seeds 3] [--work-dir DIR] [--config simulator] [--tables aliccp] \\
        [--set training.embedding_optimizer=lazy_adam ...] [--peer-learning-rate 0.001 ...]
    # a smoke run: .venv/bin/python benchmarks/bench_peer.py --size small --seeds 1 --set training.epochs=1
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components import console  # noqa: E402

console.quiet_process()  # before TensorFlow or Beam load; ESMM_VERBOSE=1 shows their lines

import tensorflow as tf  # noqa: E402

from bench_train import aliccp_sized  # noqa: E402
from components.devtools.simulator import GROUND_TRUTH_FILE, STORIES, SimulationSpec, simulate  # noqa: E402
from components.evaluate.executor import CANDIDATE, score_split  # noqa: E402
from components.ingest.executor import ingest  # noqa: E402
from components.train.executor import train  # noqa: E402
from components.transform.executor import transform  # noqa: E402
from esmm_model.config import LABEL_CLICK, LABEL_CONVERSION, Config, load_config, with_overrides  # noqa: E402
from esmm_model.contracts import layout  # noqa: E402
from esmm_model.contracts.ground_truth import GroundTruth, join_ground_truth, load_ground_truth  # noqa: E402
from esmm_model.metrics import paper_aucs  # noqa: E402
from esmm_model.schema import SAMPLE_ID, feature_spec  # noqa: E402
from load_average import load_avg_short  # noqa: E402
from overrides import apply_overrides  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PEER_PYTHON = REPO / ".peer-venv" / "bin" / "python"
BEAM = ["--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
COLUMNS = (("ctr_auc", "CTR"), ("ctcvr_auc", "CTCVR"), ("cvr_auc_clicked", "CVR clicked"),
           ("entire_space_cvr_auc", "CVR entire space"))


DEV_PRESET = "baseline"
DEV_DATA_SEED = 7  # SimulationSpec's default seed: the world every choice so far was made on
DEV_SEEDS = (42, 43, 44)  # training seeds of the choices (simulator.yaml's training.seed and the next two)
TEST_DATA_SEED = 2001  # the world each story is drawn from for reporting; no choice used it
TEST_SEEDS = (1001, 1002, 1003, 1004, 1005)  # training seeds for reporting; no choice used them


def data_dirs(config: Config, work_dir: Path, tables: str) -> tuple[Path, Path]:
    """The ingest and transform dirs of ``config`` under work_dir, named by a digest of what those steps read
    (``input`` and ``features``): a config whose preprocessing changed, under the same name, gets new ones
    instead of reusing stale vocabularies."""
    read = {key: config.to_dict()[key] for key in ("input", "features")}
    digest = hashlib.sha1(json.dumps(read, sort_keys=True).encode()).hexdigest()[:10]
    return work_dir / f"ingest_{config.name}_{digest}", work_dir / f"transform_{config.name}_{digest}_{tables}"


def prepare(config: Config, spec: SimulationSpec, work_dir: Path, tables: str) -> tuple[Path, Path]:
    """Simulate, ingest and transform once into work_dir (later runs reuse them); the ingest and transform dirs."""
    ingest_dir, transform_dir = data_dirs(config, work_dir, tables)
    ingested, transformed = layout.IngestLayout(str(ingest_dir)), layout.TransformLayout(str(transform_dir))
    if not tf.io.gfile.exists(layout.join(str(work_dir / "raw"), "simulation.json")):
        _step(f"simulate {spec.rows:,} rows", lambda: print(simulate(spec, config, work_dir / "raw").describe()))
    if not tf.io.gfile.exists(ingested.counts):
        _step("ingest", lambda: ingest(config, str(work_dir / "raw"), ingested.root, BEAM))
    if not tf.io.gfile.isdir(layout.join(transformed.graph, "transform_fn")):
        _step("transform", lambda: transform(config, ingested.root, transformed.root, BEAM))
    return ingest_dir, transform_dir


def _step(what: str, run) -> None:
    started = time.perf_counter()
    print(f"  {what} ...", flush=True)
    run()
    print(f"  {what}: {time.perf_counter() - started:.0f} s (load {load_avg_short()})", flush=True)


def raw_split(config: Config, ingest_dir: Path, split: str) -> dict[str, np.ndarray | tuple]:
    """The ingested split as columns: single values as arrays, weighted lists as (row lengths, ids, weights)."""
    files = sorted(tf.io.gfile.glob(layout.IngestLayout(str(ingest_dir)).split_pattern(split)))
    spec = feature_spec(config)
    parts: dict[str, list] = {}
    for records in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(16384):
        parsed = tf.io.parse_example(records, spec)
        for name, value in parsed.items():
            if isinstance(value, tf.SparseTensor):
                lengths = np.bincount(value.indices[:, 0].numpy(), minlength=int(value.dense_shape[0]))
                parts.setdefault(name, []).append((lengths, value.values.numpy()))
            else:
                parts.setdefault(name, []).append(value.numpy())
    columns: dict[str, np.ndarray | tuple] = {}
    for name, values in parts.items():
        if isinstance(values[0], tuple):
            columns[name] = (np.concatenate([v[0] for v in values]), np.concatenate([v[1] for v in values]))
        else:
            columns[name] = np.concatenate(values)
    return columns


def _train_ids(feature, train_raw: dict) -> np.ndarray:
    return train_raw[feature.name][1] if feature.kind == "weighted_ids" else train_raw[feature.name]


def peer_arrays(config: Config, train_raw: dict, eval_raw: dict, sized: bool) -> tuple[dict, dict[str, np.ndarray]]:
    """DeepCTR's inputs: exact train vocabularies per field (0 pads, n+1 is out-of-vocabulary).

    ``sized``: one vocabulary and one table per shared group, as large as ``config`` makes that
    group's hash table (DeepCTR's ``embedding_name`` shares it)."""
    features, arrays = [], {}
    groups: dict[str, list[np.ndarray]] = {}
    for feature in config.features:
        if feature.kind != "dense":
            groups.setdefault(feature.table_name if sized else feature.name, []).append(_train_ids(feature, train_raw))
    vocabularies = {key: np.unique(np.concatenate(ids)) for key, ids in groups.items()}
    for feature in config.features:
        name = feature.name
        if feature.kind == "dense" and feature.preprocessing.method == "zscore":
            mean, std = float(train_raw[name].mean()), float(train_raw[name].std()) or 1.0
            for split, raw in (("train", train_raw), ("eval", eval_raw)):
                arrays[f"{split}/{name}"] = ((raw[name] - mean) / std).astype(np.float32)
            features.append({"name": name, "kind": "dense"})
            continue
        if feature.kind == "dense":  # bucketised, as our preprocessing does
            for split, raw in (("train", train_raw), ("eval", eval_raw)):
                arrays[f"{split}/{name}"] = np.searchsorted(feature.preprocessing.buckets, raw[name], side="right") + 1
            features.append({"name": name, "kind": "id", "vocabulary_size": len(feature.preprocessing.buckets) + 2})
            continue
        key = feature.table_name if sized else name
        vocab = vocabularies[key]
        oov = len(vocab) + 1
        table = {"embedding_name": key,
                 "vocabulary_size": max(oov + 1, feature.preprocessing.hash_buckets or 0) if sized else oov + 1}

        def encode(ids: np.ndarray) -> np.ndarray:
            position = np.searchsorted(vocab, ids)
            found = (position < len(vocab)) & (vocab[np.minimum(position, len(vocab) - 1)] == ids)
            return np.where(found, position + 1, oov).astype(np.int64)

        if feature.kind != "weighted_ids":
            for split, raw in (("train", train_raw), ("eval", eval_raw)):
                arrays[f"{split}/{name}"] = encode(raw[name])
            features.append({"name": name, "kind": "id", **table})
            continue
        maxlen = int(max(train_raw[name][0].max(), eval_raw[name][0].max(), 1))
        for split, raw in (("train", train_raw), ("eval", eval_raw)):
            lengths, ids = raw[name]
            _, weights = raw[feature.weight_name]
            rows = np.repeat(np.arange(len(lengths)), lengths)
            slots = np.arange(len(ids)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            padded_ids = np.zeros((len(lengths), maxlen), np.int64)
            padded_weights = np.zeros((len(lengths), maxlen, 1), np.float32)
            padded_ids[rows, slots] = encode(ids)
            padded_weights[rows, slots, 0] = weights
            arrays[f"{split}/{name}"], arrays[f"{split}/{feature.weight_name}"] = padded_ids, padded_weights
        features.append({"name": name, "kind": "weighted_ids", **table, "maxlen": maxlen})
    for split, raw in (("train", train_raw), ("eval", eval_raw)):
        arrays[f"{split}/click"] = raw[LABEL_CLICK].astype(np.float32)
        arrays[f"{split}/ctcvr"] = (raw[LABEL_CLICK] * raw[LABEL_CONVERSION]).astype(np.float32)
    return {"features": features}, arrays


def peer_table_rows(spec: dict) -> int:
    tables = {f["embedding_name"]: f["vocabulary_size"] for f in spec["features"] if "embedding_name" in f}
    return sum(tables.values())


def run_ours(config: Config, ingest_dir: Path, transform_dir: Path, truth: GroundTruth, truth_path: str,
             out: Path) -> dict[str, float]:
    result = train(config, str(transform_dir), str(out), version=1)
    eval_pattern = layout.IngestLayout(str(ingest_dir)).split_pattern(layout.EVAL)
    scores = score_split({CANDIDATE: result.export_dir}, eval_pattern)
    would_convert = join_ground_truth(truth, scores.sample_id, truth_path)[:, 2]
    pred = scores.outputs[CANDIDATE]
    history = result.metrics["history"]
    rates = [h["examples_per_second"] for h in history[1:]] or [history[0]["examples_per_second"]]
    return {**paper_aucs(scores.click, scores.conversion, pred["ctr"], pred["cvr"], pred["ctcvr"], would_convert),
            "examples_per_second": float(np.mean(rates))}


def run_peer(config: Config, spec: dict, data_path: Path, eval_raw: dict, would_convert: np.ndarray, seed: int,
             learning_rate: float, tmp: Path) -> dict[str, float]:
    training = config.training
    spec = {**spec, "seed": seed, "embedding_dim": config.model.embedding_dim,
            "tower_units": list(config.model.tower_units),
            "learning_rate": learning_rate, "batch_size": training.batch_size, "epochs": training.epochs}
    spec_path, out_path = tmp / f"spec-{seed}-{learning_rate}.json", tmp / f"peer-{seed}-{learning_rate}.npz"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run([str(PEER_PYTHON), str(REPO / "benchmarks" / "peer_deepctr.py"), str(spec_path), str(data_path),
                    str(out_path)], check=True, env=env)
    p = np.load(out_path)
    rates = p["examples_per_second"][1:] if len(p["examples_per_second"]) > 1 else p["examples_per_second"]
    return {**paper_aucs(eval_raw[LABEL_CLICK], eval_raw[LABEL_CONVERSION], p["ctr"], p["cvr"], p["ctcvr"],
                         would_convert),
            "examples_per_second": float(np.mean(rates))}


def _cell(values: list[float], fmt: str) -> str:
    if len(values) < 2:
        return format(values[0], fmt)
    return f"{format(float(np.mean(values)), fmt)} ± {format(float(np.std(values, ddof=1)), fmt)}"


def protocol_runs(protocol: str, presets: list[str] | None, seeds: int) -> tuple[list[str], int, list[int]]:
    """The stories, data seed and training seeds a protocol runs."""
    if protocol == "dev":
        presets, data_seed, pool = presets or [DEV_PRESET], DEV_DATA_SEED, DEV_SEEDS
    else:
        presets, data_seed, pool = presets or list(STORIES), TEST_DATA_SEED, TEST_SEEDS
    unknown = [p for p in presets if p not in STORIES]
    if unknown:
        raise SystemExit(f"bench_peer: unknown preset {unknown[0]!r}; known: {', '.join(STORIES)}")
    if not 1 <= seeds <= len(pool):
        raise SystemExit(f"bench_peer: --seeds must be 1..{len(pool)} under --protocol {protocol}, got {seeds}")
    return presets, data_seed, list(pool[:seeds])


def table(title: str, oracle: dict, results: dict[str, list[dict]]) -> str:
    lines = [title, "", "| model | " + " | ".join(f"{name} AUC" for _, name in COLUMNS) + " | train ex/s |",
             "|---|" + "---|" * (len(COLUMNS) + 1),
             "| oracle (true probabilities) | " + " | ".join(f"{oracle[k]:.4f}" for k, _ in COLUMNS) + " | |"]
    for label, runs in results.items():
        if runs:
            lines.append(f"| {label} | " + " | ".join(_cell([r[k] for r in runs], ".4f") for k, _ in COLUMNS)
                         + f" | {_cell([r['examples_per_second'] for r in runs], ',.0f')} |")
    return "\n".join(lines)


def run_preset(preset: str, args, config: Config, data_seed: int, seeds: list[int], peer_rates: list[float],
               sized: bool) -> str:
    """Prepares one story's data, runs ours and the peer on every seed, and returns its table."""
    started = time.perf_counter()
    spec = SimulationSpec.for_preset(preset, args.size, rows=args.rows, seed=data_seed)
    work_dir = Path(args.work_dir) / f"{preset}-{spec.rows}-data{data_seed}"
    ingest_dir, transform_dir = prepare(config, spec, work_dir, args.tables)
    config = apply_overrides(config, args.set)
    truth_path = str(work_dir / "raw" / GROUND_TRUTH_FILE)
    truth = load_ground_truth(truth_path)
    train_raw = raw_split(config, ingest_dir, "train")
    eval_raw = raw_split(config, ingest_dir, "eval")
    eval_truth = join_ground_truth(truth, eval_raw[SAMPLE_ID], truth_path)
    would_convert = eval_truth[:, 2]
    p_click, p_cvr = eval_truth[:, 0], eval_truth[:, 1]
    oracle = paper_aucs(eval_raw[LABEL_CLICK], eval_raw[LABEL_CONVERSION], p_click, p_cvr, p_click * p_cvr,
                        would_convert)
    training = config.training
    peer_spec, arrays = peer_arrays(config, train_raw, eval_raw, sized)
    print(f"  {len(train_raw[LABEL_CLICK]):,} train / {len(eval_raw[LABEL_CLICK]):,} eval rows "
          f"({int(train_raw[LABEL_CLICK].sum()):,} / {int(eval_raw[LABEL_CLICK].sum()):,} clicks); towers "
          f"{list(config.model.tower_units)}, emb {config.model.embedding_dim}, Adam {training.learning_rate} (peer "
          f"{', '.join(map(str, peer_rates))}), batch {training.batch_size}, {training.epochs} epochs; "
          f"ours: embedding_optimizer {training.embedding_optimizer} at "
          f"{training.embedding_learning_rate or training.learning_rate}; tables {args.tables} "
          f"({peer_table_rows(peer_spec):,} peer embedding rows)", flush=True)
    peer_rows = {rate: f"DeepCTR 0.9.4 ESMM (Adam {rate:g})" for rate in peer_rates}
    results: dict[str, list[dict]] = {**{label: [] for label in peer_rows.values()}, "esmm (ours)": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data_path = tmp_path / "peer_data.npz"
        np.savez(data_path, **arrays)
        for seed in seeds:
            seeded = with_overrides(config, {"training": {"seed": seed}})
            begun = time.perf_counter()
            results["esmm (ours)"].append(run_ours(seeded, ingest_dir, transform_dir, truth, truth_path,
                                                               tmp_path / f"ours-{seed}"))
            print(f"  ours seed {seed} ({time.perf_counter() - begun:.0f} s, load {load_avg_short()}): "
                  f"{json.dumps(results['esmm (ours)'][-1])}", flush=True)
            for rate, label in ([] if args.skip_peer else peer_rows.items()):
                begun = time.perf_counter()
                results[label].append(run_peer(seeded, peer_spec, data_path, eval_raw, would_convert, seed, rate,
                                               tmp_path))
                print(f"  peer (Adam {rate:g}) seed {seed} ({time.perf_counter() - begun:.0f} s, "
                      f"load {load_avg_short()}): {json.dumps(results[label][-1])}", flush=True)
    title = (f"### {preset}: {spec.rows:,} rows, data seed {data_seed}, training seeds {', '.join(map(str, seeds))} "
             f"({time.perf_counter() - started:.0f} s, load average {load_avg_short()})")
    return table(title, oracle, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", choices=["test", "dev"], default="test",
                        help="test: report on --presets' test worlds with the test seeds; dev: on their dev worlds "
                             "with the seeds choices are made with (default: %(default)s)")
    parser.add_argument("--presets", help=f"comma-separated stories (default: all under test: {','.join(STORIES)}; "
                                          f"{DEV_PRESET} under dev)")
    parser.add_argument("--size", choices=["small", "1m"], default="1m",
                        help="each story's sizes (default: %(default)s)")
    parser.add_argument("--rows", type=int, help="simulated impressions, half go to train (default: the size's)")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per model (default: %(default)s)")
    parser.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "esmm_bench_peer"))
    parser.add_argument("--config", default="simulator", help="our config (default: %(default)s)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override our config, e.g. training.embedding_optimizer=lazy_adam (repeatable)")
    parser.add_argument("--tables", choices=["small", "aliccp"], default="small",
                        help="embedding table sizes: the config's, or Ali-CCP's hash tables for both")
    parser.add_argument("--skip-peer", action="store_true", help="run ours and the oracle only")
    parser.add_argument("--peer-learning-rate", type=float, action="append", metavar="RATE",
                        help="the peer's Adam learning rate, one peer row per rate (repeatable; default: our "
                             "config's training.learning_rate)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not args.skip_peer and not PEER_PYTHON.exists():
        raise SystemExit(f"{PEER_PYTHON} is missing: run `make peer-venv` first")
    presets, data_seed, seeds = protocol_runs(args.protocol, args.presets.split(",") if args.presets else None,
                                              args.seeds)
    config = load_config(args.config)
    sized = args.tables == "aliccp"
    if sized:
        config = aliccp_sized(config)
    peer_rates = args.peer_learning_rate or [apply_overrides(config, args.set).training.learning_rate]
    if any(not 0 < rate < float("inf") for rate in peer_rates):
        raise SystemExit(f"bench_peer: --peer-learning-rate must be positive and finite, got {peer_rates}")
    print(f"protocol {args.protocol}: choices are made on data seed {DEV_DATA_SEED}'s worlds (training seeds "
          f"{', '.join(map(str, DEV_SEEDS))}); this run: {', '.join(presets)} at data seed {data_seed}, training "
          f"seeds {', '.join(map(str, seeds))}; config {args.config}{' ' + ' '.join(args.set) if args.set else ''}",
          flush=True)
    started = time.perf_counter()
    tables = []
    for i, preset in enumerate(presets):
        print(f"[{i + 1}/{len(presets)} {preset}]", flush=True)
        tables.append(run_preset(preset, args, config, data_seed, seeds, peer_rates, sized))
        print("\n" + tables[-1] + "\n", flush=True)
    print(f"\n## bench_peer, protocol {args.protocol}: {time.perf_counter() - started:.0f} s, "
          f"load average {load_avg_short()}\n")
    print("\n\n".join(tables))


if __name__ == "__main__":
    main()
