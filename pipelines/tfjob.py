"""Training as a Kubeflow Training Operator ``TFJob`` (kubeflow.org/v1): N worker pods of the
component image run ``esmm train`` under MultiWorkerMirroredStrategy (the operator writes each
pod's ``TF_CONFIG``; worker 0 is the chief and exports).

The pipeline's train step takes this path when ``kubernetes.train_workers`` is set: it stages the
config and the transformed data on the work volume, creates the TFJob through the Kubernetes
API, waits for it, and copies the chief's output (export, metrics, TensorBoard) into its Model
artifact. ``k8s/training/tfjob.yaml`` is ``tfjob_manifest`` for a run named ``example``
(tests/test_k8s.py checks they agree).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from esmm_model.contracts import layout, model_store
from esmm_model.errors import EsmmError
from pipelines import cluster
from pipelines.config import StepResources

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "tfjobs"
CONTAINER = "tensorflow"  # the container name the Training Operator expects
PORT = 2222  # the operator's default tfjob-port, the one TF_CONFIG names
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class TFJobFailed(EsmmError):
    """The TFJob ended in Failed, or did not finish in time."""


@dataclass(frozen=True)
class TFJobPaths:
    """Where one run's TFJob reads and writes on the work volume (mounted at ``cluster.WORK_MOUNT``)."""

    root: str  # <work>/tfjob/<run key>
    config = layout.Entry("config.json")
    transformed = layout.Entry("transformed")
    out = layout.Entry("train")
    checkpoints = layout.Entry("checkpoints")

    @classmethod
    def for_run(cls, work_root: str, run_key: str) -> "TFJobPaths":
        return cls(layout.join(work_root, "tfjob", run_key))


def tfjob_manifest(name: str, image: str, workers: int, resources: StepResources, paths: TFJobPaths, *,
                   work_pvc: str = cluster.WORK_PVC, service_account: str = cluster.SERVICE_ACCOUNT) -> dict[str, Any]:
    """The TFJob: ``workers`` pods running ``esmm train`` on the work volume's paths, locked down
    as every workload in k8s/ is (non-root 1000, read-only root filesystem, no capabilities)."""
    quantities = {"cpu": resources.cpu, "memory": resources.memory}
    limits = {"cpu": resources.cpu_limit or resources.cpu, "memory": resources.memory_limit or resources.memory}
    container = {
        "name": CONTAINER,
        "image": image,
        "command": ["esmm", "train"],
        "args": ["--config", paths.config, "--transform-dir", paths.transformed, "--out", paths.out,
                 "--checkpoint-dir", paths.checkpoints],
        "env": [{"name": "HOME", "value": "/tmp"}],  # Keras and TF write caches under $HOME
        "ports": [{"name": "tfjob-port", "containerPort": PORT}],
        "resources": {"requests": quantities, "limits": limits},
        "securityContext": {"runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "work", "mountPath": cluster.WORK_MOUNT}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    pod = {
        "metadata": {"labels": {"app.kubernetes.io/name": "esmm-train", "app.kubernetes.io/part-of": "esmm"}},
        "spec": {
            "serviceAccountName": service_account,
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container],
            "volumes": [{"name": "work", "persistentVolumeClaim": {"claimName": work_pvc}},
                        {"name": "tmp", "emptyDir": {}}],
        },
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TFJob",
        "metadata": {"name": name, "labels": dict(pod["metadata"]["labels"])},
        "spec": {
            # A failed pod restarts (and resumes from the backup on the work volume) up to backoffLimit times.
            "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": 3, "ttlSecondsAfterFinished": 86400},
            "tfReplicaSpecs": {"Worker": {"replicas": workers, "restartPolicy": "OnFailure", "template": pod}},
        },
    }


def job_state(job: dict[str, Any]) -> Optional[str]:
    """``Succeeded`` or ``Failed`` once the job has ended (its last true such condition), else None."""
    ended = [c["type"] for c in job.get("status", {}).get("conditions", []) or []
             if c.get("type") in ("Succeeded", "Failed") and c.get("status") == "True"]
    return ended[-1] if ended else None


def run_tfjob(manifest: dict[str, Any], namespace: str, *, api: Any = None, timeout_s: float = 7 * 24 * 3600,
              poll_s: float = 30.0, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Creates the TFJob (or, for a retried step, finds the one it created) and waits for it to end;
    returns the finished job, or raises TFJobFailed naming it."""
    if api is None:
        from kubernetes import client, config

        config.load_incluster_config()
        api = client.CustomObjectsApi()
    from kubernetes.client.exceptions import ApiException

    name = manifest["metadata"]["name"]
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
        print(f"tfjob: created {namespace}/{name} ({manifest['spec']['tfReplicaSpecs']['Worker']['replicas']} workers)",
              flush=True)
    except ApiException as e:
        if e.status != 409:  # 409: it exists, created by an earlier attempt of this step
            raise TFJobFailed(f"could not create TFJob {namespace}/{name}: {e.status} {e.reason}") from None
        print(f"tfjob: {namespace}/{name} exists (an earlier attempt); waiting for it", flush=True)
    waited = 0.0
    while True:
        job = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        state = job_state(job)
        if state == "Succeeded":
            return job
        if state == "Failed":
            message = next((c.get("message", "") for c in reversed(job["status"]["conditions"])
                            if c["type"] == "Failed"), "")
            raise TFJobFailed(f"TFJob {namespace}/{name} failed: {message}; see `kubectl logs -n {namespace} "
                              f"-l training.kubeflow.org/job-name={name}`")
        if waited >= timeout_s:
            raise TFJobFailed(f"TFJob {namespace}/{name} did not finish within {timeout_s:.0f} s")
        sleep(poll_s)
        waited += poll_s


def current_namespace() -> str:
    """The namespace this pod runs in (its service account's)."""
    return Path(NAMESPACE_FILE).read_text().strip()


def job_name(run_key: str) -> str:
    """A DNS-1035 name, unique per train task (run_key: hex digest of the task's output URI)."""
    return f"esmm-train-{run_key[:16]}"


def train_as_tfjob(config_json: str, transformed: str, out: str, *, image: str, workers: int,
                   resources: StepResources, work_root: str, run_key: str, api: Any = None,
                   namespace: Optional[str] = None, poll_s: float = 30.0) -> str:
    """Stages the inputs on the work volume, runs the TFJob, copies its output to ``out``; returns
    the export directory (under ``out``)."""
    import tensorflow as tf

    from components.artifacts import storage

    paths = TFJobPaths.for_run(work_root, run_key)
    if not tf.io.gfile.exists(paths.transformed):
        staging = paths.transformed + ".partial"
        storage.remove_if_present(staging)
        storage.copy_tree(transformed, staging)
        storage.publish(staging, paths.transformed)
    storage.write_text(paths.config, config_json)
    manifest = tfjob_manifest(job_name(run_key), image, workers, resources, paths)
    run_tfjob(manifest, namespace or current_namespace(), api=api, poll_s=poll_s)
    storage.copy_tree(paths.out, out)
    base = layout.TrainLayout(out).export_base
    versions = model_store.versions(base)
    if not versions:
        raise TFJobFailed(f"the TFJob succeeded but {paths.out} holds no export")
    return layout.TrainLayout(out).export_dir(versions[-1])

