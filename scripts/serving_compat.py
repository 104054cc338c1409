"""Checks that our export loads and answers serving_default on the TensorFlow that the pinned TF Serving image runs.

TF Serving X.Y is built on TensorFlow X.Y, and a SavedModel written by a newer TensorFlow can use
ops an older server lacks ("Op type not registered"). ``make serving-compat`` runs this script:

1. with the project's environment (TF 2.21): trains a tiny model through the real CLI steps
   (simulate, ingest, transform, train; or takes ``--export``), scores eval examples through
   serving_default in-process, and writes examples and scores to ``--work``;
2. with ``--serving-python`` (a venv holding only tensorflow-cpu at the serving image's version),
   runs itself in ``--check`` mode: lists every op of the SavedModel's graph and functions that
   this TensorFlow has not registered, loads the export, calls serving_default on the same
   examples and compares the scores.

It exits non-zero with one line naming the problem. Check mode imports TensorFlow alone.
``--write-ops FILE`` (run with the serving TensorFlow, ``make serving-ops``) writes the op types
that TensorFlow registers: ``tests/test_train.py`` checks every export against that list, a
fast stand-in for this check that runs in ``make test``.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys

TOLERANCE = 1e-5
EXAMPLES_FILE = "examples.tfrecord"
EXPECTED_FILE = "expected.json"


def ops_used(export_dir: str) -> set[str]:
    """Every op type in a SavedModel's graph and function library (calls to its own functions left out)."""
    from tensorflow.core.protobuf import saved_model_pb2

    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as handle:
        saved_model = saved_model_pb2.SavedModel.FromString(handle.read())
    used: set[str] = set()
    for meta_graph in saved_model.meta_graphs:
        graph = meta_graph.graph_def
        used |= {node.op for node in graph.node}
        used |= {node.op for function in graph.library.function for node in function.node_def}
        used -= {function.signature.name for function in graph.library.function}
    return used


def registered_ops() -> list[str]:
    """Every op type this TensorFlow registers: what "Op type not registered" is checked against."""
    from tensorflow.core.framework import op_def_pb2
    from tensorflow.python.client import _pywrap_tf_session
    from tensorflow.python.util import compat

    buffer = _pywrap_tf_session.TF_GetAllOpList()
    ops = op_def_pb2.OpList.FromString(compat.as_bytes(_pywrap_tf_session.TF_GetBuffer(buffer)))
    return sorted(op.name for op in ops.op)


def check(export_dir: str, work: str) -> str:
    """Runs under the serving TensorFlow: unregistered ops, load, serving_default, same scores."""
    import numpy as np
    import tensorflow as tf

    used = ops_used(export_dir)
    missing = sorted(used - set(registered_ops()))
    if missing:
        raise SystemExit(f"serving-compat: TensorFlow {tf.__version__} has no op {', '.join(missing)} "
                         f"used by {export_dir}: pin a newer tensorflow/serving or export without them")
    signature = tf.saved_model.load(export_dir).signatures["serving_default"]
    examples = [r.numpy() for r in tf.data.TFRecordDataset(os.path.join(work, EXAMPLES_FILE))]
    outputs = signature(examples=tf.constant(examples))
    with open(os.path.join(work, EXPECTED_FILE)) as handle:
        expected = json.load(handle)
    worst = max(float(np.max(np.abs(outputs[name].numpy() - np.asarray(values, np.float32))))
                for name, values in expected["outputs"].items())
    if worst > TOLERANCE:
        raise SystemExit(f"serving-compat: TensorFlow {tf.__version__} scores differ from TensorFlow "
                         f"{expected['tensorflow']} by up to {worst:.2e} on {export_dir}")
    return (f"serving-compat: ok: TensorFlow {tf.__version__} loads the export of TensorFlow {expected['tensorflow']} "
            f"({len(used)} op types, all registered) and serving_default gives the same ctr/cvr/ctcvr on "
            f"{len(examples)} examples (max difference {worst:.1e})")


def train_tiny_export(work: str) -> str:
    """Trains one epoch of a small model with the real CLI steps; returns its export directory."""
    import yaml

    from esmm_model.config import parse_yaml, read_config_text
    from esmm_model.contracts import layout

    config = parse_yaml(read_config_text("simulator"))
    config["training"].update(epochs=1, batch_size=256)
    config_path = os.path.join(work, "config.yaml")
    with open(config_path, "w") as handle:
        yaml.safe_dump(config, handle)
    steps = [["simulate", "--rows", "4000", "--users", "300", "--items", "600", "--out", f"{work}/sim"],
             ["ingest", "--input", f"{work}/sim", "--out", f"{work}/ingest"],
             ["transform", "--ingest-dir", f"{work}/ingest", "--out", f"{work}/transform"],
             ["train", "--transform-dir", f"{work}/transform", "--out", f"{work}/train"]]
    for step in steps:
        print(f"serving-compat: esmm {step[0]}", flush=True)
        subprocess.run([sys.executable, "-m", "pipelines.cli", step[0], "--config", config_path, *step[1:]],
                       check=True, stdout=subprocess.DEVNULL)
    (export,) = glob.glob(layout.join(layout.TrainLayout(f"{work}/train").export_base, "*", layout.SAVED_MODEL_PB))
    return os.path.dirname(export)


def write_reference(export_dir: str, work: str, limit: int = 256) -> None:
    """Scores eval examples with this (the trainer's) TensorFlow and writes both for the check."""
    import tensorflow as tf

    from esmm_model.contracts import layout

    files = sorted(glob.glob(layout.IngestLayout(f"{work}/ingest").split_pattern(layout.EVAL)))
    examples = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP").take(limit)]
    outputs = tf.saved_model.load(export_dir).signatures["serving_default"](examples=tf.constant(examples))
    with tf.io.TFRecordWriter(os.path.join(work, EXAMPLES_FILE)) as writer:
        for example in examples:
            writer.write(example)
    with open(os.path.join(work, EXPECTED_FILE), "w") as handle:
        json.dump({"tensorflow": tf.__version__,
                   "outputs": {name: outputs[name].numpy().tolist() for name in ("ctr", "cvr", "ctcvr")}}, handle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", help="working directory (the tiny run, examples, expected scores)")
    parser.add_argument("--serving-python", help="python of a venv with tensorflow-cpu at the serving image's version")
    parser.add_argument("--export", help="check this export instead of training one (its eval examples: --work/ingest)")
    parser.add_argument("--check", help=argparse.SUPPRESS)  # check mode: the export to load under this interpreter
    parser.add_argument("--write-ops", metavar="FILE", help="write the op types this TensorFlow registers, and stop")
    args = parser.parse_args()
    if args.write_ops:
        import tensorflow as tf

        with open(args.write_ops, "w") as handle:
            handle.write(f"# op types registered by TensorFlow {tf.__version__} (make serving-ops)\n")
            handle.write("\n".join(registered_ops()) + "\n")
        return
    if not args.work:
        parser.error("--work is required")
    if args.check:
        print(check(args.check, args.work))
        return
    if not args.serving_python:
        parser.error("--serving-python is required")
    os.makedirs(args.work, exist_ok=True)
    export = args.export or train_tiny_export(args.work)
    write_reference(export, args.work)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ""}
    result = subprocess.run([args.serving_python, os.path.abspath(__file__), "--work", args.work, "--check", export],
                            env=env, cwd=args.work, capture_output=True, text=True)
    lines = (result.stdout + result.stderr).strip().splitlines()
    print(lines[-1] if lines else f"serving-compat: the check exited {result.returncode} without output")
    sys.exit(result.returncode)


if __name__ == "__main__":
    main()
