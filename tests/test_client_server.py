"""Client and local server over real gRPC on loopback, with OS-chosen ports."""
from __future__ import annotations

import datetime
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest
import tensorflow as tf
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from esmm_model.config import load_config
from esmm_model.contracts.model_store import servable_versions
from esmm_model.errors import InputError
from esmm_model.schema import OUTPUTS
from pipelines.cli import main
from serving_client.client import Fallback, PredictionClient, RetryPolicy, VersionStatus
from serving_client.errors import ServingError
from serving_client.packing import ExamplePacker
from serving_client.server import ModelServer
from stub_models import save_stub_model

CONFIG = load_config("simulator")
FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.05)
SHARED = {"user_id": "u-1", "age": "3", "hist_categories": (["c1", "c2"], [2.0, 1.0]), "position": 0, "hour": 9.0}


def examples(n: int, seed: int = 0) -> list[bytes]:
    candidates = [{"item_id": f"i-{seed}-{i}", "category": f"c{i % 3}", "price": float(i)} for i in range(n)]
    return ExamplePacker(CONFIG).pack(SHARED, candidates)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "esmm"
    path.mkdir()
    save_stub_model(CONFIG, path, 1)
    (path / "not-a-version").mkdir()  # ignored, as TF Serving ignores non-integer names
    return path


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[ModelServer]:
    with ModelServer(model_dir, "esmm", poll_interval_s=0.1) as running:
        yield running


@pytest.fixture
def client(server: ModelServer) -> Iterator[PredictionClient]:
    with PredictionClient(f"127.0.0.1:{server.port}", "esmm", timeout_s=5.0, retry=FAST_RETRY) as c:
        yield c


def test_round_trip_matches_the_saved_model_in_process(client: PredictionClient, model_dir: Path) -> None:
    batch = examples(20)
    served = client.predict(batch)
    local = tf.saved_model.load(str(model_dir / "1")).signatures["serving_default"](examples=tf.constant(batch))
    assert served.model_version == 1 and not served.fallback
    for name in OUTPUTS:
        np.testing.assert_allclose(getattr(served, name), local[name].numpy(), rtol=1e-6, err_msg=name)
    assert np.ptp(served.ctr) > 0.01  # the candidates really score differently
    assert len(client.predict([])) == 0


def test_with_a_context_the_client_calls_the_rank_signature_and_sends_it_once_per_row(
        client: PredictionClient, server: ModelServer) -> None:
    candidates = [{"item_id": f"i-{i}", "category": f"c{i % 3}", "price": float(i)} for i in range(7)]
    head, parts = ExamplePacker(CONFIG).pack_parts(SHARED, candidates)
    merged = ExamplePacker(CONFIG).pack(SHARED, candidates)
    assert merged == [head + part for part in parts]
    ranked, whole = client.predict(parts, context=head), client.predict(merged)
    for name in OUTPUTS:
        np.testing.assert_allclose(getattr(ranked, name), getattr(whole, name), rtol=1e-6, err_msg=name)
    request = client._predict_request(parts, context=head)
    assert request.model_spec.signature_name == "rank"
    assert list(request.inputs["context"].string_val) == [head] * 7
    assert [d.size for d in request.inputs["context"].tensor_shape.dim] == [7]


def test_inputs_of_unequal_batch_are_refused_as_tf_serving_batching_refuses_them(model_dir: Path) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "esmm", "rank"
    request.inputs["context"].CopyFrom(tf.make_tensor_proto(tf.constant([examples(1)[0]])))
    request.inputs["examples"].CopyFrom(tf.make_tensor_proto(tf.constant(examples(3))))
    with ModelServer(model_dir, "esmm", poll_interval_s=0.1, max_batch_size=512) as batching:
        error = raw_predict(batching, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input tensors must have equal 0th-dimension size" in error.details()


def test_metadata_and_status(client: PredictionClient) -> None:
    metadata = client.model_metadata()
    assert (metadata.name, metadata.version) == ("esmm", 1)
    signature = metadata.signatures["serving_default"]
    assert signature.inputs["examples"].dtype == types_pb2.DT_STRING
    assert sorted(signature.outputs) == ["ctcvr", "ctr", "cvr"]
    assert all(o.dtype == types_pb2.DT_FLOAT for o in signature.outputs.values())
    assert client.model_status() == [VersionStatus(1, "AVAILABLE", "")]


def raw_predict(server: ModelServer, request: predict_pb2.PredictRequest) -> grpc.RpcError:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(grpc.RpcError) as caught:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=5)
    return caught.value


