"""TF Serving's model config file (``--model_config_file``): which versions of a model to load, and their labels.

The file is a text-format ``ModelServerConfig``; the same file configures ``tensorflow/serving``
on Kubernetes (k8s/base/serving/models.config), ``esmm serve``, and the pusher's retention
(``push.model_config_file``: a version the file labels or pins is never deleted), so a canary
rollout is rehearsed locally with the file that will ship. Only what a single TensorFlow model
needs is honoured: ``name``, ``base_path``, ``model_version_policy`` (latest N, all, specific)
and ``version_labels``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from esmm_model.errors import InputError


@dataclass(frozen=True)
class VersionPolicy:
    """Which of the versions on disk to serve: the ``latest`` N, ``all``, or ``specific`` ones."""

    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve among ``available`` (ascending), as TF Serving's policy picks them."""
        if self.kind == "all":
            return list(available)
        if self.kind == "specific":
            return [v for v in available if v in self.versions]
        return list(available[-self.num_versions:])


@dataclass(frozen=True)
class ModelConfig:
    """One served model: its name, the base path holding ``<version>/`` folders, policy and labels."""

    name: str
    base_path: str
    policy: VersionPolicy = VersionPolicy()
    labels: Mapping[str, int] = field(default_factory=dict)

    def needed_versions(self, available: Sequence[int]) -> dict[int, str]:
        """The versions among ``available`` that TF Serving serves or may be asked for under this config,
        each with why: a label names it, the specific policy pins it, or the latest policy serves it.
        Deleting one of them makes TF Serving unload it, and its clients get NOT_FOUND."""
        why: dict[int, list[str]] = {}
        for label, version in sorted(self.labels.items()):
            why.setdefault(version, []).append(f"labelled {label}")
        for version in self.policy.versions:
            why.setdefault(version, []).append("pinned by the specific version policy")
        if self.policy.kind == "latest":
            for version in self.policy.select(sorted(available)):
                why.setdefault(version, []).append("served as the latest")
        return {version: ", ".join(reasons) for version, reasons in sorted(why.items()) if version in available}


def parse_model_config(text: str, source: str) -> list[ModelConfig]:
    """The models of a ModelServerConfig text proto; InputError names ``source`` and the problem."""
    try:
        proto = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as exc:
        raise InputError(f"model config {source!r} is not a ModelServerConfig text proto: {exc}") from None
    if proto.WhichOneof("config") != "model_config_list":
        raise InputError(f"model config {source!r} has no model_config_list")
    models = []
    for i, entry in enumerate(proto.model_config_list.config):
        where = f"model config {source!r}, config[{i}]"
        if not entry.name or not entry.base_path:
            raise InputError(f"{where}: name and base_path are required")
        if entry.model_platform not in ("", "tensorflow"):
            raise InputError(f"{where} ({entry.name}): model_platform {entry.model_platform!r} is not tensorflow")
        models.append(ModelConfig(entry.name, entry.base_path, _policy(entry.model_version_policy, where),
                                  dict(entry.version_labels)))
    return models


def read_model_config(path: str, model_name: str) -> ModelConfig:
    """The entry for ``model_name`` in the config file at ``path`` (local or any tf.io.gfile URI)."""
    try:
        with tf.io.gfile.GFile(path, "r") as handle:
            text = handle.read()
    except tf.errors.OpError as exc:
        raise InputError(f"model config {path!r} cannot be read: {' '.join(exc.message.split())}") from None
    models = {model.name: model for model in parse_model_config(text, path)}
    if model_name not in models:
        raise InputError(f"model config {path!r} has no model named {model_name!r} "
                         f"(it names {', '.join(sorted(models)) or 'none'})")
    return models[model_name]


def _policy(proto: Any, where: str) -> VersionPolicy:
    """A ``FileSystemStoragePathSourceConfig.ServableVersionPolicy``; unset means the latest version."""
    kind = proto.WhichOneof("policy_choice")
    if kind == "all":
        return VersionPolicy("all")
    if kind == "specific":
        if not proto.specific.versions:
            raise InputError(f"{where}: model_version_policy.specific lists no versions")
        return VersionPolicy("specific", versions=tuple(sorted(proto.specific.versions)))
    if kind == "latest" and proto.latest.num_versions:
        return VersionPolicy("latest", num_versions=proto.latest.num_versions)
    return VersionPolicy()
