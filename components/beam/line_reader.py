"""Reads raw text lines for ingestion as bytes, in byte ranges, with a bound on line length.

Beam's ReadFromText decodes every line as UTF-8 (one bad byte aborts the whole job) and
grows its buffer 8 KiB at a time by concatenation, so a line of n bytes costs O(n²) (a
16 MB line took 31 s). This reader hands lines over undecoded, so that a reader can
reject a bad one like any other, and never holds more than ``max_line_bytes`` of a line:
a longer line is reported with its offset, size and first bytes, and skipped.

Uncompressed files are split into byte ranges that workers read in parallel; a range owns
the lines that start inside it (the first partial line belongs to the range before).
Compressed files are read whole. All I/O goes through Beam's FileSystems. A UTF-8 byte-order
mark at the start of a file is not part of its first line. Each batch keeps its file and the
byte offset of every line, so that a line's position (file order, then line order) is known.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Iterator, Optional

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

# Small enough that a runner dealing ranges out to workers by count (the DirectRunner) keeps them all busy: with
# 16 MiB ranges an 11.7 MB common-features file was one range, parsed by one of two workers alone.
RANGE_BYTES = 2 << 20
BOM = b"\xef\xbb\xbf"
CHUNK_BYTES = 1 << 20
PREFIX_BYTES = 200


@dataclass(frozen=True)
class LineRange:
    """Bytes [start, end) of one file; ``end`` None reads to the end (compressed files)."""

    path: str
    start: int
    end: Optional[int]


@dataclass(frozen=True)
class LineBatch:
    """Consecutive lines of one file: their bytes (without line ends) and the byte offset each starts at."""

    path: str
    starts: list[int]
    lines: list[bytes]

    def __len__(self) -> int:
        return len(self.lines)


@dataclass(frozen=True)
class LongLine:
    """A line over the limit: where it starts, its size, and its first bytes."""

    path: str
    offset: int
    size: int
    prefix: bytes


def line_ranges(pattern: str, range_bytes: int = RANGE_BYTES) -> list[LineRange]:
    """The ranges of every file matching ``pattern``, in file order."""
    ranges = []
    for meta in sorted(FileSystems.match([pattern])[0].metadata_list, key=lambda m: m.path):
        if CompressionTypes.detect_compression_type(meta.path) != CompressionTypes.UNCOMPRESSED:
            ranges.append(LineRange(meta.path, 0, None))
            continue
        ranges.extend(LineRange(meta.path, start, min(start + range_bytes, meta.size_in_bytes))
                      for start in range(0, meta.size_in_bytes, range_bytes))
    return ranges


def iter_lines(f: BinaryIO, offset: int, max_line_bytes: int) -> Iterator[tuple[int, Optional[bytes], int, bytes]]:
    """(start offset, line or None when longer than max_line_bytes, size, first bytes) per line of f.

    Lines end at b"\\n" (a trailing b"\\r" is dropped); a last line without one counts too. At offset 0
    a UTF-8 byte-order mark is skipped: the first line starts after it.
    """
    pieces: list[bytes] = []
    size = 0
    start = offset
    at_file_start = offset == 0
    while True:
        chunk = f.read(CHUNK_BYTES)
        if not chunk:
            break
        pos = 0
        if at_file_start:
            at_file_start = False
            if chunk.startswith(BOM):
                pos = start = len(BOM)
        while True:
            newline = chunk.find(b"\n", pos)
            piece = chunk[pos:] if newline < 0 else chunk[pos:newline]
            if size <= max_line_bytes:
                pieces.append(piece)
            elif len(pieces) > 1:
                pieces = [b"".join(pieces)[:PREFIX_BYTES]]  # over the limit: keep only the first bytes
            size += len(piece)
            if newline < 0:
                break
            yield _line(start, pieces, size, max_line_bytes)
            start = offset + newline + 1
            pieces, size, pos = [], 0, newline + 1
        offset += len(chunk)
    if size:
        yield _line(start, pieces, size, max_line_bytes)


def _line(start: int, pieces: list[bytes], size: int, max_line_bytes: int) -> tuple[int, Optional[bytes], int, bytes]:
    line = b"".join(pieces)
    if line.endswith(b"\r") and size <= max_line_bytes + 1:
        line, size = line[:-1], size - 1
    if size > max_line_bytes:
        return start, None, size, line[:PREFIX_BYTES]
    return start, line, size, b""


class ReadLineBatches(beam.DoFn):
    """A LineRange -> LineBatches of up to ``batch_size`` lines; too-long lines go to the ``too_long``
    output as LongLine."""

    def __init__(self, max_line_bytes: int, batch_size: int, skip_header: bool = False):
        self._max, self._batch_size, self._skip_header = max_line_bytes, batch_size, skip_header

    def process(self, line_range: LineRange) -> Iterator:
        compression = CompressionTypes.AUTO if line_range.end is None else CompressionTypes.UNCOMPRESSED
        # Read from the byte before the range, so that a line starting right at it is seen whole;
        # from the file's start when the range begins within a byte-order mark.
        offset = 0 if line_range.start <= len(BOM) else line_range.start - 1
        with FileSystems.open(line_range.path, compression_type=compression) as f:
            if offset:
                f.seek(offset)
            first = offset == 0
            batch, starts = [], []
            for start, line, size, prefix in iter_lines(f, offset, self._max):
                header, first = first and self._skip_header, False
                if start < line_range.start or header:
                    continue  # the end of the previous range's last line, or the CSV header
                if line_range.end is not None and start >= line_range.end:
                    break
                if line is None:
                    yield beam.pvalue.TaggedOutput("too_long", LongLine(line_range.path, start, size, prefix))
                    continue
                batch.append(line)
                starts.append(start)
                if len(batch) == self._batch_size:
                    yield LineBatch(line_range.path, starts, batch)
                    batch, starts = [], []
            if batch:
                yield LineBatch(line_range.path, starts, batch)
