"""TF Serving's warmup file (written by the pusher, replayed by the local server) and version labels
from a model config."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import grpc
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import prediction_log_pb2

from components.evaluate.gate import bless
from components.push import executor as push_module
from components.push.executor import push
from esmm_model.config import EvaluationConfig, load_config
from esmm_model.contracts.fingerprint import model_fingerprint
from esmm_model.contracts.model_config import VersionPolicy, parse_model_config, read_model_config
from esmm_model.contracts.warmup import (
    WARMUP_FILE,
    read_examples,
    read_warmup_requests,
    warmup_file,
    warmup_requests,
    write_examples,
    write_warmup_file,
)
from esmm_model.errors import InputError
from serving_client.client import PredictionClient, RetryPolicy, VersionStatus
from serving_client.errors import ServingError
from serving_client.packing import ExamplePacker
from serving_client.server import ModelServer, ModelVersions, load_version
from stub_models import MODELS_CONFIG, save_stub_model

CONFIG = load_config("simulator")
NO_RETRY = RetryPolicy(max_attempts=1)


def examples(n: int) -> list[bytes]:
    shared = {"user_id": "u-1", "age": "3", "hour": 9.0}
    return ExamplePacker(CONFIG).pack(shared, [{"item_id": f"i-{i}", "price": float(i)} for i in range(n)])


def read_logs(path: str) -> list[prediction_log_pb2.PredictionLog]:
    return [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]


def test_the_pusher_writes_warmup_requests_into_the_version_before_it_appears(tmp_path, monkeypatch):
    model = tmp_path / "export"
    save_stub_model(CONFIG, tmp_path / "stub", 1)
    shutil.copytree(tmp_path / "stub" / "1", model)
    seen_at_promote = []
    promote = push_module._promote
    monkeypatch.setattr(push_module, "_promote",
                        lambda tmp, final: (seen_at_promote.append(tf.io.gfile.exists(warmup_file(tmp))),
                                            promote(tmp, final)))
    batch = examples(20)
    blessing = bless({}, None, EvaluationConfig(thresholds=()), model_fingerprint=model_fingerprint(str(model)))
    result = push(str(model), blessing, str(tmp_path / "serving"), "esmm", 5, warmup_examples=batch)
    assert result.pushed and seen_at_promote == [True]
    logs = read_logs(f"{result.path}/assets.extra/{WARMUP_FILE}")
    requests = [log.predict_log.request for log in logs]
    sizes = [(r.model_spec.signature_name, r.inputs["examples"].tensor_shape.dim[0].size) for r in requests]
    # The configured batch sizes, capped at the 20 examples given, for both signatures the model has.
    assert sizes == [(name, n) for n in (1, 16, 20) for name in ("serving_default", "rank")]
    assert {r.model_spec.name for r in requests} == {"esmm"}
    assert all(r.inputs["examples"].dtype == types_pb2.DT_STRING for r in requests)
    assert list(requests[2].inputs["examples"].string_val) == batch[1:17]  # consecutive examples, not one repeated
    assert list(requests[3].inputs["context"].string_val) == [batch[1]] * 16  # one ranking request: one context


def test_the_local_server_replays_the_warmup_file_before_the_version_serves(tmp_path):
    model_dir = tmp_path / "esmm"
    save_stub_model(CONFIG, model_dir, 1)
    write_warmup_file(str(model_dir / "1"), warmup_requests(examples(30), "esmm"))
    with ModelServer(model_dir, "esmm") as server:
        assert server.versions.current.warmup_requests == 3
        with PredictionClient(f"127.0.0.1:{server.port}", "esmm", timeout_s=5.0, retry=NO_RETRY) as client:
            assert client.predict(examples(2)).model_version == 1


def test_a_failing_warmup_request_fails_the_load_and_the_served_version_stays(tmp_path):
    model_dir = tmp_path / "esmm"
    save_stub_model(CONFIG, model_dir, 1)
    with ModelServer(model_dir, "esmm", poll_interval_s=60) as server:
        save_stub_model(CONFIG, model_dir, 2)
        bad = warmup_requests(examples(2), "esmm")
        bad[0].predict_log.request.inputs["inputs"].CopyFrom(bad[0].predict_log.request.inputs.pop("examples"))
        write_warmup_file(str(model_dir / "2"), bad)
        assert not server.versions.refresh()
        assert server.versions.current.version == 1
        with PredictionClient(f"127.0.0.1:{server.port}", "esmm", timeout_s=5.0, retry=NO_RETRY) as client:
            assert client.model_status() == [VersionStatus(2, "END", ""), VersionStatus(1, "AVAILABLE", "")]
    with pytest.raises(InputError, match=r"tf_serving_warmup_requests: warmup request 0 failed: INVALID_ARGUMENT"):
        load_version(model_dir, 2)


def test_warmup_file_with_another_request_kind_is_refused(tmp_path):
    log = prediction_log_pb2.PredictionLog()
    log.classify_log.request.model_spec.name = "esmm"
    write_warmup_file(str(tmp_path), [log])
    with pytest.raises(InputError, match="record 0 is a classify_log; only predict_log"):
        read_warmup_requests(str(tmp_path))
    assert read_warmup_requests(str(tmp_path / "elsewhere")) == []


def test_version_policies_select_as_tf_serving_does():
    assert VersionPolicy().select([1, 2, 5]) == [5]
    assert VersionPolicy("latest", num_versions=2).select([1, 2, 5]) == [2, 5]
    assert VersionPolicy("all").select([1, 2, 5]) == [1, 2, 5]
    assert VersionPolicy("specific", versions=(2, 7)).select([1, 2, 5]) == [2]


def test_model_config_parses_policy_and_labels_and_names_mistakes(tmp_path):
    (entry,) = parse_model_config(MODELS_CONFIG % "/models/esmm", "models.config")
    assert (entry.name, entry.base_path, entry.policy, dict(entry.labels)) == (
        "esmm", "/models/esmm", VersionPolicy("specific", versions=(1, 2)), {"stable": 1, "canary": 2})
    with pytest.raises(InputError, match=r"model config 'x.config' is not a ModelServerConfig text proto"):
        parse_model_config("model_config_list { config { nme: 'esmm' } }", "x.config")
    path = tmp_path / "models.config"
    path.write_text(MODELS_CONFIG % "/models/esmm")
    with pytest.raises(InputError, match=r"has no model named 'ranker' \(it names esmm\)"):
        read_model_config(str(path), "ranker")


def test_labels_route_requests_and_a_label_move_applies_on_the_next_poll(tmp_path):
    model_dir = tmp_path / "esmm"
    for version in (1, 2, 3):
        save_stub_model(CONFIG, model_dir, version)
    config_file = tmp_path / "models.config"
    config_file.write_text(MODELS_CONFIG % model_dir)
    with ModelServer(None, "esmm", model_config_file=str(config_file), poll_interval_s=60) as server:
        target = f"127.0.0.1:{server.port}"
        assert sorted(server.versions.served) == [1, 2]  # the specific policy: version 3 is on disk, not served

        def version_for(**pin) -> int:
            with PredictionClient(target, "esmm", timeout_s=5.0, retry=NO_RETRY, **pin) as client:
                return client.predict(examples(3)).model_version

        assert (version_for(version_label="stable"), version_for(version_label="canary"), version_for()) == (1, 2, 2)
        with pytest.raises(ServingError) as caught:
            version_for(version_label="beta")
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details == "Unrecognized servable version label: beta"

        # promote: stable moves to 2 and version 1 is retired, by editing the file alone
        config_file.write_text((MODELS_CONFIG % model_dir).replace("versions: 1 versions: 2", "versions: 2")
                               .replace('key: "stable" value: 1', 'key: "stable" value: 2'))
        assert server.versions.refresh()
        assert (version_for(version_label="stable"), version_for(version_label="canary")) == (2, 2)
        with pytest.raises(ServingError) as caught:
            version_for(version=1)
        assert caught.value.code == grpc.StatusCode.NOT_FOUND
        with PredictionClient(target, "esmm", timeout_s=5.0, retry=NO_RETRY, version_label="stable") as client:
            assert client.model_status() == [VersionStatus(2, "AVAILABLE", "")]


def test_a_label_on_an_unloaded_version_is_not_found(tmp_path):
    model_dir = tmp_path / "esmm"
    save_stub_model(CONFIG, model_dir, 1)
    config_file = tmp_path / "models.config"
    config_file.write_text(MODELS_CONFIG % model_dir)  # canary names version 2, not pushed yet
    versions = ModelVersions.from_config_file(str(config_file), "esmm")
    assert versions.refresh() and sorted(versions.served) == [1]
    with ModelServer(None, "esmm", model_config_file=str(config_file)) as server:
        with PredictionClient(f"127.0.0.1:{server.port}", "esmm", timeout_s=5.0, retry=NO_RETRY,
                              version_label="canary") as client:
            with pytest.raises(ServingError) as caught:
                client.predict(examples(1))
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.details == "Servable not found for request: Specific(esmm, 2)"


def test_the_client_refuses_a_version_and_a_label_together():
    with pytest.raises(ValueError, match="pin version 3 or version label 'canary', not both"):
        PredictionClient("127.0.0.1:1", "esmm", version=3, version_label="canary")


def test_esmm_serve_takes_either_a_serving_base_or_a_model_config_file():
    with pytest.raises(InputError, match="either a model base path or a model config file"):
        ModelServer(Path("/x"), "esmm", model_config_file="models.config")


def test_the_warmup_artifact_holds_examples_that_read_back_in_order(tmp_path):
    examples = [f"example-{i}".encode() for i in range(300)]
    path = str(tmp_path / "warmup")
    assert write_examples(path, examples) == 300
    assert read_examples(path, 256) == examples[:256]  # what the push step takes for its requests


def test_versions_whose_directories_vanish_are_unloaded_as_tf_serving_does(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="serving_client.server")
    model_dir = tmp_path / "esmm"
    for version in (1, 2, 3):
        save_stub_model(CONFIG, model_dir, version)
    config_file = tmp_path / "models.config"
    config_file.write_text(MODELS_CONFIG % model_dir)  # specific 1 and 2, labelled stable and canary
    with ModelServer(None, "esmm", model_config_file=str(config_file), poll_interval_s=60) as server:
        target = f"127.0.0.1:{server.port}"
        shutil.rmtree(model_dir / "2")
        assert server.versions.refresh() and sorted(server.versions.served) == [1]
        shutil.rmtree(model_dir / "1")  # what retention did to labelled versions before it read the model config
        assert server.versions.refresh() and server.versions.served == {}
        with PredictionClient(target, "esmm", timeout_s=5.0, retry=NO_RETRY, version_label="stable") as client:
            with pytest.raises(ServingError) as caught:
                client.predict(examples(1))
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.details == "Servable not found for request: Specific(esmm, 1)"
    assert "unloaded esmm version 2: its directory is gone" in caplog.text
    assert "esmm now serves versions none (was [1])" in caplog.text
