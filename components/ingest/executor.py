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

The graph is built from named pieces: ``ReadLines`` (byte ranges -> batches of lines),
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
import zlib
from dataclasses import dataclass
from typing import Iterator

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems
from google.protobuf import text_format

from components.artifacts import record_counts
from components.artifacts.output_dir import require_empty
from components.beam.line_reader import LineBatch, LongLine, ReadLineBatches, iter_lines, line_ranges
from components.beam.runner import make_pipeline
from components.beam.tfrecord_sink import FramedGzipTFRecordSink, frame_records
from components.ingest import anomalies
from components.ingest.aliccp_reader import AliccpReader
from components.ingest.columnar import ColumnarAliccp, EncodedBatch, parse_rows
from components.ingest.csv_reader import CsvReader, check_columns
from components.ingest.example_batch import encode_shared
from components.ingest.rows import Rejected, RowError, decode_line
from esmm_model.config import Config
from esmm_model.contracts import layout
from esmm_model.errors import EsmmError, InputError
from esmm_model.schema import schema_proto

TRAIN, EVAL = layout.TRAIN, layout.EVAL
SKELETON_PATTERN = "sample_skeleton_*.csv*"
COMMON_PATTERN = "common_features_*.csv*"
QUANTILES = 1001
BATCH_SIZE = 2048
ID_BUCKETS = 16  # sample_ids are grouped into this many buckets (by CRC-32) to find the duplicated ones
DUPLICATE = "duplicate_sample_id"
GZIP_LEVEL = 1
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


CountKey = tuple  # ("rows_read",), ("train", "rows"), ("rejected", code), ("common_rejected", code), ...


def nest_counts(pairs: list[tuple[CountKey, int]]) -> dict:
    """Summed ``(key, n)`` pairs -> counts.json's nested dict; splits and ``rejected`` are always there."""
    counts: dict = {"rows_read": 0, "rejected": {},
                    **{split: {"rows": 0, "clicks": 0, "conversions": 0} for split in (TRAIN, EVAL)}}
    for key, n in sorted(pairs):
        *parents, leaf = key
        node = counts
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = node.get(leaf, 0) + n
    return counts


@dataclass(frozen=True)
class InputFiles:
    """The resolved input: a format, the impression file pattern, and its companion."""

    format: str
    impressions: str
    common: str | None = None
    header: tuple[str, ...] = ()


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


def _reader(config: Config, files: InputFiles):
    if files.format == "aliccp":
        return AliccpReader(config)
    return CsvReader(config, list(files.header), files.impressions)


class _ReadingDoFn(beam.DoFn):
    """A DoFn that builds its line reader once per worker."""

    def __init__(self, config: Config, files: InputFiles):
        self._config, self._files = config, files

    def setup(self) -> None:
        self._reader = _reader(self._config, self._files)


class ExtractKeys(_ReadingDoFn):
    """A batch of lines -> the ordering keys that parse (main output, one array), and per ID_BUCKETS bucket
    ``(bucket, (path, sample_ids, line starts))`` (``ids``) for finding duplicates (the first pass)."""

    def process(self, batch: LineBatch) -> Iterator:
        keys = []
        buckets: dict[int, tuple[list, list]] = {}
        for line, start in zip(batch.lines, batch.starts):
            try:
                sample_id, key = self._reader.keys(decode_line(line))
            except RowError:
                continue  # the second pass rejects and counts this line
            keys.append(key)
            ids, starts = buckets.setdefault(zlib.crc32(sample_id.encode()) % ID_BUCKETS, ([], []))
            ids.append(sample_id)
            starts.append(start)
        if keys:
            yield np.asarray(keys, dtype=np.float64)
        for bucket, (ids, starts) in buckets.items():
            yield beam.pvalue.TaggedOutput("ids", (bucket, (batch.path, ids, starts)))


