"""The Beam graph of ingestion, in named pieces; see ``components.ingest.executor`` for what it writes.

This module imports no TensorFlow: Beam workers unpickle its DoFns by reference, so they import
it, and TensorFlow would cost each worker process ~5 s of CPU at start for nothing.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Iterator

import apache_beam as beam
import numpy as np
import pyarrow as pa
from tfx_bsl.sketches import QuantilesSketch

from components.beam.line_reader import LineBatch, LongLine, ReadLineBatches, line_ranges
from components.beam.tfrecord_sink import FramedGzipTFRecordSink, frame_records
from components.ingest.aliccp_reader import AliccpReader
from components.ingest.columnar import ColumnarAliccp, EncodedBatch, parse_rows
from components.ingest.csv_reader import CsvReader
from components.ingest.example_batch import encode_shared
from components.ingest.rows import Rejected, RowError, decode_line
from esmm_model.config import Config
from esmm_model.contracts import layout

TRAIN, EVAL = layout.TRAIN, layout.EVAL
QUANTILES = 10001  # the split is exact up to 10,000 keys, and within 0.01% of them beyond
QUANTILE_EPSILON = 1e-4  # the sketch's rank error: the split falls within 0.01% of the rows of the exact quantile
BATCH_SIZE = 2048
ID_BUCKETS = 16  # sample_ids are grouped into this many buckets (by CRC-32) to find the duplicated ones
DUPLICATE = "duplicate_sample_id"
GZIP_LEVEL = 1

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


class KeyQuantiles(beam.CombineFn):
    """Arrays of ordering keys -> QUANTILES evenly spaced ``(key, keys <= key)`` pairs, smallest and largest key
    included ([] when there is no key), by tfx_bsl's C++ quantiles sketch (exact while it holds every key).

    Beam's ApproximateQuantiles does the same in Python: 1.5 s of CPU for 1M keys where the sketch takes 0.2.
    """

    def create_accumulator(self) -> QuantilesSketch:
        return QuantilesSketch(QUANTILE_EPSILON, 1 << 32, 1)

    def add_input(self, sketch: QuantilesSketch, keys: np.ndarray) -> QuantilesSketch:
        sketch.AddValues(pa.array(keys, pa.float64()))
        return sketch

    def merge_accumulators(self, sketches) -> QuantilesSketch:
        merged = self.create_accumulator()
        for sketch in sketches:
            merged.Merge(sketch)
        return merged

    def compact(self, sketch: QuantilesSketch) -> QuantilesSketch:
        sketch.Compact()
        return sketch

    def extract_output(self, sketch: QuantilesSketch) -> list[tuple[float, float]]:
        keys, ranks = sketch.GetQuantilesAndCumulativeWeights(QUANTILES - 1)
        return list(zip(keys.flatten().to_numpy().tolist(), ranks.flatten().to_numpy().tolist()))


def _split_point(quantiles: list[tuple[float, float]], fraction: float) -> float | None:
    """The largest key with at most ``fraction`` of the keys at or below it (the smallest key when none is)."""
    if not quantiles:
        return None
    keys, ranks = np.array(quantiles).T
    at_most = np.flatnonzero(ranks <= fraction * ranks[-1])
    return float(keys[at_most[-1]] if len(at_most) else keys[0])


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
            | "Quantiles" >> beam.CombineGlobally(KeyQuantiles())
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


def build(p: beam.Pipeline, config: Config, files: InputFiles, out: layout.IngestLayout) -> None:
    """Adds ingestion's graph to ``p``: both passes over the impressions, the common features, and every output."""
    skip, max_line = files.format == "csv", config.input.max_line_bytes
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
         | "WriteCounts" >> WriteCounts(out.counts))
