"""Ingestion (Beam): raw impression logs -> tf.Example TFRecords split by time.

Output layout under ``out_dir``:
- ``train/data-*.tfrecord.gz`` and ``eval/data-*.tfrecord.gz``: GZIP TFRecords of raw
  tf.Example (``esmm_model.schema``), split at the ``input.train_fraction`` quantile of
  the ordering column, the earlier rows training;
- ``schema.pbtxt``: the tensorflow_metadata Schema of those examples;
- ``rejected/rejected-*.jsonl``: every unusable line with its source, reason code and reason;
- ``counts.json``: rows read, written per split with clicks and conversions, rejected by reason,
  and per split the rows carrying each feature (``presence``) and each unused input field;
- ``input_schema.pbtxt``, ``input_statistics.pbtxt``, ``anomalies.pbtxt``: the input checked
  against the config in TFDV's protos (``components.ingest.anomalies``).

The graph (``components.ingest.graph``) is built from named pieces: ``ReadLines`` (byte ranges -> batches of lines),
``SplitPoint`` (ordering keys -> the time split), ``DuplicateIds`` (sample_ids seen more than
once -> where each first appears), ``CommonFeatures`` (Ali-CCP's user lines; empty for CSV,
so every format fills the same outputs), ``ParseEncodeSplit`` (a batch of lines -> one run of
framed TFRecords per split, rejected lines, counts), ``WriteSplit``, ``WriteRejected`` and
``WriteCounts`` (flat ``(key, n)`` counts summed per key, nested into counts.json once).

The impressions are read twice, on purpose: the first pass reads only the sample_id and the
ordering key, to find the split point (the quantile over every line whose key parses,
rejected or not) and the duplicated sample_ids; the second parses, joins and encodes each
batch column by column (``components.ingest.columnar``) and routes rows to their split.
Reading once would have to hold (DirectRunner) or shuffle (a cluster) the whole log until
the split point is known; a second read of the files costs less than either. Of the lines
that share a sample_id, the first (in file order, then line order, among lines whose key
parses) is kept and every other is rejected as ``duplicate_sample_id``.
Every line is either written or rejected, a line that is not UTF-8 (``bad_encoding``) or
longer than ``input.max_line_bytes`` (``line_too_long``) included: the counts add up, and
the rows written per split are counted back from the files and must match them
(``components.artifacts.record_counts``).

The output directory must be empty (``components.artifacts.output_dir``). After writing, the run
fails (RejectionError, one line) when no line was read, when the share of rejected
impression lines exceeds ``input.max_rejected_fraction``, when a split is empty, or when a
configured feature's input field is in fewer than ``input.min_feature_presence`` of the rows
kept (naming every such feature): nothing downstream trains on the remains of a log the config does not fit.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass

import tensorflow as tf
from apache_beam.io.filesystems import FileSystems
from google.protobuf import text_format

from components.artifacts import record_counts
from components.artifacts.output_dir import require_empty
from components.beam.line_reader import iter_lines
from components.beam.runner import make_pipeline
from components.ingest import anomalies
from components.ingest.csv_reader import check_columns
from components.ingest.graph import InputFiles, build
from esmm_model.config import Config
from esmm_model.contracts import layout
from esmm_model.errors import EsmmError, InputError
from esmm_model.schema import schema_proto

TRAIN, EVAL = layout.TRAIN, layout.EVAL
SKELETON_PATTERN = "sample_skeleton_*.csv*"
COMMON_PATTERN = "common_features_*.csv*"
_LOG = logging.getLogger(__name__)


class RejectionError(EsmmError):
    """Ingestion wrote its outputs, but what it kept is not fit to train on; the message says why."""


@dataclass(frozen=True)
class IngestCounts:
    """The contents of counts.json."""

    data: dict

    @property
    def rows_read(self) -> int:
        return self.data.get("rows_read", 0)

    def split(self, name: str) -> dict:
        return self.data.get(name, {"rows": 0, "clicks": 0, "conversions": 0})

    @property
    def rejected(self) -> dict[str, int]:
        return self.data.get("rejected", {})

    def describe(self) -> str:
        lines = [f"rows read: {self.rows_read:,}"]
        for name in (TRAIN, EVAL):
            s = self.split(name)
            ctr = s["clicks"] / s["rows"] if s["rows"] else 0.0
            cvr = s["conversions"] / s["clicks"] if s["clicks"] else 0.0
            lines.append(f"{name:>5}: {s['rows']:,} rows, {s['clicks']:,} clicks (CTR {ctr:.4f}), "
                         f"{s['conversions']:,} conversions (CVR|click {cvr:.4f})")
        rejected = self.rejected
        lines.append(f"rejected: {sum(rejected.values()):,}"
                     + "".join(f"\n  {code}: {n:,}" for code, n in sorted(rejected.items())))
        lines.append(anomalies.describe(anomalies.Presence.of(self.data)))
        common = self.data.get("common_rejected", {})
        if self.data.get("common_rows_read"):
            lines.append(f"common feature rows read: {self.data['common_rows_read']:,}, "
                         f"rejected: {sum(common.values()):,}"
                         + "".join(f"\n  {code}: {n:,}" for code, n in sorted(common.items())))
        return "\n".join(lines)


def _match(pattern: str) -> list[str]:
    try:
        return [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    except Exception:  # FileSystems raises BeamIOError when nothing matches
        return []


def _first_line(path: str, max_line_bytes: int) -> str:
    """A CSV file's header; InputError when it is too long or not UTF-8."""
    with FileSystems.open(path) as f:
        _, line, size, _ = next(iter_lines(f, 0, max_line_bytes), (0, b"", 0, b""))
    if line is None:
        raise InputError(f"CSV file {path!r}: the header is {size:,} bytes, "
                         f"over input.max_line_bytes ({max_line_bytes:,})")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"CSV file {path!r}: the header is not UTF-8 (byte {exc.start})") from None