def _first_of_duplicates(item: tuple[int, list]) -> Iterator[tuple[str, tuple[str, int]]]:
    """One bucket's (path, sample_ids, starts) -> (sample_id, (path, start) of its first line) for each id
    on more than one line; first is file order (paths sorted, as ``line_ranges`` lists them), then line order."""
    _, chunks = item
    first: dict[str, tuple[str, int]] = {}
    repeated = set()
    for path, ids, starts in chunks:
        for sample_id, start in zip(ids, starts):
            seen = first.get(sample_id)
            if seen is None:
                first[sample_id] = (path, start)
                continue
            repeated.add(sample_id)
            first[sample_id] = min(seen, (path, start))
    for sample_id in sorted(repeated):
        yield sample_id, first[sample_id]


class ParseEncodeSplit(_ReadingDoFn):
    """A batch of lines -> one run of framed TFRecords per split, rejected lines, and ``(key, n)`` counts."""

    def setup(self) -> None:
        super().setup()
        self._columnar = ColumnarAliccp(self._config) if self._files.format == "aliccp" else None
        self._names = [f.name for f in self._config.features]

    def _parse(self, lines: list[bytes], common: dict) -> EncodedBatch:
        if self._columnar is not None:
            return self._columnar.parse(lines, common)
        return parse_rows(self._reader, self._config, lines, list(range(len(lines))), common)

    def process(self, batch: LineBatch, threshold: float | None, common: dict, duplicates: dict) -> Iterator:
        parsed = self._parse(batch.lines, common)
        rejected = list(parsed.rejected)
        if duplicates:
            keep = np.ones(len(parsed.rows), dtype=bool)
            for i, (sample_id, row) in enumerate(zip(parsed.sample_ids, parsed.rows.tolist())):
                first = duplicates.get(sample_id)
                if first is not None and first != (batch.path, batch.starts[row]):
                    keep[i] = False
                    rejected.append(Rejected.of("impressions", batch.lines[row], RowError(
                        DUPLICATE, f"sample_id {sample_id!r} is also on the line at byte {first[1]:,} of {first[0]}, "
                                   "which is kept")))
            if not keep.all():
                parsed = parsed.take(keep)
        yield beam.pvalue.TaggedOutput("counts", (("rows_read",), len(batch)))
        codes: dict[str, int] = {}
        for record in rejected:
            codes[record.code] = codes.get(record.code, 0) + 1
            yield beam.pvalue.TaggedOutput("rejected", record)
        for code, n in codes.items():
            yield beam.pvalue.TaggedOutput("counts", (("rejected", code), n))
        in_train = (parsed.order_keys <= threshold if threshold is not None
                    else np.zeros(len(parsed.rows), dtype=bool))
        for split, mask in ((TRAIN, in_train), (EVAL, ~in_train)):
            for name, n in (("rows", mask.sum()), ("clicks", parsed.clicks[mask].sum()),
                            ("conversions", parsed.conversions[mask].sum())):
                yield beam.pvalue.TaggedOutput("counts", ((split, name), int(n)))
            for name, n in zip(self._names, parsed.present[mask].sum(axis=0).tolist()):
                yield beam.pvalue.TaggedOutput("counts", (("presence", split, name), n))
            for field, rows in parsed.unused.items():
                if rows[mask].any():
                    yield beam.pvalue.TaggedOutput("counts", (("unused_fields", split, field), int(rows[mask].sum())))
            if mask.any():
                yield beam.pvalue.TaggedOutput(split, frame_records(
                    [example for example, keep in zip(parsed.examples, mask.tolist()) if keep]))


class ParseCommon(beam.DoFn):
    """A batch of common_features lines -> (index, SharedPart), or rejected; the batch's parts are encoded together."""

    def __init__(self, config: Config):
        self._config = config

    def setup(self) -> None:
        self._reader = AliccpReader(self._config)

    def process(self, batch: LineBatch) -> Iterator:
        indexes, values, unused = [], [], []
        for raw in batch.lines:
            try:
                index, row_values, row_unused = self._reader.parse_common_values(decode_line(raw))
            except RowError as exc:
                yield beam.pvalue.TaggedOutput("rejected", Rejected.of("common_features", raw, exc))
                continue
            indexes.append(index)
            values.append(row_values)
            unused.append(row_unused)
        yield from zip(indexes, encode_shared(self._config, values, unused))


