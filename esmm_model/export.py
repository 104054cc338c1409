"""The SavedModel that TF Serving loads: raw serialized tf.Example in, ctr / cvr / ctcvr out.

A SavedModel directory holds ``saved_model.pb``, ``variables/`` and ``assets/`` (the transform
graph's vocabularies). The trainer adds the run's record (``esmm_model.contracts.model_record``),
chooses where the directory goes and makes a version appear whole (``components.train.executor``).

Signatures:
- ``serving_default``: ``examples`` string [n] -> ``ctr``, ``cvr``, ``ctcvr`` float32 [n].
  The tf.Transform graph runs inside; labels are not needed; a missing single-valued
  feature takes its default.
- ``rank``: ``context`` string [n] and ``examples`` string [n] -> the same outputs. Row b's
  user and context features are read from ``context[b]``, its item features from
  ``examples[b]``; the rows of one ranking request repeat the same context bytes, and each
  distinct context is parsed, transformed, embedded and multiplied into the towers' first
  layers once, not once per candidate. The scores equal ``serving_default``'s on the merged
  examples to float rounding. Both inputs have one row per candidate, so TF Serving's
  batching may concatenate requests and split large ones.
- ``transform_features``: ``examples`` string [n] (with labels) -> transformed features.
"""
from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

from esmm_model.config import Config
from esmm_model.errors import InputError
from esmm_model.model import EsmmModel, serving_inputs
from esmm_model.schema import CONTEXT_INPUT, OUTPUTS, RANK_SIGNATURE, SERVING_INPUT, SERVING_SIGNATURE, feature_spec

EXAMPLES = tf.TensorSpec([None], tf.string, name=SERVING_INPUT)
CONTEXTS = tf.TensorSpec([None], tf.string, name=CONTEXT_INPUT)


class ServingModule(tf.Module):
    """Holds the model and the transform layer, so both are tracked and saved."""

    def __init__(self, config: Config, model: EsmmModel, tft_output: tft.TFTransformOutput):
        super().__init__()
        self._config = config
        self.model = model
        self.tft_layer = tft_output.transform_features_layer()

    @tf.function(input_signature=[EXAMPLES])
    def serve(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        raw = tf.io.parse_example(examples, feature_spec(self._config, labels=False, defaults=True))
        outputs = self.model(serving_inputs(self._config, self.tft_layer(raw)), training=False)
        return {name: outputs[name] for name in OUTPUTS}

    @tf.function(input_signature=[CONTEXTS, EXAMPLES])
    def rank(self, context: tf.Tensor, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        distinct, rows = tf.unique(context, out_idx=tf.int64)
        shared = tf.io.parse_example(distinct, feature_spec(self._config, labels=False, defaults=True, shared=True))
        own = tf.io.parse_example(examples, feature_spec(self._config, labels=False, defaults=True, shared=False))
        # One transform call over both: the transform maps every feature on its own, so the shared features'
        # rows (one per distinct context) need not match the candidates'; two calls would each run the whole
        # transform graph, the features left out fed defaults.
        transformed = self.tft_layer({**shared, **own})
        outputs = self.model.score_with_contexts(serving_inputs(self._config, transformed), rows)
        return {name: outputs[name] for name in OUTPUTS}

    @tf.function(input_signature=[EXAMPLES])
    def transform_features(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        raw = tf.io.parse_example(examples, feature_spec(self._config, labels=True, defaults=True))
        return self.tft_layer(raw)


def save_serving_model(config: Config, model: EsmmModel, transform_dir: str, path: str) -> str:
    """Writes the SavedModel to ``path`` (local or a URI) and returns it."""
    if tf.io.gfile.exists(path):
        raise InputError(f"{path!r} already exists; a SavedModel is written to a new directory")
    module = ServingModule(config, model, tft.TFTransformOutput(transform_dir))
    tf.saved_model.save(module, path, signatures={
        SERVING_SIGNATURE: module.serve.get_concrete_function(),
        RANK_SIGNATURE: module.rank.get_concrete_function(),
        "transform_features": module.transform_features.get_concrete_function()})
    return path
