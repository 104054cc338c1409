"""The trainer as a cluster on loopback (TF_CONFIG, one process per task): two MultiWorkerMirrored
workers against a one-process run on the same tiny data, and a parameter-server cluster, run
through and preempted mid-epoch then resumed."""
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

from components.train import callbacks as train_callbacks
from components.train import distribution
from components.train.executor import HISTORY_FILE, train
from components.transform.executor import transform
from esmm_model.config import config_from_dict, load_config
from esmm_model.contracts import layout
from esmm_model.errors import ConfigError
from esmm_model.metrics import exact_auc
from raw_examples import make_example, random_rows, write_ingest_dir

REPO = Path(__file__).resolve().parents[1]
TRAIN_ROWS, EVAL_ROWS, BATCH, EPOCHS = 256, 128, 32, 3
PS_TASKS = {"chief": 1, "worker": 1, "ps": 2}
# A chief that dies (exit 75, nothing flushed, like a preempted pod) right after the backup of a
# given global step; otherwise `esmm train` as it is.
PREEMPTED_CHIEF = """
import os, sys
from components.train import callbacks as train_callbacks
from pipelines import cli

backup = train_callbacks.EpochBackupAndRestore._backup

def backup_then_die(self, epoch, batch=0):
    backup(self, epoch, batch)
    if train_callbacks.global_step(self.model) == int(os.environ["PREEMPT_AFTER_STEP"]):
        os._exit(75)

train_callbacks.EpochBackupAndRestore._backup = backup_then_die
sys.exit(cli.main(sys.argv[1:]))
"""


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


def run_cluster(config_path: Path, transform_root: str, out: Path, tasks: dict[str, int], *, args: tuple = (),
                preempt_after_step: int = 0, tmpdir: Path | None = None) -> list[str]:
    """Runs `esmm train` once per task of a loopback cluster; returns the output of each process that
    trains (every one; with ps tasks, the chief alone: the others serve until killed). With
    ``preempt_after_step``, the chief dies right after backing up that step (and must)."""
    addresses = iter(distribution.loopback_addresses(sum(tasks.values())))
    spec = {kind: [next(addresses) for _ in range(n)] for kind, n in tasks.items()}
    procs = []
    for kind, addresses in spec.items():
        for index in range(len(addresses)):
            env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "",
                   "TF_CONFIG": json.dumps({"cluster": spec, "task": {"type": kind, "index": index}}),
                   "PREEMPT_AFTER_STEP": str(preempt_after_step), **({"TMPDIR": str(tmpdir)} if tmpdir else {})}
            entry = ["-c", PREEMPTED_CHIEF] if preempt_after_step and not procs else ["-m", "pipelines.cli"]
            procs.append(subprocess.Popen(
                [sys.executable, *entry, "train", "--config", str(config_path),
                 "--transform-dir", transform_root, "--out", str(out), *args],
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
        assert proc.returncode == (75 if preempt_after_step else 0), output[-3000:]
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

    (tmp_path / "tmp").mkdir()
    outputs = run_cluster(config_path, transform_root, tmp_path / "cluster", {"worker": 2}, tmpdir=tmp_path / "tmp")
    assert "worker done (the chief exports)" in outputs[1], outputs[1][-2000:]
    assert not list((tmp_path / "tmp").glob("esmm-worker-*"))  # the worker's throwaway directory is gone
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


def ps_config():
    """Shards small enough that most tables, multi-valued ones included, are split over both
    parameter servers (and the towers' first kernels too)."""
    return tiny_config(epochs=2, ps_min_shard_bytes=128, embedding_optimizer="lazy_adam")


def write_config(config, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path


@pytest.fixture(scope="module")
def ps_run(data, tmp_path_factory) -> tuple[layout.TrainLayout, str]:
    """A chief (the coordinator, running model.fit), one worker and two ps tasks on loopback, trained
    through: its layout and the chief's output."""
    root = tmp_path_factory.mktemp("ps")
    (output,) = run_cluster(write_config(ps_config(), root / "config.yaml"), data[0], root / "out", PS_TASKS)
    return layout.TrainLayout(str(root / "out")), output


def exported(paths: layout.TrainLayout) -> str:
    (version,) = tf.io.gfile.listdir(paths.export_base)
    return paths.export_dir(int(version.rstrip("/")))


@pytest.mark.slow
def test_parameter_server_training_partitions_the_tables_and_the_chief_exports(data, ps_run):
    _, eval_rows = data
    paths, output = ps_run
    assert re.search(r"^train: parameter servers: 2, [1-9]\d* of \d+ embedding tables partitioned", output, re.M), \
        output[-3000:]
    history = json.loads(Path(paths.metrics).read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    auc = served_ctcvr_auc(exported(paths), ps_config(), eval_rows)
    # The epoch's evaluation scored the distributed model (partitioned tables read on the ps); the export
    # joins the shards: the same AUC only if both look up every id's own row.
    assert auc == pytest.approx(history[-1]["ctcvr_auc"], abs=1e-6)


@pytest.mark.slow
def test_parameter_server_multi_worker_resume_mid_epoch_matches_an_uninterrupted_run(data, ps_run, tmp_path):
    """Backups every 3 steps; the chief dies right after the one of global step 12 (epoch 2, 4 of its 8
    steps done). The rerun of the cluster resumes there and ends where the uninterrupted run did."""
    transform_root, eval_rows = data
    config = ps_config()
    config_path, out = write_config(config, tmp_path / "config.yaml"), tmp_path / "out"
    steps = TRAIN_ROWS // BATCH  # one worker: a step is a whole batch
    (preempted,) = run_cluster(config_path, transform_root, out, PS_TASKS, args=("--checkpoint-every", "3"),
                               preempt_after_step=steps + 4)
    paths = layout.TrainLayout(str(out))
    assert train_callbacks.backed_up_position(paths.default_checkpoints, steps) == (1, 4)
    assert re.search(r"^train: epoch 1 \(step \d+\): loss ", preempted, re.M)
    (epoch_1,) = json.loads(Path(layout.join(paths.default_checkpoints, HISTORY_FILE)).read_text())["history"]

    (resumed,) = run_cluster(config_path, transform_root, out, PS_TASKS, args=("--checkpoint-every", "3"))
    assert f"train: resuming from {paths.default_checkpoints} at epoch 2, step 4 of {steps}" in resumed, resumed[-3000:]
    assert "train: epoch 1 (" not in resumed  # epoch 1 was not trained again
    history = json.loads(Path(paths.metrics).read_text())["history"]
    assert [(h["epoch"], h["step"]) for h in history] == [(1, steps), (2, 2 * steps)]
    assert history[0] == epoch_1

    def learned(entry: dict) -> dict:  # the train loss and speed cover only the steps each run did
        return {k: v for k, v in entry.items() if k not in (*train_callbacks.TIMINGS, "train_loss")}

    through = json.loads(Path(ps_run[0].metrics).read_text())["history"]
    assert [learned(h) for h in history] == [learned(h) for h in through]
    auc = served_ctcvr_auc(exported(paths), config, eval_rows)
    assert auc == pytest.approx(history[-1]["ctcvr_auc"], abs=1e-6)
