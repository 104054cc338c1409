"""Rows lost between Beam stages fail the step: the runner fix, and the written-rows check against counts.json."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from apache_beam.runners.portability.fn_api_runner import fn_runner, worker_handlers
from apache_beam.runners.worker import data_plane

from components.artifacts.record_counts import RowCountError, count_records
from components.beam import runner as beam_runner
from components.beam.runner import make_runner, pipeline_options
from components.beam.tfrecord_sink import frame_records
from components.transform.executor import check_rows
from esmm_model.contracts import layout
from esmm_model.errors import EsmmError
from raw_examples import write_split


def test_direct_runner_streams_deliver_every_byte_while_the_send_queue_blocks():
    """The runner's input stream to its workers, written for 1.5 s while each send blocks 0.3 s (a full queue)."""
    make_runner(pipeline_options(["--runner=DirectRunner", "--direct_running_mode=multi_processing"]))
    sent: list[int] = []

    def blocking_send(data: bytes) -> None:
        time.sleep(0.3)
        sent.append(len(data))

    stream = data_plane.ClosableOutputStream.create(
        lambda data: sent.append(len(data)), blocking_send, worker_handlers.DATA_BUFFER_TIME_LIMIT_MS)
    for _ in range(100):
        stream.write(b"x" * 10_000)
        time.sleep(0.015)
    stream.close()
    assert sum(sent) == 1_000_000


def test_direct_runner_sends_a_large_stage_input_in_bounded_messages():
    """40 MB of 4 MB chunks leave as messages of at most ~10 MB plus a chunk, every byte of them."""
    make_runner(pipeline_options(["--runner=DirectRunner", "--direct_running_mode=multi_processing"]))
    sent: list[int] = []
    record = lambda data: sent.append(len(data))  # noqa: E731
    stream = data_plane.ClosableOutputStream.create(record, record, worker_handlers.DATA_BUFFER_TIME_LIMIT_MS)
    manager = object.__new__(fn_runner.BundleManager)
    manager._worker_handler = object.__new__(worker_handlers.GrpcWorkerHandler)  # a worker over gRPC
    manager._worker_handler.data_conn = SimpleNamespace(output_stream=lambda *_: stream)
    beam_runner._senders.running = []
    manager._send_input_to_worker("bundle_1", "read", [b"x" * 4_000_000] * 10)
    for sender, errors in beam_runner._senders.running:
        sender.join(timeout=30)
        assert not errors
    assert sum(sent) == 40_000_000
    assert len(sent) >= 3 and max(sent) <= 14_000_000


LIST_INPUT_PIPELINE = """
import sys

import apache_beam as beam
from apache_beam.runners.worker import data_plane

from components.beam.runner import make_pipeline

data_plane._DEFAULT_SEND_QUEUE_MAX_BYTES = 1 << 20  # the runner's queues and (in-process) the workers' hold
data_plane._DEFAULT_RECEIVE_QUEUE_MAX_ELEMENTS = 1  # a few 10 MB messages, not ~250 MB
with make_pipeline(["--runner=DirectRunner", "--direct_running_mode=multi_threading", "--direct_num_workers=2"]) as p:
    data = p | beam.Impulse() | beam.FlatMap(lambda _: range(400_000)) | beam.Map(lambda i: b"%09d" % i + b"x" * 300)
    total = data | "Count" >> beam.combiners.Count.Globally()
    _ = (data | "Check" >> beam.Map(lambda row, n: len(row), n=beam.pvalue.AsSingleton(total))
         | beam.CombineGlobally(sum) | beam.Map(lambda n: print("bytes", n, flush=True)))
"""


def test_direct_runner_stage_input_past_the_data_planes_queues_does_not_hang(tmp_path):
    """124 MB of rows that the runner holds and sends again to a stage that waits on a side input computed from
    them (as tf.Transform's transform stage does): with the input sent before the bundle's request, the workers'
    full receive queues stalled it for good (a 2.2M-row transform hung)."""
    script = tmp_path / "list_input.py"
    script.write_text(LIST_INPUT_PIPELINE)
    try:
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=150,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    except subprocess.TimeoutExpired:
        pytest.fail("the pipeline hung sending a large stage input to its workers")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "bytes 123600000" in done.stdout


