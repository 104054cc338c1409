"""Transform step: tf.Transform on Beam, analyzing the train split and transforming both.

Output layout under ``out_dir`` (``esmm_model.contracts.layout.TransformLayout``), which must be missing or
empty (``components.artifacts.output_dir``):
- ``transform_graph/``: the ``TFTransformOutput`` directory (``transform_fn/``,
  ``transformed_metadata/``, and the raw ``metadata/`` that
  ``TFTransformOutput.raw_feature_spec()`` reads);
- ``transformed/train/part-*.tfrecord.gz`` and ``transformed/eval/part-*.tfrecord.gz``:
  GZIP TFRecords of transformed tf.Example, parsed with
  ``TFTransformOutput.transformed_feature_spec()``.

After the run, the rows written per split are counted and must equal ingestion's
``counts.json``; a difference fails the step (``components.artifacts.record_counts``).

The output is a function of the input rows and their order: batches of a fixed size
(``RECORD_BATCH_ROWS``), not sized by timing. With one in-order Beam worker (``in_memory``, one
worker) a rerun writes the same records.
"""
from __future__ import annotations

import logging
import uuid

import apache_beam as beam
import tensorflow as tf
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata
from tfx_bsl.coders import example_coder
from tfx_bsl.public import tfxio

from components.artifacts import record_counts, storage
from components.artifacts.output_dir import require_empty
from components.beam.runner import make_pipeline
from components.beam.tfrecord_sink import FramedGzipTFRecordSink, frame_records
from components.beam.tfrecord_source import ReadExampleBatches
from esmm_model.config import Config
from esmm_model.contracts import layout
from esmm_model.errors import InputError
from esmm_model.preprocessing import make_preprocessing_fn
from esmm_model.schema import schema_proto

log = logging.getLogger(__name__)

# Rows per Arrow RecordBatch read into tf.Transform, fixed. Left unset, tfx_bsl lets Beam's BatchElements
# size the batches from measured wall time (and, past ten batches, random jitter), and the analyzers'
# statistics (the z-score's mean and variance) depend on where batches split: the same rows gave other
# transformed values on a loaded machine, so a retrain on the same data was not bit-identical. 8,000
# rows, not tfx_bsl's tuning cap of 1,000: a 1M-row Ali-CCP transform took 85.4 and 85.6 s against 95.4 and
# 95.1 s at 1,000 (2 workers, load ~2; docs/benchmarks.md), with the same vocabularies and values.
RECORD_BATCH_ROWS = 8_000


def _raw_pattern(ingest: layout.IngestLayout, split: str) -> str:
    pattern = ingest.split_pattern(split)
    if not tf.io.gfile.glob(pattern):
        raise InputError(f"no raw examples at {pattern!r}; run `esmm ingest` first or check --ingest-dir")
    return pattern


def _ingested_rows(ingest: layout.IngestLayout) -> dict[str, int] | None:
    """Rows per split from ingestion's counts.json; None (with a warning) when there is none to compare with."""
    counts = record_counts.read_ingest_counts(ingest.root)
    if counts is None:
        log.warning("transform: no %s, so the rows written cannot be checked against ingestion's counts", ingest.counts)
        return None
    return {split: counts.get(split, {}).get("rows", 0) for split in layout.SPLITS}


def check_rows(ingest: layout.IngestLayout, out: layout.TransformLayout) -> dict[str, int]:
    """Counts the transformed rows per split; RowCountError when they differ from ingestion's counts.json."""
    expected = _ingested_rows(ingest)
    written = dict(zip(layout.SPLITS, record_counts.count_each([out.split_pattern(split) for split in layout.SPLITS])))
    for split in layout.SPLITS:
        if expected is not None:
            record_counts.check_written("transform", split, written[split], expected[split], out.transformed)
    return written


def _write(batches: beam.PCollection, out: layout.TransformLayout, split: str) -> beam.pvalue.PDone:
    """Transformed record batches -> GZIP TFRecords: each batch encoded by tfx_bsl's C++ coder and framed
    as one element, so no step handles examples one by one."""
    return (batches
            | f"Encode{split}" >> beam.Map(lambda batch: frame_records(example_coder.RecordBatchToExamples(batch[0])))
            | f"Write{split}" >> beam.io.Write(FramedGzipTFRecordSink(out.split_prefix(split))))


def transform(config: Config, ingest_dir: str, out_dir: str, beam_args: list[str]) -> layout.TransformLayout:
    """Analyzes ``<ingest_dir>/train``, transforms train and eval, writes graph and TFRecords; returns the layout.

    Both directories may be local paths or URIs that Beam's FileSystems and tf.io.gfile know.
    beam_args: the Beam runner and its options, built by ``components.beam.runner`` as for
    ingestion (the DirectRunner never falls into the network-dependent PrismRunner).
    """
    require_empty(str(out_dir), "transform")
    ingest, out = layout.IngestLayout(str(ingest_dir)), layout.TransformLayout(str(out_dir))
    patterns = {split: _raw_pattern(ingest, split) for split in layout.SPLITS}
    tf.io.gfile.makedirs(out.root)
    schema = schema_proto(config)
    raw_metadata = dataset_metadata.DatasetMetadata(schema)
    preprocessing_fn = make_preprocessing_fn(config)
    log.info("transform: analyzing %s, transforming train and eval into %s", patterns[layout.TRAIN], out.root)
    temp_dir = layout.join(out.root, f"tft-tmp-{uuid.uuid4().hex}")
    try:
        with make_pipeline(beam_args) as p, tft_beam.Context(temp_dir=temp_dir):
            raw = {split: tfxio.TFExampleRecord(file_pattern=pattern, schema=schema,
                                                telemetry_descriptors=["esmm", "transform"])
                   for split, pattern in patterns.items()}
            data = {split: p | f"Read{split}" >> ReadExampleBatches(pattern, schema, RECORD_BATCH_ROWS)
                    for split, pattern in patterns.items()}
            train_dataset = (data[layout.TRAIN], raw[layout.TRAIN].TensorAdapterConfig())
            (train_out, _), transform_fn = train_dataset | "AnalyzeAndTransform" >> tft_beam.AnalyzeAndTransformDataset(
                preprocessing_fn, output_record_batches=True)
            eval_dataset = (data[layout.EVAL], raw[layout.EVAL].TensorAdapterConfig())
            eval_out, _ = (eval_dataset, transform_fn) | "TransformEval" >> (
                tft_beam.TransformDataset(output_record_batches=True))
            _write(train_out, out, layout.TRAIN)
            _write(eval_out, out, layout.EVAL)
            _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(out.graph)
            _ = raw_metadata | "WriteRawMetadata" >> tft_beam.WriteMetadata(out.raw_metadata, p)
    finally:
        storage.remove_if_present(temp_dir)
    written = check_rows(ingest, out)
    log.info("transform: wrote %s and %s (%s)", out.graph, out.transformed,
             ", ".join(f"{split} {n:,} rows" for split, n in written.items()))
    return out
