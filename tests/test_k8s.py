"""The kustomize tree: every overlay builds, validates against the Kubernetes schemas, is locked down, and
points TF Serving where the pusher writes."""
from __future__ import annotations

import posixpath
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from components.evaluate.gate import bless
from components.push.executor import push
from esmm_model.config import EvaluationConfig, load_config
from esmm_model.contracts.fingerprint import model_fingerprint
from esmm_model.contracts.model_config import parse_model_config
from pipelines import cluster
from stub_models import save_stub_model

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = ("dev", "prod")
# Where KFP runs pipeline pods, so where each overlay puts the volumes, the steps' identity and TF Serving:
# standalone KFP's own namespace (dev), a multi-user Profile's namespace (prod).
NAMESPACES = {"dev": "kubeflow", "prod": "esmm"}
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/audit": "restricted",
              "pod-security.kubernetes.io/warn": "restricted"}
# The oldest and newest Kubernetes minor versions the manifests are checked against.
KUBERNETES_VERSIONS = ("1.29", "1.33")
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"}
KUBECTL = shutil.which("kubectl")

pytestmark = pytest.mark.skipif(KUBECTL is None,
                                reason="kubectl is not installed: the kustomize overlays cannot be built")


def build(overlay: str, root: Path = ROOT) -> list[dict]:
    rendered = subprocess.run([KUBECTL, "kustomize", str(root / "k8s" / "overlays" / overlay)], capture_output=True,
                              text=True, check=True, timeout=60).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, build(request.param)


def one(docs: list[dict], kind: str, name: str) -> dict:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name)]
    return found


def pod_spec(doc: dict) -> dict:
    if doc["kind"] == "Pod":
        return doc["spec"]
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def serving(docs: list[dict]) -> tuple[dict, dict]:
    deployment = one(docs, "Deployment", "esmm-serving")
    (container,) = pod_spec(deployment)["containers"]
    return deployment, container


def flags(container: dict) -> dict[str, str]:
    return dict(arg[2:].split("=", 1) for arg in container["args"])


def mounted_file(docs: list[dict], deployment: dict, container: dict, path: str) -> str:
    """The contents of a file the container reads from a mounted ConfigMap."""
    mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/"))
    volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"])
    config_map = one(docs, "ConfigMap", volume["configMap"]["name"])
    assert config_map["metadata"]["name"] == volume["configMap"]["name"]
    return config_map["data"][posixpath.relpath(path, mount["mountPath"])]


def test_kubectl_has_kustomize():
    version = subprocess.run([KUBECTL, "version", "--client"], capture_output=True, text=True, check=True).stdout
    assert re.search(r"Kustomize Version: v5\.", version), version


def test_every_manifest_validates_against_the_kubernetes_schemas(rendered):
    overlay, docs = rendered
    kinds = {"ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service", "PersistentVolumeClaim",
             "Deployment", "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy"}
    # standalone KFP's namespace is its install's; a Profile's namespace gets Pod Security labels from prod
    assert {d["kind"] for d in docs} == kinds | ({"Namespace"} if overlay == "prod" else set())
    for doc in docs:
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)  # raises on an unknown or mistyped field
    namespace = NAMESPACES[overlay]
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {namespace}


def test_every_workload_runs_locked_down_with_requests_and_limits(rendered):
    _, docs = rendered
    workloads = [d for d in docs if d["kind"] in WORKLOAD_KINDS]
    assert workloads
    for doc in workloads:
        spec = pod_spec(doc)
        pod_security = spec.get("securityContext", {})
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{doc['kind']}/{doc['metadata']['name']} container {container['name']}"
            security = container.get("securityContext", {})
            assert security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True, where
            assert security.get("runAsUser", pod_security.get("runAsUser", 0)) != 0, where
            assert security.get("readOnlyRootFilesystem") is True, where
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not security.get("capabilities", {}).get("add"), where
            assert not security.get("privileged", False), where
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(bound, {})), f"{where}: {bound}"
            image = container["image"]
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), f"{where}: pin {image}"


