"""The raw tf.Example contract, derived from the feature config, and the serving signature's names.

Feature names in tf.Example are the config names:
- ``id``: one value, bytes or int64;
- ``weighted_ids``: ``<name>`` ids plus ``<name>_weight`` floats of the same length;
- ``dense``: one float;
- labels ``click``, ``conversion`` and ``ctcvr`` (click AND conversion) as int64,
  and ``sample_id`` as bytes, which joins evaluation rows to the simulator's ground truth.

Ingestion writes every single-valued feature (a missing one as its default), so the
training spec has no defaults, as tf.Transform requires. The serving spec adds the
defaults, so a request that leaves a feature out is scored, not refused.
"""
from __future__ import annotations

from esmm_model.config import LABELS, Config, Feature

SAMPLE_ID = "sample_id"
# The serving signature: serialized raw tf.Example [n] in SERVING_INPUT, one probability [n] per name in OUTPUTS.
SERVING_SIGNATURE = "serving_default"
SERVING_INPUT = "examples"
OUTPUTS = ("ctr", "cvr", "ctcvr")
# The ranking signature: the request's shared features once per candidate row in CONTEXT_INPUT (rows of one
# request repeat the same bytes; the graph parses and embeds each distinct one once) and each candidate's own
# features in SERVING_INPUT, both serialized raw tf.Example [n]; the same OUTPUTS.
RANK_SIGNATURE = "rank"
CONTEXT_INPUT = "context"
SHARED_SIDES = ("user", "context")  # the sides whose features are the same for every candidate of a request
MISSING_BYTES = b""
MISSING_INT64 = -1
MISSING_FLOAT = 0.0


def id_dtype(feature: Feature):
    """The TensorFlow dtype of a feature's ids (TensorFlow is imported here, not at module load, so that
    ingestion's Beam workers, which need only the names and defaults, start without it)."""
    import tensorflow as tf

    return tf.int64 if feature.dtype == "int64" else tf.string


def default_value(feature: Feature) -> bytes | int | float:
    """What a missing single-valued feature is written or parsed as."""
    if feature.kind == "dense":
        return MISSING_FLOAT
    return MISSING_INT64 if feature.dtype == "int64" else MISSING_BYTES


def is_shared(feature: Feature) -> bool:
    """Whether the feature is the same for every candidate of a ranking request (a user or context feature)."""
    return feature.side in SHARED_SIDES


def feature_spec(config: Config, *, labels: bool = True, defaults: bool = False, shared: bool | None = None) -> dict:
    """The tf.io parsing spec of the raw examples.

    labels: include click, conversion, ctcvr and sample_id (training and evaluation data).
    defaults: give single-valued features defaults, for serving requests that omit them.
    shared: only the features shared per request (True) or only the candidates' own (False); None: all.
    """
    import tensorflow as tf

    spec: dict = {}
    for feature in config.features:
        if shared is not None and is_shared(feature) != shared:
            continue
        if feature.kind == "weighted_ids":
            spec[feature.name] = tf.io.VarLenFeature(id_dtype(feature))
            spec[feature.weight_name] = tf.io.VarLenFeature(tf.float32)
            continue
        dtype = tf.float32 if feature.kind == "dense" else id_dtype(feature)
        default = default_value(feature) if defaults else None
        spec[feature.name] = tf.io.FixedLenFeature([], dtype, default_value=default)
    if labels:
        for label in LABELS:
            spec[label] = tf.io.FixedLenFeature([], tf.int64)
        spec[SAMPLE_ID] = tf.io.FixedLenFeature([], tf.string)
    return spec


def schema_proto(config: Config):
    """The tensorflow_metadata Schema of the raw training examples."""
    from tensorflow_transform.tf_metadata import schema_utils

    return schema_utils.schema_from_feature_spec(feature_spec(config, labels=True))
