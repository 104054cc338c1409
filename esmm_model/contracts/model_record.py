"""The run's record that travels with a SavedModel: ``assets.extra/config.yaml`` and ``metrics.json``.

TF Serving ignores ``assets.extra/``; the record is copied with the model when it is pushed, so a served
version says which config trained it and what it scored.
"""
from __future__ import annotations

import json
from typing import Any

import tensorflow as tf
import yaml

from esmm_model.config import Config
from esmm_model.contracts import layout


def write_model_record(saved_model_dir: str, config: Config, metrics: dict[str, Any]) -> None:
    """Writes the config and the training metrics into ``<saved_model_dir>/assets.extra/``."""
    tf.io.gfile.makedirs(layout.join(saved_model_dir, layout.RECORD_DIR))
    with tf.io.gfile.GFile(layout.record_file(saved_model_dir, layout.RECORD_CONFIG), "w") as f:
        f.write(yaml.safe_dump(config.to_dict(), sort_keys=False))
    with tf.io.gfile.GFile(layout.record_file(saved_model_dir, layout.RECORD_METRICS), "w") as f:
        f.write(json.dumps(metrics, indent=2))
