"""SavedModel warmup in TF Serving's format: ``<version>/assets.extra/tf_serving_warmup_requests``.

The file is a TFRecord of ``PredictionLog`` records, each holding a ``PredictRequest``.
TF Serving replays it when it loads a version and before that version takes traffic, so the
first real requests do not pay for graph tracing, kernel selection and lazy allocations. The
pusher writes it from real eval examples at the batch sizes the ranking service sends; the
local server (``serving_client.server``) replays it the same way.
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from esmm_model.contracts.predict_request import predict_request
from esmm_model.errors import InputError
from esmm_model.schema import SERVING_SIGNATURE

WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
# Batch sizes replayed: one candidate, and the sizes a ranking request usually has (TF Serving caps the file at 1000).
BATCH_SIZES = (1, 16, 100, 256)


def warmup_file(version_dir: str) -> str:
    """Where TF Serving looks for the warmup requests of one version."""
    return f"{version_dir.rstrip('/')}/{WARMUP_DIR}/{WARMUP_FILE}"


def read_examples(pattern: str, limit: int) -> list[bytes]:
    """Up to ``limit`` serialized tf.Examples from the GZIP TFRecords matching ``pattern``, in file order."""
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise InputError(f"no examples match {pattern!r} for the warmup requests; pass the eval split's TFRecords")
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").take(limit)
    return [record.numpy() for record in dataset]


def write_examples(path: str, examples: Sequence[bytes]) -> int:
    """Writes serialized tf.Examples as one GZIP TFRecord file that ``read_examples`` reads back; returns the count."""
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for example in examples:
            writer.write(example)
    return len(examples)


def warmup_requests(examples: Sequence[bytes], model_name: str, signature: str = SERVING_SIGNATURE,
                    batch_sizes: Sequence[int] = BATCH_SIZES, *,
                    rank_signature: str | None = None) -> list[prediction_log_pb2.PredictionLog]:
    """One Predict request per batch size (capped at the examples there are), cycling through ``examples``;
    with ``rank_signature``, one more per batch size for it, as one ranking request: the batch's first
    example as every row's context and the batch as the candidates (each input parses only its own keys)."""
    if not examples:
        raise InputError("no examples to build warmup requests from")
    logs, start = [], 0
    for size in sorted({min(size, len(examples)) for size in batch_sizes}):
        batch = [examples[(start + i) % len(examples)] for i in range(size)]
        start += size
        requests = [predict_request(batch, model_name, signature)]
        if rank_signature is not None:
            requests.append(predict_request(batch, model_name, rank_signature, context=batch[0]))
        logs += [prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
                 for request in requests]
    return logs


def write_warmup_file(version_dir: str, requests: Sequence[prediction_log_pb2.PredictionLog]) -> str:
    """Writes ``requests`` as the version's warmup file (uncompressed TFRecord, as TF Serving reads it)."""
    path = warmup_file(version_dir)
    tf.io.gfile.makedirs(path.rsplit("/", 1)[0])
    with tf.io.TFRecordWriter(path) as writer:
        for log in requests:
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(version_dir: str) -> list[predict_pb2.PredictRequest]:
    """The Predict requests in a version's warmup file; empty when it has none. Other request kinds are refused."""
    path = warmup_file(version_dir)
    if not tf.io.gfile.exists(path):
        return []
    requests = []
    for i, record in enumerate(tf.data.TFRecordDataset(path)):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        kind = log.WhichOneof("log_type")
        if kind != "predict_log":
            raise InputError(f"{path}: record {i} is a {kind}; only predict_log warmup requests are supported")
        requests.append(log.predict_log.request)
    return requests
