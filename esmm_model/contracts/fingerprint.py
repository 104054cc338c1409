"""A SavedModel's identity: the fingerprint that binds a blessing to the model it was computed for.

TFX's Pusher checks that a blessing points at the exact model artifact it judged; outside TFX the
artifact is a directory, so its identity is a digest of what makes it that model: the graph and
signatures (``saved_model.pb``) and the variables' index (``variables/variables.index``, which
names every variable's shape and the checksum of its bytes in the data shards). The evaluator
records it in the blessing; the pusher recomputes it and refuses a model that differs.
"""
from __future__ import annotations

import hashlib

import tensorflow as tf

from esmm_model.contracts import layout
from esmm_model.errors import InputError

VARIABLES_INDEX = "variables/variables.index"
IDENTITY_FILES = (layout.SAVED_MODEL_PB, VARIABLES_INDEX)
_CHUNK = 1 << 20


def model_fingerprint(model_dir: str) -> str:
    """``sha256:<hex>`` over ``saved_model.pb`` and ``variables/variables.index`` of ``model_dir`` (a path
    or URI); a missing index counts as its own value, so a model stripped of its variables differs."""
    if not tf.io.gfile.exists(layout.join(model_dir, layout.SAVED_MODEL_PB)):
        raise InputError(f"model directory {model_dir!r} is not a SavedModel: it has no saved_model.pb")
    digest = hashlib.sha256()
    for name in IDENTITY_FILES:
        path = layout.join(model_dir, name)
        digest.update(name.encode() + b"\0")
        if not tf.io.gfile.exists(path):
            digest.update(b"absent\0")
            continue
        digest.update(str(tf.io.gfile.stat(path).length).encode() + b"\0")
        with tf.io.gfile.GFile(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"
