"""The TFJob path of the train step, without a cluster: the manifest in k8s/training/ is the one the
step submits, it validates against the Kubernetes schemas and the Training Operator's v1 fields,
it is locked down like every workload in k8s/, and the step stages, submits, waits and copies back."""
from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from esmm_model.config import config_to_json
from esmm_model.contracts import layout
from pipelines import cluster
from pipelines.config import load_config
from pipelines.tfjob import (
    POD_NAME_ENV,
    POD_UID_ENV,
    POLLER_RESOURCES,
    Owner,
    TFJobFailed,
    TFJobPaths,
    job_name,
    run_tfjob,
    tfjob_manifest,
    train_as_tfjob,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_IMAGE = "registry.example.com/esmm:0.1.0"  # the shipped manifest's placeholder, as in the README
KUBERNETES_VERSIONS = ("1.29", "1.33")
# kubeflow.org/v1 TFJob fields (kubeflow/training-operator pkg/apis/kubeflow.org/v1: TFJobSpec,
# ReplicaSpec, RunPolicy): kubernetes-validate has no schema for a CRD, so its own fields are checked here.
TFJOB_SPEC = {"runPolicy", "successPolicy", "tfReplicaSpecs", "enableDynamicWorker"}
REPLICA_SPEC = {"replicas", "template", "restartPolicy"}
RUN_POLICY = {"cleanPodPolicy", "ttlSecondsAfterFinished", "activeDeadlineSeconds", "backoffLimit",
              "schedulingPolicy", "suspend", "managedBy"}
REPLICA_TYPES = {"Chief", "Worker", "PS", "Evaluator", "Master"}


def shipped() -> dict:
    return yaml.safe_load((ROOT / "k8s" / "training" / "tfjob.yaml").read_text())


def serving_security() -> tuple[dict, dict]:
    deployment = yaml.safe_load((ROOT / "k8s" / "base" / "serving" / "deployment.yaml").read_text())
    spec = deployment["spec"]["template"]["spec"]
    return spec["securityContext"], spec["containers"][0]["securityContext"]


def test_the_shipped_tfjob_is_what_the_train_step_submits():
    resources = load_config("simulator").kubernetes.resources.for_step("train")
    expected = tfjob_manifest("esmm-train-example", EXAMPLE_IMAGE, 2, resources,
                              TFJobPaths.for_run(cluster.WORK_MOUNT, "example"))
    assert shipped() == expected


def test_the_tfjob_validates_and_runs_locked_down():
    job = shipped()
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "TFJob")
    assert set(job["spec"]) <= TFJOB_SPEC and set(job["spec"]["runPolicy"]) <= RUN_POLICY
    assert set(job["spec"]["tfReplicaSpecs"]) <= REPLICA_TYPES
    (replica,) = job["spec"]["tfReplicaSpecs"].values()
    assert set(replica) <= REPLICA_SPEC and replica["replicas"] == 2
    for version in KUBERNETES_VERSIONS:  # the pod template, strictly, as a core PodTemplate
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "esmm-train"},
                                      "template": replica["template"]}, version, strict=True)
    pod = replica["template"]["spec"]
    (container,) = pod["containers"]
    pod_security, container_security = serving_security()
    assert pod["securityContext"] == pod_security
    assert container["securityContext"] == container_security
    assert container["name"] == "tensorflow" and container["ports"] == [{"name": "tfjob-port", "containerPort": 2222}]
    # Kubeflow's TFJob guide: no Istio sidecar in the workers (it keeps a finished pod running)
    assert replica["template"]["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    assert "ownerReferences" not in job["metadata"]  # made by hand: no step pod owns it
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) and container["resources"]["limits"]
    assert container["image"] == EXAMPLE_IMAGE
    args = dict(zip(container["args"][::2], container["args"][1::2]))
    assert container["command"] == ["esmm", "train"]
    assert args == {"--config": "/work/tfjob/example/config.json", "--transform-dir": "/work/tfjob/example/transformed",
                    "--out": "/work/tfjob/example/train", "--checkpoint-dir": "/work/tfjob/example/checkpoints"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["work"]["persistentVolumeClaim"]["claimName"] == cluster.WORK_PVC
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"work": cluster.WORK_MOUNT, "tmp": "/tmp"}  # a writable /tmp beside the read-only root


def test_the_pipeline_role_may_create_and_watch_tfjobs_only():
    docs = list(yaml.safe_load_all((ROOT / "k8s" / "base" / "pipeline-rbac.yaml").read_text()))
    role = next(d for d in docs if d["kind"] == "Role")
    rules = [r for r in role["rules"] if "kubeflow.org" in r["apiGroups"]]
    assert rules == [{"apiGroups": ["kubeflow.org"], "resources": ["tfjobs"],
                      "verbs": ["create", "get", "patch", "delete"]}]


