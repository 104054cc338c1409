"""Where each step reads and writes: the on-disk contract between the pipeline's steps.

Every location is a string built with ``posixpath.join``, so a root may be a local path, a
mounted volume or an object-store URI (``gs://bucket/run``) and stays one: ``pathlib``
would turn ``gs://`` into ``gs:/``. Steps, the CLI, the kfp components, tests and benchmarks
take their paths from here, so a step's layout is written down once::

    <ingest>/train/data-*.tfrecord.gz, eval/data-*.tfrecord.gz   raw tf.Example, GZIP
    <ingest>/schema.pbtxt, counts.json, rejected/rejected-*.jsonl
    <ingest>/input_schema.pbtxt, input_statistics.pbtxt, anomalies.pbtxt   the input against the config
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
from typing import Any, ClassVar

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


class Entry:
    """A fixed path under a layout's ``root``, read as an attribute: ``schema = Entry("schema.pbtxt")``
    makes ``IngestLayout(r).schema`` the string ``join(r, "schema.pbtxt")``."""

    def __init__(self, *parts: str):
        self.parts = parts

    def __get__(self, layout: Any, owner: type | None = None) -> str:
        return join(layout.root, *self.parts)


class SplitRecords:
    """A layout with ``train/`` and ``eval/`` GZIP TFRecords under ``split_root``: the shards of a split are
    ``<split_root>/<split>/<shard_name>-NNNNN-of-NNNNN.tfrecord.gz`` (the sink adds numbers and suffix)."""

    split_root: str
    shard_name: str

    def split_pattern(self, split: str) -> str:
        """The glob of one split's shards."""
        return join(self.split_root, split, RECORD_PATTERN)

    def split_prefix(self, split: str) -> str:
        """The file prefix a sink writes one split's shards under."""
        return join(self.split_root, split, self.shard_name)


@dataclass(frozen=True)
class IngestLayout(SplitRecords):
    """What ``components.ingest.executor`` writes under ``root``, and what transform and evaluate read."""

    root: str
    split_root = Entry()  # <root>/train/data-*.tfrecord.gz, <root>/eval/data-*.tfrecord.gz
    shard_name = "data"
    schema = Entry("schema.pbtxt")
    counts = Entry("counts.json")
    input_schema = Entry("input_schema.pbtxt")  # tensorflow_metadata Schema: each feature's field and min presence
    input_statistics = Entry("input_statistics.pbtxt")  # rows carrying each feature and unused field, per split
    anomalies = Entry("anomalies.pbtxt")  # tensorflow_metadata Anomalies: missing features, unused fields
    rejected_dir = Entry("rejected")
    rejected_prefix = Entry("rejected", "rejected")  # file prefix of the rejected-row shards (suffix ``.jsonl``)


@dataclass(frozen=True)
class TransformLayout(SplitRecords):
    """What ``components.transform.executor`` writes under ``root``, and what train reads."""

    root: str
    graph = Entry("transform_graph")  # the TFTransformOutput directory
    # Raw metadata inside the graph directory; ``TFTransformOutput.raw_feature_spec()`` reads it.
    raw_metadata = Entry(*graph.parts, "metadata")
    transformed = split_root = Entry("transformed")  # <root>/transformed/train|eval/part-*.tfrecord.gz
    shard_name = "part"


@dataclass(frozen=True)
class TrainLayout:
    """What ``components.train.executor`` writes under ``root`` (the kfp Model artifact's directory)."""

    # Every entry a train run leaves under root; a directory holding only these is resumed.
    OWN_ENTRIES: ClassVar[frozenset[str]] = frozenset({"checkpoints", "tensorboard", "metrics.json", "model"})

    root: str
    # Checkpoints beside the model unless the run keeps them elsewhere (a work volume on a cluster).
    default_checkpoints = Entry("checkpoints")
    metrics = Entry("metrics.json")
    # Version directories ``<version>/`` of the exported SavedModel, as TF Serving lays them out.
    export_base = Entry("model")

    def tensorboard(self, which: str) -> str:
        return join(self.root, "tensorboard", which)

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
    """What ``components.evaluate.executor`` writes under ``root``, and what push reads."""

    root: str
    metrics = Entry("metrics.json")
    report_markdown = Entry("report.md")
    report_html = Entry("report.html")
    plots = Entry("plots")
    tfma = Entry("tfma")
    tfma_input = Entry("tfma_input")  # TFMA's input while it runs: blocks of scored rows (removed afterwards)
    blessing = Entry(RECORD_BLESSING)
    roc = Entry("roc.json")  # the headline ROC curves the kfp step logs as ClassificationMetrics

    def plot(self, name: str) -> str:
        return join(self.plots, f"{name}.png")


def model_base(serving_base: str, model_name: str) -> str:
    """TF Serving's ``--model_base_path`` for ``model_name``: its integer versions live below."""
    return join(serving_base, model_name)


def version_dir(serving_base: str, model_name: str, version: int) -> str:
    return join(serving_base, model_name, str(version))


def record_file(saved_model_dir: str, name: str) -> str:
    """A file of the run's record (``config.yaml``, ``metrics.json``, ``blessing.json``) inside a SavedModel."""
    return join(saved_model_dir, RECORD_DIR, name)
