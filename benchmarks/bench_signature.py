"""CPU cost of the ``serving_default`` signature per candidate, the graph TF Serving runs.

The signature parses raw tf.Examples, applies the tf.Transform graph and runs the towers for
every candidate of a ranking request. This times it alone, in-process, on a SavedModel loaded
back from disk, two ways: as TF Serving runs it (the SavedModel loaded into a TF1 Session, the
signature's tensors fed and fetched: grappler inlines its functions there), and as a Python
caller does (``signatures['serving_default'](examples=...)``), on batches of --batches
candidates (raw eval examples of an ingest output, labels and sample id removed, as a request
carries them), --calls calls per batch size after --warmup calls. The figure is CPU time
(``time.process_time``: every thread of this process) per candidate, so the neighbours' load
counts less than in wall time; the load average is printed beside it. TensorFlow runs with
--threads intra- and inter-op threads (default 1: the work itself, without idle threads spinning
for work, which a shared 2-core machine inflates).

The model: --export (a SavedModel the trainer wrote), or, without it, one built from
--transform-dir with untrained weights (the graph and its cost are the same, the scores not).

--breakdown also times the parts, each a tf.function over the same batch built from the same
transform output and model: parse alone; parse + the tf.Transform layer; the whole signature
in-process (embeddings and towers added); and the whole with the weighted id lists padded dense as
in training (what the signature did before it pooled them sparse). Differences give each part's share.

    .venv/bin/python benchmarks/bench_signature.py --ingest-dir DIR --transform-dir DIR [--export DIR]
        [--config aliccp] [--batches 100 512] [--calls 200] [--threads 1] [--breakdown]
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components import console  # noqa: E402

console.quiet_process()  # before TensorFlow or Beam load; ESMM_VERBOSE=1 shows their lines

import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402

from esmm_model.config import LABELS, Config, load_config  # noqa: E402
from esmm_model.contracts import layout  # noqa: E402
from esmm_model.contracts.predict_request import split_example  # noqa: E402
from esmm_model.export import save_serving_model  # noqa: E402
from esmm_model.model import EsmmModel, model_inputs, serving_inputs  # noqa: E402
from esmm_model.preprocessing import table_sizes  # noqa: E402
from esmm_model.schema import (  # noqa: E402
    CONTEXT_INPUT,
    OUTPUTS,
    RANK_SIGNATURE,
    SAMPLE_ID,
    SERVING_INPUT,
    SERVING_SIGNATURE,
    feature_spec,
)
from load_average import load_avg  # noqa: E402

TARGET_US_AT_100 = 15.0


def request_examples(ingest_dir: str, rows: int) -> list[bytes]:
    """The first ``rows`` raw eval examples, without labels and sample id (what a request carries)."""
    files = sorted(glob.glob(layout.IngestLayout(ingest_dir).split_pattern(layout.EVAL)))
    if not files:
        raise SystemExit(f"no eval examples under {ingest_dir!r}")
    examples = []
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP").take(rows):
        example = tf.train.Example.FromString(record.numpy())
        for key in (*LABELS, SAMPLE_ID):
            del example.features.feature[key]
        examples.append(example.SerializeToString())
    if len(examples) < rows:
        raise SystemExit(f"{ingest_dir!r} holds {len(examples)} eval examples; need {rows}")
    return examples


def built_model(config: Config, tft_output: tft.TFTransformOutput, examples: list[bytes]) -> EsmmModel:
    """An untrained model with the transform output's table sizes, built on one batch."""
    model = EsmmModel(config, table_sizes(config, tft_output))
    raw = tf.io.parse_example(examples[:8], feature_spec(config, labels=False, defaults=True))
    model(model_inputs(config, tft_output.transform_features_layer()(raw))[0])
    return model


def cpu_us_per_candidate(fn: Callable, batch, calls: int, warmup: int) -> float:
    for _ in range(warmup):
        fn(batch)
    started = time.process_time()
    for _ in range(calls):
        fn(batch)
    return (time.process_time() - started) / (calls * candidates(batch)) * 1e6


def candidates(batch) -> int:
    return len(batch[SERVING_INPUT]) if isinstance(batch, dict) else len(batch)


def _checksum(outputs: dict) -> tf.Tensor:
    """One scalar that needs every output (a part returning dozens of tensors would time Python packing them)."""
    return tf.add_n([tf.cast(tf.size(v.values if isinstance(v, tf.SparseTensor) else v), tf.int64)
                     for v in outputs.values()])


def session_runners(export: str, threads: int) -> dict[str, Callable[[dict[str, list[bytes]]], object]]:
    """Each signature as TF Serving runs it: the SavedModel loaded into a TF1 Session (SavedModelBundle),
    the signature's tensors fed (by input name) and fetched by name, with no Python function call around
    the graph."""
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph, config=tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=threads, inter_op_parallelism_threads=threads))
    with graph.as_default():
        meta_graph = tf.compat.v1.saved_model.loader.load(session, [tf.saved_model.SERVING], export)

    def runner(name: str) -> Callable[[dict[str, list[bytes]]], object]:
        signature = meta_graph.signature_def[name]
        fetches = [signature.outputs[output].name for output in OUTPUTS]
        return lambda inputs: session.run(fetches, {signature.inputs[k].name: v for k, v in inputs.items()})

    return {name: runner(name) for name in (SERVING_SIGNATURE, RANK_SIGNATURE)}


