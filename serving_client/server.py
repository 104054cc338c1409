"""A small TF-Serving-compatible gRPC server, for development and tests.

It implements the parts of TensorFlow Serving's API that the client uses, from
``tensorflow_serving.apis``: PredictionService.Predict and GetModelMetadata, and
ModelService.GetModelStatus, with TF Serving's status codes and messages. Like
``tensorflow_model_server --model_name=M --model_base_path=P`` it serves the latest
integer-named version under P (other names, such as a push in progress, are ignored),
polls for new versions, and swaps the served versions with one reference assignment: a
request holds the version it started with. Like ``--model_config_file`` it also takes TF
Serving's model config file, with its version policy and version labels (``stable``,
``canary``), re-read on every poll. A new version is loaded and warmed up on the polling
thread while the served ones keep serving: its warmup requests
(``assets.extra/tf_serving_warmup_requests``) are replayed, or without them its serving
signature runs once on an empty batch. A version that fails to load is retried, as TF
Serving does (one whose variables land after its saved_model.pb loads on a later try).
Loading competes with serving for the CPU and the GIL, so requests slow down while a
version loads (see docs/serving.md for what was measured). On Kubernetes the
real ``tensorflow/serving`` image takes its place; clients cannot tell the difference.

Where production behaviour matters it is copied: a version whose directory disappears is
unloaded (TF Serving with ``servable_versions_always_present`` false); a request larger than
``max_batch_size`` examples is refused with the shipped batching config's INVALID_ARGUMENT,
and a tensor whose shape disagrees with its values is refused before anything is allocated;
a request whose deadline passes before its model runs is dropped unrun (gRPC itself drops
one that expires while queued); the port is bound exclusively (no
SO_REUSEPORT, so a second server on it fails instead of splitting traffic); loads, swaps and
unloads are logged at INFO.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import grpc
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from esmm_model.contracts import layout, model_store
from esmm_model.contracts.model_config import VersionPolicy, read_model_config
from esmm_model.contracts.warmup import read_warmup_requests, warmup_file
from esmm_model.errors import EsmmError, InputError
from esmm_model.schema import SERVING_SIGNATURE

log = logging.getLogger(__name__)

_STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
_ModelVersionStatus = get_model_status_pb2.ModelVersionStatus
# The shipped batching config's max_batch_size (k8s/base/serving/batching.config): TF Serving refuses larger requests.
MAX_BATCH_SIZE = 512


@dataclass(frozen=True)
class LoadedVersion:
    """One loaded SavedModel version: callable signatures and their SignatureDefs."""

    version: int
    signatures: Mapping[str, Any]
    signature_defs: Mapping[str, meta_graph_pb2.SignatureDef]
    model: Any  # the loaded object; keeps the signatures' variables alive
    warmup_requests: int = 0  # requests replayed from the warmup file before the version took traffic


def load_version(model_dir: str, version: int) -> LoadedVersion:
    """Loads ``<model_dir>/<version>`` in-process, with its SignatureDefs read from saved_model.pb."""
    path = layout.join(model_dir, str(version))
    model = tf.saved_model.load(path)
    with tf.io.gfile.GFile(layout.join(path, layout.SAVED_MODEL_PB), "rb") as f:
        saved_model = saved_model_pb2.SavedModel.FromString(f.read())
    defs = {k: v for k, v in saved_model.meta_graphs[0].signature_def.items() if not k.startswith("__")}
    loaded = LoadedVersion(version, dict(model.signatures), defs, model)
    replayed = _warm_up(loaded, path)
    if not replayed:
        _run_empty_batch(loaded)
    return dataclasses.replace(loaded, warmup_requests=replayed)


def _warm_up(loaded: LoadedVersion, version_dir: str) -> int:
    """Replays the version's warmup requests, as TF Serving does; a failing one fails the load."""
    requests = read_warmup_requests(version_dir)
    for i, request in enumerate(requests):
        try:
            _predict(loaded, request)
        except _Abort as exc:
            raise InputError(f"{warmup_file(version_dir)}: warmup request {i} failed: "
                             f"{exc.code.name}: {exc.details}") from None
    return len(requests)


def _run_empty_batch(loaded: LoadedVersion) -> None:
    """Runs the default signature once on an empty batch, so that the first request does not pay
    for instantiating and optimizing its function (seconds on a big graph)."""
    signature_def = loaded.signature_defs.get(SERVING_SIGNATURE)
    if signature_def is None:
        return
    inputs = {}
    for alias, info in signature_def.inputs.items():
        dims = [d.size for d in info.tensor_shape.dim]
        if info.tensor_shape.unknown_rank or not dims or dims[0] != -1 or any(d < 0 for d in dims[1:]):
            return  # no empty batch to build for this input
        inputs[alias] = tf.zeros([0, *dims[1:]], tf.as_dtype(info.dtype))
    loaded.signatures[SERVING_SIGNATURE](**inputs)


