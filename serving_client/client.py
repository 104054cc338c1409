"""A gRPC client for TensorFlow Serving's PredictionService and ModelService.

It speaks the plain TF Serving API (``tensorflow_serving.apis``), so it works the same
against the real ``tensorflow/serving`` server and against ``serving_client.server``.
One channel per client, shared by all threads; every call has one deadline, retries
included; UNAVAILABLE and DEADLINE_EXCEEDED are retried with capped exponential backoff and
full jitter. A candidate list longer than the server's batch limit (TF Serving's
``max_batch_size``) is sent as concurrent chunks and merged in order, all scored by one
version. The optional fallback stands in for an outage only: a request over the message size
limit and a TLS failure (an untrusted certificate, a hostname the certificate does not name,
TLS against plaintext or plaintext against TLS) are the caller's mistake or misconfiguration,
so they raise at once, unretried, whatever their status code.
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from esmm_model.contracts.predict_request import predict_request
from esmm_model.schema import OUTPUTS, RANK_SIGNATURE, SERVING_SIGNATURE
from serving_client.errors import ServingError
from serving_client.tls_probe import speaks_tls

log = logging.getLogger(__name__)

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
SERVING_DOWN = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                          grpc.StatusCode.RESOURCE_EXHAUSTED})
_Response = TypeVar("_Response")
# TF Serving's shipped batching config refuses requests of more examples (k8s/base/serving/batching.config).
MAX_BATCH_SIZE = 512
# Markers in a gRPC status's details of failures that no retry or fallback can fix: a failed TLS handshake,
# an untrusted certificate, a hostname the certificate does not name (two wordings across gRPC versions).
_HANDSHAKE_FAILED = ("handshake failed", "certificate_verify_failed", "ssl_error", "verification check failed",
                     "is not in peer certificate")
_MESSAGE_TOO_LARGE = "larger than max"
# What a plaintext channel reports when the server closed the connection: an outage, or a TLS server.
_CLOSED = ("socket closed", "connection reset")


# gRPC's service config choosing round_robin: a call goes to the next of all resolved addresses, not to the
# first one that connected (pick_first, the default).
ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
_BALANCING_KEYS = ("grpc.service_config", "grpc.lb_policy_name")
# Target schemes whose resolver can yield several addresses: dns (a headless Service's pods), ipv4/ipv6 lists.
_MULTI_ADDRESS_SCHEMES = ("dns:", "ipv4:", "ipv6:")


def balancing_options(target: str, channel_options: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    """Channel options spreading calls over every address ``target`` resolves to: round_robin for a
    ``dns:///`` (or ``ipv4:``/``ipv6:`` list) target, e.g. ``dns:///esmm-serving-grpc.<ns>.svc.cluster.local:8500``
    on the headless Service; none for a plain ``host:port`` or when ``channel_options`` already choose a policy."""
    if not target.startswith(_MULTI_ADDRESS_SCHEMES) or any(key in _BALANCING_KEYS for key, _ in channel_options):
        return []
    return [("grpc.service_config", ROUND_ROBIN)]


def is_outage(code: grpc.StatusCode, details: str) -> bool:
    """False for a failed TLS handshake or certificate check and an oversized message, which carry outage codes
    (UNAVAILABLE, RESOURCE_EXHAUSTED) but are misconfiguration or a caller's mistake."""
    text = details.lower()
    if code == grpc.StatusCode.UNAVAILABLE and any(marker in text for marker in _HANDSHAKE_FAILED):
        return False
    return not (code == grpc.StatusCode.RESOURCE_EXHAUSTED and _MESSAGE_TOO_LARGE in text)


def _check_timeout(timeout_s: float) -> float:
    if (isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float))
            or not (math.isfinite(timeout_s) and timeout_s > 0)):
        raise ValueError(f"timeout_s must be a positive, finite number of seconds, got {timeout_s!r}")
    return float(timeout_s)