def rank_inputs(config: Config, examples: list[bytes]) -> dict[str, list[bytes]]:
    """``examples`` as one ranking request to the ``rank`` signature: the first example's user and context
    features as every row's context, each example's item features as a candidate."""
    context = split_example(config, examples[0])[0]
    return {CONTEXT_INPUT: [context] * len(examples), SERVING_INPUT: [split_example(config, e)[1] for e in examples]}


def parts(config: Config, model: EsmmModel, tft_output: tft.TFTransformOutput) -> dict[str, Callable]:
    """Cumulative prefixes of the serving graph, each a tf.function of the serialized examples."""
    layer = tft_output.transform_features_layer()
    spec = feature_spec(config, labels=False, defaults=True)
    signature = [tf.TensorSpec([None], tf.string)]

    @tf.function(input_signature=signature)
    def parse(examples):
        return _checksum(tf.io.parse_example(examples, spec))

    @tf.function(input_signature=signature)
    def parse_transform(examples):
        return _checksum(layer(tf.io.parse_example(examples, spec)))

    @tf.function(input_signature=signature)
    def whole(examples):
        outputs = model(serving_inputs(config, layer(tf.io.parse_example(examples, spec))), training=False)
        return _checksum({name: outputs[name] for name in OUTPUTS})

    @tf.function(input_signature=signature)
    def whole_padded(examples):
        outputs = model(model_inputs(config, layer(tf.io.parse_example(examples, spec)))[0], training=False)
        return _checksum({name: outputs[name] for name in OUTPUTS})

    return {"parse_example": parse, "+ tf.Transform layer": parse_transform, "+ embeddings and towers": whole,
            "(the same, lists padded dense)": whole_padded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ingest-dir", required=True, help="an ingest output: its eval examples are the candidates")
    parser.add_argument("--transform-dir", required=True, help="the transform output the model was trained on")
    parser.add_argument("--export", help="a SavedModel to time (default: one built untrained from --transform-dir)")
    parser.add_argument("--config", default="aliccp")
    parser.add_argument("--batches", type=int, nargs="+", default=[100, 512])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--breakdown", action="store_true", help="also time the graph's parts in-process")
    parser.add_argument("--threads", type=int, default=1, help="TensorFlow's intra- and inter-op threads")
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    config = load_config(args.config)
    tft_output = tft.TFTransformOutput(layout.TransformLayout(args.transform_dir).graph)
    examples = request_examples(args.ingest_dir, max(args.batches))
    model = None
    export = args.export
    if export is None:
        model = built_model(config, tft_output, examples)
        scratch = tempfile.TemporaryDirectory(prefix="bench-signature-")  # removed when the process exits
        export = os.path.join(scratch.name, "model")
        save_serving_model(config, model, layout.TransformLayout(args.transform_dir).graph, export)
        print(f"exported an untrained model to {export}", flush=True)
    serve = tf.saved_model.load(export).signatures[SERVING_SIGNATURE]
    in_session = session_runners(export, args.threads)
    print(f"load average at start: {load_avg()}", flush=True)
    print(f"CPU µs per candidate; TF1 Session: as TF Serving runs the signature\n{'batch':>6} "
          f"{'serving_default, TF1 Session':>29} {'rank, TF1 Session':>18} {'serving_default, Python call':>29}"
          f"  load average")
    for size in args.batches:
        batch = tf.constant(examples[:size])
        session_us = cpu_us_per_candidate(in_session[SERVING_SIGNATURE], {SERVING_INPUT: examples[:size]},
                                          args.calls, args.warmup)
        rank_us = cpu_us_per_candidate(in_session[RANK_SIGNATURE], rank_inputs(config, examples[:size]),
                                       args.calls, args.warmup)
        python_us = cpu_us_per_candidate(lambda b: serve(examples=b), batch, args.calls, args.warmup)
        print(f"{size:>6} {session_us:>29.1f} {rank_us:>18.1f} {python_us:>29.1f}  {load_avg()}", flush=True)
    if args.breakdown:
        model = model or built_model(config, tft_output, examples)
        print(f"\nparts, in-process, cumulative (CPU µs/candidate)\n{'part':<30}"
              + "".join(f"{'batch ' + str(s):>12}" for s in args.batches))
        for name, fn in parts(config, model, tft_output).items():
            figures = [cpu_us_per_candidate(fn, tf.constant(examples[:s]), args.calls, args.warmup)
                       for s in args.batches]
            print(f"{name:<30}" + "".join(f"{us:>12.1f}" for us in figures), flush=True)
        print(f"load average at end: {load_avg()}")
    print(f"target: <= {TARGET_US_AT_100} µs of CPU per candidate at batch 100")


if __name__ == "__main__":
    main()
