"""The GZIP TFRecord sink writes files TensorFlow reads back record for record."""
import apache_beam as beam
import tensorflow as tf
from apache_beam.io.tfrecordio import _TFRecordUtil

from components.beam.runner import make_pipeline
from components.beam.tfrecord_sink import FramedGzipTFRecordSink, GzipTFRecordSink, frame_record, frame_records


def test_framing_matches_beams_tfrecord_writer():
    class Buffer(list):
        write = list.append

    for value in (b"", b"x", bytes(range(256)) * 40):
        expected = Buffer()
        _TFRecordUtil.write_record(expected, value)
        assert frame_record(value) == b"".join(expected)
    assert frame_records([b"", b"x"]) == frame_record(b"") + frame_record(b"x")


def test_sink_output_reads_back_in_tensorflow(tmp_path):
    records = [f"record {i}".encode() * (i % 7 + 1) for i in range(500)]
    with make_pipeline(["--runner=DirectRunner", "--direct_running_mode=in_memory"]) as p:
        _ = p | beam.Create(records) | beam.io.Write(GzipTFRecordSink(str(tmp_path / "data")))
    files = sorted(str(f) for f in tmp_path.glob("data-*.tfrecord.gz"))
    assert files
    read = list(tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator())
    assert sorted(read) == sorted(records)


def test_framed_sink_writes_runs_of_records_that_read_back(tmp_path):
    records = [f"record {i}".encode() * (i % 7 + 1) for i in range(500)]
    runs = [frame_records(records[i:i + 64]) for i in range(0, len(records), 64)]
    with make_pipeline(["--runner=DirectRunner", "--direct_running_mode=in_memory"]) as p:
        _ = p | beam.Create(runs) | beam.io.Write(FramedGzipTFRecordSink(str(tmp_path / "data")))
    files = sorted(str(f) for f in tmp_path.glob("data-*.tfrecord.gz"))
    read = list(tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator())
    assert sorted(read) == sorted(records)