@dataclass(frozen=True)
class RetryPolicy:
    """Up to ``max_attempts`` tries; before try k+1 sleep uniform(0, min(max_backoff, initial * multiplier**(k-1)))."""

    max_attempts: int = 3
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")

    def backoff_s(self, attempt: int) -> float:
        """The jittered sleep after failed attempt number ``attempt`` (1-based)."""
        return random.uniform(0.0, min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1)))


@dataclass(frozen=True)
class Fallback:
    """Constant scores returned instead of raising when serving is down (the seed uses 0.0)."""

    ctr: float = 0.0
    cvr: float = 0.0
    ctcvr: float = 0.0
    codes: frozenset[grpc.StatusCode] = SERVING_DOWN


@dataclass(frozen=True)
class Predictions:
    """Scores for n candidates, in request order; ``model_version`` is None for a fallback."""

    ctr: np.ndarray
    cvr: np.ndarray
    ctcvr: np.ndarray
    model_version: int | None
    fallback: bool = False

    def __len__(self) -> int:
        return len(self.ctr)


@dataclass(frozen=True)
class ModelMetadata:
    """GetModelMetadata's answer: the served version and its signatures."""

    name: str
    version: int
    signatures: dict[str, meta_graph_pb2.SignatureDef] = field(repr=False)


@dataclass(frozen=True)
class VersionStatus:
    """One entry of GetModelStatus: a version, its state name (e.g. AVAILABLE) and any error message."""

    version: int
    state: str
    error: str