@dataclass
class _FailedLoad:
    """A version that failed to load: how many tries, when to try again, and the last error."""

    attempts: int
    retry_at: float
    error: str


class ModelVersions:
    """The served versions of one model: those its version policy selects, addressed by number or label.

    ``refresh`` loads what the policy selects (the latest version by default) and swaps the
    whole set in one reference assignment; a request reads ``served`` once. A version that
    fails to load is left out (the policy selects among the rest, the versions already served
    stay) and tried again after ``load_retry_interval_s``, up to ``max_load_retries`` more
    times (TF Serving's ``--max_num_load_retries``). With a model config file, ``refresh``
    re-reads it first, so label and policy changes apply on the next poll.
    """

    def __init__(self, model_name: str, model_dir: str, policy: VersionPolicy = VersionPolicy(),
                 labels: Mapping[str, int] | None = None, config_file: str | None = None, *,
                 max_load_retries: int = 5, load_retry_interval_s: float = 5.0) -> None:
        self.model_name = model_name
        self.model_dir = model_dir
        self.policy = policy
        self.labels: dict[str, int] = dict(labels or {})
        self.config_file = config_file
        self.served: dict[int, LoadedVersion] = {}
        self._states: dict[int, int] = {}  # version -> ModelVersionStatus.State, for GetModelStatus
        self.max_load_retries = max_load_retries
        self.load_retry_interval_s = load_retry_interval_s
        self._failed: dict[int, _FailedLoad] = {}
        self._refresh_lock = threading.Lock()

    @classmethod
    def from_config_file(cls, config_file: str, model_name: str, **retries: float) -> ModelVersions:
        """The model ``model_name`` as TF Serving's ``--model_config_file`` describes it."""
        entry = read_model_config(config_file, model_name)
        return cls(model_name, entry.base_path, entry.policy, entry.labels, config_file, **retries)

    @property
    def current(self) -> LoadedVersion | None:
        """The highest served version: what a request naming neither a version nor a label gets."""
        served = self.served
        return served[max(served)] if served else None

    def refresh(self) -> bool:
        """Loads the versions the policy selects and stops serving the others; True when the served set changed."""
        with self._refresh_lock:
            if self.config_file:
                self._reread_config()
            loaded = dict(self.served)
            while True:  # a version that fails to load leaves the policy to select among the rest
                now = time.monotonic()
                wanted = self.policy.select([v for v in model_store.servable_versions(self.model_dir)
                                             if v not in self._failed or self._may_retry(self._failed[v], now)])
                missing = [v for v in wanted if v not in loaded]
                if not missing:
                    break
                for version in missing:
                    self._states[version] = _ModelVersionStatus.LOADING
                    try:
                        loaded[version] = load_version(self.model_dir, version)
                        self._failed.pop(version, None)
                    except Exception as exc:  # a broken version must not take down the ones being served
                        self._record_failure(version, exc)
            if set(wanted) == set(self.served):
                return False
            previous, self.served = self.served, {v: loaded[v] for v in wanted}
            for version in wanted:
                self._states[version] = _ModelVersionStatus.AVAILABLE
            for version in sorted(set(wanted) - set(previous)):
                log.info("loaded %s version %d from %s (%d warmup requests replayed)", self.model_name, version,
                         layout.join(self.model_dir, str(version)), self.served[version].warmup_requests)
            on_disk = set(model_store.versions(self.model_dir))
            for version in sorted(set(previous) - set(wanted)):
                self._states[version] = _ModelVersionStatus.END
                why = "the version policy no longer selects it" if version in on_disk else "its directory is gone"
                log.info("unloaded %s version %d: %s", self.model_name, version, why)
            log.info("%s now serves versions %s (was %s)", self.model_name, sorted(self.served) or "none",
                     sorted(previous) or "none")
            return True

    def _may_retry(self, failed: _FailedLoad, now: float) -> bool:
        return failed.attempts <= self.max_load_retries and now >= failed.retry_at

    def _record_failure(self, version: int, exc: Exception) -> None:
        failed = self._failed.get(version)
        attempts = failed.attempts + 1 if failed else 1
        self._failed[version] = _FailedLoad(attempts, time.monotonic() + self.load_retry_interval_s, str(exc))
        retry = (f"retrying in {self.load_retry_interval_s:g} s ({self.max_load_retries - attempts + 1} tries left)"
                 if attempts <= self.max_load_retries else "giving up on it")
        log.warning("could not load %s version %d (try %d): %s; %s; still serving %s", self.model_name, version,
                    attempts, exc, retry, sorted(self.served) or "nothing")
        self._states[version] = _ModelVersionStatus.END

    def resolve_label(self, label: str) -> int | None:
        """The version a label names, or None when the config defines no such label."""
        return self.labels.get(label)

    def states(self) -> dict[int, int]:
        return dict(self._states)

    def _reread_config(self) -> None:
        try:
            entry = read_model_config(self.config_file, self.model_name)
        except EsmmError as exc:  # a config caught mid-update: keep the last good one, as TF Serving does
            log.warning("keeping the previous model config: %s", exc)
            return
        if entry.base_path.rstrip("/") != self.model_dir.rstrip("/"):
            log.warning("%s: base_path changes need a restart; still serving from %s", self.config_file, self.model_dir)
        self.policy, self.labels = entry.policy, dict(entry.labels)