def _long_line_rejected(source: str, max_line_bytes: int):
    """A LongLine -> its Rejected record (``line_too_long``), holding only the line's first bytes."""
    def reject(line: LongLine) -> Rejected:
        return Rejected.of(source, line.prefix, RowError(
            "line_too_long", f"line at byte {line.offset:,} of {line.path} is {line.size:,} bytes, over "
                             f"input.max_line_bytes ({max_line_bytes:,}); "
                             f"only its first {len(line.prefix)} bytes are kept here"))
    return reject


def _unique_common(item: tuple[str, list]) -> Iterator:
    """Keeps an index seen once; rejects every line of an index seen more than once."""
    index, values = item
    if len(values) == 1:
        yield index, values[0]
        return
    for _ in values:
        yield beam.pvalue.TaggedOutput("rejected", Rejected(
            "common_features", index, "duplicate_common_feature_index",
            f"common_feature_index {index!r} appears on {len(values)} lines; its rows cannot be joined unambiguously"))


def _split_point(quantiles: list[float], fraction: float) -> float | None:
    if not quantiles:
        return None
    return float(quantiles[round(fraction * (len(quantiles) - 1))])


class ReadLines(beam.PTransform):
    """The files matching a pattern -> batches of raw lines (``lines``), and the lines over
    max_line_bytes (``too_long``)."""

    def __init__(self, pattern: str, max_line_bytes: int, skip_header: bool = False):
        super().__init__()
        self._pattern, self._max, self._skip_header = pattern, max_line_bytes, skip_header

    def expand(self, p: beam.pvalue.PBegin):
        return (p | "Ranges" >> beam.Create(line_ranges(self._pattern)) | "Spread" >> beam.Reshuffle()
                | "Read" >> beam.ParDo(ReadLineBatches(self._max, BATCH_SIZE, self._skip_header))
                .with_outputs("too_long", main="lines"))


@beam.ptransform_fn
def SplitPoint(keys: beam.PCollection, config: Config) -> beam.PCollection:
    """Arrays of ordering keys -> the key at ``input.train_fraction`` (None when no key parses)."""
    return (keys
            | "Quantiles" >> beam.ApproximateQuantiles.Globally(QUANTILES, input_batched=True)
            | "Pick" >> beam.Map(_split_point, config.input.train_fraction))


@beam.ptransform_fn
def DuplicateIds(ids: beam.PCollection) -> beam.PCollection:
    """``(bucket, (path, sample_ids, starts))`` -> ``(sample_id, (path, start))`` of each repeated id's first line."""
    return ids | "Group" >> beam.GroupByKey() | "First" >> beam.FlatMap(_first_of_duplicates)


