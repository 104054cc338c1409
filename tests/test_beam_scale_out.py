"""Remote Beam runners get artifact URIs and a worker container; the DirectRunner keeps pod paths and workers."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from components.beam.runner import artifact_location, with_worker_image
from esmm_model.config import config_to_json
from pipelines import steps
from pipelines.compile import compile_pipeline
from pipelines.config import load_config

IMAGE = "registry.example/esmm:1.2.3"
FLINK = ["--runner=FlinkRunner", "--flink_master=flink-jobmanager:8081"]


@pytest.mark.parametrize("args, uri, expected", [
    (["--runner=DirectRunner"], "gs://b/run/examples", "/gcs/b/run/examples"),
    ([], "gs://b/run/examples", "/gcs/b/run/examples"),  # no runner named: Beam's default, the DirectRunner
    (FLINK, "gs://b/run/examples", "gs://b/run/examples"),
    (["--runner=DataflowRunner"], "gs://b/run/examples", "gs://b/run/examples"),
    (["--runner=PortableRunner"], "minio://mlpipeline/v2/artifacts/x", "s3://mlpipeline/v2/artifacts/x"),
])
def test_beam_gets_the_pod_path_only_on_the_direct_runner(args, uri, expected):
    assert artifact_location(args, uri, "/gcs/b/run/examples") == expected


@pytest.mark.parametrize("args, expected_extra", [
    (["--runner=DirectRunner", "--direct_num_workers=2"], []),
    (FLINK, [f"--sdk_container_image={IMAGE}", "--environment_type=DOCKER", f"--environment_config={IMAGE}"]),
    (["--runner=SparkRunner", "--environment_type=DOCKER"],
     [f"--sdk_container_image={IMAGE}", "--environment_type=DOCKER", f"--environment_config={IMAGE}"]),
    (["--runner=DataflowRunner", "--project=p", "--region=europe-west4"], [f"--sdk_container_image={IMAGE}"]),
    (["--runner=DataflowRunner", "--sdk_container_image=mine:1"], []),
    (FLINK + ["--environment_type=EXTERNAL", "--environment_config=localhost:50000"], []),
    (FLINK + ["--environment_type=LOOPBACK"], []),
    (["--runner=PortableRunner", "--environment_options=docker_container_image=mine:2"], []),
])
def test_remote_workers_get_the_component_image_unless_an_environment_is_named(args, expected_extra):
    assert with_worker_image(args, IMAGE) == args + expected_extra


def test_no_image_leaves_the_arguments_alone():
    assert with_worker_image(FLINK, None) == FLINK


def _artifact(tmp_path: Path, name: str) -> SimpleNamespace:
    path = tmp_path / "gcs" / name
    path.mkdir(parents=True)
    return SimpleNamespace(uri=f"gs://bucket/run/{name}", path=str(path), metadata={})


@pytest.mark.parametrize("runner, remote", [("FlinkRunner", True), ("DirectRunner", False)])
def test_transform_step_hands_beam_uris_and_the_image_for_a_remote_runner(tmp_path, monkeypatch, runner, remote):
    calls = []
    monkeypatch.setattr("components.transform.executor.transform", lambda *a: calls.append(a))
    examples, transformed = _artifact(tmp_path, "examples"), _artifact(tmp_path, "transformed")
    steps.transform_step(config_to_json(load_config("simulator")), examples, transformed, beam_runner=runner,
                         beam_worker_image=IMAGE)
    (_, ingest_dir, out_dir, args), = calls
    if remote:
        assert (ingest_dir, out_dir) == ("gs://bucket/run/examples", "gs://bucket/run/transformed")
        assert f"--environment_config={IMAGE}" in args and f"--sdk_container_image={IMAGE}" in args
    else:
        assert (ingest_dir, out_dir) == (examples.path, transformed.path)
        assert not any(a.startswith(("--environment", "--sdk_container_image")) for a in args)


def test_ingest_step_writes_through_the_uri_for_a_remote_runner(tmp_path, monkeypatch):
    calls = []
    counts = SimpleNamespace(rows_read=1, rejected={}, split=lambda _: {"rows": 1})
    monkeypatch.setattr("components.ingest.executor.ingest", lambda *a: calls.append(a) or counts)
    examples = _artifact(tmp_path, "examples")
    steps.ingest_step(config_to_json(load_config("simulator")), "gs://bucket/raw", "fp", examples,
                      SimpleNamespace(log_metric=lambda *a: None), beam_runner="DataflowRunner",
                      beam_options=["--project=p", "--region=r", "--temp_location=gs://bucket/tmp"],
                      beam_worker_image=IMAGE)
    (_, input_path, out_dir, args), = calls
    assert (input_path, out_dir) == ("gs://bucket/raw", "gs://bucket/run/examples")
    assert args[-1] == f"--sdk_container_image={IMAGE}"


def test_compiled_pipeline_hands_its_image_to_every_beam_step(tmp_path):
    path = compile_pipeline(str(tmp_path / "esmm.yaml"), IMAGE, load_config("simulator"),
                            model_store_pvc="esmm-model-store", work_pvc=None)
    spec = next(yaml.safe_load_all(Path(path).read_text()))
    assert spec["root"]["inputDefinitions"]["parameters"]["beam_worker_image"]["defaultValue"] == IMAGE
    tasks = spec["root"]["dag"]["tasks"]
    for name in ("ingest-step", "transform-step", "evaluate-step"):
        image = tasks[name]["inputs"]["parameters"]["beam_worker_image"]
        assert image == {"componentInputParameter": "beam_worker_image"}
    assert "beam_worker_image" not in tasks["train-step"]["inputs"]["parameters"]
