"""Every path may be a URI: train -> export -> push -> serve through the CLI and the server on
TensorFlow's in-memory ``ram://`` filesystem, a non-local scheme with object-store semantics
(directory renames do not move contents) that tf.io.gfile serves here without a network."""
from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import tensorflow as tf
import yaml

from components.artifacts import storage
from components.evaluate.gate import bless
from components.train.callbacks import latest_backup
from components.transform.executor import transform
from esmm_model.config import load_config
from esmm_model.contracts import layout
from esmm_model.contracts.blessing import write_blessing
from esmm_model.contracts.fingerprint import model_fingerprint
from esmm_model.schema import OUTPUTS
from pipelines.cli import main
from raw_examples import make_example, random_rows, write_ingest_dir
from serving_client.client import PredictionClient
from serving_client.server import ModelServer


def test_join_keeps_a_uri_whole():
    assert layout.join("gs://bucket/run", "train", "x") == "gs://bucket/run/train/x"
    assert layout.IngestLayout("gs://b/i").split_pattern(layout.EVAL) == "gs://b/i/eval/*.tfrecord.gz"
    assert layout.TrainLayout("gs://b/m/").relative("gs://b/m/model/7") == "model/7"
    assert storage.has_atomic_rename("/mnt/models/esmm/3") and not storage.has_atomic_rename("gs://b/esmm/3")


@pytest.mark.slow
def test_train_export_push_serve_on_a_non_local_filesystem(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a path mangled into a local one (ram:/...) would land here
    data = load_config("simulator").to_dict()
    data["model"].update(tower_units=[16, 8], embedding_dim=4)
    data["training"].update(batch_size=32, epochs=1)
    data["evaluation"] = {"thresholds": [{"metric": "ctr/all/auc", "min": 0.0}]}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(data))
    config = load_config(config_path)
    eval_rows = random_rows(config, 64, seed=2)
    ingest = write_ingest_dir(config, tmp_path / "ingest", random_rows(config, 160, seed=1), eval_rows)
    local = transform(config, str(ingest), str(tmp_path / "transform"), ["--runner=DirectRunner"])

    root = f"ram://esmm-{uuid.uuid4().hex}"
    transformed, trained, serving = (layout.join(root, name) for name in ("transform", "train", "serving"))
    storage.copy_tree(local.root, transformed)
    checkpoints = layout.join(root, "work", "run-1", "checkpoints")
    assert main(["train", "--config", str(config_path), "--transform-dir", transformed, "--out", trained,
                 "--checkpoint-dir", checkpoints]) == 0
    export_base = layout.TrainLayout(trained).export_base
    (version,) = [name.rstrip("/") for name in tf.io.gfile.listdir(export_base)]
    export = layout.join(export_base, version)
    assert tf.saved_model.contains_saved_model(export)
    assert tf.io.gfile.exists(layout.record_file(export, layout.RECORD_CONFIG))
    assert latest_backup(checkpoints) is not None

    evaluation = layout.EvaluationLayout(layout.join(root, "evaluation"))  # what the evaluate step leaves
    metrics = {"ctr": {"all": {"auc": 0.61}}}
    storage.write_text(evaluation.metrics, json.dumps(metrics))
    write_blessing(bless(metrics, None, config.evaluation, model_fingerprint=model_fingerprint(export)),
                   evaluation.blessing)
    assert main(["push", "--config", str(config_path), "--model-dir", export, "--evaluation", evaluation.root,
                 "--serving-base", serving]) == 0
    pushed = layout.version_dir(serving, "esmm", 1)
    assert tf.saved_model.contains_saved_model(pushed)
    record = json.loads(storage.read_text(layout.record_file(pushed, layout.RECORD_METRICS)))
    assert record == {"ctr": {"all": {"auc": 0.61}}}

    requests = [make_example(config, row, labels=False) for row in eval_rows[:8]]
    with ModelServer(layout.model_base(serving, "esmm"), "esmm") as server:
        with PredictionClient(f"127.0.0.1:{server.port}", "esmm", timeout_s=10.0) as client:
            remote = client.predict(requests)
    local_scores = tf.saved_model.load(export).signatures["serving_default"](examples=tf.constant(requests))
    assert remote.model_version == 1
    for name in OUTPUTS:
        np.testing.assert_allclose(getattr(remote, name), local_scores[name].numpy(), rtol=1e-6)
    assert not any(p.name.startswith("ram:") for p in tmp_path.iterdir())
