"""Training as a Kubeflow Training Operator ``TFJob`` (kubeflow.org/v1): N worker pods of the
component image run ``esmm train`` under MultiWorkerMirroredStrategy (the operator writes each
pod's ``TF_CONFIG``; worker 0 is the chief and exports).

The pipeline's train step takes this path when ``kubernetes.train_workers`` is set: it stages the
config and the transformed data on the work volume, creates the TFJob through the Kubernetes
API, waits for it, and copies the chief's output (export, metrics, TensorBoard) into its Model
artifact. ``k8s/training/tfjob.yaml`` is ``tfjob_manifest`` for a run named ``example``
(tests/test_tfjob.py checks they agree).

The TFJob lives no longer than the run that made it: it is owned by the step's pod (an
ownerReference from the pod's name and uid, which the compiled pipeline passes in through the
downward API), so Kubernetes' garbage collector deletes it with that pod, and a step that is
stopped (SIGTERM) deletes it itself. Its pods opt out of Istio's sidecar, which would keep a
finished worker running (Kubeflow's TFJob guide). The step's own pod only stages, waits and
copies, so it requests ``POLLER_RESOURCES``, not the workers'.
"""
from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager
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
# The train step pod's name and uid (downward API, set by pipelines.pipeline): the TFJob's owner.
POD_NAME_ENV, POD_UID_ENV = "ESMM_POD_NAME", "ESMM_POD_UID"
# The train step's pod while a TFJob trains: it copies files and polls the API, so a fraction of a core;
# the memory is TensorFlow's import (tf.io.gfile copies) with room for the copy buffers.
POLLER_RESOURCES = StepResources(cpu="250m", memory="1Gi", cpu_limit="1", memory_limit="2Gi")
# Kubeflow's TFJob guide: in an Istio-injected namespace (Kubeflow's Profiles) the sidecar keeps a worker's
# pod running after training ends and blocks the workers' direct traffic, so TFJob pods opt out.
NO_SIDECAR = {"sidecar.istio.io/inject": "false"}


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


@dataclass(frozen=True)
class Owner:
    """The pod a TFJob belongs to: Kubernetes deletes the job when that pod is deleted."""

    name: str
    uid: str

    @classmethod
    def from_env(cls) -> Optional["Owner"]:
        """The step's pod, from the downward-API variables the compiled pipeline sets; None elsewhere."""
        name, uid = os.environ.get(POD_NAME_ENV), os.environ.get(POD_UID_ENV)
        return cls(name, uid) if name and uid else None

    def reference(self) -> dict[str, Any]:
        # blockOwnerDeletion false: deleting the pod never waits on the job (and needs no finalizer rights).
        return {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid, "controller": False,
                "blockOwnerDeletion": False}


def tfjob_manifest(name: str, image: str, workers: int, resources: StepResources, paths: TFJobPaths, *,
                   work_pvc: str = cluster.WORK_PVC, service_account: str = cluster.SERVICE_ACCOUNT,
                   owner: Optional[Owner] = None) -> dict[str, Any]:
    """The TFJob: ``workers`` pods running ``esmm train`` on the work volume's paths, locked down
    as every workload in k8s/ is (non-root 1000, read-only root filesystem, no capabilities), without
    an Istio sidecar, and owned by ``owner`` when given."""
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
        "metadata": {"labels": {"app.kubernetes.io/name": "esmm-train", "app.kubernetes.io/part-of": "esmm"},
                     "annotations": dict(NO_SIDECAR)},
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
    metadata = {"name": name, "labels": dict(pod["metadata"]["labels"])}
    if owner is not None:
        metadata["ownerReferences"] = [owner.reference()]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TFJob",
        "metadata": metadata,
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
    """Creates the TFJob (or, for a retried step, finds the one it created and adds this pod to its owners)
    and waits for it to end; returns the finished job, or raises TFJobFailed naming it. Stopped by SIGTERM
    (a run stopped in KFP), it deletes the job first."""
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
        _adopt(api, namespace, name, manifest["metadata"].get("ownerReferences", []))
    with _deleted_when_stopped(api, namespace, name):
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


def _adopt(api: Any, namespace: str, name: str, owners: list[dict[str, Any]]) -> None:
    """Adds ``owners`` (this attempt's pod) to an existing job's owners: the garbage collector deletes a
    dependent only once all its owners are gone, so the earlier attempt's pod, when cleaned up, takes the
    job along only if no later attempt still waits on it."""
    if not owners:
        return
    job = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    current = job.get("metadata", {}).get("ownerReferences", []) or []
    known = {ref.get("uid") for ref in current}
    added = [ref for ref in owners if ref["uid"] not in known]
    if added:
        api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                           {"metadata": {"ownerReferences": current + added}})


@contextmanager
def _deleted_when_stopped(api: Any, namespace: str, name: str):
    """While waiting: SIGTERM (KFP stopping the run, Argo terminating the pod) deletes the TFJob, then
    raises TFJobFailed. Signal handlers exist only in the main thread; elsewhere the owner reference alone
    cleans up."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                            body={"propagationPolicy": "Background"})
        raise TFJobFailed(f"stopped (signal {signum}): deleted TFJob {namespace}/{name}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def current_namespace() -> str:
    """The namespace this pod runs in (its service account's)."""
    return Path(NAMESPACE_FILE).read_text().strip()


def job_name(run_key: str) -> str:
    """A DNS-1035 name, unique per train task (run_key: hex digest of the task's output URI)."""
    return f"esmm-train-{run_key[:16]}"


def train_as_tfjob(config_json: str, transformed: str, out: str, *, image: str, workers: int,
                   resources: StepResources, work_root: str, run_key: str, api: Any = None,
                   namespace: Optional[str] = None, poll_s: float = 30.0, work_pvc: Optional[str] = None,
                   owner: Optional[Owner] = None) -> str:
    """Stages the inputs on the work volume (claim ``work_pvc``, default ``cluster.WORK_PVC``), runs the
    TFJob owned by ``owner`` (default: this pod, from the environment), copies its output to ``out``;
    returns the export directory (under ``out``)."""
    import tensorflow as tf

    from components.artifacts import storage

    paths = TFJobPaths.for_run(work_root, run_key)
    if not tf.io.gfile.exists(paths.transformed):
        staging = paths.transformed + ".partial"
        storage.remove_if_present(staging)
        storage.copy_tree(transformed, staging)
        storage.publish(staging, paths.transformed)
    storage.write_text(paths.config, config_json)
    manifest = tfjob_manifest(job_name(run_key), image, workers, resources, paths,
                              work_pvc=work_pvc or cluster.WORK_PVC, owner=owner or Owner.from_env())
    run_tfjob(manifest, namespace or current_namespace(), api=api, poll_s=poll_s)
    storage.copy_tree(paths.out, out)
    base = layout.TrainLayout(out).export_base
    versions = model_store.versions(base)
    if not versions:
        raise TFJobFailed(f"the TFJob succeeded but {paths.out} holds no export")
    return layout.TrainLayout(out).export_dir(versions[-1])

