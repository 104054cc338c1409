"""Ingestion (Beam): raw impression logs -> tf.Example TFRecords split by time.

Output layout under ``out_dir``:
- ``train/data-*.tfrecord.gz`` and ``eval/data-*.tfrecord.gz``: GZIP TFRecords of raw
  tf.Example (``esmm_model.schema``), split at the ``input.train_fraction`` quantile of
  the ordering column, the earlier rows training;
- ``schema.pbtxt``: the tensorflow_metadata Schema of those examples;
- ``rejected/rejected-*.jsonl``: every unusable line with its source, reason code and reason;
- ``counts.json``: rows read, written per split with clicks and conversions, rejected by reason.

Two passes over the input: the first reads only the ordering keys to find the split
point (the quantile over every line whose key parses, rejected or not); the second
parses in batches, encodes each batch columnar in C++, and routes rows to their split.
Every line is either written or rejected, a line that is not UTF-8 (``bad_encoding``) or
longer than ``input.max_line_bytes`` (``line_too_long``) included: the counts add up.

The output directory must be empty (``components.output_dir``). After writing, the run
fails (RejectionError, one line) when no line was read, when the share of rejected
impression lines exceeds ``input.max_rejected_fraction``, or when a split is empty:
nothing downstream trains on the remains of a log the config does not fit.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass
from typing import Iterable, Iterator

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems
from google.protobuf import text_format

from components import layout
from components.aliccp_reader import AliccpReader
from components.beam_runner import make_pipeline
from components.csv_reader import CsvReader
from components.example_batch import encode_rows
from components.line_reader import LongLine, ReadLineBatches, iter_lines, line_ranges
from components.output_dir import require_empty
from components.rows import ParsedRow, Rejected, RowError, decode_line
from components.tfrecord_sink import GzipTFRecordSink
from esmm_model.config import Config
from esmm_model.errors import EsmmError, InputError
from esmm_model.schema import schema_proto

TRAIN, EVAL = layout.TRAIN, layout.EVAL
SKELETON_PATTERN = "sample_skeleton_*.csv*"
COMMON_PATTERN = "common_features_*.csv*"
QUANTILES = 1001
BATCH_SIZE = 2048
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
        lines.append(f"rejected: {sum(rejected.values()):,}" + "".join(f"\n  {code}: {n:,}" for code, n in sorted(rejected.items())))
        common = self.data.get("common_rejected", {})
        if self.data.get("common_rows_read"):
            lines.append(f"common feature rows read: {self.data['common_rows_read']:,}, rejected: {sum(common.values()):,}"
                         + "".join(f"\n  {code}: {n:,}" for code, n in sorted(common.items())))
        return "\n".join(lines)


def merge_counts(dicts: Iterable[dict]) -> dict:
    """Sums nested count dictionaries."""
    total: dict = {}
    for d in dicts:
        for key, value in d.items():
            if isinstance(value, dict):
                total[key] = merge_counts([total.get(key, {}), value])
            else:
                total[key] = total.get(key, 0) + value
    return total


class MergeCounts(beam.CombineFn):
    def create_accumulator(self) -> dict:
        return {}

    def add_input(self, accumulator: dict, counts: dict) -> dict:
        return merge_counts([accumulator, counts])

    def merge_accumulators(self, accumulators: Iterable[dict]) -> dict:
        return merge_counts(accumulators)

    def extract_output(self, accumulator: dict) -> dict:
        return accumulator


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
        raise InputError(f"CSV file {path!r}: the header is {size:,} bytes, over input.max_line_bytes ({max_line_bytes:,})")
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
    CsvReader(config, list(header), files[0])
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


class ExtractOrderKeys(_ReadingDoFn):
    """A batch of lines -> the ordering keys that parse (the first pass)."""

    def process(self, lines: list[bytes]) -> Iterator[np.ndarray]:
        keys = []
        for line in lines:
            try:
                keys.append(self._reader.order_key(decode_line(line)))
            except RowError:
                continue  # the second pass rejects and counts this line
        if keys:
            yield np.asarray(keys, dtype=np.float64)


class ParseEncodeSplit(_ReadingDoFn):
    """A batch of lines -> serialized examples tagged by split, rejected lines, counts."""

    def process(self, lines: list[bytes], threshold: float | None, common=None) -> Iterator:
        rows: dict[str, list[ParsedRow]] = {TRAIN: [], EVAL: []}
        rejected: dict[str, int] = {}
        for raw in lines:
            try:
                line = decode_line(raw)
                row = self._reader.parse(line, common) if common is not None else self._reader.parse(line)
            except RowError as exc:
                rejected[exc.code] = rejected.get(exc.code, 0) + 1
                yield beam.pvalue.TaggedOutput("rejected", Rejected.of("impressions", raw, exc))
                continue
            rows[TRAIN if threshold is not None and row.order_key <= threshold else EVAL].append(row)
        counts: dict = {"rows_read": len(lines), "rejected": rejected}
        for split, split_rows in rows.items():
            counts[split] = {"rows": len(split_rows), "clicks": sum(r.click for r in split_rows),
                             "conversions": sum(r.conversion for r in split_rows)}
            for example in encode_rows(self._config, split_rows):
                yield beam.pvalue.TaggedOutput(split, example)
        yield beam.pvalue.TaggedOutput("counts", counts)


class ParseCommon(beam.DoFn):
    """A batch of common_features lines -> (index, user feature values), or rejected."""

    def __init__(self, config: Config):
        self._config = config

    def setup(self) -> None:
        self._reader = AliccpReader(self._config)

    def process(self, lines: list[bytes]) -> Iterator:
        for raw in lines:
            try:
                yield self._reader.parse_common(decode_line(raw))
            except RowError as exc:
                yield beam.pvalue.TaggedOutput("rejected", Rejected.of("common_features", raw, exc))


def _long_line_rejected(source: str, max_line_bytes: int):
    """A LongLine -> its Rejected record (``line_too_long``), holding only the line's first bytes."""
    def reject(line: LongLine) -> Rejected:
        return Rejected.of(source, line.prefix, RowError(
            "line_too_long", f"line at byte {line.offset:,} of {line.path} is {line.size:,} bytes, over "
                             f"input.max_line_bytes ({max_line_bytes:,}); only its first {len(line.prefix)} bytes are kept here"))
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


