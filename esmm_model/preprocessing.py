"""The tf.Transform ``preprocessing_fn``, generated from the feature config.

Per feature, by its preprocessing method:
- ``hash_buckets``: ``tf.strings.to_hash_bucket_fast`` into [0, N);
- ``vocab``: a vocabulary over the train split (top_k, min_frequency) plus OOV buckets;
- ``zscore``: ``tft.scale_to_z_score``;
- ``buckets``: ``tft.apply_buckets`` with the configured boundaries;
- ``auto``: a table sized from the train split. Two analyzers run per table: its vocabulary
  (ids seen ``min_frequency`` times or more, at most ``max_vocab`` + 1 of them) and the count of
  its distinct ids. If the vocabulary holds at most ``max_vocab`` ids, ids are looked up in it
  (``oov_buckets`` more rows for the rest); otherwise every id is hashed into
  ceil(``hash_rows_per_id`` × distinct ids) rows. The choice is made in the graph from the
  analyzers' results, and the row count is written into the transformed schema as the feature's
  ``int_domain`` (``max`` = rows − 1), where ``table_sizes`` reads it.

A shared-embedding group gets one id space: its members are hashed with the same bucket
count (the config enforces equal preprocessing), or looked up in one vocabulary computed
over the ids of all members together, named after the group (``auto`` likewise sizes one table
from the ids of all members).

A weighted_ids feature stays sparse: its ids are mapped value by value, keeping the
indices, so ``<name>`` and ``<name>_weight`` stay aligned. Labels pass through.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tensorflow_transform import schema_inference

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


def _vocabularies(config: Config, inputs: dict[str, Tensor]) -> dict[str, tf.Tensor]:
    """One deferred vocabulary per embedding table with vocab preprocessing."""
    vocabularies = {}
    for table, features in _tables(config, "vocab").items():
        vocab = features[0].preprocessing.vocab
        ids = tf.concat([_values(inputs[f.name]) for f in features], axis=0)
        vocabularies[table] = _vocabulary(ids, table, top_k=vocab.top_k, min_frequency=vocab.min_frequency)
    return vocabularies


def _vocabulary(ids: tf.Tensor, name: str, *, top_k: int | None, min_frequency: int) -> tf.Tensor:
    """``tft.vocabulary`` over 1-D ``ids``, each id counted with weight 1.

    The weights change how the counts are made, not what they are: unweighted, tf.Transform sends every
    id occurrence to Beam as an element of its own (tens of millions at 1M rows); weighted, each batch is
    reduced in the graph to its unique ids and their summed weights first. Same vocabulary file.
    """
    threshold = min_frequency if min_frequency > 1 else None
    return tft.vocabulary(ids, top_k=top_k, frequency_threshold=threshold, vocab_filename=name,
                          weights=tf.ones_like(ids, dtype=tf.float32))


def _count_distinct(tables: int):
    """A Beam transform for ``tft.experimental.ptransform_analyzer``: batches of ``tables`` id tensors in,
    the number of distinct ids of each (an int64 vector) out.

    Each batch's ids join a set per table in the combiner's accumulator, so an id costs a set insertion, not
    a Beam element of its own (as with ``beam.Distinct``). One analyzer counts every table: an analyzer per
    table added its own Beam stages, and a 23-table pipeline spent more time building and scheduling them
    than counting.
    """
    import apache_beam as beam  # only the transform step runs analyzers

    class DistinctIds(beam.CombineFn):
        def create_accumulator(self) -> list[set]:
            return [set() for _ in range(tables)]

        def add_input(self, accumulator: list[set], batch: list) -> list[set]:
            for seen, ids in zip(accumulator, batch):
                seen.update(np.asarray(ids).ravel().tolist())
            return accumulator

        def merge_accumulators(self, accumulators) -> list[set]:
            accumulators = iter(accumulators)
            merged = next(accumulators)
            for accumulator in accumulators:
                for seen, more in zip(merged, accumulator):
                    seen.update(more)
            return merged

        def extract_output(self, accumulator: list[set]) -> np.ndarray:
            return np.array([len(seen) for seen in accumulator], np.int64)

    return beam.CombineGlobally(DistinctIds())


class _AutoTable:
    """One ``auto`` table's vocabulary analyzer and the choice between its vocabulary and hashing into as many
    rows as it has ``distinct`` ids (a scalar analyzer result)."""

    def __init__(self, table: str, auto: AutoSize, ids: tf.Tensor, distinct: tf.Tensor):
        self.auto = auto
        self.vocabulary = _vocabulary(ids, table, top_k=auto.max_vocab + 1, min_frequency=auto.min_frequency)
        vocabulary_size = tf.cast(tft.experimental.get_vocabulary_size_by_name(table), tf.int64)
        self.exact = vocabulary_size <= auto.max_vocab
        hashed_rows = tf.maximum(tf.cast(tf.math.ceil(auto.hash_rows_per_id * tf.cast(distinct, tf.float64)),
                                         tf.int64), 1)
        self.rows = tf.where(self.exact, vocabulary_size + auto.oov_buckets, hashed_rows)

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


def _auto_tables(config: Config, inputs: dict[str, Tensor]) -> dict[str, _AutoTable]:
    tables = _tables(config, "auto")
    if not tables:
        return {}
    ids = {table: tf.concat([_values(inputs[f.name]) for f in features], axis=0) for table, features in tables.items()}
    distinct, = tft.experimental.ptransform_analyzer(
        [tf.unique(x).y for x in ids.values()], _count_distinct(len(ids)), output_dtypes=[tf.int64],
        output_shapes=[[len(ids)]], name="distinct_ids")
    return {table: _AutoTable(table, features[0].preprocessing.auto, ids[table], distinct[i])
            for i, (table, features) in enumerate(tables.items())}


def make_preprocessing_fn(config: Config) -> Callable[[dict[str, Tensor]], dict[str, Tensor]]:
    """The preprocessing_fn for ``config``: raw features in, model features and labels out."""

    def preprocessing_fn(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        vocabularies = _vocabularies(config, inputs)
        auto_tables = _auto_tables(config, inputs)
        outputs: dict[str, Tensor] = {}
        for feature in config.features:
            x = inputs[feature.name]
            pre = feature.preprocessing
            if pre.method == "hash_buckets":
                outputs[feature.name] = _hash(x, pre.hash_buckets)
            elif pre.method == "vocab":
                outputs[feature.name] = tft.apply_vocabulary(
                    x, vocabularies[feature.table_name], num_oov_buckets=pre.vocab.oov_buckets)
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
