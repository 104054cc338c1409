"""A Beam sink of GZIP TFRecord files at a chosen deflate level.

Beam's WriteToTFRecord compresses at zlib's default level 6, which cost ~36 µs of a
~1.1 KB example here, the largest single cost of ingestion; zlib's level 1 costs ~9 µs for
files ~25 % larger. ISA-L's deflate (``isal``) at level 1 is ~4x faster again than zlib's
level 1 (~540 against ~140 MB/s of CPU on ingestion's examples) and compresses a little
better, so it does the deflating. The files are ordinary GZIP TFRecords, read back by
``tf.data.TFRecordDataset(..., compression_type="GZIP")`` and TFXIO alike.

``GzipTFRecordSink`` frames each element as one record; ``FramedGzipTFRecordSink`` takes
elements that are already runs of framed records (``frame_records``), so that a step that
encodes a batch at a time hands the sink one element per batch, not one per record.
"""
from __future__ import annotations

import struct
import zlib

import google_crc32c
from apache_beam import coders
from apache_beam.io import filebasedsink
from apache_beam.io.filesystem import CompressionTypes
from isal import isal_zlib

from esmm_model.contracts import layout

GZIP_WBITS = 16 + zlib.MAX_WBITS
_CRC = struct.Struct("<I")


def masked_crc32c(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(value: bytes) -> bytes:
    """One TFRecord: length, masked CRC-32C of the length, data, masked CRC-32C of the data."""
    length = struct.pack("<Q", len(value))
    return b"".join((length, struct.pack("<I", masked_crc32c(length)), value,
                     struct.pack("<I", masked_crc32c(value))))


def frame_records(values: list[bytes]) -> bytes:
    """The TFRecords of ``values``, one after another, as one bytes object."""
    parts = []
    for value in values:
        length = struct.pack("<Q", len(value))
        parts += (length, _CRC.pack(masked_crc32c(length)), value, _CRC.pack(masked_crc32c(value)))
    return b"".join(parts)


class _GzipWriter:
    """Compresses everything written to ``raw`` as one GZIP member."""

    def __init__(self, raw, level: int):
        self._raw = raw
        self._compressor = isal_zlib.compressobj(min(level, isal_zlib.ISAL_BEST_COMPRESSION), isal_zlib.DEFLATED,
                                                 GZIP_WBITS)

    def write(self, data: bytes) -> None:
        self._raw.write(self._compressor.compress(data))

    def close(self) -> None:
        self._raw.write(self._compressor.flush())
        self._raw.close()


class GzipTFRecordSink(filebasedsink.FileBasedSink):
    """Writes serialized records as GZIP TFRecord shards ``<prefix>-SSSSS-of-NNNNN<suffix>``."""

    def __init__(self, file_path_prefix: str, file_name_suffix: str = layout.RECORD_SUFFIX, level: int = 1):
        super().__init__(file_path_prefix, coder=coders.BytesCoder(), file_name_suffix=file_name_suffix,
                         mime_type="application/octet-stream", compression_type=CompressionTypes.UNCOMPRESSED)
        self._level = level

    def open(self, temp_path: str):
        return _GzipWriter(super().open(temp_path), self._level)

    def write_encoded_record(self, file_handle, value: bytes) -> None:
        file_handle.write(frame_record(value))


class FramedGzipTFRecordSink(GzipTFRecordSink):
    """Writes elements that are already framed TFRecords (``frame_records``) as GZIP TFRecord shards."""

    def write_encoded_record(self, file_handle, value: bytes) -> None:
        file_handle.write(value)