def test_an_in_process_workers_large_side_input_arrives_whole():
    """``in_memory``: the bundle reads its input on the runner's own thread, so the input is sent before it
    runs; sent from a thread beside it (as to gRPC workers), a 6 MB side input arrived empty, without error."""
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from components.beam.runner import make_pipeline

    with make_pipeline(["--runner=DirectRunner", "--direct_running_mode=in_memory"]) as p:
        side = p | "Side" >> beam.Create([(i, b"x" * 1000) for i in range(6000)]) | beam.GroupByKey()
        keys = p | "Main" >> beam.Create([0]) | beam.Map(lambda _, d: len(d), d=beam.pvalue.AsDict(side))
        assert_that(keys, equal_to([6000]))


def _transformed(tmp_path, train: int, eval_: int) -> layout.TransformLayout:
    out = layout.TransformLayout(str(tmp_path / "transform"))
    for split, n in ((layout.TRAIN, train), (layout.EVAL, eval_)):
        write_split(tmp_path / "transform" / "transformed" / split / f"part-00000{layout.RECORD_SUFFIX}",
                    [f"row {i}".encode() for i in range(n)])
    return out


def _ingest_counts(tmp_path, train: int, eval_: int) -> layout.IngestLayout:
    ingest = layout.IngestLayout(str(tmp_path / "ingest"))
    (tmp_path / "ingest").mkdir()
    (tmp_path / "ingest" / "counts.json").write_text(json.dumps(
        {"rows_read": train + eval_, "train": {"rows": train}, "eval": {"rows": eval_}}))
    return ingest


def test_count_records_reads_every_shard(tmp_path):
    out = _transformed(tmp_path, 7, 3)
    write_split(tmp_path / "transform" / "transformed" / "train" / f"part-00001{layout.RECORD_SUFFIX}", [b"a", b"b"])
    assert count_records(out.split_pattern(layout.TRAIN)) == 9
    assert count_records(str(tmp_path / "nothing" / "*.tfrecord.gz")) == 0


def test_count_records_checks_each_length_and_reads_gzip_members_one_after_another(tmp_path):
    records = [bytes([i % 251]) * (i * 37 % 3000) for i in range(400)]
    framed = frame_records(records)
    path = tmp_path / f"data{layout.RECORD_SUFFIX}"
    path.write_bytes(gzip.compress(framed[:5000]) + gzip.compress(framed[5000:]))
    assert count_records(str(path)) == 400
    corrupt = bytearray(framed)
    corrupt[len(frame_records(records[:200]))] ^= 1  # the length of record 200
    path.write_bytes(gzip.compress(bytes(corrupt)))
    with pytest.raises(RowCountError, match="record 200 has a corrupt length"):
        count_records(str(path))
    path.write_bytes(gzip.compress(framed[:-3]))
    with pytest.raises(RowCountError, match="ends within a record"):
        count_records(str(path))


def test_matching_counts_pass_and_are_returned(tmp_path):
    assert check_rows(_ingest_counts(tmp_path, 7, 3), _transformed(tmp_path, 7, 3)) == {"train": 7, "eval": 3}


def test_lost_train_rows_fail_naming_the_split_and_both_counts(tmp_path):
    out = _transformed(tmp_path, 5, 3)
    with pytest.raises(RowCountError) as err:
        check_rows(_ingest_counts(tmp_path, 7, 3), out)
    assert str(err.value) == (f"transform wrote 5 rows for the train split, but ingestion counted 7 (lost: 2); "
                              f"outputs in {out.transformed} are incomplete")


def test_extra_eval_rows_fail_too(tmp_path):
    with pytest.raises(RowCountError, match=r"wrote 4 rows for the eval split, but ingestion counted 3 \(extra: 1\)"):
        check_rows(_ingest_counts(tmp_path, 7, 3), _transformed(tmp_path, 7, 4))


def test_without_counts_json_nothing_is_compared(tmp_path):
    (tmp_path / "ingest").mkdir()
    written = check_rows(layout.IngestLayout(str(tmp_path / "ingest")), _transformed(tmp_path, 2, 1))
    assert written == {"train": 2, "eval": 1}


def test_the_direct_runner_corrections_refuse_another_beam_version():
    """The corrections replace Beam 2.77.0 internals; on any other version a Beam step stops with one line."""
    beam_runner.check_beam_version(beam_runner.PATCHED_BEAM_VERSION)
    with pytest.raises(EsmmError, match=r"apache-beam 2.78.0 is installed, but .* apache-beam 2.77.0 only"):
        beam_runner.check_beam_version("2.78.0")
