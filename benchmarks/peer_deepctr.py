"""The peer side of bench_peer.py: DeepCTR 0.9.4's ESMM, run inside .peer-venv (``make peer-venv``).

Reads the arrays and the spec that bench_peer.py wrote (exact per-field vocabularies of the
same train/eval rows our trainer sees), trains ``deepctr.models.multitask.ESMM`` with the
given towers, embedding size, Adam learning rate, batch and epochs, and writes the eval
predictions (ctr, cvr, ctcvr) and the examples/s of every epoch. It imports nothing of
this project: it runs with TF_USE_LEGACY_KERAS=1 and DeepCTR's own Keras 2 code.

    TF_USE_LEGACY_KERAS=1 .peer-venv/bin/python benchmarks/peer_deepctr.py SPEC.json DATA.npz OUT.npz
"""
from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from deepctr.feature_column import DenseFeat, SparseFeat, VarLenSparseFeat  # noqa: E402
from deepctr.models.multitask import ESMM  # noqa: E402


class EpochTimer(tf.keras.callbacks.Callback):
    """Seconds of every epoch of ``fit``."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def feature_columns(spec: dict) -> list:
    columns = []
    for f in spec["features"]:
        if f["kind"] == "dense":
            columns.append(DenseFeat(f["name"], 1))
        elif f["kind"] == "weighted_ids":
            columns.append(VarLenSparseFeat(SparseFeat(f["name"], vocabulary_size=f["vocabulary_size"],
                                                       embedding_dim=spec["embedding_dim"],
                                                       embedding_name=f.get("embedding_name", f["name"])),
                                            maxlen=f["maxlen"], combiner="sum", weight_name=f["name"] + "_weight"))
        else:
            columns.append(SparseFeat(f["name"], vocabulary_size=f["vocabulary_size"],
                                      embedding_dim=spec["embedding_dim"],
                                      embedding_name=f.get("embedding_name", f["name"])))
    return columns


def main(spec_path: str, data_path: str, out_path: str) -> None:
    spec = json.loads(open(spec_path).read())
    data = np.load(data_path)
    tf.keras.utils.set_random_seed(spec["seed"])
    columns = feature_columns(spec)
    names = [f["name"] for f in spec["features"]] + [f["name"] + "_weight" for f in spec["features"]
                                                     if f["kind"] == "weighted_ids"]

    def inputs(split: str) -> dict[str, np.ndarray]:
        return {name: data[f"{split}/{name}"] for name in names}

    model = ESMM(columns, tower_dnn_hidden_units=tuple(spec["tower_units"]), task_names=("ctr", "ctcvr"),
                 seed=spec["seed"])
    model.compile(tf.keras.optimizers.Adam(spec["learning_rate"]), loss=["binary_crossentropy", "binary_crossentropy"])
    timer = EpochTimer()
    train_rows = len(data["train/click"])
    model.fit(inputs("train"), [data["train/click"], data["train/ctcvr"]], batch_size=spec["batch_size"],
              epochs=spec["epochs"], shuffle=True, verbose=2, callbacks=[timer])
    ctcvr_layer = model.get_layer("ctcvr")  # Multiply()([pCTR, pCVR]): its second input is pCVR
    scorer = tf.keras.Model(model.inputs, [model.get_layer("ctr").output, ctcvr_layer.input[1], ctcvr_layer.output])
    ctr, cvr, ctcvr = scorer.predict(inputs("eval"), batch_size=16384, verbose=0)
    np.savez(out_path, ctr=ctr.reshape(-1), cvr=cvr.reshape(-1), ctcvr=ctcvr.reshape(-1),
             examples_per_second=np.array([train_rows / s for s in timer.seconds]))


if __name__ == "__main__":
    main(*sys.argv[1:4])