class _Abort(Exception):
    """Ends a request with a gRPC status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def _resolve(versions: ModelVersions, spec: Any) -> LoadedVersion:
    """The version a ModelSpec asks for (latest, number or label), or TF Serving's error for it."""
    served = versions.served
    version = spec.version.value if spec.HasField("version") else None
    if spec.HasField("version_label"):
        version = versions.resolve_label(spec.version_label)
        if version is None:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"Unrecognized servable version label: {spec.version_label}")
    if spec.name != versions.model_name or not served or (version is not None and version not in served):
        wanted = f"Specific({spec.name}, {version})" if version is not None else f"Latest({spec.name})"
        raise _Abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {wanted}")
    return served[version if version is not None else max(served)]


def _run_predict(versions: ModelVersions, request: predict_pb2.PredictRequest, max_batch_size: int | None = None,
                 still_wanted: Callable[[], bool] = lambda: True) -> predict_pb2.PredictResponse:
    return _predict(_resolve(versions, request.model_spec), request, max_batch_size, still_wanted)


def _value_count(tensor: Any) -> int:
    """How many values a TensorProto carries (not what its shape claims)."""
    if tensor.dtype == types_pb2.DT_STRING:
        return len(tensor.string_val)
    if tensor.tensor_content:
        return len(tensor.tensor_content) // max(tf.as_dtype(tensor.dtype).size, 1)
    per_value = 2 if tensor.dtype in (types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128) else 1
    return sum(len(getattr(tensor, f.name)) for f in tensor.DESCRIPTOR.fields
               if f.name.endswith("_val") and f.label == f.LABEL_REPEATED) // per_value


def _check_tensor_size(alias: str, tensor: Any, max_batch_size: int | None) -> None:
    """Refuses, before anything is allocated, a shape with a negative dimension, a batch (dimension 0)
    past ``max_batch_size`` (TF Serving's batching message), and a shape whose element count is not
    the number of values sent (TF would repeat the last value to fill a shape of 2,000,000 from one)."""
    dims = [d.size for d in tensor.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"input {alias!r} has a negative dimension in shape {dims}")
    if max_batch_size is not None and dims and dims[0] > max_batch_size:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                     f"Task size {dims[0]} is larger than maximum input batch size {max_batch_size}")
    elements, sent = math.prod(dims), _value_count(tensor)
    if elements != sent:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                     f"input {alias!r} has shape {dims} ({elements} elements) but carries {sent} values")


