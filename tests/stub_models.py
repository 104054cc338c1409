"""Test doubles for serving: a stand-in SavedModel with the trainer's serving contract, and
reference tf.Example packing with protobuf message classes.

The stand-in's ``serving_default`` takes ``examples`` (DT_STRING, [n]) of raw tf.Example,
parses them with the serving spec and returns ``ctr``, ``cvr`` and ``ctcvr`` (float32, [n])
as deterministic functions of every feature, shifted by a per-version constant so that
tests can tell versions apart; a ``backwards`` stand-in ranks by the same score negated. Its
``rank`` takes ``context`` and ``examples`` and scores each row's two Examples merged.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import tensorflow as tf
from tensorflow.core.example import example_pb2

from esmm_model.config import Config
from esmm_model.schema import feature_spec

_BUCKETS = 97


def version_bias(version: int) -> float:
    """The logit shift that marks a stand-in model's version."""
    return 0.1 * version


class _StubModel(tf.Module):
    def __init__(self, config: Config, version: int, backwards: bool = False) -> None:
        super().__init__()
        self._sign = -1.0 if backwards else 1.0
        self._config = config
        self._spec = feature_spec(config, labels=False, defaults=True)
        self._bias = version_bias(version)

    def _id_value(self, ids: tf.Tensor) -> tf.Tensor:
        if ids.dtype == tf.string:
            ids = tf.strings.to_hash_bucket_fast(ids, _BUCKETS)
        return tf.cast(tf.math.floormod(ids, _BUCKETS), tf.float32) / _BUCKETS

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        parsed = tf.io.parse_example(examples, self._spec)
        z = tf.zeros(tf.shape(examples), tf.float32)
        for i, feature in enumerate(self._config.features):
            weight = (i + 1) / len(self._config.features)
            if feature.kind == "dense":
                value = tf.tanh(parsed[feature.name])
            elif feature.kind == "id":
                value = self._id_value(parsed[feature.name])
            else:
                ids, weights = parsed[feature.name], parsed[feature.weight_name]
                products = tf.SparseTensor(ids.indices, self._id_value(ids.values) * weights.values, ids.dense_shape)
                value = tf.sparse.reduce_sum(products, axis=1)
            z += weight * value
        z = self._sign * z
        ctr = tf.sigmoid(z - 3.0 + self._bias)
        cvr = tf.sigmoid(1.0 - z + self._bias)
        return {"ctr": ctr, "cvr": cvr, "ctcvr": ctr * cvr}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="context"),
                                  tf.TensorSpec([None], tf.string, name="examples")])
    def rank(self, context: tf.Tensor, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        return self.serve(tf.strings.join([context, examples]))  # concatenated Examples parse as the merged one


def save_stub_model(config: Config, model_dir: Path | str, version: int, *, backwards: bool = False) -> Path:
    """Pushes a stand-in model as ``<model_dir>/<version>``, renaming a finished sibling into place."""
    final = Path(model_dir) / str(version)
    staging = Path(model_dir) / f".staging-{version}"
    model = _StubModel(config, version, backwards)
    tf.saved_model.save(model, str(staging), signatures={"serving_default": model.serve, "rank": model.rank})
    staging.rename(final)
    return final


def reference_example(config: Config, values: Mapping[str, Any]) -> example_pb2.Example:
    """The straightforward construction: one Example built with the message classes."""
    example = example_pb2.Example()
    for name, value in values.items():
        if value is None:
            continue
        feature = config.feature(name)
        slot = example.features.feature
        if feature.kind == "dense":
            slot[name].float_list.value.append(value)
            continue
        ids, weights = (value if feature.kind == "weighted_ids" else ([value], None))
        if not len(ids):
            continue
        ids = [i.encode() if isinstance(i, str) else i for i in ids]
        (slot[name].int64_list if feature.dtype == "int64" else slot[name].bytes_list).value.extend(ids)
        if weights is not None:
            slot[feature.weight_name].float_list.value.extend(weights)
    return example


def reference_pack(config: Config, shared: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """One full Example per candidate, shared features copied into each."""
    return [reference_example(config, {**shared, **c}).SerializeToString() for c in candidates]


def reference_pack_shared(config: Config, shared: Mapping[str, Any],
                          candidates: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """The shared-part trick with message classes: shared Example serialized once, then appended to."""
    head = reference_example(config, shared).SerializeToString()
    return [head + reference_example(config, c).SerializeToString() for c in candidates]


# TF Serving's model config as the tests serve it: versions 1 and 2 pinned, labelled stable and canary
# (base_path left to fill with %).
MODELS_CONFIG = """
model_config_list {
  config {
    name: "esmm"
    base_path: "%s"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
  }
}
"""