def test_tf_serving_serves_what_the_pusher_writes(rendered, tmp_path):
    _, docs = rendered
    deployment, container = serving(docs)
    args = flags(container)
    (entry,) = parse_model_config(mounted_file(docs, deployment, container, args["model_config_file"]), "models.config")
    model_names = {load_config(name).push.model_name for name in ("simulator", "aliccp")}
    assert model_names == {entry.name}

    store = next(m for m in container["volumeMounts"] if m["name"] == "model-store")
    (volume,) = [v for v in pod_spec(deployment)["volumes"] if v["name"] == "model-store"]
    assert volume["persistentVolumeClaim"]["claimName"] == cluster.MODEL_STORE_PVC
    assert store["mountPath"] == cluster.MODEL_STORE_MOUNT  # the pipeline's serving_base on the cluster
    # the pusher, given the mounted store as serving base, writes a version right under base_path
    serving_base = tmp_path / "store"
    model = save_stub_model(load_config("simulator"), tmp_path / "export", 1)
    blessing = bless({}, None, EvaluationConfig(thresholds=()), model_fingerprint=model_fingerprint(str(model)))
    result = push(str(model), blessing, str(serving_base), entry.name, 5)
    written = posixpath.join(store["mountPath"], Path(result.path).relative_to(serving_base).as_posix())
    assert posixpath.dirname(written) == entry.base_path
    assert entry.labels.keys() == {"stable", "canary"}
    assert entry.policy.kind == "specific" and set(entry.labels.values()) <= set(entry.policy.versions)

    assert container["command"] == ["tensorflow_model_server"]
    assert (args["port"], args["rest_api_port"]) == ("8500", "8501")
    assert args["allow_version_labels_for_unavailable_models"] == "true"  # labels are set before versions load
    assert int(args["file_system_poll_wait_seconds"]) > 0 and int(args["model_config_file_poll_wait_seconds"]) > 0
    assert args["enable_batching"] == "true"
    batching = mounted_file(docs, deployment, container, args["batching_parameters_file"])
    assert re.search(r"max_batch_size \{ value: \d+ \}", batching)
    monitoring = mounted_file(docs, deployment, container, args["monitoring_config_file"])
    metrics_path = re.search(r'path: "([^"]+)"', monitoring).group(1)
    assert re.search(r"prometheus_config \{\s*enable: true", monitoring)
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"] == metrics_path


def test_the_profile_namespace_enforces_pod_security_restricted():
    docs = build("prod")
    labels = one(docs, "Namespace", NAMESPACES["prod"])["metadata"]["labels"]
    assert RESTRICTED.items() <= labels.items()
    assert labels["pipelines.kubeflow.org/enabled"] == "true"  # KFP's profile controller then adds kfp-launcher
    profile = yaml.safe_load((ROOT / "k8s" / "multi-user" / "profile.yaml").read_text())
    assert (profile["apiVersion"], profile["kind"]) == ("kubeflow.org/v1", "Profile")
    assert profile["metadata"]["name"] == NAMESPACES["prod"]  # a Profile's namespace is named after it
    assert profile["spec"]["owner"]["kind"] == "User"


def test_namespace_and_claim_names_are_the_overlays_to_set(tmp_path):
    """An overlay on top of prod renames the namespace and both claims; every reference follows, and the
    compiled pipeline takes the same claim names as parameters."""
    shutil.copytree(ROOT / "k8s", tmp_path / "k8s")
    team = tmp_path / "k8s" / "overlays" / "team"
    team.mkdir()
    (team / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": "team-a",
        "resources": ["../prod"],
        "patches": [{"target": {"kind": "PersistentVolumeClaim", "name": old},
                     "patch": yaml.safe_dump([{"op": "replace", "path": "/metadata/name", "value": new}])}
                    for old, new in ((cluster.MODEL_STORE_PVC, "team-a-models"), (cluster.WORK_PVC, "team-a-work"))],
    }))
    docs = build("team", tmp_path)
    assert {d["metadata"]["namespace"] for d in docs if d["kind"] != "Namespace"} == {"team-a"}
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"} == {
        "team-a-models", "team-a-work"}
    deployment, _ = serving(docs)
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod_spec(deployment)["volumes"]
              if "persistentVolumeClaim" in v}
    assert claims == {"team-a-models"}
    binding = one(docs, "RoleBinding", "esmm-pipeline")
    assert binding["subjects"][0]["namespace"] == "team-a"