def request_with(examples_tensor: tf.Tensor, input_name: str = "examples",
                 model: str = "esmm") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs[input_name].CopyFrom(tf.make_tensor_proto(examples_tensor))
    return request


@pytest.mark.parametrize("request_, code, message", [
    (request_with(tf.constant([b"x"]), input_name="serialized"), grpc.StatusCode.INVALID_ARGUMENT,
     "input size does not match signature"),
    (request_with(tf.constant([1.0, 2.0])), grpc.StatusCode.INVALID_ARGUMENT, "to be string but DT_FLOAT is provided"),
    (request_with(tf.constant([b"not a tf.Example"])), grpc.StatusCode.INVALID_ARGUMENT, "Could not parse example"),
    (request_with(tf.constant([b"\xff\xfe"])), grpc.StatusCode.INVALID_ARGUMENT,
     "Could not parse example input, value: '\\xff\\xfe'"),
    (request_with(tf.constant([[b"x"]])), grpc.StatusCode.INVALID_ARGUMENT,
     "Expected serialized to be a scalar or vector, got shape: [1,1]"),
    (request_with(tf.constant([b""]), model="other"), grpc.StatusCode.NOT_FOUND,
     "Servable not found for request: Latest(other)"),
])
def test_bad_requests_get_tf_serving_codes(server: ModelServer, request_: predict_pb2.PredictRequest,
                                           code: grpc.StatusCode, message: str) -> None:
    error = raw_predict(server, request_)
    assert error.code() == code
    assert message in error.details()


def test_unknown_version_and_signature(server: ModelServer) -> None:
    target = f"127.0.0.1:{server.port}"
    with PredictionClient(target, "esmm", version=99, retry=FAST_RETRY) as pinned:
        with pytest.raises(ServingError) as caught:
            pinned.predict(examples(2))
    assert caught.value.code == grpc.StatusCode.NOT_FOUND and caught.value.attempts == 1
    assert "Specific(esmm, 99)" in str(caught.value)
    with PredictionClient(target, "esmm", version=1) as pinned:
        assert pinned.predict(examples(2)).model_version == 1
    with PredictionClient(target, "esmm", signature="nope") as wrong:
        with pytest.raises(ServingError, match='FAILED_PRECONDITION: Serving signature key "nope" not found'):
            wrong.predict(examples(2))


class FakePredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Fails with the given codes first, optionally after a delay, then answers with float_val outputs."""

    def __init__(self, failures: list[grpc.StatusCode], delay_s: float = 0.0) -> None:
        self.failures = list(failures)
        self.delay_s = delay_s
        self.calls = 0
        self.metadata: list[dict[str, str]] = []
        self._lock = threading.Lock()

    def Predict(self, request: predict_pb2.PredictRequest,
                context: grpc.ServicerContext) -> predict_pb2.PredictResponse:
        with self._lock:
            self.calls += 1
            self.metadata.append(dict(context.invocation_metadata()))
            failure = self.failures.pop(0) if self.failures else None
        time.sleep(self.delay_s)
        if failure is not None:
            context.abort(failure, "injected failure")
        n = request.inputs["examples"].tensor_shape.dim[0].size
        response = predict_pb2.PredictResponse()
        response.model_spec.version.value = 7
        for i, name in enumerate(OUTPUTS):
            tensor = response.outputs[name]
            tensor.dtype = types_pb2.DT_FLOAT
            tensor.tensor_shape.dim.add().size = n
            tensor.float_val.extend([0.125 * (i + 1)] * n)
        return response


@contextmanager
def fake_server(service: FakePredictionService) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0).wait()


def test_retries_unavailable_then_succeeds_and_sends_metadata() -> None:
    service = FakePredictionService([grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE])
    with fake_server(service) as target:
        with PredictionClient(target, "esmm", retry=FAST_RETRY, metadata=[("x-request-id", "r-1")]) as client:
            result = client.predict([b"", b""])
    assert service.calls == 3
    assert all(m.get("x-request-id") == "r-1" for m in service.metadata)
    np.testing.assert_array_equal(result.ctr, [0.125, 0.125])
    np.testing.assert_array_equal(result.ctcvr, [0.375, 0.375])
    assert result.model_version == 7


def test_does_not_retry_invalid_argument_nor_fall_back_on_it() -> None:
    service = FakePredictionService([grpc.StatusCode.INVALID_ARGUMENT])
    with fake_server(service) as target:
        with PredictionClient(target, "esmm", retry=FAST_RETRY, fallback=Fallback()) as client:
            with pytest.raises(ServingError) as caught:
                client.predict([b""])
    assert service.calls == 1
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and caught.value.attempts == 1


def test_one_deadline_covers_the_whole_call_retries_included() -> None:
    service = FakePredictionService([], delay_s=0.6)
    with fake_server(service) as target:
        with PredictionClient(target, "esmm", timeout_s=0.3,
                              retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.01)) as client:
            start = time.monotonic()
            with pytest.raises(ServingError) as caught:
                client.predict([b""])
            elapsed = time.monotonic() - start
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert service.calls == 1  # no time was left for a second attempt
    assert 0.3 <= elapsed < 0.5
    service = FakePredictionService([grpc.StatusCode.UNAVAILABLE] * 20, delay_s=0.1)
    with fake_server(service) as target:
        with PredictionClient(target, "esmm", timeout_s=0.5,
                              retry=RetryPolicy(max_attempts=20, initial_backoff_s=0.01, max_backoff_s=0.01)) as client:
            start = time.monotonic()
            with pytest.raises(ServingError) as caught:
                client.predict([b""])
            elapsed = time.monotonic() - start
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert service.calls >= 2  # retried, but only while the call's one deadline allowed
    assert 0.5 <= elapsed < 0.8


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_fallback_when_the_server_is_down() -> None:
    target = f"127.0.0.1:{unused_port()}"
    with PredictionClient(target, "esmm", timeout_s=1.0, retry=FAST_RETRY,
                          fallback=Fallback(ctr=0.0, cvr=0.5, ctcvr=0.0)) as client:
        result = client.predict([b"", b"", b""])
    assert result.fallback and result.model_version is None
    np.testing.assert_array_equal(result.cvr, [0.5, 0.5, 0.5])
    np.testing.assert_array_equal(result.ctr, [0.0, 0.0, 0.0])
    with PredictionClient(target, "esmm", timeout_s=1.0, retry=FAST_RETRY) as client:
        with pytest.raises(ServingError) as caught:
            client.predict([b""])
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE and caught.value.attempts == 3


def test_hot_swap_under_a_steady_request_stream(tmp_path: Path) -> None:
    model_dir = tmp_path / "esmm"
    model_dir.mkdir()
    save_stub_model(CONFIG, model_dir, 1)
    batch = examples(10)
    seen: list[list[tuple[int, float]]] = [[], []]
    errors: list[Exception] = []
    done = threading.Event()

    def stream(client: PredictionClient, out: list[tuple[int, float]]) -> None:
        deadline = time.monotonic() + 20
        while not done.is_set() and time.monotonic() < deadline:  # bounded: stops 20 s at the latest
            try:
                result = client.predict(batch)
            except ServingError as exc:
                errors.append(exc)
                return
            out.append((result.model_version, float(result.ctr[0])))

    with ModelServer(model_dir, "esmm", poll_interval_s=0.05) as server:
        with PredictionClient(f"127.0.0.1:{server.port}", "esmm", timeout_s=5.0,
                              retry=RetryPolicy(max_attempts=1)) as client:
            threads = [threading.Thread(target=stream, args=(client, out)) for out in seen]
            for thread in threads:
                thread.start()
            while sum(len(s) for s in seen) < 20 and not errors:
                time.sleep(0.01)
            save_stub_model(CONFIG, model_dir, 2)
            while not errors and sum(v == 2 for s in seen for v, _ in s) < 20:
                time.sleep(0.01)
            done.set()
            for thread in threads:
                thread.join()
            assert server.versions.current.version == 2
            assert client.model_status() == [VersionStatus(2, "AVAILABLE", ""), VersionStatus(1, "END", "")]
    assert not errors
    for out in seen:
        versions = [v for v, _ in out]
        assert versions == sorted(versions) and versions[0] == 1 and versions[-1] == 2  # switched once, never back
        assert {ctr for v, ctr in out if v == 1} != {ctr for v, ctr in out if v == 2}
        assert len({ctr for v, ctr in out if v == 2}) == 1


def test_esmm_predict_ranks_jsonl_and_csv_alike(server: ModelServer, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "shared.json").write_text('{"user_id": "u-1", "hist_categories": [["c1", "c2"], [2.0, 1.0]]}')
    (tmp_path / "c.jsonl").write_text('{"item_id": "a", "price": 1.0, "sim_score": 0.5}\n'
                                      '{"item_id": "b", "price": 30.0, "category": "c1"}\n'
                                      '{"item_id": "c", "position": 3, "hist_items": [["x"], [1.5]], '
                                      '"sim_score": 0.1}\n')
    (tmp_path / "c.csv").write_text("item_id,price,category,position,hist_items,sim_score\n"
                                    "a,1.0,,,,0.5\nb,30.0,c1,,,\nc,,,3,x:1.5,0.1\n")
    target = f"127.0.0.1:{server.port}"
    outputs = []
    for name in ("c.jsonl", "c.csv"):
        assert main(["predict", "--target", target, "--candidates", str(tmp_path / name),
                     "--shared", str(tmp_path / "shared.json")]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    rows = [line.split() for line in outputs[0].splitlines()[1:]]
    assert [r[0] for r in rows] == ["1", "2", "3"]
    scores = [float(r[-1]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    for _, _, _, sim, ctr, cvr, _, score in rows:
        assert float(score) == pytest.approx(float(sim) + float(ctr) + 2 * float(cvr), abs=2e-4)


def test_esmm_predict_errors_name_the_candidate_and_field(server: ModelServer, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.jsonl").write_text('{"item_id": "a"}\n{"item_id": 7}\n')
    assert main(["predict", "--target", f"127.0.0.1:{server.port}", "--candidates", str(tmp_path / "bad.jsonl")]) == 2
    assert "candidate 1: feature 'item_id': expected str or bytes, got int 7" in capsys.readouterr().err
    (tmp_path / "ok.jsonl").write_text('{"item_id": "a"}\n')
    assert main(["predict", "--target", f"127.0.0.1:{unused_port()}", "--timeout", "0.5", "--fallback",
                 "--candidates", str(tmp_path / "ok.jsonl")]) == 0
    assert "fallback scores 0.0" in capsys.readouterr().out


def wait_until(condition, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def test_a_version_that_failed_to_load_is_retried(tmp_path: Path) -> None:
    model_dir = tmp_path / "esmm"
    model_dir.mkdir()
    save_stub_model(CONFIG, model_dir, 1)
    (tmp_path / "elsewhere").mkdir()
    complete = save_stub_model(CONFIG, tmp_path / "elsewhere", 2)
    with ModelServer(model_dir, "esmm", poll_interval_s=0.05, load_retry_interval_s=0.2) as server:
        # A copy that is not atomic: saved_model.pb lands first, truncated, and the rest later.
        (model_dir / "2").mkdir()
        (model_dir / "2" / "saved_model.pb").write_bytes((complete / "saved_model.pb").read_bytes()[:100])
        assert wait_until(lambda: 2 in server.versions._failed)
        assert server.versions.current.version == 1
        shutil.copytree(complete, model_dir / "2", dirs_exist_ok=True)
        assert wait_until(lambda: server.versions.current.version == 2, seconds=30)
        with PredictionClient(f"127.0.0.1:{server.port}", "esmm", timeout_s=5.0) as client:
            assert client.predict(examples(2)).model_version == 2


def test_a_version_that_keeps_failing_is_given_up_after_the_retries(tmp_path: Path) -> None:
    model_dir = tmp_path / "esmm"
    model_dir.mkdir()
    save_stub_model(CONFIG, model_dir, 1)
    (model_dir / "2").mkdir()
    (model_dir / "2" / "saved_model.pb").write_bytes(b"not a SavedModel")
    with ModelServer(model_dir, "esmm", poll_interval_s=0.02, max_load_retries=2, load_retry_interval_s=0.05) as server:
        assert wait_until(lambda: (server.versions._failed.get(2) is not None
                                   and server.versions._failed[2].attempts == 3))
        time.sleep(0.3)
        assert server.versions._failed[2].attempts == 3  # 1 try + 2 retries, then no more
        assert wait_until(lambda: server.versions.current is not None and server.versions.current.version == 1)


def test_directories_with_non_ascii_digit_names_are_ignored(tmp_path: Path) -> None:
    model_dir = tmp_path / "esmm"
    model_dir.mkdir()
    save_stub_model(CONFIG, model_dir, 1)
    for name in ("²", "٣"):  # str.isdigit() is True for both, int() fails on the first
        (model_dir / name).mkdir()
        (model_dir / name / "saved_model.pb").write_bytes(b"")
    assert servable_versions(model_dir) == [1]
    with ModelServer(model_dir, "esmm", poll_interval_s=0.05) as server:
        save_stub_model(CONFIG, model_dir, 3)
        assert wait_until(lambda: server.versions.current.version == 3)


def self_signed_certificate() -> tuple[bytes, bytes]:
    """A throwaway key and certificate for localhost (PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
            cert.public_bytes(serialization.Encoding.PEM))


