"""The trainer as a cluster on loopback (TF_CONFIG, one process per task): two MultiWorkerMirrored
workers against a one-process run on the same tiny data, and a parameter-server cluster."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import yaml

from components import distribution, layout
from components.train import train
from components.transform import transform
from esmm_model.config import config_from_dict, load_config
from esmm_model.errors import ConfigError
from esmm_model.metrics import exact_auc
from raw_examples import make_example, random_rows, write_ingest_dir

REPO = Path(__file__).resolve().parents[1]
TRAIN_ROWS, EVAL_ROWS, BATCH, EPOCHS = 256, 128, 32, 3


def tiny_config(**training):
    data = load_config("simulator").to_dict()
    data["model"].update(tower_units=[16, 8], embedding_dim=4)
    data["training"].update({"batch_size": BATCH, "epochs": EPOCHS, **training})
    return config_from_dict(data)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[str, list[dict]]:
    root = tmp_path_factory.mktemp("multi_worker")
    config = tiny_config()
    eval_rows = random_rows(config, EVAL_ROWS, seed=12)
    ingest = write_ingest_dir(config, root / "ingest", random_rows(config, TRAIN_ROWS, seed=11), eval_rows)
    return transform(config, ingest, root / "transform", ["--runner=DirectRunner"]).root, eval_rows


def run_cluster(config_path: Path, transform_root: str, out: Path, tasks: dict[str, int]) -> list[str]:
    """Runs `esmm train` once per task of a loopback cluster; returns the output of each process that
    trains (every one; with ps tasks, the chief alone: the others serve until killed)."""
    addresses = iter(distribution.loopback_addresses(sum(tasks.values())))
    spec = {kind: [next(addresses) for _ in range(n)] for kind, n in tasks.items()}
    procs = []
    for kind, addresses in spec.items():
        for index in range(len(addresses)):
            env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "",
                   "TF_CONFIG": json.dumps({"cluster": spec, "task": {"type": kind, "index": index}})}
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "pipelines.cli", "train", "--config", str(config_path),
                 "--transform-dir", transform_root, "--out", str(out)],
                env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    training = procs[:1] if "ps" in tasks else procs
    outputs = []
    try:
        for proc in training:
            outputs.append(proc.communicate(timeout=300)[0])
    finally:
        for proc in procs:
            proc.kill()
    for proc, output in zip(training, outputs):
        assert proc.returncode == 0, output[-3000:]
    return outputs


def served_ctcvr_auc(export_dir: str, config, eval_rows: list[dict]) -> float:
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    served = serve(examples=tf.constant([make_example(config, r, labels=False) for r in eval_rows]))
    labels = np.array([r["click"] * r["conversion"] for r in eval_rows], dtype=bool)
    return exact_auc(labels, served["ctcvr"].numpy())


@pytest.mark.slow
def test_multi_worker_training_matches_one_worker_and_the_chief_exports(data, tmp_path):
    transform_root, eval_rows = data
    config = tiny_config()
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    single = train(config, transform_root, str(tmp_path / "single"), version=1)

    outputs = run_cluster(config_path, transform_root, tmp_path / "cluster", {"worker": 2})
    assert "worker done (the chief exports)" in outputs[1], outputs[1][-2000:]
    paths = layout.TrainLayout(str(tmp_path / "cluster"))
    versions = tf.io.gfile.listdir(paths.export_base)
    assert len(versions) == 1, versions  # only the chief exported
    history = json.loads(Path(paths.metrics).read_text())["history"]
    steps = TRAIN_ROWS // BATCH
    assert [h["step"] for h in history] == [steps * e for e in range(1, EPOCHS + 1)]
    losses = [h["train_loss"] for h in history]
    assert losses[-1] < losses[0], losses

    # Two workers each parse half of every global batch: the same optimisation as one worker.
    np.testing.assert_allclose(losses, [h["train_loss"] for h in single.metrics["history"]], rtol=0.02)
    export = paths.export_dir(int(versions[0].rstrip("/")))
    auc_cluster = served_ctcvr_auc(export, config, eval_rows)
    auc_single = served_ctcvr_auc(single.export_dir, config, eval_rows)
    assert auc_cluster == pytest.approx(history[-1]["ctcvr_auc"], abs=1e-6)  # the signature serves the trained model
    assert abs(auc_cluster - auc_single) < 0.02, (auc_cluster, auc_single)


def test_multi_worker_distribution_follows_tf_config_and_refuses_a_mismatch():
    cluster = distribution.read_cluster({"TF_CONFIG": json.dumps(
        {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}})})
    assert (cluster.workers, cluster.parameter_servers, cluster.task_id) == (2, 0, 1)
    training = tiny_config().training
    assert distribution.resolve(training, None) == "default"
    assert distribution.resolve(training, cluster) == "multi_worker_mirrored"
    ps = distribution.read_cluster({"TF_CONFIG": json.dumps(
        {"cluster": {"chief": ["c:1"], "worker": ["a:1"], "ps": ["p:1"]}, "task": {"type": "chief", "index": 0}})})
    assert distribution.resolve(training, ps) == "parameter_server"
    with pytest.raises(ConfigError, match="multi_worker_mirrored, but TF_CONFIG names 1 ps task"):
        distribution.resolve(tiny_config(distribution="multi_worker_mirrored").training, ps)
    with pytest.raises(ConfigError, match="parameter_server needs a cluster in TF_CONFIG"):
        distribution.resolve(tiny_config(distribution="parameter_server").training, None)
    with pytest.raises(ConfigError, match=r"TF_CONFIG: task 'worker' #3 is not in the cluster"):
        distribution.read_cluster({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1"]},
                                                            "task": {"type": "worker", "index": 3}})})
    with pytest.raises(ConfigError, match="TF_CONFIG: not a JSON object"):
        distribution.read_cluster({"TF_CONFIG": "{not json"})


@pytest.mark.slow
def test_parameter_server_training_partitions_the_tables_and_the_chief_exports(data, tmp_path):
    """A chief (the coordinator, running model.fit), one worker and two ps tasks on loopback, with
    shards small enough that the embedding tables are split over both parameter servers."""
    transform_root, eval_rows = data
    config = tiny_config(epochs=2, ps_min_shard_bytes=1024, embedding_optimizer="lazy_adam")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    outputs = run_cluster(config_path, transform_root, tmp_path / "ps", {"chief": 1, "worker": 1, "ps": 2})
    assert re.search(r"^train: parameter servers: 2, [1-9]\d* of \d+ embedding tables partitioned", outputs[0], re.M), \
        outputs[0][-3000:]
    paths = layout.TrainLayout(str(tmp_path / "ps"))
    history = json.loads(Path(paths.metrics).read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    (version,) = tf.io.gfile.listdir(paths.export_base)
    auc = served_ctcvr_auc(paths.export_dir(int(version.rstrip("/"))), config, eval_rows)
    assert auc == pytest.approx(history[-1]["ctcvr_auc"], abs=1e-6)  # the joined shards serve the trained model
