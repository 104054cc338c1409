"""Transform step: tf.Transform on Beam, analyzing the train split and transforming both.

Output layout under ``out_dir``, which must be missing or empty (``components.output_dir``):
- ``transform_graph/``: the ``TFTransformOutput`` directory (``transform_fn/``,
  ``transformed_metadata/``, and the raw ``metadata/`` that
  ``TFTransformOutput.raw_feature_spec()`` reads);
- ``transformed/train/part-*.tfrecord.gz`` and ``transformed/eval/part-*.tfrecord.gz``:
  GZIP TFRecords of transformed tf.Example, parsed with
  ``TFTransformOutput.transformed_feature_spec()``.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import apache_beam as beam
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata
from tfx_bsl.coders import example_coder
from tfx_bsl.public import tfxio

from components.beam_runner import make_pipeline
from components.output_dir import require_empty
from esmm_model.config import Config
from esmm_model.errors import InputError
from esmm_model.preprocessing import make_preprocessing_fn
from esmm_model.schema import schema_proto

log = logging.getLogger(__name__)

SPLITS = ("train", "eval")
RAW_PATTERN = "*.tfrecord.gz"
TRANSFORM_GRAPH = "transform_graph"
TRANSFORMED = "transformed"


@dataclass(frozen=True)
class TransformOutputs:
    """Where the transform step wrote its artifacts."""

    transform_dir: str
    transformed_dir: str

    def pattern(self, split: str) -> str:
        """Glob of one split's transformed TFRecords."""
        return str(Path(self.transformed_dir) / split / RAW_PATTERN)


def _raw_pattern(ingest_dir: Path, split: str) -> str:
    pattern = ingest_dir / split / RAW_PATTERN
    if not list(pattern.parent.glob(RAW_PATTERN)):
        raise InputError(f"no raw examples at {str(pattern)!r}; run `esmm ingest` first or check --ingest-dir")
    return str(pattern)


def _write(examples: beam.PCollection, out_dir: Path, split: str) -> beam.pvalue.PDone:
    return (examples
            | f"Encode{split}" >> beam.FlatMap(lambda batch: example_coder.RecordBatchToExamples(batch[0]))
            | f"Write{split}" >> beam.io.WriteToTFRecord(
                str(out_dir / split / "part"), file_name_suffix=".tfrecord.gz",
                compression_type=beam.io.filesystem.CompressionTypes.GZIP))


def transform(config: Config, ingest_dir: str | Path, out_dir: str | Path, beam_args: list[str]) -> TransformOutputs:
    """Analyzes ``<ingest_dir>/train``, transforms train and eval, writes graph and TFRecords.

    beam_args: the Beam runner and its options, built by ``components.beam_runner`` as for
    ingestion (the DirectRunner never falls into the network-dependent PrismRunner).
    """
    require_empty(str(out_dir), "transform")
    ingest_dir, out_dir = Path(ingest_dir), Path(out_dir)
    patterns = {split: _raw_pattern(ingest_dir, split) for split in SPLITS}
    transform_dir, transformed_dir = out_dir / TRANSFORM_GRAPH, out_dir / TRANSFORMED
    out_dir.mkdir(parents=True, exist_ok=True)
    schema = schema_proto(config)
    raw_metadata = dataset_metadata.DatasetMetadata(schema)
    preprocessing_fn = make_preprocessing_fn(config)
    log.info("transform: analyzing %s, transforming train and eval into %s", patterns["train"], out_dir)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix="tft-tmp-") as temp_dir:
        with make_pipeline(beam_args) as p, tft_beam.Context(temp_dir=temp_dir):
            raw = {split: tfxio.TFExampleRecord(file_pattern=pattern, schema=schema,
                                                telemetry_descriptors=["esmm", "transform"])
                   for split, pattern in patterns.items()}
            data = {split: p | f"Read{split}" >> source.BeamSource() for split, source in raw.items()}
            train_dataset = (data["train"], raw["train"].TensorAdapterConfig())
            (train_out, _), transform_fn = train_dataset | "AnalyzeAndTransform" >> tft_beam.AnalyzeAndTransformDataset(
                preprocessing_fn, output_record_batches=True)
            eval_out, _ = ((data["eval"], raw["eval"].TensorAdapterConfig()), transform_fn) | "TransformEval" >> (
                tft_beam.TransformDataset(output_record_batches=True))
            _write(train_out, transformed_dir, "train")
            _write(eval_out, transformed_dir, "eval")
            _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(str(transform_dir))
            _ = raw_metadata | "WriteRawMetadata" >> tft_beam.WriteMetadata(str(transform_dir / "metadata"), p)
    log.info("transform: wrote %s and %s", transform_dir, transformed_dir)
    return TransformOutputs(str(transform_dir), str(transformed_dir))
