"""The kfp pipeline: a local end-to-end run through kfp.local, caching, and the compiled YAML."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import yaml
from kfp import components
from scipy.stats import mannwhitneyu

from components.devtools.simulator import GROUND_TRUTH_FILE, SimulationSpec, simulate
from components.train.callbacks import latest_backup
from esmm_model.config import read_config_text, with_overrides
from esmm_model.errors import EsmmError
from pipelines import cluster
from pipelines.cli import main
from pipelines.compile import compile_pipeline
from pipelines.config import load_config
from pipelines.local_run import LocalRun, run_local
from serving_client.client import PredictionClient
from serving_client.packing import ExamplePacker
from serving_client.server import ModelServer

# One in-process worker: with several, Beam does not fix the order of the records it writes, and the
# determinism check below compares two runs bit for bit.
BEAM_OPTIONS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
TASKS = {"snapshot-step", "ingest-step", "transform-step", "train-step", "evaluate-step", "push-step"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    text = read_config_text("simulator").replace("batch_size: 4096", "batch_size: 512")
    (root / "config.yaml").write_text(text)
    spec = SimulationSpec(rows=4_000, users=400, items=1_000, categories=40, brands=100, shops=150, seed=4)
    simulate(spec, load_config(root / "config.yaml"), root / "sim")
    return root


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney U statistic over (positive, negative) pairs, ties counted half."""
    return float(mannwhitneyu(scores[labels], scores[~labels]).statistic / (labels.sum() * (~labels).sum()))


