"""The model store: TF Serving's ``<serving_base>/<model_name>/<version>/`` layout, and its version listing.

A version is a directory whose name is ASCII digits (``str.isdigit`` also accepts '²', which ``int``
rejects; TF Serving skips every other name, which is how a push hides its unfinished copy). A version
is servable once it holds ``saved_model.pb``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

import tensorflow as tf

from esmm_model.contracts import layout
from esmm_model.contracts.blessing import read_json
from esmm_model.contracts.model_config import ModelConfig
from esmm_model.errors import InputError

STABLE = "stable"

VERSION_NAME = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class PushedModel:
    """A version under ``<serving_base>/<model_name>/`` and the metrics recorded with it (None if none)."""

    version: int
    path: str
    metrics: Optional[dict[str, Any]]


def versions(model_base: str) -> list[int]:
    """Every integer-named version directory under ``model_base``, ascending; empty if there is none."""
    if not tf.io.gfile.isdir(model_base):
        return []
    names = (entry.rstrip("/") for entry in tf.io.gfile.listdir(model_base))
    return sorted(int(name) for name in names
                  if VERSION_NAME.fullmatch(name) and tf.io.gfile.isdir(layout.join(model_base, name)))


def servable_versions(model_base: str) -> list[int]:
    """The versions that hold a saved_model.pb, ascending (TF Serving's rule)."""
    return [v for v in versions(model_base)
            if tf.io.gfile.exists(layout.join(model_base, str(v), layout.SAVED_MODEL_PB))]


def pushed_versions(serving_base: str, model_name: str) -> list[int]:
    """Every version directory of ``model_name`` under ``serving_base``, ascending."""
    return versions(layout.model_base(serving_base, model_name))


def pushed_model(serving_base: str, model_name: str, version: int) -> PushedModel:
    """Version ``version`` of ``model_name`` and the metrics recorded with it."""
    path = layout.version_dir(serving_base, model_name, version)
    metrics_path = layout.record_file(path, layout.RECORD_METRICS)
    metrics = read_json(metrics_path, "metrics") if tf.io.gfile.exists(metrics_path) else None
    return PushedModel(version, path, metrics)


def latest_pushed(serving_base: str, model_name: str) -> Optional[PushedModel]:
    """The highest complete version (it holds saved_model.pb) and its recorded metrics; None if none is pushed."""
    servable = servable_versions(layout.model_base(serving_base, model_name))
    return pushed_model(serving_base, model_name, servable[-1]) if servable else None


def served_baseline(serving_base: str, model_name: str, model_config: Optional[ModelConfig] = None,
                    config_source: str = "the model config") -> Optional[PushedModel]:
    """The version a new model must beat: the one the model config labels ``stable`` (what users are
    served) when it has that label, else the latest complete version; None when nothing is pushed.
    A ``stable`` label on a version missing from the store is a broken rollout, and raises."""
    stable = model_config.labels.get(STABLE) if model_config else None
    if stable is None:
        return latest_pushed(serving_base, model_name)
    servable = servable_versions(layout.model_base(serving_base, model_name))
    if stable in servable:
        return pushed_model(serving_base, model_name, stable)
    if not servable:
        return None  # the first push: the config already names the version it will create
    raise InputError(f"{config_source} labels version {stable} of {model_name!r} {STABLE}, but "
                     f"{layout.model_base(serving_base, model_name)} holds versions {servable}; "
                     f"point the {STABLE} label at a pushed version")