class PredictionClient:
    """Scores serialized tf.Examples on TF Serving; thread-safe, one channel reused for every call.

    ``version=None`` asks for the latest version; ``version_label`` (e.g. ``stable`` or
    ``canary``) asks for the version that label names in the server's model config, so a
    rollout moves a label on the server, not the clients. ``timeout_s`` is the deadline of the
    whole call: every chunk, retry and backoff fits in it. ``max_batch_size`` is the most
    examples per request (TF Serving's ``max_batch_size``); longer lists go as concurrent chunks.
    ``credentials`` (e.g. ``grpc.ssl_channel_credentials()``) switch to TLS; ``metadata`` is
    sent with every call; ``keepalive_s`` pings an idle-looking connection so that load
    balancers and NAT do not drop it silently (the server must permit that ping rate). A
    ``dns:///`` target gets the round_robin policy (``balancing_options``), so calls spread over
    every pod of a headless Service.
    """

    def __init__(self, target: str, model_name: str, signature: str = SERVING_SIGNATURE, *,
                 rank_signature: str = RANK_SIGNATURE,
                 version: int | None = None, version_label: str | None = None, timeout_s: float = 0.5,
                 retry: RetryPolicy = RetryPolicy(),
                 fallback: Fallback | None = None, credentials: grpc.ChannelCredentials | None = None,
                 metadata: Sequence[tuple[str, str]] = (), keepalive_s: float | None = None,
                 max_message_bytes: int = 64 << 20, channel_options: Sequence[tuple[str, Any]] = (),
                 max_batch_size: int = MAX_BATCH_SIZE) -> None:
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be a positive number of examples, got {max_batch_size!r}")
        self.max_batch_size = max_batch_size
        self.target = target
        self.model_name = model_name
        self.signature = signature
        self.rank_signature = rank_signature
        if version is not None and version_label is not None:
            raise ValueError(f"pin version {version} or version label {version_label!r}, not both")
        self.version = version
        self.version_label = version_label
        self.timeout_s = _check_timeout(timeout_s)
        self.retry = retry
        self.fallback = fallback
        self.metadata = tuple(metadata)
        self._plaintext = credentials is None
        options = [("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_receive_message_length", max_message_bytes)]
        if keepalive_s is not None:
            options += [("grpc.keepalive_time_ms", int(keepalive_s * 1000)), ("grpc.keepalive_timeout_ms", 10_000)]
        options += balancing_options(target, channel_options) + list(channel_options)
        self._channel = (grpc.secure_channel(target, credentials, options) if credentials is not None
                         else grpc.insecure_channel(target, options))
        self._prediction = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def __enter__(self) -> PredictionClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def predict(self, examples: Sequence[bytes], *, context: bytes | None = None,
                timeout_s: float | None = None) -> Predictions:
        """ctr, cvr and ctcvr for each serialized tf.Example, in order; the fallback's scores if serving is down.

        With ``context`` (the request's user and context features as one serialized tf.Example, and each
        example only a candidate's own features: ``ExamplePacker.pack_parts``), the call goes to
        ``rank_signature``, which parses and embeds the shared features once per request, not once per
        candidate. More than ``max_batch_size`` examples go as concurrent requests of at most that many,
        under the call's one deadline; should a version swap split them, the rest are re-asked of the
        newest version."""
        deadline = self._deadline(timeout_s)
        size = self.max_batch_size
        chunks = [examples[start:start + size] for start in range(0, len(examples), size)] or [examples]
        requests = [self._predict_request(chunk, context=context) for chunk in chunks]
        try:
            responses = self._call_all("Predict", self._prediction.Predict, requests, deadline)
            responses = self._one_version(chunks, responses, deadline, context)
        except ServingError as exc:
            if self.fallback is None or exc.code not in self.fallback.codes or not is_outage(exc.code, exc.details):
                raise
            log.warning("serving is down, using fallback scores: %s", exc)
            n = len(examples)
            fb = self.fallback
            return Predictions(np.full(n, fb.ctr, np.float32), np.full(n, fb.cvr, np.float32),
                               np.full(n, fb.ctcvr, np.float32), model_version=None, fallback=True)
        ctr, cvr, ctcvr = (np.concatenate([self._output(response, name, len(chunk))
                                           for response, chunk in zip(responses, chunks)]) for name in OUTPUTS)
        return Predictions(ctr, cvr, ctcvr, model_version=responses[0].model_spec.version.value)

    def _predict_request(self, examples: Sequence[bytes], version: int | None = None, *,
                         context: bytes | None = None) -> predict_pb2.PredictRequest:
        signature = self.signature if context is None else self.rank_signature
        request = predict_request(examples, self.model_name, signature, context=context)
        self._fill_spec(request.model_spec)
        if version is not None:
            request.model_spec.version.value = version
        return request

    def _one_version(self, chunks: list[Sequence[bytes]], responses: list[predict_pb2.PredictResponse],
                     deadline: float, context: bytes | None) -> list[predict_pb2.PredictResponse]:
        """The chunks' responses, all from one model version: any from an older one are asked again of the newest."""
        versions = [response.model_spec.version.value for response in responses]
        newest = max(versions)
        stale = [i for i, version in enumerate(versions) if version != newest]
        if not stale:
            return responses
        log.info("a version swap split one Predict call (versions %s); re-asking %d chunks of version %d",
                 sorted(set(versions)), len(stale), newest)
        again = [self._predict_request(chunks[i], newest, context=context) for i in stale]
        for i, response in zip(stale, self._call_all("Predict", self._prediction.Predict, again, deadline)):
            responses[i] = response
        return responses

    def model_metadata(self, *, timeout_s: float | None = None) -> ModelMetadata:
        """The served version and its signature defs (GetModelMetadata)."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._fill_spec(request.model_spec)
        response = self._call("GetModelMetadata", self._prediction.GetModelMetadata, request, timeout_s)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        return ModelMetadata(response.model_spec.name, response.model_spec.version.value,
                             dict(signatures.signature_def))

    def model_status(self, *, timeout_s: float | None = None) -> list[VersionStatus]:
        """The state of each version the server knows (GetModelStatus)."""
        request = get_model_status_pb2.GetModelStatusRequest()
        self._fill_spec(request.model_spec)
        response = self._call("GetModelStatus", self._models.GetModelStatus, request, timeout_s)
        state_name = get_model_status_pb2.ModelVersionStatus.State.Name
        return [VersionStatus(s.version, state_name(s.state), s.status.error_message)
                for s in response.model_version_status]

    def _fill_spec(self, spec: Any) -> None:
        spec.name = self.model_name
        if self.version is not None:
            spec.version.value = self.version
        elif self.version_label is not None:
            spec.version_label = self.version_label

    def _deadline(self, timeout_s: float | None) -> float:
        return time.monotonic() + (self.timeout_s if timeout_s is None else _check_timeout(timeout_s))

    def _call(self, method: str, stub_method: Callable[..., _Response], request: Any,
              timeout_s: float | None) -> _Response:
        return self._call_all(method, stub_method, [request], self._deadline(timeout_s))[0]

    def _call_all(self, method: str, stub_method: Any, requests: Sequence[Any], deadline: float) -> list[Any]:
        """Sends the requests concurrently and retries those that failed with an outage, all before ``deadline``;
        the responses in request order, or ServingError for the first failure no retry may fix."""
        responses: list[Any] = [None] * len(requests)
        pending = list(range(len(requests)))
        for attempt in range(1, self.retry.max_attempts + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServingError(method, self.target, grpc.StatusCode.DEADLINE_EXCEEDED,
                                   "Deadline Exceeded (the call's deadline passed between retries)", attempt - 1)
            calls = [(i, stub_method.future(requests[i], timeout=remaining, metadata=self.metadata)) for i in pending]
            failures = []
            for i, call in calls:
                try:
                    responses[i] = call.result()
                except grpc.RpcError as exc:
                    failures.append((i, exc))
            if not failures:
                return responses
            for _, exc in failures:
                code, details = exc.code(), exc.details() or ""
                details = self._misconfiguration(code, details, deadline) or details
                if code not in RETRYABLE or not is_outage(code, details) or attempt == self.retry.max_attempts:
                    raise ServingError(method, self.target, code, details, attempt) from exc
            log.debug("%s attempt %d failed with %s, retrying", method, attempt, failures[0][1].code().name)
            time.sleep(min(self.retry.backoff_s(attempt), max(0.0, deadline - time.monotonic())))
            pending = [i for i, _ in failures]
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _misconfiguration(self, code: grpc.StatusCode, details: str, deadline: float) -> str | None:
        """For a plaintext channel whose server closed the connection, the failure's details marked as a TLS
        handshake failure when the server speaks TLS (a misconfigured client, not an outage); else None."""
        if not (self._plaintext and code == grpc.StatusCode.UNAVAILABLE
                and any(marker in details.lower() for marker in _CLOSED)):
            return None
        if not speaks_tls(self.target, min(1.0, deadline - time.monotonic())):
            return None
        return (f"{details} (handshake failed: the server at {self.target} speaks TLS but this client's channel is "
                f"plaintext; pass credentials=grpc.ssl_channel_credentials(...))")

    def _output(self, response: predict_pb2.PredictResponse, name: str, n: int) -> np.ndarray:
        """One float output as an array of n, from tensor_content or float_val (TF Serving's default)."""
        tensor: tensor_pb2.TensorProto | None = response.outputs.get(name)
        if tensor is None or tensor.dtype != types_pb2.DT_FLOAT:
            raise ServingError("Predict", self.target, grpc.StatusCode.INTERNAL,
                               f"the response has no float output {name!r} (outputs: {sorted(response.outputs)}); "
                               f"is the model's serving signature the ESMM contract?", 1)
        values = (np.frombuffer(tensor.tensor_content, "<f4") if tensor.tensor_content
                  else np.asarray(tensor.float_val, np.float32))
        if values.shape != (n,):
            raise ServingError("Predict", self.target, grpc.StatusCode.INTERNAL,
                               f"output {name!r} has {values.size} values for {n} examples", 1)
        return values
