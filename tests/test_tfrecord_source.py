"""The GZIP TFRecord source: every record back in order with both CRCs checked, and tf.Example RecordBatches
equal to TFXIO's."""
import gzip
import io

import pyarrow as pa
import pytest
from apache_beam.testing.util import assert_that
from tfx_bsl.coders import example_coder
from tfx_bsl.public import tfxio

from components.beam.runner import make_pipeline
from components.beam.tfrecord_sink import frame_records
from components.beam.tfrecord_source import CorruptRecordError, ReadExampleBatches, read_records
from esmm_model.config import load_config
from esmm_model.schema import schema_proto
from tests.raw_examples import make_example, random_rows


def test_records_come_back_in_order_across_gzip_members_and_chunks():
    records = [bytes([i % 251]) * (i * 997 % 70_000) for i in range(300)]  # some records span 64 KiB reads
    framed = frame_records(records)
    data = gzip.compress(framed[:100_000]) + gzip.compress(framed[100_000:])
    assert list(read_records(io.BytesIO(data), "f")) == records


def test_corrupt_data_names_the_file():
    framed = bytearray(frame_records([b"abc", b"defgh"]))
    framed[len(frame_records([b"abc"])) + 12] ^= 1  # the first data byte of the second record
    with pytest.raises(CorruptRecordError, match="f.gz: record 1 has corrupt data"):
        list(read_records(io.BytesIO(gzip.compress(bytes(framed))), "f.gz"))


def test_example_batches_decode_as_tfxio_does_and_never_span_files(tmp_path):
    config = load_config("aliccp")
    schema = schema_proto(config)
    examples = [make_example(config, row) for row in random_rows(config, 8, seed=3)]
    for name, part in (("a", examples[:5]), ("b", examples[5:])):
        (tmp_path / f"{name}.tfrecord.gz").write_bytes(gzip.compress(frame_records(part)))
    pattern = str(tmp_path / "*.tfrecord.gz")
    tfxio_schema = tfxio.TFExampleRecord(pattern, schema=schema).ArrowSchema()
    want = example_coder.ExamplesToRecordBatchDecoder(schema.SerializeToString()).DecodeBatch(examples)

    def rows(batches):
        return sorted(map(repr, pa.Table.from_batches(batches).to_pylist()))

    def check(batches):
        assert sorted(b.num_rows for b in batches) == [1, 1, 2, 2, 2]
        assert all(b.schema == tfxio_schema for b in batches)
        assert rows(batches) == rows([want])

    with make_pipeline(["--runner=DirectRunner", "--direct_running_mode=in_memory"]) as p:
        assert_that(p | ReadExampleBatches(pattern, schema, batch_rows=2), check)