def _write_text(path: str, text: str) -> None:
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text)


def check_counts(counts: IngestCounts, max_rejected_fraction: float, input_path: str, out_dir: str) -> None:
    """Raises RejectionError when nothing was read, too much was rejected, or a split is empty."""
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
            f"{', '.join(f'{code} {n:,}' for code, n in top)}; rejected rows in {layout.IngestLayout(out_dir).rejected_dir}/")
    for split in (TRAIN, EVAL):
        if counts.split(split)["rows"] == 0:
            raise RejectionError(f"the {split} split is empty ({counts.split(TRAIN)['rows']:,} train and "
                                 f"{counts.split(EVAL)['rows']:,} eval rows kept of {counts.rows_read:,} read): "
                                 f"the time split needs more rows with distinct ordering keys; outputs in {out_dir}")


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
        def read(label: str, pattern: str, skip_header: bool = False):
            """Batches of raw lines (bytes), and the lines over max_line_bytes apart."""
            return (p | f"Ranges{label}" >> beam.Create(line_ranges(pattern)) | f"Spread{label}" >> beam.Reshuffle()
                    | f"Read{label}" >> beam.ParDo(ReadLineBatches(max_line, BATCH_SIZE, skip_header))
                    .with_outputs("too_long", main="lines"))

        threshold = (read("Keys", files.impressions, skip).lines
                     | "OrderKeys" >> beam.ParDo(ExtractOrderKeys(config, files))
                     | "Quantiles" >> beam.ApproximateQuantiles.Globally(QUANTILES, input_batched=True)
                     | "SplitPoint" >> beam.Map(_split_point, config.input.train_fraction))
        side = {}
        rejected_common = []
        common_counts = []
        if files.format == "aliccp":
            common_lines = read("Common", files.common)
            parsed = common_lines.lines | "ParseCommon" >> beam.ParDo(ParseCommon(config)).with_outputs("rejected", main="ok")
            unique = (parsed.ok | "GroupCommon" >> beam.GroupByKey()
                      | "UniqueCommon" >> beam.FlatMap(_unique_common).with_outputs("rejected", main="ok"))
            side["common"] = beam.pvalue.AsDict(unique.ok)
            long_common = common_lines.too_long | "LongCommon" >> beam.Map(_long_line_rejected("common_features", max_line))
            rejected_common = [parsed.rejected, unique.rejected, long_common]
            common_counts += [common_lines.lines | "CountCommon" >> beam.Map(lambda batch: {"common_rows_read": len(batch)}),
                              long_common | "CountLongCommon" >> beam.Map(lambda _: {"common_rows_read": 1})]
        rows = read("Rows", files.impressions, skip)
        long_rows = rows.too_long | "LongRows" >> beam.Map(_long_line_rejected("impressions", max_line))
        common_counts.append(long_rows | "CountLongRows" >> beam.Map(lambda r: {"rows_read": 1, "rejected": {r.code: 1}}))
        outputs = (rows.lines
                   | "ParseEncodeSplit" >> beam.ParDo(ParseEncodeSplit(config, files), beam.pvalue.AsSingleton(threshold), **side)
                   .with_outputs(TRAIN, EVAL, "rejected", "counts"))
        for split in (TRAIN, EVAL):
            _ = outputs[split] | f"Write{split.title()}" >> beam.io.Write(
                GzipTFRecordSink(out.split_prefix(split), level=GZIP_LEVEL))
        rejected = (outputs.rejected, long_rows, *rejected_common) | "AllRejected" >> beam.Flatten()
        _ = (rejected | "RejectedJson" >> beam.Map(lambda r: json.dumps(r.to_json()))
             | "WriteRejected" >> beam.io.WriteToText(out.rejected_prefix, file_name_suffix=".jsonl"))
        rejected_common_counts = [
            r | f"CountCommonRejected{i}" >> beam.Map(lambda rec: {"common_rejected": {rec.code: 1}})
            for i, r in enumerate(rejected_common)]
        _ = ((outputs.counts, *common_counts, *rejected_common_counts) | "AllCounts" >> beam.Flatten()
             | "MergeCounts" >> beam.CombineGlobally(MergeCounts())
             | "CountsJson" >> beam.Map(lambda c: json.dumps(c, indent=2, sort_keys=True))
             | "WriteCounts" >> beam.io.WriteToText(counts_path, shard_name_template="", num_shards=1))

    with tf.io.gfile.GFile(counts_path) as f:
        counts = IngestCounts(json.load(f))
    _LOG.info("ingest: done\n%s", counts.describe())
    check_counts(counts, config.input.max_rejected_fraction, input_path, out_dir)
    return counts