def entire_space_truth(tiny: Path, records: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """The simulator's p_cvr and would_convert of these raw eval records, joined by sample_id."""
    with open(tiny / "sim" / GROUND_TRUTH_FILE, newline="") as f:
        truth = {row["sample_id"]: row for row in csv.DictReader(f)}
    ids = [tf.train.Example.FromString(r).features.feature["sample_id"].bytes_list.value[0].decode() for r in records]
    return (np.array([float(truth[i]["p_cvr"]) for i in ids]),
            np.array([truth[i]["would_convert"] == "1" for i in ids]))


def run(tiny: Path, thresholds, out: str):
    return run_local(str(tiny / "config.yaml"), str(tiny / "sim"), str(tiny / "serving"), str(tiny / out),
                     beam_options=BEAM_OPTIONS, epochs=1, thresholds=thresholds,
                     ground_truth=str(tiny / "sim" / GROUND_TRUTH_FILE))


@pytest.mark.slow
def test_local_run_pushes_a_servable_model_and_gates_the_next(tiny, capfd):
    # `esmm run` as a user types it: each step's output goes to its log, the console gets a few lines.
    assert main(["run", "--config", str(tiny / "config.yaml"), "--input", str(tiny / "sim"), "--serving-base",
                 str(tiny / "serving"), "--out", str(tiny / "run"), *(f"--beam-option={o}" for o in BEAM_OPTIONS),
                 "--epochs", "1", "--thresholds", json.dumps([{"metric": "ctr/all/auc", "min": 0.0}]),
                 "--ground-truth", str(tiny / "sim" / GROUND_TRUTH_FILE)]) == 0
    console = capfd.readouterr()
    assert len((console.out + console.err).splitlines()) <= 30, console.out + console.err
    assert "executor_input" not in console.out + console.err
    (run_dir,) = (tiny / "run" / "kfp_root").iterdir()
    first = LocalRun.read(run_dir)
    assert {p.name for p in run_dir.glob("*.log")} == {f"{task}.log" for task in TASKS} | {"kfp.log"}
    assert "executor_input" in (run_dir / "train-step.log").read_text()
    assert {p.name for p in run_dir.iterdir() if p.is_dir()} == TASKS
    for artifact in ("ingest-step/examples/counts.json", "ingest-step/examples/schema.pbtxt",
                     "transform-step/transformed/transform_graph/transform_fn/saved_model.pb",
                     "evaluate-step/evaluation/metrics.json", "evaluate-step/evaluation/report.html",
                     "evaluate-step/evaluation/plots/cvr.png", "evaluate-step/report", "evaluate-step/blessing",
                     "evaluate-step/evaluation/roc.json", "push-step/pushed"):
        assert (run_dir / artifact).exists(), artifact
    (checkpoints,) = (tiny / "run" / "work").glob("*/train/checkpoints")  # keyed by this run's train task
    assert latest_backup(str(checkpoints)) is not None
    metrics = first.metrics
    assert metrics["ctr"]["clicked"]["example_count"] + metrics["ctr"]["unclicked"]["example_count"] == 2_000
    assert first.blessing["status"] == "BLESSED" and first.pushed["pushed"] and first.pushed["version"] == 1

    served = tf.saved_model.load(first.pushed["path"]).signatures["serving_default"]
    all_records = list(tf.data.TFRecordDataset(sorted(map(str, (run_dir / "ingest-step/examples/eval").glob("*.gz"))),
                                               compression_type="GZIP").as_numpy_iterator())
    # The entire-space AUCs, recomputed here from the simulator's truth and the pushed model's scores.
    p_cvr, would_convert = entire_space_truth(tiny, all_records)
    assert metrics["entire_space"]["oracle_cvr_auc"] == pytest.approx(auc(would_convert, p_cvr), abs=1e-9)
    scored_cvr = served(examples=tf.constant(all_records))["cvr"].numpy()
    assert metrics["entire_space"]["cvr_auc"] == pytest.approx(auc(would_convert, scored_cvr), abs=1e-4)
    records = all_records[:16]
    outputs = served(examples=tf.constant(records))
    assert set(outputs) == {"ctr", "cvr", "ctcvr"}
    np.testing.assert_allclose(outputs["ctcvr"].numpy(), outputs["ctr"].numpy() * outputs["cvr"].numpy(), rtol=1e-5)

    # The pushed export, served over gRPC and scored from raw feature dicts, matches in-process.
    config = load_config(tiny / "config.yaml")
    shared = {"user_id": "12", "gender": "1", "age": "3", "hist_items": (["5", "9"], [2.0, 1.0]),
              "position": 2, "hour": 9.0}
    candidates = [{"item_id": str(i), "category": "3", "price": 10.0 + i} for i in range(8)]
    examples = ExamplePacker(config).pack(shared, candidates)
    server = ModelServer(tiny / "serving" / "esmm", "esmm")
    port = server.start()
    # the push step's warmup file (eval split: serving_default and rank at 4 batch sizes), replayed on load
    assert server.versions.current.warmup_requests == 8
    try:
        with PredictionClient(f"127.0.0.1:{port}", "esmm", timeout_s=10.0) as client:
            remote = client.predict(examples)
    finally:
        server.stop()
    local = served(examples=tf.constant(examples))
    assert remote.model_version == 1 and not remote.fallback
    for name in ("ctr", "cvr", "ctcvr"):
        np.testing.assert_allclose(getattr(remote, name), local[name].numpy(), rtol=1e-6)

    # A second run on the same inputs retrains bit for bit (one in-order Beam worker, tf.Transform's
    # batches of a fixed size, seeded training: docs/configuration.md, Reproducibility), so its exact
    # metrics equal the first run's to the last bit; the served version 1, re-scored on the same eval
    # rows as the baseline, scores what it scored as the first candidate. An impossible threshold
    # keeps the new model out of serving.
    second = run(tiny, [{"metric": "ctr/all/auc", "min": 1.01}], "run")
    assert second.metrics["exact"] == first.metrics["exact"]  # retrained deterministically
    assert second.metrics["baseline"]["version"] == 1
    assert second.metrics["baseline"]["exact"] == first.metrics["exact"]
    assert "Candidate vs served version 1, on the same eval rows" in second.describe()
    assert second.blessing["status"] == "NOT_BLESSED"
    assert any("ctr/all/auc" in r and "below min 1.0100" in r for r in second.blessing["reasons"])
    assert not second.pushed["pushed"]
    assert sorted(p.name for p in (tiny / "serving" / "esmm").iterdir()) == ["1"]


def compiled(tmp_path, config=None, work_pvc="esmm-pipeline-work") -> tuple[dict, dict]:
    """The compiled pipeline spec and its Kubernetes platform spec."""
    path = compile_pipeline(str(tmp_path / "esmm.yaml"), "registry.example/esmm:1.2.3",
                            config or load_config("simulator"),
                            model_store_pvc="esmm-model-store", work_pvc=work_pvc)
    spec, *platform = yaml.safe_load_all(Path(path).read_text())
    return spec, (platform[0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if platform else {})


def test_compiled_yaml_lists_six_tasks_in_the_image_and_loads_back(tmp_path):
    spec, _ = compiled(tmp_path)
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == TASKS
    assert tasks["ingest-step"]["dependentTasks"] == ["snapshot-step"]
    assert sorted(tasks["transform-step"]["dependentTasks"]) == ["ingest-step", "snapshot-step"]
    assert sorted(tasks["push-step"]["dependentTasks"]) == ["evaluate-step", "snapshot-step", "train-step"]
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == 6
    assert {e["container"]["image"] for e in executors.values()} == {"registry.example/esmm:1.2.3"}
    outputs = spec["components"]["comp-evaluate-step"]["outputDefinitions"]["artifacts"]
    assert outputs["blessing"]["artifactType"]["schemaTitle"] == "system.Artifact"
    assert outputs["roc_ctr"]["artifactType"]["schemaTitle"] == "system.ClassificationMetrics"
    assert spec["components"]["comp-push-step"]["inputDefinitions"]["artifacts"]["blessing"][
        "artifactType"]["schemaTitle"] == "system.Artifact"
    assert spec["components"]["comp-evaluate-step"]["outputDefinitions"]["artifacts"]["evaluation"][
        "artifactType"]["schemaTitle"] == "system.Metrics"
    loaded = components.load_component_from_file(str(tmp_path / "esmm.yaml"))
    assert loaded.name == "esmm"
    inputs = set(loaded.component_spec.inputs)
    assert {"config_path", "input_path", "serving_base", "work_root", "beam_runner"} <= inputs


def test_run_time_overrides_are_optional_parameters_without_sentinels(tmp_path):
    params = compiled(tmp_path)[0]["root"]["inputDefinitions"]["parameters"]
    assert {name for name, p in params.items() if not p.get("isOptional")} == {"config_path", "input_path"}
    overrides = ("beam_runner", "beam_options", "variant", "epochs", "thresholds", "ground_truth")
    assert all("defaultValue" not in params[name] for name in overrides)  # None: the config decides
    assert params["serving_base"]["defaultValue"] == cluster.MODEL_STORE_MOUNT
    assert params["work_root"]["defaultValue"] == cluster.WORK_MOUNT
    without_work_volume = compiled(tmp_path, work_pvc=None)[0]["root"]["inputDefinitions"]["parameters"]
    assert "defaultValue" not in without_work_volume["work_root"]  # checkpoints stay in the model artifact


def test_caches_key_on_config_contents_and_input_fingerprint(tmp_path):
    tasks = compiled(tmp_path)[0]["root"]["dag"]["tasks"]
    assert {name: task["cachingOptions"].get("enableCache", False) for name, task in tasks.items()} == {
        "snapshot-step": False, "ingest-step": True, "transform-step": True, "train-step": True,
        "evaluate-step": False, "push-step": False}  # evaluate reads the served baseline: never from cache
    for name in ("ingest-step", "transform-step", "train-step", "evaluate-step", "push-step"):
        parameters = tasks[name]["inputs"]["parameters"]
        assert "config_path" not in parameters  # a path would replay a cache after the file was edited
        assert parameters["config"]["taskOutputParameter"] == {"producerTask": "snapshot-step",
                                                               "outputParameterKey": "config"}
    for name in ("ingest-step", "evaluate-step"):
        assert tasks[name]["inputs"]["parameters"]["input_fingerprint"]["taskOutputParameter"] == {
            "producerTask": "snapshot-step", "outputParameterKey": "input_fingerprint"}


def test_every_step_has_requests_limits_from_the_config_and_transient_steps_retry(tmp_path):
    config = with_overrides(load_config("simulator"), {"kubernetes": {
        "retries": 3, "retry_backoff_s": 30,
        "resources": {"default": {"memory_limit": "16Gi"}, "train": {"cpu": "6", "memory": "12Gi", "cpu_limit": "8"}}}})
    spec, _ = compiled(tmp_path, config)
    resources = {name[len("exec-"):-len("-step")]: e["container"]["resources"]
                 for name, e in spec["deploymentSpec"]["executors"].items()}
    assert resources["train"]["resourceCpuRequest"] == "6" and resources["train"]["resourceCpuLimit"] == "8"
    assert resources["train"]["resourceMemoryRequest"] == "12Gi"
    assert resources["ingest"]["resourceCpuRequest"] == "2" and resources["ingest"]["resourceCpuLimit"] == "2"
    for step, entry in resources.items():
        assert entry["resourceMemoryLimit"] == "16Gi", step  # the default's limit reaches every step
        assert {"resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest"} <= set(entry), step
    tasks = spec["root"]["dag"]["tasks"]
    retried = {name for name, task in tasks.items() if "retryPolicy" in task}
    assert retried == {"snapshot-step", "ingest-step", "transform-step", "train-step", "evaluate-step"}
    assert tasks["train-step"]["retryPolicy"]["maxRetryCount"] == 3
    assert tasks["train-step"]["retryPolicy"]["backoffDuration"] == "30s"


def test_evaluate_and_push_mount_the_model_store_and_train_the_work_volume_named_by_parameters(tmp_path):
    spec, volumes = compiled(tmp_path)
    mounts = {name: [(m["pvcNameParameter"], m["mountPath"]) for m in e["pvcMount"]]
              for name, e in volumes.items() if "pvcMount" in e}
    store, work = {"componentInputParameter": "model_store_pvc"}, {"componentInputParameter": "work_pvc"}
    assert mounts == {"exec-evaluate-step": [(store, cluster.MODEL_STORE_MOUNT)],  # the baseline
                      "exec-push-step": [(store, cluster.MODEL_STORE_MOUNT)],
                      "exec-train-step": [(work, cluster.WORK_MOUNT)]}
    # the claims' names are run-time parameters (the namespace's claims), defaulting to the compiled ones
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["model_store_pvc"]["defaultValue"] == "esmm-model-store"
    assert params["work_pvc"]["defaultValue"] == "esmm-pipeline-work"
    without = compiled(tmp_path, work_pvc=None)[1]
    assert {name for name, e in without.items() if "pvcMount" in e} == {"exec-evaluate-step", "exec-push-step"}


def test_every_step_runs_as_the_images_non_root_user_and_staging_steps_get_scratch(tmp_path):
    spec, platform = compiled(tmp_path)
    assert {name: e["securityContext"] for name, e in platform.items()} == {
        f"exec-{step}-step": {"runAsUser": "1000", "runAsGroup": "1000", "runAsNonRoot": True}
        for step in ("snapshot", "ingest", "transform", "train", "evaluate", "push")}
    scratch = {name: e.get("emptyDirMounts") for name, e in platform.items()}
    expected = [{"volumeName": "scratch", "mountPath": cluster.SCRATCH_MOUNT, "sizeLimit": "20Gi"}]
    assert scratch == {"exec-snapshot-step": None, "exec-ingest-step": expected, "exec-transform-step": expected,
                       "exec-train-step": expected, "exec-evaluate-step": expected, "exec-push-step": None}
    for name, executor in spec["deploymentSpec"]["executors"].items():
        env = {e["name"]: e["value"] for e in executor["container"].get("env", [])}
        assert env.get("TMPDIR") == (cluster.SCRATCH_MOUNT if scratch[name] else None), name
    none = with_overrides(load_config("simulator"), {"kubernetes": {"scratch_storage": None}})
    assert not any("emptyDirMounts" in e for e in compiled(tmp_path, none)[1].values())


def test_ingest_reads_the_input_path_the_snapshot_formatted_at_the_schedule_time(tmp_path):
    tasks = compiled(tmp_path)[0]["root"]["dag"]["tasks"]
    snapshot = tasks["snapshot-step"]["inputs"]["parameters"]
    assert snapshot["schedule_time"] == {"runtimeValue": {"constant": "{{$.pipeline_job_schedule_time_utc}}"}}
    assert tasks["ingest-step"]["inputs"]["parameters"]["input_path"] == {
        "taskOutputParameter": {"producerTask": "snapshot-step", "outputParameterKey": "input_path"}}


def test_the_push_step_gets_evaluates_warmup_examples_not_the_dataset(tmp_path):
    spec, _ = compiled(tmp_path)
    push = spec["root"]["dag"]["tasks"]["push-step"]["inputs"]["artifacts"]
    assert "examples" not in push
    assert push["warmup"] == {"taskOutputArtifact": {"producerTask": "evaluate-step", "outputArtifactKey": "warmup"}}


def test_a_tfjob_train_step_waits_in_a_small_pod_that_knows_its_name_and_uid(tmp_path):
    from pipelines.tfjob import POD_NAME_ENV, POD_UID_ENV

    config = with_overrides(load_config("simulator"), {"kubernetes": {"train_workers": 4}})
    spec, platform = compiled(tmp_path, config)
    resources = spec["deploymentSpec"]["executors"]["exec-train-step"]["container"]["resources"]
    assert (resources["resourceCpuRequest"], resources["resourceMemoryLimit"]) == ("250m", "2Gi")
    assert {(e["name"], e["fieldPath"]) for e in platform["exec-train-step"]["fieldPathAsEnv"]} == {
        (POD_NAME_ENV, "metadata.name"), (POD_UID_ENV, "metadata.uid")}
    in_pod = compiled(tmp_path)[0]["deploymentSpec"]["executors"]["exec-train-step"]["container"]["resources"]
    assert in_pod["resourceCpuRequest"] == "4"  # training in the step's own pod keeps the config's requests
    train = spec["root"]["dag"]["tasks"]["train-step"]["inputs"]["parameters"]
    assert train["work_pvc"] == {"componentInputParameter": "work_pvc"}  # the TFJob mounts the same claim


@pytest.mark.slow
def test_a_run_stops_at_ingest_when_too_many_rows_are_rejected(tiny, tmp_path):
    sim = tmp_path / "sim"
    shutil.copytree(tiny / "sim", sim)
    skeleton = next(sim.glob("sample_skeleton_*.csv"))
    lines = skeleton.read_text().splitlines()
    bad = [f"{4_001 + i},x,0,{line.split(',')[3]},0," for i, line in enumerate(lines[:80])]  # 80 of 4,080: 1.96 %
    skeleton.write_text("\n".join(lines + bad) + "\n")
    # The step's own error line and where its log is, not only kfp.local's "finished with status FAILURE".
    with pytest.raises(EsmmError, match=r"ingest-step failed: RejectionError: rejected 1\.96% of 4,080 rows .*; "
                                        r"its log: .*ingest-step\.log$"):
        # epochs and every other override left unset, as `make demo` runs (kfp.local casts an unset int with int())
        run_local(str(tiny / "config.yaml"), str(sim), str(tmp_path / "serving"), str(tmp_path / "run"),
                  beam_options=BEAM_OPTIONS)
    (run_dir,) = (tmp_path / "run" / "kfp_root").iterdir()
    assert {p.name for p in run_dir.iterdir() if p.is_dir()} == {"snapshot-step", "ingest-step"}  # nothing downstream
    counts = json.loads((run_dir / "ingest-step" / "examples" / "counts.json").read_text())
    assert counts["rejected"] == {"bad_click": 80}
    assert not (tmp_path / "serving").exists()


def test_esmm_compile_takes_the_config_and_volume_names(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    assert main(["compile", "--config", "aliccp", "--image", "registry.example/esmm:2", "--out", str(out),
                 "--model-store-pvc", "models-rwx", "--work-pvc", ""]) == 0
    spec, platform = yaml.safe_load_all(out.read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert {name for name, e in executors.items() if "pvcMount" in e} == {"exec-evaluate-step", "exec-push-step"}
    assert spec["root"]["inputDefinitions"]["parameters"]["model_store_pvc"]["defaultValue"] == "models-rwx"
    assert "model store PVC models-rwx on evaluate and push, no work PVC" in capsys.readouterr().out
