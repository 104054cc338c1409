"""Which ``tf.distribute`` strategy the trainer runs under, from ``TF_CONFIG`` and ``training.distribution``.

- No ``TF_CONFIG`` (one process): TF's default strategy, whatever ``training.distribution`` says
  (``parameter_server`` then needs a cluster and is refused).
- ``TF_CONFIG`` with workers (and optionally a chief): ``MultiWorkerMirroredStrategy``
  (``auto`` or ``multi_worker_mirrored``): every worker holds a copy of every variable and
  gradients are all-reduced each step, so N workers train as one with N times the batch
  throughput. Input is split per worker by ``components.train.executor`` (each worker parses its slice
  of every global batch), not by tf.data's auto-sharding.
- ``TF_CONFIG`` with ``ps`` tasks (``auto`` or ``parameter_server``): ``ParameterServerStrategy``
  for tables larger than one worker's memory: every variable of at least
  ``training.ps_min_shard_bytes`` is partitioned over the parameter servers (in practice the
  embedding tables; ``MinSizePartitioner``), the chief runs ``model.fit`` as the coordinator and
  the workers and ps tasks serve (``serve_if_not_coordinator``). Steps are asynchronous, each on
  one worker's batch of ``batch_size / workers`` rows; ``lazy_adam`` updates the touched rows of
  each shard.
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from typing import Optional

import tensorflow as tf

from esmm_model.config import TrainingConfig
from esmm_model.errors import ConfigError


@dataclass(frozen=True)
class Cluster:
    """The tasks ``TF_CONFIG`` names, and which one this process is."""

    spec: dict[str, list[str]]
    task_type: str
    task_id: int

    @property
    def workers(self) -> int:
        return len(self.spec.get("worker", [])) + len(self.spec.get("chief", []))

    @property
    def parameter_servers(self) -> int:
        return len(self.spec.get("ps", []))


def read_cluster(environ: Optional[dict[str, str]] = None) -> Optional[Cluster]:
    """The cluster of ``TF_CONFIG`` (None when unset or naming no cluster); ConfigError when malformed."""
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        tf_config = json.loads(raw)
        spec, task = tf_config.get("cluster") or {}, tf_config.get("task") or {}
        cluster = Cluster({k: list(v) for k, v in spec.items()}, str(task.get("type", "")), int(task.get("index", 0)))
    except (ValueError, TypeError, AttributeError) as e:
        raise ConfigError(f"TF_CONFIG: not a JSON object with 'cluster' and 'task' ({e})") from None
    if not cluster.spec:
        return None
    if cluster.task_type not in cluster.spec or not 0 <= cluster.task_id < len(cluster.spec[cluster.task_type]):
        raise ConfigError(f"TF_CONFIG: task {cluster.task_type!r} #{cluster.task_id} is not in the cluster "
                          f"{sorted(cluster.spec)}")
    return cluster


def resolve(training: TrainingConfig, cluster: Optional[Cluster]) -> str:
    """``default``, ``multi_worker_mirrored`` or ``parameter_server``; ConfigError when
    ``training.distribution`` and the cluster disagree."""
    wanted = training.distribution
    if cluster is None:
        if wanted == "parameter_server":
            raise ConfigError("training.distribution: parameter_server needs a cluster in TF_CONFIG with 'ps' "
                              "tasks (see docs/scale-out.md); unset TF_CONFIG trains in one process")
        return "default"
    if cluster.parameter_servers:
        if wanted == "multi_worker_mirrored":
            raise ConfigError(f"training.distribution: multi_worker_mirrored, but TF_CONFIG names "
                              f"{cluster.parameter_servers} ps task(s); drop them or use parameter_server")
        if cluster.workers < 1:
            raise ConfigError("TF_CONFIG: a parameter-server cluster needs a chief or a worker beside its ps tasks")
        return "parameter_server"
    if wanted == "parameter_server":
        raise ConfigError("training.distribution: parameter_server, but TF_CONFIG names no 'ps' task")
    return "multi_worker_mirrored"


def strategy_for(training: TrainingConfig) -> tf.distribute.Strategy:
    """The strategy for this process. Create it before any other TensorFlow op runs
    (MultiWorkerMirroredStrategy configures the collective ops at start-up)."""
    kind = resolve(training, read_cluster())
    if kind == "multi_worker_mirrored":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "parameter_server":
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
            min_shard_bytes=training.ps_min_shard_bytes, max_shards=read_cluster().parameter_servers)
        return tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=partitioner)
    return tf.distribute.get_strategy()


def serve_if_not_coordinator(training: TrainingConfig) -> bool:
    """Under a parameter-server cluster, a worker or ps task runs a TF server until killed (the
    chief's coordinator sends it the work) and this returns True; otherwise False at once."""
    cluster = read_cluster()
    if cluster is None or resolve(training, cluster) != "parameter_server" or cluster.task_type == "chief":
        return False
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    server = tf.distribute.Server(resolver.cluster_spec(), job_name=resolver.task_type, task_index=resolver.task_id,
                                  protocol=resolver.rpc_layer or "grpc", start=True)
    server.join()
    return True


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's outputs (the export, metrics, TensorBoard, history)."""
    return bool(strategy.extended.should_checkpoint)


def loopback_addresses(n: int) -> list[str]:
    """``n`` free ``127.0.0.1:port`` addresses, for a TF_CONFIG cluster of processes on one machine
    (the multi-worker tests, the scale benchmark, a local trial of a cluster config)."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    addresses = [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]
    for s in sockets:
        s.close()
    return addresses