def test_long_lived_grpc_clients_get_a_headless_service_and_connections_that_age(rendered):
    _, docs = rendered
    deployment, container = serving(docs)
    headless = one(docs, "Service", "esmm-serving-grpc")["spec"]
    assert headless["clusterIP"] == "None"  # DNS lists every ready pod: the client's round_robin spreads calls
    assert headless["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert [(p["port"], p["targetPort"]) for p in headless["ports"]] == [(8500, "grpc")]
    rest = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "esmm-serving")["spec"]
    assert rest.get("clusterIP") != "None"  # REST keeps its virtual IP
    channel = dict(arg.split("=") for arg in flags(container)["grpc_channel_arguments"].split(","))
    # clients reconnect (and re-resolve) within minutes, well inside the autoscaler's scale-up pace
    assert 60_000 <= int(channel["grpc.max_connection_age_ms"]) <= 600_000
    assert int(channel["grpc.max_connection_age_grace_ms"]) > 0


def test_probes_ports_and_service_match_tf_serving(rendered):
    _, docs = rendered
    deployment, container = serving(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 8500, "http": 8501}
    ready = container["readinessProbe"]["httpGet"]
    assert (ready["path"], ports[ready["port"]]) == ("/v1/models/esmm", 8501)
    assert ports[container["livenessProbe"]["tcpSocket"]["port"]] == 8500  # TF Serving has no gRPC health service
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "esmm-serving")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {(p["port"], ports[p["targetPort"]]) for p in service["spec"]["ports"]} == {(8500, 8500), (8501, 8501)}
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        spec = one(docs, kind, "esmm-serving")["spec"]
        selector = spec.get("selector") or spec["podSelector"]
        assert selector["matchLabels"].items() <= pod_labels.items(), kind
    hpa = one(docs, "HorizontalPodAutoscaler", "esmm-serving")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "esmm-serving"}
    assert "replicas" not in deployment["spec"]  # the autoscaler owns the count


def test_only_the_labelled_ranking_namespace_reaches_serving(rendered):
    _, docs = rendered
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert len(policies) == 1
    spec = policies[0]["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"esmm/serving-access": "ranking"}}}]
    assert sorted((p["protocol"], p["port"]) for p in rule["ports"]) == [("TCP", 8500), ("TCP", 8501)]


def test_overlays_size_replicas_and_volumes(rendered):
    overlay, docs = rendered
    hpa = one(docs, "HorizontalPodAutoscaler", "esmm-serving")["spec"]
    claims = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert set(claims) == {cluster.MODEL_STORE_PVC, cluster.WORK_PVC}
    if overlay == "dev":
        assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 1)
        assert {c["resources"]["requests"]["storage"] for c in claims.values()} == {"1Gi", "5Gi"}
    else:
        assert hpa["minReplicas"] >= 3 and hpa["maxReplicas"] > hpa["minReplicas"]
        assert all(c["accessModes"] == ["ReadWriteMany"] for c in claims.values())  # pods on many nodes share them


def test_pipeline_steps_have_their_own_service_account_bound_to_a_namespaced_role(rendered):
    _, docs = rendered
    binding = one(docs, "RoleBinding", "esmm-pipeline")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "esmm-pipeline"}
    namespace = one(docs, "ServiceAccount", cluster.SERVICE_ACCOUNT)["metadata"]["namespace"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": cluster.SERVICE_ACCOUNT, "namespace": namespace}]
    role = one(docs, "Role", "esmm-pipeline")
    assert not any("*" in rule.get("verbs", []) + rule.get("resources", []) for rule in role["rules"])
    secrets = [rule for rule in role["rules"] if "secrets" in rule["resources"]]
    assert all(rule.get("resourceNames") for rule in secrets)  # never every secret in the namespace


def test_the_serving_image_is_the_one_the_compatibility_check_uses():
    _, container = serving(build("prod"))
    makefile = (ROOT / "Makefile").read_text()
    serving_tf = re.search(r"^SERVING_TF_VERSION \?= (\S+)$", makefile, re.M).group(1)
    assert container["image"] == f"tensorflow/serving:{serving_tf}"
