"""Client and local server over real gRPC on loopback, with OS-chosen ports."""
from __future__ import annotations

import datetime
import shutil
import socket
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


def test_deadline_is_enforced_per_attempt_and_retried() -> None:
    service = FakePredictionService([], delay_s=0.6)
    with fake_server(service) as target:
        with PredictionClient(target, "esmm", timeout_s=0.1,
                              retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.01)) as client:
            start = time.monotonic()
            with pytest.raises(ServingError) as caught:
                client.predict([b""])
            elapsed = time.monotonic() - start
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and caught.value.attempts == 2
    assert service.calls == 2
    assert 0.2 <= elapsed < 0.5


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
    too_big = [b"x" * 1000] * 2_000  # ~2 MB
    with fake_server(FakePredictionService([grpc.StatusCode.RESOURCE_EXHAUSTED])) as target:
        with PredictionClient(target, "esmm", retry=FAST_RETRY, fallback=Fallback(),
                              max_message_bytes=1 << 20) as client:
            with pytest.raises(ServingError, match="RESOURCE_EXHAUSTED: CLIENT: Sent message larger than max"):
                client.predict(too_big)
            assert client.predict([b""]).fallback  # the server's own RESOURCE_EXHAUSTED: an overload
    with fake_server(FakePredictionService([])) as target:  # the server's default limit is 4 MiB
        with PredictionClient(target, "esmm", retry=FAST_RETRY, fallback=Fallback()) as client:
            with pytest.raises(ServingError, match="Received message larger than max"):
                client.predict(too_big * 3)


@pytest.mark.parametrize("timeout_s", [0, -1.0, float("nan"), float("inf")])
def test_a_timeout_must_be_positive_and_finite(timeout_s: float) -> None:
    with pytest.raises(ValueError, match="timeout_s must be a positive, finite number of seconds"):
        PredictionClient("127.0.0.1:1", "esmm", timeout_s=timeout_s)
    with PredictionClient("127.0.0.1:1", "esmm") as client:
        with pytest.raises(ValueError, match="timeout_s must be a positive"):
            client.predict([b""], timeout_s=timeout_s)
