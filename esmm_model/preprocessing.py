"""The tf.Transform ``preprocessing_fn``, generated from the feature config.

Per feature, by its preprocessing method:
- ``hash_buckets``: ``tf.strings.to_hash_bucket_fast`` into [0, N);
- ``vocab``: a vocabulary over the train split (top_k, min_frequency) plus OOV buckets;
- ``zscore``: ``tft.scale_to_z_score``;
- ``buckets``: ``tft.apply_buckets`` with the configured boundaries.

A shared-embedding group gets one id space: its members are hashed with the same bucket
count (the config enforces equal preprocessing), or looked up in one vocabulary computed
over the ids of all members together, named after the group.

A weighted_ids feature stays sparse: its ids are mapped value by value, keeping the
indices, so ``<name>`` and ``<name>_weight`` stay aligned. Labels pass through.
"""
from __future__ import annotations

from typing import Callable

import tensorflow as tf
import tensorflow_transform as tft

from esmm_model.config import LABELS, Config, Feature

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


def _vocabularies(config: Config, inputs: dict[str, Tensor]) -> dict[str, tf.Tensor]:
    """One deferred vocabulary per embedding table with vocab preprocessing."""
    members: dict[str, list[Feature]] = {}
    for feature in config.features:
        if feature.preprocessing.method == "vocab":
            members.setdefault(feature.table_name, []).append(feature)
    vocabularies = {}
    for table, features in members.items():
        vocab = features[0].preprocessing.vocab
        ids = tf.concat([_values(inputs[f.name]) for f in features], axis=0)
        threshold = vocab.min_frequency if vocab.min_frequency > 1 else None
        vocabularies[table] = tft.vocabulary(ids, top_k=vocab.top_k, frequency_threshold=threshold,
                                             vocab_filename=table)
    return vocabularies


def make_preprocessing_fn(config: Config) -> Callable[[dict[str, Tensor]], dict[str, Tensor]]:
    """The preprocessing_fn for ``config``: raw features in, model features and labels out."""

    def preprocessing_fn(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        vocabularies = _vocabularies(config, inputs)
        outputs: dict[str, Tensor] = {}
        for feature in config.features:
            x = inputs[feature.name]
            pre = feature.preprocessing
            if pre.method == "hash_buckets":
                outputs[feature.name] = _hash(x, pre.hash_buckets)
            elif pre.method == "vocab":
                outputs[feature.name] = tft.apply_vocabulary(
                    x, vocabularies[feature.table_name], num_oov_buckets=pre.vocab.oov_buckets)
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
    """Rows of each embedding table: the size of the id space its features map into."""
    sizes = {}
    for feature in config.features:
        pre = feature.preprocessing
        if pre.method == "hash_buckets":
            sizes[feature.table_name] = pre.hash_buckets
        elif pre.method == "vocab":
            sizes[feature.table_name] = tft_output.vocabulary_size_by_name(feature.table_name) + pre.vocab.oov_buckets
        elif pre.method == "buckets":
            sizes[feature.table_name] = len(pre.buckets) + 1
    return sizes
