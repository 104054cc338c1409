"""Where each step reads and writes: the on-disk contract between the pipeline's steps.

Every location is a string built with ``posixpath.join``, so a root may be a local path, a
mounted volume or an object-store URI (``gs://bucket/run``) and stays one: ``pathlib``
would turn ``gs://`` into ``gs:/``. Steps, the CLI, the kfp components, tests and benchmarks
take their paths from here, so a step's layout is written down once::

    <ingest>/train/data-*.tfrecord.gz, eval/data-*.tfrecord.gz   raw tf.Example, GZIP
    <ingest>/schema.pbtxt, counts.json, rejected/rejected-*.jsonl
    <transform>/transform_graph/ (+ metadata/)                    TFTransformOutput
    <transform>/transformed/train|eval/part-*.tfrecord.gz         transformed tf.Example
    <train>/model/<version>/                                      the SavedModel
    <train>/checkpoints/, tensorboard/train|eval/, metrics.json
    <evaluation>/metrics.json, report.md, report.html, plots/, tfma/
    <serving_base>/<model_name>/<version>/                         TF Serving's layout
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import ClassVar

TRAIN, EVAL = "train", "eval"
SPLITS = (TRAIN, EVAL)
RECORD_SUFFIX = ".tfrecord.gz"
RECORD_PATTERN = "*" + RECORD_SUFFIX
SAVED_MODEL_PB = "saved_model.pb"
# Inside a SavedModel, ``assets.extra/`` holds the run's record; TF Serving ignores it, and it travels with the model.
RECORD_DIR = "assets.extra"
RECORD_CONFIG = "config.yaml"
RECORD_METRICS = "metrics.json"  # the trainer's history at export, the evaluator's metrics once pushed
RECORD_BLESSING = "blessing.json"


def join(root: str, *parts: str) -> str:
    """``root/part/...`` for a local path or a URI (``gs://b`` + ``x`` is ``gs://b/x``)."""
    return posixpath.join(str(root), *parts)


def split_pattern(split_root: str, split: str) -> str:
    """The glob of one split's GZIP TFRecords under a directory holding ``train/`` and ``eval/``."""
    return join(split_root, split, RECORD_PATTERN)


@dataclass(frozen=True)
class IngestLayout:
    """What ``components.ingest`` writes under ``root``, and what transform and evaluate read."""

    root: str

    def split_pattern(self, split: str) -> str:
        return split_pattern(self.root, split)

    def split_prefix(self, split: str) -> str:
        """File prefix of a split's shards (``<root>/<split>/data``; the sink adds ``-NNNNN-of-NNNNN``)."""
        return join(self.root, split, "data")

    @property
    def schema(self) -> str:
        return join(self.root, "schema.pbtxt")

    @property
    def counts(self) -> str:
        return join(self.root, "counts.json")

    @property
    def rejected_dir(self) -> str:
        return join(self.root, "rejected")

    @property
    def rejected_prefix(self) -> str:
        """File prefix of the rejected-row shards, written with suffix ``.jsonl``."""
        return join(self.rejected_dir, "rejected")


@dataclass(frozen=True)
class TransformLayout:
    """What ``components.transform`` writes under ``root``, and what train reads."""

    root: str

    @property
    def graph(self) -> str:
        """The TFTransformOutput directory."""
        return join(self.root, "transform_graph")

    @property
    def raw_metadata(self) -> str:
        """Raw metadata inside the graph directory; ``TFTransformOutput.raw_feature_spec()`` reads it."""
        return join(self.graph, "metadata")

    @property
    def transformed(self) -> str:
        """Holds ``train/`` and ``eval/`` transformed TFRecords."""
        return join(self.root, "transformed")

    def split_pattern(self, split: str) -> str:
        return split_pattern(self.transformed, split)

    def split_prefix(self, split: str) -> str:
        return join(self.transformed, split, "part")


@dataclass(frozen=True)
class TrainLayout:
    """What ``components.train`` writes under ``root`` (the kfp Model artifact's directory)."""

    # Every entry a train run leaves under root; a directory holding only these is resumed.
    OWN_ENTRIES: ClassVar[frozenset[str]] = frozenset({"checkpoints", "tensorboard", "metrics.json", "model"})

    root: str

    @property
    def default_checkpoints(self) -> str:
        """Checkpoints beside the model unless the run keeps them elsewhere (a work volume on a cluster)."""
        return join(self.root, "checkpoints")

    def tensorboard(self, which: str) -> str:
        return join(self.root, "tensorboard", which)

    @property
    def metrics(self) -> str:
        return join(self.root, "metrics.json")

    @property
    def export_base(self) -> str:
        """Version directories ``<version>/`` of the exported SavedModel, as TF Serving lays them out."""
        return join(self.root, "model")

    def export_dir(self, version: int) -> str:
        return join(self.export_base, str(version))

    def saved_model(self, relative: str) -> str:
        """The SavedModel whose path relative to ``root`` a Model artifact records (``SAVED_MODEL_KEY``)."""
        return join(self.root, relative)

    def relative(self, export_dir: str) -> str:
        """``export_dir`` relative to ``root``, as recorded in the Model artifact's metadata."""
        prefix = self.root.rstrip("/") + "/"
        if not export_dir.startswith(prefix):
            raise ValueError(f"export {export_dir!r} is not under the train output {self.root!r}")
        return export_dir[len(prefix):]


# The kfp Model artifact's metadata key naming its SavedModel, relative to the artifact's path.
SAVED_MODEL_KEY = "saved_model"


def checkpoint_dir(work_root: str, run_key: str) -> str:
    """Checkpoints of one pipeline run on a durable work area: a retried train pod resumes from here."""
    return join(work_root, run_key, "train", "checkpoints")


@dataclass(frozen=True)
class EvaluationLayout:
    """What ``components.evaluate`` writes under ``root``, and what push reads."""

    root: str

    @property
    def metrics(self) -> str:
        return join(self.root, "metrics.json")

    @property
    def report_markdown(self) -> str:
        return join(self.root, "report.md")

    @property
    def report_html(self) -> str:
        return join(self.root, "report.html")

    @property
    def plots(self) -> str:
        return join(self.root, "plots")

    @property
    def tfma(self) -> str:
        return join(self.root, "tfma")

    @property
    def tfma_input(self) -> str:
        """TFMA's input while it runs: blocks of scored rows (removed afterwards)."""
        return join(self.root, "tfma_input")

    @property
    def blessing(self) -> str:
        return join(self.root, RECORD_BLESSING)

    @property
    def roc(self) -> str:
        """The headline ROC curves the kfp step logs as ClassificationMetrics."""
        return join(self.root, "roc.json")

    def plot(self, name: str) -> str:
        return join(self.root, "plots", f"{name}.png")


def model_base(serving_base: str, model_name: str) -> str:
    """TF Serving's ``--model_base_path`` for ``model_name``: its integer versions live below."""
    return join(serving_base, model_name)


def version_dir(serving_base: str, model_name: str, version: int) -> str:
    return join(serving_base, model_name, str(version))


def record_file(saved_model_dir: str, name: str) -> str:
    """A file of the run's record (``config.yaml``, ``metrics.json``, ``blessing.json``) inside a SavedModel."""
    return join(saved_model_dir, RECORD_DIR, name)