class CommonFeatures(beam.PTransform):
    """Ali-CCP's common_features -> ``features`` ((index, SharedPart), indexes seen once), ``rejected``, ``counts``.

    A format without a companion file (CSV) gets the same three outputs, empty.
    """

    def __init__(self, config: Config, files: InputFiles):
        super().__init__()
        self._config, self._files = config, files

    def expand(self, p: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        if self._files.common is None:
            return {name: p | f"No{name.title()}" >> beam.Create([]) for name in ("features", "rejected", "counts")}
        max_line = self._config.input.max_line_bytes
        lines = p | "ReadLines" >> ReadLines(self._files.common, max_line)
        parsed = lines.lines | "Parse" >> beam.ParDo(ParseCommon(self._config)).with_outputs("rejected", main="ok")
        unique = (parsed.ok | "Group" >> beam.GroupByKey()
                  | "Unique" >> beam.FlatMap(_unique_common).with_outputs("rejected", main="ok"))
        too_long = lines.too_long | "LongLines" >> beam.Map(_long_line_rejected("common_features", max_line))
        rejected = (parsed.rejected, unique.rejected, too_long) | "AllRejected" >> beam.Flatten()
        counts = ((lines.lines | "CountRead" >> beam.Map(lambda batch: (("common_rows_read",), len(batch))),
                   too_long | "CountLong" >> beam.Map(lambda _: (("common_rows_read",), 1)),
                   rejected | "CountRejected" >> beam.Map(lambda r: (("common_rejected", r.code), 1)))
                  | "AllCounts" >> beam.Flatten())
        return {"features": unique.ok, "rejected": rejected, "counts": counts}


@beam.ptransform_fn
def WriteSplit(runs: beam.PCollection, prefix: str) -> beam.pvalue.PDone:
    """Runs of framed TFRecords -> ``<prefix>-NNNNN-of-NNNNN.tfrecord.gz``."""
    return runs | "Write" >> beam.io.Write(FramedGzipTFRecordSink(prefix, level=GZIP_LEVEL))


@beam.ptransform_fn
def WriteRejected(rejected: beam.PCollection, prefix: str) -> beam.pvalue.PDone:
    """Rejected records -> JSON lines under ``<prefix>-*.jsonl``."""
    return (rejected | "Json" >> beam.Map(lambda r: json.dumps(r.to_json()))
            | "Write" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl"))


@beam.ptransform_fn
def WriteCounts(counts: beam.PCollection, path: str) -> beam.pvalue.PDone:
    """``(key, n)`` pairs -> counts.json at ``path``, summed per key."""
    return (counts
            | "Sum" >> beam.CombinePerKey(sum)
            | "Collect" >> beam.combiners.ToList()
            | "Json" >> beam.Map(lambda pairs: json.dumps(nest_counts(pairs), indent=2, sort_keys=True))
            | "Write" >> beam.io.WriteToText(path, shard_name_template="", num_shards=1))


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
    counts_path = out.counts
    skip = files.format == "csv"
    _LOG.info("ingest: reading %s (%s) with %s", files.impressions, files.format, beam_args)

    max_line = config.input.max_line_bytes
    with make_pipeline(beam_args) as p:
        keys = ((p | "ReadKeys" >> ReadLines(files.impressions, max_line, skip)).lines
                | "Keys" >> beam.ParDo(ExtractKeys(config, files)).with_outputs("ids", main="keys"))
        threshold = keys.keys | "SplitPoint" >> SplitPoint(config)
        duplicates = keys.ids | "DuplicateIds" >> DuplicateIds()
        common = p | "CommonFeatures" >> CommonFeatures(config, files)
        rows = p | "ReadRows" >> ReadLines(files.impressions, max_line, skip)
        long_rows = rows.too_long | "LongRows" >> beam.Map(_long_line_rejected("impressions", max_line))
        parsed = (rows.lines
                  | "ParseEncodeSplit" >> beam.ParDo(ParseEncodeSplit(config, files),
                                                     beam.pvalue.AsSingleton(threshold),
                                                     beam.pvalue.AsDict(common["features"]),
                                                     beam.pvalue.AsDict(duplicates))
                  .with_outputs(TRAIN, EVAL, "rejected", "counts"))
        for split in (TRAIN, EVAL):
            _ = parsed[split] | f"Write{split.title()}" >> WriteSplit(out.split_prefix(split))
        _ = ((parsed.rejected, long_rows, common["rejected"]) | "AllRejected" >> beam.Flatten()
             | "WriteRejected" >> WriteRejected(out.rejected_prefix))
        long_counts = long_rows | "CountLongRows" >> beam.FlatMap(
            lambda r: [(("rows_read",), 1), (("rejected", r.code), 1)])
        _ = ((parsed.counts, long_counts, common["counts"]) | "AllCounts" >> beam.Flatten()
             | "WriteCounts" >> WriteCounts(counts_path))

    with tf.io.gfile.GFile(counts_path) as f:
        counts = IngestCounts(json.load(f))
    anomalies.write(config, anomalies.Presence.of(counts.data), out, _write_text)
    _LOG.info("ingest: done\n%s", counts.describe())
    for split in (TRAIN, EVAL):
        written = record_counts.count_records(out.split_pattern(split))
        record_counts.check_written("ingest", split, written, counts.split(split)["rows"], out.root)
    check_counts(counts, config.input.max_rejected_fraction, input_path, out_dir, config)
    return counts