def test_an_untrusted_tls_certificate_raises_instead_of_falling_back() -> None:
    key, cert = self_signed_certificate()
    _, other = self_signed_certificate()
    service = FakePredictionService([])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, server)
    port = server.add_secure_port("localhost:0", grpc.ssl_server_credentials([(key, cert)]))
    server.start()
    try:
        with PredictionClient(f"localhost:{port}", "esmm", timeout_s=2.0, retry=FAST_RETRY, fallback=Fallback(),
                              credentials=grpc.ssl_channel_credentials(other)) as untrusting:
            with pytest.raises(ServingError) as caught:
                untrusting.predict([b""])
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE and caught.value.attempts == 1  # not retried
        assert "CERTIFICATE_VERIFY_FAILED" in caught.value.details
        with PredictionClient(f"localhost:{port}", "esmm", timeout_s=2.0, fallback=Fallback(),
                              credentials=grpc.ssl_channel_credentials(cert)) as trusting:
            assert not trusting.predict([b""]).fallback
    finally:
        server.stop(0).wait()


def test_an_oversized_request_raises_but_an_overloaded_server_falls_back() -> None:
    too_big = [b"x" * 4000] * 500  # ~2 MB in one request of fewer than 512 examples
    with fake_server(FakePredictionService([grpc.StatusCode.RESOURCE_EXHAUSTED])) as target:
        # A whole-call deadline far above the machine's load: an outage by deadline would fall back instead.
        with PredictionClient(target, "esmm", retry=FAST_RETRY, fallback=Fallback(), timeout_s=30.0,
                              max_message_bytes=1 << 20) as client:
            with pytest.raises(ServingError, match="RESOURCE_EXHAUSTED: CLIENT: Sent message larger than max"):
                client.predict(too_big)
            assert client.predict([b""]).fallback  # the server's own RESOURCE_EXHAUSTED: an overload
    with fake_server(FakePredictionService([])) as target:  # the server's default limit is 4 MiB
        with PredictionClient(target, "esmm", retry=FAST_RETRY, fallback=Fallback(), timeout_s=30.0) as client:
            with pytest.raises(ServingError, match="Received message larger than max"):
                client.predict([b"x" * 10_000] * 500)  # ~5 MB