def _predict(loaded: LoadedVersion, request: predict_pb2.PredictRequest, max_batch_size: int | None = None,
             still_wanted: Callable[[], bool] = lambda: True) -> predict_pb2.PredictResponse:
    """Runs one PredictRequest on a loaded version, with TF Serving's checks and messages; ``still_wanted``
    is asked once the inputs are built, and the model does not run for a caller that has gone."""
    name = request.model_spec.signature_name or SERVING_SIGNATURE
    signature_def = loaded.signature_defs.get(name)
    if signature_def is None:
        raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{name}" not found.')
    expected, sent = set(signature_def.inputs), set(request.inputs)
    if expected != sent:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                     f"input size does not match signature: {len(sent)}!={len(expected)} "
                     f"len({sorted(sent)}) != len({sorted(expected)}). Sent extra: {sorted(sent - expected)}. "
                     f"Missing but required: {sorted(expected - sent)}.")
    unknown = set(request.output_filter) - set(signature_def.outputs)
    if unknown:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                     f"output tensor alias not found in signature: {sorted(unknown)} "
                     f"Outputs expected to be in the set {sorted(signature_def.outputs)}.")
    inputs = {}
    for i, (alias, tensor) in enumerate(sorted(request.inputs.items())):
        want = signature_def.inputs[alias].dtype
        if tensor.dtype != want:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                         f"Expects arg[{i}] to be {tf.as_dtype(want).name} but "
                         f"{types_pb2.DataType.Name(tensor.dtype)} is provided")
        _check_tensor_size(alias, tensor, max_batch_size)
        try:
            inputs[alias] = tf.constant(tf.make_ndarray(tensor), tf.as_dtype(want))
        except (TypeError, ValueError) as exc:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"input {alias!r} is not a valid tensor: {exc}") from None
    batches = {tensor.tensor_shape.dim[0].size for tensor in request.inputs.values() if tensor.tensor_shape.dim}
    if max_batch_size is not None and len(batches) > 1:  # TF Serving's batching concatenates inputs along dimension 0
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                     "Batching Run() input tensors must have equal 0th-dimension size")
    if not still_wanted():
        raise _Abort(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline exceeded before the model ran")
    try:
        outputs = loaded.signatures[name](**inputs)
    except tf.errors.OpError as exc:
        raise _Abort(_STATUS_BY_NUMBER.get(exc.error_code, grpc.StatusCode.INTERNAL), exc.message) from None
    except UnicodeDecodeError as exc:  # TF could not decode the op's error, which quotes the unparsable bytes
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, _undecodable_op_error(exc)) from None
    except (TypeError, ValueError) as exc:  # shapes or dtypes the signature's input spec rejects
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
    response = predict_pb2.PredictResponse()
    response.model_spec.name = request.model_spec.name
    response.model_spec.version.value = loaded.version
    response.model_spec.signature_name = name
    for alias in request.output_filter or outputs:
        response.outputs[alias].CopyFrom(tf.make_tensor_proto(outputs[alias].numpy()))
    return response


def _undecodable_op_error(exc: UnicodeDecodeError) -> str:
    """The op's error message with its non-UTF-8 bytes escaped: ParseExample's reads as TF Serving's
    ``Could not parse example input, value: '...'``."""
    parse_error = "Could not parse example input"
    message = exc.object.decode("utf-8", "backslashreplace") if isinstance(exc.object, bytes) else str(exc)
    message = message.split("\n\t [[")[0]  # drop TF's graph node annotation
    start = message.find(parse_error)
    return message[start:] if start >= 0 else f"{parse_error}: {message}"


def _caller_waits(context: grpc.ServicerContext) -> bool:
    """False once the caller's deadline has passed or it cancelled: its answer would be thrown away."""
    remaining = context.time_remaining()
    return context.is_active() and (remaining is None or remaining > 0)


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, versions: ModelVersions, max_batch_size: int | None) -> None:
        self._versions = versions
        self._max_batch_size = max_batch_size

    def Predict(self, request: predict_pb2.PredictRequest,
                context: grpc.ServicerContext) -> predict_pb2.PredictResponse:
        try:
            return _run_predict(self._versions, request, self._max_batch_size, lambda: _caller_waits(context))
        except _Abort as exc:
            if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                log.warning("dropped a Predict request unrun: %s", exc.details)
            context.abort(exc.code, exc.details)

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                         context: grpc.ServicerContext) -> get_model_metadata_pb2.GetModelMetadataResponse:
        try:
            loaded = _resolve(self._versions, request.model_spec)
        except _Abort as exc:
            context.abort(exc.code, exc.details)
        if not request.metadata_field:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Metadata field {field} is not supported")
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = self._versions.model_name
        response.model_spec.version.value = loaded.version
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for name, signature_def in loaded.signature_defs.items():
            signatures.signature_def[name].CopyFrom(signature_def)
        response.metadata["signature_def"].Pack(signatures)
        return response


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, versions: ModelVersions) -> None:
        self._versions = versions

    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest,
                       context: grpc.ServicerContext) -> get_model_status_pb2.GetModelStatusResponse:
        spec = request.model_spec
        states = self._versions.states()
        version = spec.version.value if spec.HasField("version") else None
        if spec.HasField("version_label"):
            version = self._versions.resolve_label(spec.version_label)
            if version is None:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"Unrecognized servable version label: {spec.version_label}")
        if version is not None:
            states = {v: s for v, s in states.items() if v == version}
        if spec.name != self._versions.model_name or not states:
            wanted = f"Specific({spec.name}, {version})" if version is not None else f"Latest({spec.name})"
            context.abort(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name}: {wanted}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for version, state in sorted(states.items(), reverse=True):
            response.model_version_status.add(version=version, state=state)
        return response


