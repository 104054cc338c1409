"""Pusher: publishes a blessed SavedModel as ``<serving_base>/<model_name>/<version>/`` for TF Serving.

Versions are integers, each one more than the highest present. Every pushed version carries
its evaluation record in ``<version>/assets.extra/`` (TF Serving ignores that folder):
``metrics.json`` (the evaluator's nested metrics) and ``blessing.json`` (the verdict that let
it through). The evaluator finds the baseline to re-score with ``served_baseline``; the
record moves, and is deleted, together with its model. Given eval examples, the version also
carries ``assets.extra/tf_serving_warmup_requests`` (``esmm_model.contracts.warmup``), which TF
Serving replays before the version takes traffic.

Before publishing, the pusher checks that the blessing is this model's (its fingerprint,
``esmm_model.contracts.fingerprint``, matches the one the evaluator recorded) and loads the model
once, running its serving signature on the warmup examples, so a model TF Serving cannot load
never becomes a version, nor the next baseline.

Retention keeps the last ``keep_versions`` versions and, given TF Serving's model config
(``push.model_config_file``), every version it labels or pins, and those its latest-N policy
serves: TF Serving unloads a version whose directory disappears, and a label's clients would then
get NOT_FOUND. With labels, the baseline a blessing must have been judged against is the version
labelled ``stable`` (``served_baseline``), as in the evaluator.

Atomicity. The model is copied into a sibling named ``.tmp-<version>-<uuid>``, which TF
Serving skips because the name is not an integer, and only the finished copy is renamed to
``<version>``. On local disks and mounted volumes (POSIX rename) a version appears whole or
not at all: a crash before the rename leaves a stray temporary directory and the previous
version serving; the next push deletes a temporary directory once no file in it has changed
for ``STALE_TMP_AGE_S`` (a live concurrent push keeps writing into its own). Object stores
(``gs://``, ``s3://``) have no rename; gfile would copy object by object in any order. There
the finished copy is promoted by server-side copies with ``saved_model.pb`` last, then
deleted. What remains guaranteed: nothing is uploaded under the version name, and a version
holds ``saved_model.pb`` only once all its other files are in place, so a crash mid-promote
leaves a version TF Serving cannot load, never one it loads half-written. ``latest_pushed``
skips such incomplete versions.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import tensorflow as tf

from components.artifacts import storage
from esmm_model.contracts import layout
from esmm_model.contracts.blessing import Blessing, write_blessing, write_json
from esmm_model.contracts.fingerprint import model_fingerprint
from esmm_model.contracts.model_config import ModelConfig, read_model_config
from esmm_model.contracts.model_store import pushed_versions, served_baseline
from esmm_model.contracts.warmup import warmup_requests, write_warmup_file
from esmm_model.errors import EsmmError, InputError
from esmm_model.schema import OUTPUTS, RANK_SIGNATURE, SERVING_SIGNATURE

TMP_PREFIX = ".tmp-"
# A temporary directory with no file written for this long belongs to a push that died.
STALE_TMP_AGE_S = 15 * 60


@dataclass(frozen=True)
class PushResult:
    """What the Pusher did, and why."""

    pushed: bool
    reason: str
    version: Optional[int] = None
    path: Optional[str] = None
    removed_versions: tuple[int, ...] = ()
    removed_temporaries: tuple[str, ...] = ()
    kept_for_serving: tuple[str, ...] = ()  # older versions retention kept because the model config needs them

    def describe(self) -> str:
        lines = [f"pushed version {self.version} to {self.path}" if self.pushed else "not pushed", f"  {self.reason}"]
        if self.removed_versions:
            lines.append(f"  removed old versions {', '.join(map(str, self.removed_versions))}")
        if self.kept_for_serving:
            lines.append(f"  kept older versions the model config needs: {'; '.join(self.kept_for_serving)}")
        if self.removed_temporaries:
            lines.append(f"  removed the temporary directories of failed pushes: {', '.join(self.removed_temporaries)}")
        return "\n".join(lines)


def push(model_dir: str, blessing: Blessing, serving_base: str, model_name: str, keep_versions: int,
         metrics: Optional[Mapping[str, Any]] = None, warmup_examples: Sequence[bytes] = (), *,
         model_config_file: Optional[str] = None) -> PushResult:
    """Publishes ``model_dir`` as the next version if ``blessing`` allows it, then keeps the last ``keep_versions``
    and every version that ``model_config_file`` (TF Serving's ModelServerConfig, a path or URI) labels or pins.

    ``metrics`` (the evaluator's) are recorded with the version so that the next blessing can
    compare against them. ``warmup_examples`` (serialized raw tf.Examples) become the
    version's warmup requests, written before the version appears. An unblessed model, or a
    blessing judged against a baseline that is no longer the served baseline, is not pushed;
    the result says why. A blessing of another model, or a model that does not load, raises.
    """
    if keep_versions < 1:
        raise EsmmError(f"keep_versions must be at least 1, got {keep_versions}")
    if not tf.saved_model.contains_saved_model(model_dir):
        raise InputError(f"model directory {model_dir!r} is not a SavedModel: it has no saved_model.pb; "
                         f"pass the export directory that contains saved_model.pb")
    check_blessing_is_for(blessing, model_dir)
    if not blessing.blessed:
        return PushResult(False, "the model is NOT_BLESSED: " + "; ".join(blessing.failures))
    model_config = read_model_config(model_config_file, model_name) if model_config_file else None
    baseline = served_baseline(serving_base, model_name, model_config, model_config_file or "")
    baseline_version = baseline.version if baseline else None
    if blessing.baseline_version != baseline_version:
        judged = "no baseline" if blessing.baseline_version is None else f"pushed version {blessing.baseline_version}"
        now = "there is none" if baseline_version is None else f"it is version {baseline_version}"
        return PushResult(False, f"the blessing compared the model with {judged}, but the served baseline "
                                 f"changed since ({now}); validate the model again")
    signatures = check_model_loads(model_dir, warmup_examples)

    model_base = layout.model_base(serving_base, model_name)
    stale = remove_stale_temporaries(model_base)
    version = max(pushed_versions(serving_base, model_name), default=0) + 1
    final = layout.version_dir(serving_base, model_name, version)
    tmp = layout.join(model_base, f"{TMP_PREFIX}{version}-{uuid.uuid4().hex}")
    try:
        storage.copy_tree(model_dir, tmp)
        if metrics is not None:
            record = layout.record_file(tmp, layout.RECORD_METRICS)  # the trainer's, copied with the export
            storage.remove_file_if_present(record)
            write_json(metrics, record)
        write_blessing(blessing, layout.record_file(tmp, layout.RECORD_BLESSING))
        if warmup_examples:
            write_warmup_file(tmp, warmup_requests(
                warmup_examples, model_name, rank_signature=RANK_SIGNATURE if RANK_SIGNATURE in signatures else None))
        _promote(tmp, final)
    except BaseException:
        _remove_if_present(tmp)
        raise
    removed, kept = _retire_old_versions(serving_base, model_name, keep_versions, model_config)
    return PushResult(True, f"the model is {blessing.status}", version=version, path=final, removed_versions=removed,
                      removed_temporaries=stale, kept_for_serving=kept)


def check_blessing_is_for(blessing: Blessing, model_dir: str) -> None:
    """Raises InputError unless ``blessing`` was computed for the model in ``model_dir`` (same fingerprint)."""
    if blessing.model_fingerprint is None:
        raise InputError(f"the blessing names no model (no model_fingerprint), so it cannot vouch for {model_dir!r}; "
                         f"run `esmm evaluate` on this model again")
    actual = model_fingerprint(model_dir)
    if actual != blessing.model_fingerprint:
        raise InputError(f"the blessing is for another model: it judged {blessing.model_fingerprint}, but "
                         f"{model_dir!r} is {actual}; push the model that was evaluated, or evaluate this one")


def check_model_loads(model_dir: str, warmup_examples: Sequence[bytes] = ()) -> frozenset[str]:
    """Loads the SavedModel once and runs ``serving_default`` on up to 16 warmup examples (or an empty batch),
    as TF Serving will; InputError in one line when it cannot load or breaks the serving contract. Returns the
    names of its signatures."""
    examples = list(warmup_examples[:16])
    try:
        signatures = tf.saved_model.load(model_dir).signatures
        signature = signatures.get(SERVING_SIGNATURE)
        if signature is None:
            raise InputError(f"model directory {model_dir!r} has no {SERVING_SIGNATURE!r} signature; "
                             f"export it with the serving signature")
        outputs = signature(examples=tf.constant(examples, tf.string, shape=[len(examples)]))
    except (tf.errors.OpError, ValueError, TypeError, KeyError, OSError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"model directory {model_dir!r} does not load as TF Serving would: {first_line}") from None
    shapes = {name: tuple(outputs[name].shape) if name in outputs else None for name in OUTPUTS}
    if any(shape != (len(examples),) for shape in shapes.values()):
        raise InputError(f"model directory {model_dir!r}: {SERVING_SIGNATURE} on {len(examples)} examples returned "
                         f"shapes {shapes}, not one value per example for each of {', '.join(OUTPUTS)}")
    return frozenset(signatures)


def remove_stale_temporaries(model_base: str, max_age_s: float = STALE_TMP_AGE_S) -> tuple[str, ...]:
    """Deletes the ``.tmp-*`` directories of pushes that died (nothing in them written for
    ``max_age_s``); returns their names. A live push's directory is younger, and stays."""
    if not tf.io.gfile.isdir(model_base):
        return ()
    removed = []
    now = time.time()
    for entry in sorted(tf.io.gfile.listdir(model_base)):
        name = entry.rstrip("/")
        path = layout.join(model_base, name)
        if name.startswith(TMP_PREFIX) and now - _last_write_s(path) > max_age_s:
            _remove_if_present(path)
            removed.append(name)
    return tuple(removed)


def _last_write_s(path: str) -> float:
    """The newest modification time (seconds) of ``path`` and everything under it that has one."""
    times = []
    for dirpath, _, filenames in tf.io.gfile.walk(path):
        for name in [None, *filenames]:
            try:
                times.append(tf.io.gfile.stat(dirpath if name is None else layout.join(dirpath, name)).mtime_nsec / 1e9)
            except tf.errors.OpError:  # object stores have no directory entries to stat
                continue
    return max(times, default=0.0)

def _promote(tmp: str, final: str) -> None:
    """Makes the finished copy visible under its version name (see the module docstring)."""
    if tf.io.gfile.exists(final):
        raise EsmmError(f"version directory {final!r} appeared during the push (another pusher?); push again")
    storage.publish(tmp, final)


def _retire_old_versions(serving_base: str, model_name: str, keep_versions: int,
                         model_config: Optional[ModelConfig]) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Removes the versions older than the last ``keep_versions`` that the model config does not need;
    returns the removed versions and, for each older version kept, why."""
    versions = pushed_versions(serving_base, model_name)
    needed = model_config.needed_versions(versions) if model_config else {}
    older = versions[:-keep_versions]
    removed = tuple(v for v in older if v not in needed)
    for version in removed:
        storage.remove_tree(layout.version_dir(serving_base, model_name, version))
    return removed, tuple(f"{v} ({needed[v]})" for v in older if v in needed)


def _remove_if_present(path: str) -> None:
    """Best-effort cleanup after a failed push; a stray temporary directory is harmless to TF Serving."""
    try:
        storage.remove_if_present(path)
    except tf.errors.OpError:
        pass