@pytest.mark.parametrize("timeout_s", [0, -1.0, float("nan"), float("inf")])
def test_a_timeout_must_be_positive_and_finite(timeout_s: float) -> None:
    with pytest.raises(ValueError, match="timeout_s must be a positive, finite number of seconds"):
        PredictionClient("127.0.0.1:1", "esmm", timeout_s=timeout_s)
    with PredictionClient("127.0.0.1:1", "esmm") as client:
        with pytest.raises(ValueError, match="timeout_s must be a positive"):
            client.predict([b""], timeout_s=timeout_s)


class EchoPredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Scores example b"<i>" as ctr i, records each request's size and pinned version, and answers with
    ``versions`` in turn (the last one once they run out), as a server mid-swap would."""

    def __init__(self, versions: tuple[int, ...] = (1,), delay_s: float = 0.0) -> None:
        self.versions = list(versions)
        self.delay_s = delay_s
        self.requests: list[tuple[int, int | None]] = []
        self._lock = threading.Lock()

    def Predict(self, request: predict_pb2.PredictRequest,
                context: grpc.ServicerContext) -> predict_pb2.PredictResponse:
        values = [float(v) for v in request.inputs["examples"].string_val]
        pinned = request.model_spec.version.value if request.model_spec.HasField("version") else None
        with self._lock:
            self.requests.append((len(values), pinned))
            version = pinned or (self.versions.pop(0) if len(self.versions) > 1 else self.versions[0])
        time.sleep(self.delay_s)
        response = predict_pb2.PredictResponse()
        response.model_spec.version.value = version
        for name in OUTPUTS:
            response.outputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(values, np.float32)))
        return response


def numbered(n: int) -> list[bytes]:
    return [str(i).encode() for i in range(n)]


def test_long_candidate_lists_go_in_chunks_under_one_deadline_and_merge_in_order() -> None:
    service = EchoPredictionService(delay_s=0.3)
    with fake_server(service) as target:
        with PredictionClient(target, "esmm", timeout_s=0.8, retry=FAST_RETRY) as client:
            start = time.monotonic()
            result = client.predict(numbered(1500))
            elapsed = time.monotonic() - start
    assert sorted(size for size, _ in service.requests) == [476, 512, 512]
    np.testing.assert_array_equal(result.ctr, np.arange(1500, dtype=np.float32))
    assert result.model_version == 1 and len(result) == 1500
    assert elapsed < 0.8  # three chunks of 0.3 s each fit one 0.8 s deadline: they are sent concurrently
    with pytest.raises(ValueError, match="max_batch_size must be a positive number of examples, got 0"):
        PredictionClient(target, "esmm", max_batch_size=0)


def test_chunks_split_by_a_version_swap_are_asked_again_of_the_newest_version() -> None:
    service = EchoPredictionService(versions=(1, 2))
    with fake_server(service) as target:
        with PredictionClient(target, "esmm", timeout_s=5.0, retry=FAST_RETRY, max_batch_size=4) as client:
            result = client.predict(numbered(8))
    assert result.model_version == 2
    np.testing.assert_array_equal(result.ctr, np.arange(8, dtype=np.float32))
    assert sorted(service.requests[:2], key=str) == [(4, None), (4, None)]
    assert service.requests[2:] == [(4, 2)]  # the chunk version 1 scored, pinned to version 2


def test_esmm_predict_scores_1500_candidates_on_an_esmm_serve_limited_to_512(server: ModelServer, tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    error = raw_predict(server, request_with(tf.constant(examples(1500))))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Task size 1500 is larger than maximum input batch size 512"
    lines = [f'{{"item_id": "i{i}", "price": {i % 97}.0, "sim_score": {i / 3000}}}' for i in range(1500)]
    (tmp_path / "many.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["predict", "--target", f"127.0.0.1:{server.port}", "--candidates", str(tmp_path / "many.jsonl")]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert len(rows) == 1500 and sorted(int(r[1]) for r in rows) == list(range(1, 1501))
    scores = [float(r[-1]) for r in rows]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) > 100


def shaped_request(dims: list[int], values: list[bytes]) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "esmm"
    tensor = request.inputs["examples"]
    tensor.dtype = types_pb2.DT_STRING
    for size in dims:
        tensor.tensor_shape.dim.add().size = size
    tensor.string_val.extend(values)
    return request


@pytest.mark.parametrize("dims, n_values, message", [
    ([2_000_000], 1, "Task size 2000000 is larger than maximum input batch size 512"),
    ([-1], 10, "input 'examples' has a negative dimension in shape [-1]"),
    ([300], 1, "input 'examples' has shape [300] (300 elements) but carries 1 values"),
    ([2], 3, "input 'examples' has shape [2] (2 elements) but carries 3 values"),
])
def test_a_shape_that_disagrees_with_its_values_is_refused_before_any_work(server: ModelServer, dims: list[int],
                                                                           n_values: int, message: str) -> None:
    start = time.monotonic()
    error = raw_predict(server, shaped_request(dims, examples(1)[:1] * n_values))
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    assert time.monotonic() - start < 2.0  # refused, not filled and scored


def test_the_shipped_batching_config_splits_large_batches_at_the_limit_client_and_server_share() -> None:
    from serving_client import client as client_module
    from serving_client import server as server_module

    text = (Path(__file__).resolve().parents[1] / "k8s" / "base" / "serving" / "batching.config").read_text()
    fields = dict(re.findall(r"^(\w+) \{ value: (\w+) \}$", text, re.MULTILINE))
    assert fields["enable_large_batch_splitting"] == "true"
    # TF Serving refuses max_execution_batch_size > max_batch_size when splitting is on
    assert 0 < int(fields["max_execution_batch_size"]) <= int(fields["max_batch_size"])
    assert int(fields["max_batch_size"]) == client_module.MAX_BATCH_SIZE == server_module.MAX_BATCH_SIZE == 512


@contextmanager
def tls_server(service: prediction_service_pb2_grpc.PredictionServiceServicer) -> Iterator[tuple[int, bytes]]:
    key, cert = self_signed_certificate()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, server)
    port = server.add_secure_port("localhost:0", grpc.ssl_server_credentials([(key, cert)]))
    server.start()
    try:
        yield port, cert
    finally:
        server.stop(0).wait()


def test_a_hostname_the_certificate_does_not_name_raises_at_once() -> None:
    service = FakePredictionService([])
    with tls_server(service) as (port, cert):
        with PredictionClient(f"127.0.0.1:{port}", "esmm", timeout_s=2.0, retry=FAST_RETRY, fallback=Fallback(),
                              credentials=grpc.ssl_channel_credentials(cert)) as wrong_name:  # cert names localhost
            with pytest.raises(ServingError) as caught:
                wrong_name.predict([b""])
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE and caught.value.attempts == 1  # no retry, no fallback
    assert "Hostname Verification Check failed" in caught.value.details
    assert service.calls == 0


def test_a_plaintext_client_against_a_tls_server_raises_at_once() -> None:
    service = FakePredictionService([])
    with tls_server(service) as (port, _):
        with PredictionClient(f"localhost:{port}", "esmm", timeout_s=2.0, retry=FAST_RETRY,
                              fallback=Fallback()) as plaintext:
            start = time.monotonic()
            with pytest.raises(ServingError) as caught:
                plaintext.predict([b""])
            elapsed = time.monotonic() - start
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE and caught.value.attempts == 1
    assert f"the server at localhost:{port} speaks TLS but this client's channel is plaintext" in caught.value.details
    assert elapsed < 1.5
    # the same words from a plaintext server going away are still an outage: retried, then the fallback
    with PredictionClient(f"127.0.0.1:{unused_port()}", "esmm", timeout_s=1.0, retry=FAST_RETRY,
                          fallback=Fallback()) as client:
        assert client.predict([b""]).fallback


def test_a_request_past_its_deadline_before_the_model_runs_is_dropped(model_dir: Path, monkeypatch, caplog) -> None:
    with ModelServer(model_dir, "esmm", poll_interval_s=60) as server:
        loaded = server.versions.current
        real_model, real_make_ndarray, runs = loaded.signatures["serving_default"], tf.make_ndarray, []
        loaded.signatures["serving_default"] = lambda **inputs: (runs.append(1), real_model(**inputs))[1]
        # Inputs take 4 s to build, past the request's 2 s deadline; 2 s is long enough for the request to reach
        # the servicer on a loaded machine (with 0.2 s, gRPC sometimes dropped it while queued, before our check).
        monkeypatch.setattr(tf, "make_ndarray", lambda tensor: (time.sleep(4.0), real_make_ndarray(tensor))[1])
        with PredictionClient(f"127.0.0.1:{server.port}", "esmm", timeout_s=2.0, retry=RetryPolicy(max_attempts=1),
                              max_batch_size=512) as hurried:
            with pytest.raises(ServingError) as caught:
                hurried.predict(examples(2))
        assert wait_until(lambda: "dropped a Predict request unrun" in caplog.text, seconds=20)
        assert runs == []
        monkeypatch.setattr(tf, "make_ndarray", real_make_ndarray)
        with PredictionClient(f"127.0.0.1:{server.port}", "esmm", timeout_s=5.0) as patient:
            assert patient.predict(examples(2)).model_version == 1
        assert runs == [1]
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_the_port_is_exclusive(server: ModelServer, model_dir: Path) -> None:
    second = ModelServer(model_dir, "esmm", port=server.port)
    try:
        with pytest.raises(InputError, match=rf"cannot bind 127.0.0.1:{server.port}: the port is in use"):
            second.start()
    finally:
        second.stop(0)
    # the command line says it in one line and exits, instead of sharing the port and serving forever
    done = serve_command(["--serving-base", str(model_dir.parent), "--port", str(server.port)], timeout_s=120)
    assert done.returncode == 2
    assert [line for line in done.stderr.splitlines() if line.startswith("esmm serve")] == [
        f"esmm serve: error: cannot bind 127.0.0.1:{server.port}: the port is in use (another esmm serve or "
        f"TF Serving?) or the address is not this machine's; choose another --port or --host"]


@pytest.mark.parametrize("setting, message", [
    ({"port": 99999}, "port must be 1-65535 (or 0 for any free port), got 99999"),
    ({"port": -1}, "port must be 1-65535 (or 0 for any free port), got -1"),
    ({"poll_interval_s": 0.0}, "poll interval must be a positive number of seconds, got 0.0"),
    ({"poll_interval_s": float("nan")}, "poll interval must be a positive number of seconds, got nan"),
    ({"load_retry_interval_s": -1.0}, "load retry interval must be a positive number of seconds, got -1.0"),
    ({"max_workers": 0}, "workers must be an integer of at least 1, got 0"),
    ({"max_batch_size": 0}, "max batch size must be an integer of at least 1, got 0"),
])
def test_server_settings_are_validated_in_one_line(model_dir: Path, setting: dict, message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        ModelServer(model_dir, "esmm", **setting)


def test_esmm_serve_names_a_bad_setting_in_one_line(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--serving-base", str(model_dir.parent), "--workers", "0"]) == 2
    assert capsys.readouterr().err == "esmm serve: error: workers must be an integer of at least 1, got 0\n"


def serve_command(flags: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    """``esmm serve`` in its own process, with this checkout's code."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "serve", *flags], capture_output=True, text=True,
                          env=env, timeout=timeout_s)


def test_esmm_serve_logs_loads_and_drains_and_exits_on_sigterm(model_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", "--serving-base",
                                str(model_dir.parent), "--port", "0", "--poll-interval", "0.1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline()
        port = int(re.search(r"on 127\.0\.0\.1:(\d+)", line)[1])
        with PredictionClient(f"127.0.0.1:{port}", "esmm", timeout_s=10.0) as client:
            assert client.predict(examples(3)).model_version == 1
        process.send_signal(signal.SIGTERM)
        start = time.monotonic()
        assert process.wait(timeout=10) == 0
        assert time.monotonic() - start < 5
    finally:
        process.kill()
    err = process.stderr.read()
    assert re.search(r"INFO loaded esmm version 1 from .*/esmm/1 \(0 warmup requests replayed\)", err)
    assert "INFO esmm now serves versions [1] (was none)" in err
    assert "INFO stopping: refusing new requests, draining in-flight ones" in err
