"""The SavedModel that TF Serving loads: raw serialized tf.Example in, ctr / cvr / ctcvr out.

Layout: ``<export_base>/<version>/`` with ``saved_model.pb``, ``variables/``, ``assets/``
(the transform graph's vocabularies) and ``assets.extra/`` (the run's ``config.yaml`` and
``metrics.json``; TF Serving ignores it, and it travels with the model when pushed).
The version directory is written under a non-integer name and renamed when complete,
so a server watching ``<export_base>`` never loads a half-written model.

Signatures:
- ``serving_default``: ``examples`` string [n] -> ``ctr``, ``cvr``, ``ctcvr`` float32 [n].
  The tf.Transform graph runs inside; labels are not needed; a missing single-valued
  feature takes its default.
- ``transform_features``: ``examples`` string [n] (with labels) -> transformed features.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import tensorflow as tf
import tensorflow_transform as tft
import yaml

from esmm_model.config import Config
from esmm_model.errors import InputError
from esmm_model.model import EsmmModel, model_inputs
from esmm_model.schema import feature_spec

OUTPUTS = ("ctr", "cvr", "ctcvr")
EXAMPLES = tf.TensorSpec([None], tf.string, name="examples")


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
        inputs, _ = model_inputs(self._config, self.tft_layer(raw))
        outputs = self.model(inputs, training=False)
        return {name: outputs[name] for name in OUTPUTS}

    @tf.function(input_signature=[EXAMPLES])
    def transform_features(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        raw = tf.io.parse_example(examples, feature_spec(self._config, labels=True, defaults=True))
        return self.tft_layer(raw)


def export_saved_model(config: Config, model: EsmmModel, transform_dir: str | Path, export_base: str | Path,
                       version: int, metrics: dict[str, Any]) -> Path:
    """Writes ``<export_base>/<version>/`` and returns it; refuses to overwrite a version."""
    export_base = Path(export_base)
    final = export_base / str(version)
    if final.exists():
        raise InputError(f"model version {final} already exists; pass another version")
    staging = export_base / f".staging-{version}"
    shutil.rmtree(staging, ignore_errors=True)
    module = ServingModule(config, model, tft.TFTransformOutput(str(transform_dir)))
    tf.saved_model.save(module, str(staging), signatures={
        "serving_default": module.serve.get_concrete_function(),
        "transform_features": module.transform_features.get_concrete_function()})
    extra = staging / "assets.extra"
    extra.mkdir()
    (extra / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    (extra / "metrics.json").write_text(json.dumps(metrics, indent=2))
    staging.rename(final)
    return final
