"""Builds raw tf.Example rows from Python dicts, following the raw feature contract.

Tests write tiny ingest directories with it (``<dir>/train|eval/*.tfrecord.gz``), the
layout that ingestion produces.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf

from esmm_model.config import LABELS, Config
from esmm_model.contracts import layout
from esmm_model.schema import SAMPLE_ID, default_value


def _feature(values: Sequence[Any], dtype: tf.dtypes.DType) -> tf.train.Feature:
    if dtype == tf.string:
        encoded = [v if isinstance(v, bytes) else str(v).encode() for v in values]
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=encoded))
    if dtype == tf.int64:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))


def make_example(config: Config, row: Mapping[str, Any], *, labels: bool = True) -> bytes:
    """One serialized raw example.

    row: feature name -> value; a weighted_ids feature takes a list of (id, weight) pairs.
    Missing single-valued features get the contract's default, missing lists are empty.
    Labels: ``click`` and ``conversion`` (default 0); ``ctcvr`` is derived.
    """
    features: dict[str, tf.train.Feature] = {}
    for feature in config.features:
        id_type = tf.int64 if feature.dtype == "int64" else tf.string
        if feature.kind == "weighted_ids":
            pairs = row.get(feature.name, [])
            features[feature.name] = _feature([p[0] for p in pairs], id_type)
            features[feature.weight_name] = _feature([p[1] for p in pairs], tf.float32)
        elif feature.name in row:
            dtype = tf.float32 if feature.kind == "dense" else id_type
            features[feature.name] = _feature([row[feature.name]], dtype)
        elif labels:
            dtype = tf.float32 if feature.kind == "dense" else id_type
            features[feature.name] = _feature([default_value(feature)], dtype)
    if labels:
        click, conversion = int(row.get("click", 0)), int(row.get("conversion", 0))
        values = dict(zip(LABELS, (click, conversion, click & conversion)))
        for label in LABELS:
            features[label] = _feature([values[label]], tf.int64)
        features[SAMPLE_ID] = _feature([str(row.get(SAMPLE_ID, ""))], tf.string)
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def write_split(path: Path, examples: Sequence[bytes]) -> None:
    """Writes serialized examples as one GZIP TFRecord file, creating its directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for example in examples:
            writer.write(example)


def _draw_id(rng: np.random.Generator, vocabulary: int, int64: bool) -> int | str:
    value = int(rng.integers(vocabulary))
    return value if int64 else f"v{value}"


def random_rows(config: Config, n: int, seed: int, *, vocabulary: int = 20, click_rate: float = 0.3,
                conversion_rate: float = 0.3) -> list[dict[str, Any]]:
    """n random rows over small id spaces, with clicks and conversions (conversion implies click)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        row: dict[str, Any] = {SAMPLE_ID: f"s{seed}-{i}"}
        for feature in config.features:
            if feature.kind == "dense":
                row[feature.name] = float(rng.normal(10.0, 3.0))
                continue
            int64 = feature.dtype == "int64"
            if feature.kind == "weighted_ids":
                row[feature.name] = [(_draw_id(rng, vocabulary, int64), float(rng.integers(1, 4)))
                                     for _ in range(rng.integers(0, 5))]
            else:
                row[feature.name] = _draw_id(rng, vocabulary, int64)
        click = int(rng.random() < click_rate)
        row["click"], row["conversion"] = click, int(click and rng.random() < conversion_rate)
        rows.append(row)
    return rows


def write_ingest_dir(config: Config, root: Path, train_rows: Sequence[Mapping], eval_rows: Sequence[Mapping]) -> Path:
    """Writes rows in ingestion's output layout, with the row counts of its counts.json, and returns ``root``."""
    counts: dict[str, Any] = {"rows_read": len(train_rows) + len(eval_rows), "rejected": {}}
    for split, rows in ((layout.TRAIN, train_rows), (layout.EVAL, eval_rows)):
        write_split(root / split / f"part-00000{layout.RECORD_SUFFIX}", [make_example(config, r) for r in rows])
        counts[split] = {"rows": len(rows), "clicks": sum(r.get("click", 0) for r in rows),
                         "conversions": sum(r.get("conversion", 0) for r in rows)}
    (root / "counts.json").write_text(json.dumps(counts))
    return root