class ModelServer:
    """Serves ``<model_base_path>/<int version>`` as ``model_name`` over gRPC on a thread pool.

    With ``model_config_file`` (TF Serving's ModelServerConfig text proto) instead of
    ``model_base_path``, the file's entry for ``model_name`` gives the base path, the version
    policy and the version labels. ``port=0`` lets the OS choose a free port; ``start``
    returns the bound port, and fails if another process holds it. ``max_batch_size`` (examples
    per request; None for no limit) matches the shipped TF Serving batching config.
    """

    def __init__(self, model_base_path: str | None, model_name: str, *, model_config_file: str | None = None,
                 host: str = "127.0.0.1", port: int = 0, poll_interval_s: float = 1.0, max_workers: int = 8,
                 max_message_bytes: int = 64 << 20, max_load_retries: int = 5,
                 load_retry_interval_s: float = 5.0, max_batch_size: int | None = MAX_BATCH_SIZE) -> None:
        if (model_base_path is None) == (model_config_file is None):
            raise InputError("give the server either a model base path or a model config file, not both or neither")
        _check_settings(port=port, poll_interval_s=poll_interval_s, max_workers=max_workers,
                        max_batch_size=max_batch_size, max_load_retries=max_load_retries,
                        load_retry_interval_s=load_retry_interval_s)
        retries = {"max_load_retries": max_load_retries, "load_retry_interval_s": load_retry_interval_s}
        self.versions = (ModelVersions.from_config_file(model_config_file, model_name, **retries) if model_config_file
                         else ModelVersions(model_name, str(model_base_path), **retries))
        self.poll_interval_s = poll_interval_s
        self._address = f"{host}:{port}"
        self._stopping = threading.Event()
        self._poller = threading.Thread(target=self._poll, name=f"poll-{model_name}", daemon=True)
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="serve"),
            options=[("grpc.max_send_message_length", max_message_bytes),
                     ("grpc.max_receive_message_length", max_message_bytes),
                     ("grpc.so_reuseport", 0)])  # gRPC's default lets a second server share the port
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            _PredictionService(self.versions, max_batch_size), self._server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(self.versions), self._server)
        self.port = 0

    def __enter__(self) -> ModelServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> int:
        """Binds the port, loads the versions to serve (if any), starts serving and polling; returns the port."""
        try:
            self.port = self._server.add_insecure_port(self._address)
        except RuntimeError:  # grpc >= 1.60 raises where older versions returned 0
            self.port = 0
        if self.port == 0:
            raise InputError(f"cannot bind {self._address}: the port is in use (another esmm serve or TF Serving?) "
                             f"or the address is not this machine's; choose another --port or --host")
        if not self.versions.refresh() and self.versions.current is None:
            log.warning("no servable version under %s yet; requests get NOT_FOUND until one appears",
                        self.versions.model_dir)
        self._server.start()
        self._poller.start()
        return self.port

    def stop(self, grace_s: float = 1.0) -> None:
        """Stops polling, lets in-flight requests finish for up to ``grace_s``, and shuts down."""
        if not self._stopping.is_set():
            log.info("stopping: refusing new requests, draining in-flight ones for up to %g s", grace_s)
        self._stopping.set()
        self._server.stop(grace_s).wait()
        if self._poller.is_alive():
            self._poller.join(timeout=grace_s)  # a load in progress is abandoned, not awaited

    def wait(self) -> None:
        """Blocks until the server stops."""
        self._server.wait_for_termination()

    def _poll(self) -> None:
        while not self._stopping.wait(self.poll_interval_s):
            try:
                self.versions.refresh()
            except Exception:  # keep polling whatever the file system does
                log.exception("polling %s failed", self.versions.model_dir)


def _check_settings(*, port: int, poll_interval_s: float, max_workers: int, max_batch_size: int | None,
                    max_load_retries: int, load_retry_interval_s: float) -> None:
    """InputError, in one line naming the setting, for values TF Serving would refuse or that cannot work."""
    def positive(value: float) -> bool:
        return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InputError(f"port must be 1-65535 (or 0 for any free port), got {port!r}")
    if not positive(poll_interval_s):
        raise InputError(f"poll interval must be a positive number of seconds, got {poll_interval_s!r}")
    if not positive(load_retry_interval_s):
        raise InputError(f"load retry interval must be a positive number of seconds, got {load_retry_interval_s!r}")
    for name, value, least in (("workers", max_workers, 1), ("max batch size", max_batch_size, 1),
                               ("max load retries", max_load_retries, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise InputError(f"{name} must be an integer of at least {least}, got {value!r}")
