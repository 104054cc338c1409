"""The tf.Transform ``preprocessing_fn``, generated from the feature config.

Per feature, by its preprocessing method:
- ``hash_buckets``: ``tf.strings.to_hash_bucket_fast`` into [0, N);
- ``vocab``: a vocabulary over the train split (top_k, min_frequency) plus OOV buckets;
- ``zscore``: ``tft.scale_to_z_score``;
- ``buckets``: ``tft.apply_buckets`` with the configured boundaries;
- ``auto``: a table sized from the train split: a vocabulary (ids seen ``min_frequency`` times
  or more, at most ``max_vocab`` + 1 of them) and its count of distinct ids. If the
  vocabulary holds at most ``max_vocab`` ids, ids are looked up in it
  (``oov_buckets`` more rows for the rest); otherwise every id is hashed into
  ceil(``hash_rows_per_id`` × distinct ids) rows. The choice is made in the graph from the
  analyzers' results, and the row count is written into the transformed schema as the feature's
  ``int_domain`` (``max`` = rows − 1), where ``table_sizes`` reads it.

Two analyzers serve every vocab and auto table (``_table_analyzer``): one writes the vocabulary files,
the other the sizes and distinct counts, each from one count of the ids of all tables.

A shared-embedding group gets one id space: its members are hashed with the same bucket
count (the config enforces equal preprocessing), or looked up in one vocabulary computed
over the ids of all members together, named after the group (``auto`` likewise sizes one table
from the ids of all members).

A weighted_ids feature stays sparse: its ids are mapped value by value, keeping the
indices, so ``<name>`` and ``<name>_weight`` stay aligned. Labels pass through.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tensorflow_transform import analyzers, annotators, schema_inference

from esmm_model.config import LABELS, AutoSize, Config, Feature
from esmm_model.errors import InputError

Tensor = tf.Tensor | tf.SparseTensor


def _values(x: Tensor) -> tf.Tensor:
    return x.values if isinstance(x, tf.SparseTensor) else tf.reshape(x, [-1])


def _map_ids(x: Tensor, fn: Callable[[tf.Tensor], tf.Tensor]) -> Tensor:
    if isinstance(x, tf.SparseTensor):
        return tf.SparseTensor(x.indices, fn(x.values), x.dense_shape)
    return fn(x)


def _hash(x: Tensor, buckets: int) -> Tensor:
    def fn(values: tf.Tensor) -> tf.Tensor:
        if values.dtype != tf.string:
            values = tf.strings.as_string(values)
        return tf.strings.to_hash_bucket_fast(values, buckets)

    return _map_ids(x, fn)


def _tables(config: Config, method: str) -> dict[str, list[Feature]]:
    """The features of each embedding table whose preprocessing is ``method``."""
    members: dict[str, list[Feature]] = {}
    for feature in config.features:
        if feature.preprocessing.method == method:
            members.setdefault(feature.table_name, []).append(feature)
    return members


@dataclass(frozen=True)
class _TableSpec:
    """What ``_table_analyzer`` needs of one vocab or auto table: its name (the vocabulary file's), the
    vocabulary's cap and frequency threshold, and whether its ids are strings."""

    name: str
    top_k: int | None
    min_frequency: int
    strings: bool


def _empty_vocabulary_entry(strings: bool) -> bytes:
    """The one entry tf.Transform writes into a vocabulary that no id qualifies for (a lookup table needs a line)."""
    return analyzers.get_empy_vocabulary_dummy_value(tf.string if strings else tf.int64)[1]


def _vocabulary_entries(spec: _TableSpec, counts: Counter) -> list[bytes]:
    """A table's vocabulary from its id counts, as ``tft.vocabulary`` writes it: ids seen ``min_frequency`` times or
    more, most frequent first, ties by id descending, at most ``top_k``; the empty string and ids holding a line
    break left out."""
    kept = sorted(((n, token) for token, n in counts.items() if n >= spec.min_frequency and
                   (not spec.strings or (token and b"\n" not in token and b"\r" not in token))),
                  reverse=True)[:spec.top_k]
    return [token if spec.strings else str(token).encode() for _, token in kept]


def _table_analyzer(specs: list[_TableSpec], *, files: bool):
    """A Beam transform for ``tft.experimental.ptransform_analyzer`` over every vocab and auto table at once: batches of
    (unique ids, their counts) per table in, reduced in the graph. Out, with ``files``: each table's vocabulary
    file (``_vocabulary_entries``); without: the vector of vocabulary sizes and the vector of distinct ids per
    table (everything seen, for hash sizing). Two analyzers (tf.Transform 1.21 cannot bind asset and value
    outputs of one), where ``tft.vocabulary`` per table plus a distinct counter per auto table made 46 for
    Ali-CCP's 23 tables: their Beam stages, not the counting, were most of a transform's time
    (docs/benchmarks.md).
    """
    import apache_beam as beam  # only the transform step runs analyzers
    from tensorflow_transform.beam import experimental as tft_beam_experimental

    class CountIds(beam.CombineFn):
        def create_accumulator(self) -> list[Counter]:
            return [Counter() for _ in specs]

        def add_input(self, accumulator: list[Counter], batch: list) -> list[Counter]:
            for i, counts in enumerate(accumulator):
                counts.update(dict(zip(np.asarray(batch[2 * i]).tolist(), np.asarray(batch[2 * i + 1]).tolist())))
            return accumulator

        def merge_accumulators(self, accumulators) -> list[Counter]:
            accumulators = iter(accumulators)
            merged = next(accumulators)
            for accumulator in accumulators:
                for counts, more in zip(merged, accumulator):
                    counts.update(more)
            return merged

        def extract_output(self, accumulator: list[Counter]) -> list[Counter]:
            return accumulator

    class Tables(tft_beam_experimental.PTransformAnalyzer):
        def expand(self, batches):
            outputs = (batches | "CountIds" >> beam.CombineGlobally(CountIds())
                       | "Outputs" >> beam.Map(self._write_files if files else self._sizes))
            return tuple(outputs | f"Output{i}" >> beam.Map(lambda values, i=i: values[i])
                         for i in range(len(specs) if files else 2))

        def _write_files(self, counters: list[Counter]) -> list[np.ndarray]:
            tf.io.gfile.makedirs(self.base_temp_dir)
            paths = []
            for spec, counts in zip(specs, counters):
                path = os.path.join(self.base_temp_dir, spec.name)
                with tf.io.gfile.GFile(path, "wb") as f:
                    f.write(b"\n".join(_vocabulary_entries(spec, counts) or [_empty_vocabulary_entry(spec.strings)])
                            + b"\n")
                paths.append(np.array(path))
            return paths

        @staticmethod
        def _sizes(counters: list[Counter]) -> list[np.ndarray]:
            return [np.array([max(len(_vocabulary_entries(spec, counts)), 1) for spec, counts in zip(specs, counters)],
                             np.int64), np.array([len(counts) for counts in counters], np.int64)]

    return Tables()


class _AutoTable:
    """One ``auto`` table: the choice between its vocabulary and hashing into as many rows as it has distinct ids."""

    def __init__(self, auto: AutoSize, analyzed: _AnalyzedTable):
        self.auto = auto
        self.vocabulary = analyzed.vocabulary
        self.exact = analyzed.size <= auto.max_vocab
        hashed_rows = tf.maximum(tf.cast(tf.math.ceil(auto.hash_rows_per_id * tf.cast(analyzed.distinct, tf.float64)),
                                         tf.int64), 1)
        self.rows = tf.where(self.exact, analyzed.size + auto.oov_buckets, hashed_rows)

    def apply(self, x: Tensor) -> Tensor:
        looked_up = tft.apply_vocabulary(x, self.vocabulary, num_oov_buckets=self.auto.oov_buckets)

        def chosen(values: tf.Tensor, vocabulary_ids: tf.Tensor) -> tf.Tensor:
            def hashed() -> tf.Tensor:
                strings = values if values.dtype == tf.string else tf.strings.as_string(values)
                return tf.math.floormod(tf.strings.to_hash_bucket_fast(strings, 2**63 - 1), self.rows)

            # A cond, not a where: the table's mapping is fixed once analyzed, and only the chosen one runs
            # (in the transform and in every serving request).
            return tf.cond(self.exact, lambda: vocabulary_ids, hashed)

        if isinstance(x, tf.SparseTensor):
            ids = tf.SparseTensor(x.indices, chosen(x.values, looked_up.values), x.dense_shape)
        else:
            ids = chosen(x, looked_up)
        schema_inference.set_tensor_schema_override(_values(ids) if isinstance(ids, tf.SparseTensor) else ids,
                                                    tf.constant(0, tf.int64), self.rows - 1)
        return ids


@dataclass(frozen=True)
class _AnalyzedTable:
    """What the analyzers found for one vocab or auto table: its vocabulary file, the vocabulary's size and the
    number of distinct ids (scalar tensors, fixed once analyzed)."""

    vocabulary: tf.Tensor
    size: tf.Tensor
    distinct: tf.Tensor


def _analyzed_tables(config: Config, inputs: dict[str, Tensor]) -> dict[str, _AnalyzedTable]:
    """Every vocab and auto table analyzed by the two analyzers of ``_table_analyzer``. A vocab table's file is what
    ``tft.vocabulary`` with its top_k and frequency threshold writes (the golden-file test compares them)."""
    tables = {**_tables(config, "vocab"), **_tables(config, "auto")}
    if not tables:
        return {}
    specs, reduced = [], []
    for table, features in tables.items():
        pre = features[0].preprocessing
        ids = tf.concat([_values(inputs[f.name]) for f in features], axis=0)
        top_k, min_frequency = (pre.vocab.top_k, pre.vocab.min_frequency) if pre.method == "vocab" else \
            (pre.auto.max_vocab + 1, pre.auto.min_frequency)
        specs.append(_TableSpec(table, top_k, min_frequency, ids.dtype == tf.string))
        unique, _, counts = tf.unique_with_counts(ids, out_idx=tf.int64)
        reduced += [unique, counts]
    files = tft.experimental.ptransform_analyzer(
        reduced, _table_analyzer(specs, files=True), output_dtypes=[tf.string] * len(specs),
        output_shapes=[[]] * len(specs),
        output_asset_default_values=[_empty_vocabulary_entry(spec.strings) for spec in specs],
        name="vocabularies")
    sizes, distinct = tft.experimental.ptransform_analyzer(
        reduced, _table_analyzer(specs, files=False), output_dtypes=[tf.int64, tf.int64],
        output_shapes=[[len(specs)], [len(specs)]], name="table_sizes")
    for spec in specs:  # TFTransformOutput.vocabulary_file_by_name and vocabulary_size_by_name find the file
        annotators.annotate_asset(spec.name, spec.name)
    return {spec.name: _AnalyzedTable(files[i], sizes[i], distinct[i]) for i, spec in enumerate(specs)}


def make_preprocessing_fn(config: Config) -> Callable[[dict[str, Tensor]], dict[str, Tensor]]:
    """The preprocessing_fn for ``config``: raw features in, model features and labels out."""

    def preprocessing_fn(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        analyzed = _analyzed_tables(config, inputs)
        auto_tables = {table: _AutoTable(features[0].preprocessing.auto, analyzed[table])
                       for table, features in _tables(config, "auto").items()}
        outputs: dict[str, Tensor] = {}
        for feature in config.features:
            x = inputs[feature.name]
            pre = feature.preprocessing
            if pre.method == "hash_buckets":
                outputs[feature.name] = _hash(x, pre.hash_buckets)
            elif pre.method == "vocab":
                outputs[feature.name] = tft.apply_vocabulary(
                    x, analyzed[feature.table_name].vocabulary, num_oov_buckets=pre.vocab.oov_buckets)
            elif pre.method == "auto":
                outputs[feature.name] = auto_tables[feature.table_name].apply(x)
            elif pre.method == "zscore":
                outputs[feature.name] = tft.scale_to_z_score(x)
            else:
                outputs[feature.name] = tft.apply_buckets(x, tf.constant([pre.buckets], tf.float32))
            if feature.kind == "weighted_ids":
                outputs[feature.weight_name] = inputs[feature.weight_name]
        for label in LABELS:
            outputs[label] = inputs[label]
        return outputs

    return preprocessing_fn


def table_sizes(config: Config, tft_output: tft.TFTransformOutput) -> dict[str, int]:
    """Rows of each embedding table: the size of the id space its features map into (for ``auto``,
    what the transform chose, read from the transformed schema)."""
    sizes = {}
    schema = None
    for feature in config.features:
        pre = feature.preprocessing
        if pre.method == "hash_buckets":
            sizes[feature.table_name] = pre.hash_buckets
        elif pre.method == "vocab":
            sizes[feature.table_name] = tft_output.vocabulary_size_by_name(feature.table_name) + pre.vocab.oov_buckets
        elif pre.method == "buckets":
            sizes[feature.table_name] = len(pre.buckets) + 1
        elif pre.method == "auto":
            schema = schema or {f.name: f for f in tft_output.transformed_metadata.schema.feature}
            domain = schema[feature.name].int_domain if feature.name in schema else None
            if domain is None or not domain.HasField("max"):
                raise InputError(f"feature {feature.name!r} has auto preprocessing but the transform output "
                                 f"records no table size for it; transform again with this config")
            sizes[feature.table_name] = domain.max + 1
    return sizes