def resolve_inputs(config: Config, input_path: str) -> InputFiles:
    """Finds the input files for the config's format; InputError names what is missing."""
    if config.input.format == "aliccp":
        skeleton = os.path.join(input_path, SKELETON_PATTERN)
        common = os.path.join(input_path, COMMON_PATTERN)
        for pattern, what in ((skeleton, "sample_skeleton"), (common, "common_features")):
            if not _match(pattern):
                raise InputError(f"no Ali-CCP {what} files match {pattern!r}")
        return InputFiles("aliccp", skeleton, common)
    files = _match(input_path)
    if not files:
        raise InputError(f"no CSV files match {input_path!r}")
    headers = {path: _first_line(path, config.input.max_line_bytes) for path in files}
    first = headers[files[0]]
    for path, header in headers.items():
        if header != first:
            raise InputError(f"CSV file {path!r} has a different header from {files[0]!r}")
    header = tuple(next(csv.reader([first])))
    check_columns(config, list(header), files[0])
    return InputFiles("csv", input_path, header=header)


def _write_text(path: str, text: str) -> None:
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text)


def check_presence(config: Config, counts: IngestCounts, out_dir: str) -> None:
    """Raises RejectionError naming every feature whose input field is in fewer than ``input.min_feature_presence``
    of the rows kept."""
    presence = anomalies.Presence.of(counts.data)
    missing = presence.missing(config)
    if missing and presence.total_rows:
        raise RejectionError(
            f"{len(missing)} of {len(config.features)} features are in fewer than "
            f"{config.input.min_feature_presence:.2%} of the {presence.total_rows:,} rows kept "
            f"(input.min_feature_presence): "
            + ", ".join(f"{f.name} (field {f.source or f.name}) {presence.fraction(f.name):.2%}" for f in missing)
            + f"; the input does not carry the fields the config names; see {layout.IngestLayout(out_dir).anomalies}")


def check_counts(counts: IngestCounts, max_rejected_fraction: float, input_path: str, out_dir: str,
                 config: Config | None = None) -> None:
    """Raises RejectionError when nothing was read, too much was rejected, a split is empty, or (given
    ``config``) a configured feature is missing."""
    if counts.rows_read == 0:
        raise RejectionError(f"no impression lines in {input_path!r}; outputs in {out_dir}")
    rejected = counts.rejected
    total = sum(rejected.values())
    fraction = total / counts.rows_read
    if fraction > max_rejected_fraction:
        top = sorted(rejected.items(), key=lambda item: (-item[1], item[0]))[:3]
        raise RejectionError(
            f"rejected {fraction:.2%} of {counts.rows_read:,} rows ({total:,}), over input.max_rejected_fraction "
            f"{max_rejected_fraction:.2%} (--max-rejected-fraction to change it); top reasons: "
            f"{', '.join(f'{code} {n:,}' for code, n in top)}; "
            f"rejected rows in {layout.IngestLayout(out_dir).rejected_dir}/")
    for split in (TRAIN, EVAL):
        if counts.split(split)["rows"] == 0:
            raise RejectionError(f"the {split} split is empty ({counts.split(TRAIN)['rows']:,} train and "
                                 f"{counts.split(EVAL)['rows']:,} eval rows kept of {counts.rows_read:,} read): "
                                 f"the time split needs more rows with distinct ordering keys; outputs in {out_dir}")
    if config is not None:
        check_presence(config, counts, out_dir)


def ingest(config: Config, input_path: str, out_dir: str, beam_args: list[str]) -> IngestCounts:
    """Runs ingestion, writes ``out_dir/counts.json`` and returns the counts.

    Raises RejectionError after writing when ``check_counts`` finds the result unfit to train on.
    """
    require_empty(out_dir, "ingest")
    files = resolve_inputs(config, input_path)
    out = layout.IngestLayout(out_dir)
    tf.io.gfile.makedirs(out.root)
    _write_text(out.schema, text_format.MessageToString(schema_proto(config)))
    _LOG.info("ingest: reading %s (%s) with %s", files.impressions, files.format, beam_args)
    with make_pipeline(beam_args) as p:
        build(p, config, files, out)

    with tf.io.gfile.GFile(out.counts) as f:
        counts = IngestCounts(json.load(f))
    anomalies.write(config, anomalies.Presence.of(counts.data), out, _write_text)
    _LOG.info("ingest: done\n%s", counts.describe())
    written = record_counts.count_each([out.split_pattern(split) for split in (TRAIN, EVAL)])
    for split, n in zip((TRAIN, EVAL), written):
        record_counts.check_written("ingest", split, n, counts.split(split)["rows"], out.root)
    check_counts(counts, config.input.max_rejected_fraction, input_path, out_dir, config)
    return counts