class FakeApi:
    """CustomObjectsApi stand-in: on create, 'runs' the job by writing what the chief would write."""

    def __init__(self, conditions: list[dict], exists: bool = False, owners: tuple = (), on_get=None):
        self.created, self.gets, self.conditions, self.exists = [], 0, conditions, exists
        self.owners, self.patches, self.deleted, self.on_get = list(owners), [], [], on_get

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        from kubernetes.client.exceptions import ApiException

        if self.exists:
            raise ApiException(status=409, reason="AlreadyExists")
        self.created.append((group, version, namespace, plural, body))
        out = Path(dict(zip(body["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["args"][::2],
                            body["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["args"][1::2]))
                   ["--out"])
        (out / "model" / "7").mkdir(parents=True)
        (out / "model" / "7" / "saved_model.pb").write_bytes(b"graph")
        (out / "metrics.json").write_text(json.dumps({"final": {"step": 12}}))

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.gets += 1
        if self.on_get:
            self.on_get(self.gets)
        return {"metadata": {"ownerReferences": list(self.owners)},
                "status": {"conditions": self.conditions[:self.gets]}}

    def patch_namespaced_custom_object(self, group, version, namespace, plural, name, body):
        self.patches.append(body)
        self.owners = body["metadata"]["ownerReferences"]

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, body=None):
        self.deleted.append((namespace, name))


def test_the_train_step_stages_submits_waits_and_copies_the_export_back(tmp_path, monkeypatch):
    transformed = tmp_path / "artifact" / "transformed"
    (transformed / "transformed" / "train").mkdir(parents=True)
    (transformed / "transformed" / "train" / "part-0.tfrecord.gz").write_bytes(b"rows")
    config = load_config("simulator")
    api = FakeApi([{"type": "Created", "status": "True"}, {"type": "Running", "status": "True"},
                   {"type": "Succeeded", "status": "True"}])
    out = tmp_path / "artifact" / "model"
    monkeypatch.setenv(POD_NAME_ENV, "esmm-abc-train-step-123")
    monkeypatch.setenv(POD_UID_ENV, "6f1c-uid")
    export = train_as_tfjob(config_to_json(config), str(transformed), str(out), image="registry/esmm:1.2.3", workers=3,
                            resources=config.kubernetes.resources.for_step("train"), work_root=str(tmp_path / "work"),
                            run_key="abc123", api=api, namespace="esmm", poll_s=0, work_pvc="team-a-work")
    ((group, version, namespace, plural, body),) = api.created
    assert (group, version, namespace, plural) == ("kubeflow.org", "v1", "esmm", "tfjobs")
    # owned by the step's pod (downward API), so deleting that pod deletes the job
    assert body["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": "esmm-abc-train-step-123", "uid": "6f1c-uid", "controller": False,
         "blockOwnerDeletion": False}]
    pod = body["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "team-a-work"  # the pipeline parameter's claim
    assert body["metadata"]["name"] == job_name("abc123") == "esmm-train-abc123"
    assert body["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] == 3
    paths = TFJobPaths.for_run(str(tmp_path / "work"), "abc123")
    assert (Path(paths.transformed) / "transformed" / "train" / "part-0.tfrecord.gz").read_bytes() == b"rows"
    assert json.loads(Path(paths.config).read_text())["name"] == config.name
    assert export == layout.TrainLayout(str(out)).export_dir(7)
    assert (Path(export) / "saved_model.pb").read_bytes() == b"graph"
    assert api.gets == 3


def test_a_failed_or_existing_tfjob(tmp_path):
    resources = load_config("simulator").kubernetes.resources.for_step("train")
    manifest = tfjob_manifest("esmm-train-x", EXAMPLE_IMAGE, 2, resources, TFJobPaths.for_run(str(tmp_path), "x"))
    failed = FakeApi([{"type": "Running", "status": "True"},
                      {"type": "Failed", "status": "True", "message": "worker-1 OOMKilled"}], exists=True)
    with pytest.raises(TFJobFailed, match=r"TFJob esmm/esmm-train-x failed: worker-1 OOMKilled; see `kubectl logs"):
        run_tfjob(manifest, "esmm", api=failed, sleep=lambda s: None)
    assert failed.created == []  # a retried step waits on the job its first attempt created
    stuck = FakeApi([{"type": "Running", "status": "True"}] * 10, exists=True)
    with pytest.raises(TFJobFailed, match="did not finish within 60 s"):
        run_tfjob(manifest, "esmm", api=stuck, timeout_s=60, poll_s=30, sleep=lambda s: None)


def test_a_retried_step_adds_its_pod_to_the_existing_jobs_owners(tmp_path):
    first = Owner("train-attempt-1", "uid-1").reference()
    second = Owner("train-attempt-2", "uid-2")
    resources = load_config("simulator").kubernetes.resources.for_step("train")
    manifest = tfjob_manifest("esmm-train-x", EXAMPLE_IMAGE, 2, resources, TFJobPaths.for_run(str(tmp_path), "x"),
                              owner=second)
    api = FakeApi([{"type": "Succeeded", "status": "True"}], exists=True, owners=[first])
    run_tfjob(manifest, "esmm", api=api, sleep=lambda s: None)
    # both attempts own it: the garbage collector deletes it only once neither pod exists
    assert api.patches == [{"metadata": {"ownerReferences": [first, second.reference()]}}]


def test_a_stopped_step_deletes_its_tfjob(tmp_path):
    import os
    import signal

    resources = load_config("simulator").kubernetes.resources.for_step("train")
    manifest = tfjob_manifest("esmm-train-x", EXAMPLE_IMAGE, 2, resources, TFJobPaths.for_run(str(tmp_path), "x"))
    # KFP stopping the run: the pod gets SIGTERM while the step waits
    api = FakeApi([{"type": "Running", "status": "True"}] * 5,
                  on_get=lambda n: os.kill(os.getpid(), signal.SIGTERM) if n == 2 else None)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TFJobFailed, match=r"stopped \(signal 15\): deleted TFJob esmm/esmm-train-x"):
        run_tfjob(manifest, "esmm", api=api, sleep=lambda s: None)
    assert api.deleted == [("esmm", "esmm-train-x")]
    assert signal.getsignal(signal.SIGTERM) is before  # the step's own handling is restored


def test_the_polling_pod_requests_a_fraction_of_a_worker():
    from pipelines.config import cpu_cores, memory_bytes

    train = load_config("simulator").kubernetes.resources.for_step("train")
    assert cpu_cores(POLLER_RESOURCES.cpu) <= cpu_cores(train.cpu) / 8
    assert memory_bytes(POLLER_RESOURCES.memory_limit) <= memory_bytes(train.memory) / 4
