"""Builds every Beam pipeline of the project from one list of runner arguments.

``beam_args`` is the one place that list is made: the config's ``beam:`` section plus the
run's overrides, for the CLI, kfp.local and the compiled pipeline alike. The same
``--runner=... --option=...`` list goes to every step, so the DirectRunner, Flink, Spark
and Dataflow are a flag apart. One local twist: Beam 2.77's DirectRunner
first tries the PrismRunner, which downloads a binary at run time; with no network that
fails (or hangs where DNS hangs) before it falls back. ``DirectRunner`` is therefore run
on the FnApiRunner directly, which is what the fallback would pick for a batch pipeline,
honouring ``--direct_running_mode`` and ``--direct_num_workers``.

That runner also gets one correction: it sends each bundle's input to its SDK workers through a
stream whose periodic (time-based) flush thread races the writer: bytes written while a flush
is in its send callback are cleared unsent. Under load, or whenever the send queue is full, whole
chunks of a stage's input vanish without an error (seen: 17% of a 1.1M-row train split lost in
tf.Transform with ``multi_processing``). ``make_runner`` turns that flush off, so the runner sends
from one sending thread alone (``DATA_BUFFER_TIME_LIMIT_MS = 0``), which flushes after each
buffered chunk (about 10 MB, ``_send_input_in_chunks``) so that a large stage input still
travels in bounded messages, never one past gRPC's 2 GB. That thread runs beside the bundle,
not before it: the runner pushes a bundle's ProcessBundle request only once its input is sent,
and a worker drains that input only once it has the request, so a synchronous send blocks for
good as soon as the input outgrows the data plane's bounded queues (about 250 MB: seen as a
hang of a 2.2M-row transform). The bundle joins its senders and raises their error
(``_process_bundle_joining_senders``). The steps also count what they wrote
(``components.artifacts.record_counts``).

These corrections replace private FnApiRunner internals of apache-beam 2.77.0 and are installed only
on that version: on any other, a Beam step fails with one line saying so (``PATCHED_BEAM_VERSION``).
Upstream report, not yet filed (the time-based flush came with apache/beam PR #10246, BEAM-7949):
"Python FnApiRunner: TimeBasedBufferingClosableOutputStream's periodic flush clears the buffer after
its send callback without excluding the writer, so elements written during a blocked send are lost
without error (DirectRunner multi_processing/multi_threading, large stage inputs); and a synchronous
_send_input_to_worker deadlocks once a bundle's input exceeds the data plane's bounded queues."

A process that ran tf.Transform on Beam segfaults at interpreter exit (exit 139) while the
garbage collector tears TensorFlow objects down, after the pipeline succeeded. So every
process that builds a pipeline here freezes the collector at exit: the objects are left to
the OS, and the process exits 0 (CLI, kfp.local tasks and pytest alike). The DirectRunner's
``multi_processing`` workers do the same (``components.beam.sdk_worker``): the runner waits for
them to exit, and their teardown cost a transform 1–3 s.
"""
from __future__ import annotations

import atexit
import functools
import gc
import sys
import threading
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions, StandardOptions, WorkerOptions

from components import console
from esmm_model.config import BeamConfig
from esmm_model.errors import EsmmError

# The only apache-beam whose FnApiRunner internals _patch_fn_runner knows (constraints.txt pins it).
PATCHED_BEAM_VERSION = "2.77.0"
DIRECT_RUNNERS = {"directrunner", "direct", "switchingdirectrunner"}
DATAFLOW_RUNNERS = {"dataflowrunner", "dataflow"}
_senders = threading.local()  # the input senders of the bundle this thread runs
_beam_send_input: list = []  # Beam's own BundleManager._send_input_to_worker, kept by _patch_fn_runner
# Where kfp keeps artifacts on a MinIO-backed Kubeflow, and Beam's name for an S3-compatible store.
MINIO_SCHEME, S3_SCHEME = "minio://", "s3://"


def beam_args(beam_config: BeamConfig, runner: Optional[str] = None,
              options: Optional[Sequence[str]] = None) -> list[str]:
    """The config's runner and options, with a run's overrides on top.

    ``runner`` replaces ``beam.runner``; ``options`` follow ``beam.options``, and Beam's parser
    lets the later of two equal flags win. None (not given) keeps the config's.
    """
    return [f"--runner={runner or beam_config.runner}", *beam_config.options, *(options or ())]


def pipeline_options(beam_args: list[str]) -> PipelineOptions:
    return PipelineOptions(list(beam_args))


def is_direct(options: PipelineOptions) -> bool:
    runner = options.view_as(StandardOptions).runner
    return runner is None or str(runner).lower() in DIRECT_RUNNERS


def artifact_location(args: Sequence[str], uri: str, path: str) -> str:
    """Where Beam reads or writes a kfp artifact: the pod-local ``path`` on the DirectRunner (the pod is
    the worker), else the artifact's ``uri``, which Flink, Spark or Dataflow workers can reach
    (``minio://`` as ``s3://``; point Beam's S3 filesystem at MinIO with ``--s3_endpoint_url``)."""
    if is_direct(pipeline_options(list(args))):
        return path
    return S3_SCHEME + uri[len(MINIO_SCHEME):] if uri.startswith(MINIO_SCHEME) else uri


def with_worker_image(args: Sequence[str], image: Optional[str]) -> list[str]:
    """``args``, plus ``image`` as the remote workers' container when the arguments name none.

    Remote workers run the project's own DoFns and preprocessing, so they need the component
    image (or ``--setup_file``). Dataflow reads ``--sdk_container_image``; the portable runners
    (Flink, Spark, PortableRunner) read a DOCKER environment (``--environment_config``), so a
    runner without an environment of its own gets both. The DirectRunner, an explicit image, or
    a LOOPBACK/PROCESS/EXTERNAL environment are left as given.
    """
    args = list(args)
    options = pipeline_options(args)
    portable = options.view_as(PortableOptions)
    named = (options.view_as(WorkerOptions).sdk_container_image or portable.environment_config
             or portable.lookup_environment_option("docker_container_image")
             or (portable.environment_type or "DOCKER").upper() != "DOCKER")
    if not image or is_direct(options) or named:
        return args
    if str(options.view_as(StandardOptions).runner).lower() in DATAFLOW_RUNNERS:
        return args + [f"--sdk_container_image={image}"]
    return args + [f"--sdk_container_image={image}", "--environment_type=DOCKER", f"--environment_config={image}"]


def _send_input_in_chunks(self, process_bundle_id: str, read_transform_id: str, byte_streams) -> None:
    """``fn_runner.BundleManager._send_input_to_worker`` in a thread of its own that flushes after each
    chunk; the stream is closed even on an error, which the bundle then raises. Only workers over gRPC
    need it: an in-process worker (``in_memory``) reads its input when the bundle runs on this thread,
    so it is sent here first, as Beam does (sent from a thread instead, a large side input arrived empty)."""
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    if not isinstance(self._worker_handler, worker_handlers.GrpcWorkerHandler):
        _beam_send_input[0](self, process_bundle_id, read_transform_id, byte_streams)
        return
    data_out = self._worker_handler.data_conn.output_stream(process_bundle_id, read_transform_id)
    errors: list[BaseException] = []

    def send() -> None:
        try:
            for byte_stream in byte_streams or []:
                data_out.write(byte_stream)
                data_out.maybe_flush()
        except BaseException as exc:  # handed to the bundle, which raises it
            errors.append(exc)
        finally:
            data_out.close()

    sender = threading.Thread(target=send, name=f"send_input_{process_bundle_id}_{read_transform_id}", daemon=True)
    _senders.running.append((sender, errors))
    sender.start()


def _process_bundle_joining_senders(process_bundle):
    """``process_bundle`` that, once the bundle's outputs are in, waits for its input senders and
    raises the first error one of them met."""
    @functools.wraps(process_bundle)
    def run(self, *args, **kwargs):
        _senders.running = []
        result = process_bundle(self, *args, **kwargs)
        for sender, errors in _senders.running:
            sender.join()
            if errors:
                raise RuntimeError(f"sending a bundle's input to the Beam worker failed: {errors[0]!r}") from errors[0]
        return result
    return run


def check_beam_version(installed: str) -> None:
    """EsmmError unless ``installed`` is the apache-beam whose internals ``_patch_fn_runner`` corrects."""
    if installed != PATCHED_BEAM_VERSION:
        raise EsmmError(f"apache-beam {installed} is installed, but components/beam/runner.py corrects the "
                        f"DirectRunner's internals of apache-beam {PATCHED_BEAM_VERSION} only; install "
                        f"apache-beam=={PATCHED_BEAM_VERSION} (constraints.txt), or recheck those corrections")


@functools.cache
def _patch_fn_runner() -> None:
    """Installs the corrections of the module docstring into Beam's FnApiRunner, once per process."""
    check_beam_version(beam.__version__)
    from apache_beam.runners.portability.fn_api_runner import fn_runner, worker_handlers

    worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 0  # no racing time-based flush on the runner's data streams
    _beam_send_input.append(fn_runner.BundleManager._send_input_to_worker)
    fn_runner.BundleManager._send_input_to_worker = _send_input_in_chunks
    fn_runner.BundleManager.process_bundle = _process_bundle_joining_senders(fn_runner.BundleManager.process_bundle)


def worker_options(options: PipelineOptions) -> dict:
    """The options the DirectRunner's SDK workers get: those the run set, not every default. A worker rebuilds
    them as flags, and a default True of a ``--no_...`` option (``pipeline_type_check``,
    ``direct_runner_use_stacked_bundle``) comes back as a flag it cannot parse ("Discarding unparseable
    args"); a worker derives the defaults itself. Their log level is the console's
    (``components.console.worker_log_level``) unless the run names one."""
    chosen = options.get_all_options(drop_default=True)
    level = console.worker_log_level()
    if level and "default_sdk_harness_log_level" not in chosen:
        chosen["default_sdk_harness_log_level"] = level
    return chosen


def _fast_exit_workers(pipeline_proto) -> None:
    """Starts ``multi_processing`` workers as ``components.beam.sdk_worker`` (Beam's worker main, without the
    teardown at exit) instead of Beam's ``sdk_worker_main``; other environments are left as they are."""
    from apache_beam.portability import python_urns

    beam_command = f"{sys.executable} -m apache_beam.runners.worker.sdk_worker_main".encode()
    for environment in pipeline_proto.components.environments.values():
        if environment.urn == python_urns.SUBPROCESS_SDK and environment.payload == beam_command:
            environment.payload = f"{sys.executable} -m components.beam.sdk_worker".encode()


def make_runner(options: PipelineOptions):
    """The runner instance for these options: the FnApiRunner for DirectRunner, else Beam's own choice."""
    if not is_direct(options):
        return None
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    class DirectFnApiRunner(fn_runner.FnApiRunner):
        def run_via_runner_api(self, pipeline_proto, options):
            _fast_exit_workers(pipeline_proto)
            return super().run_via_runner_api(pipeline_proto, options)

    _patch_fn_runner()
    encoded = JobServiceHandle.encode_pipeline_options(worker_options(options))
    provision = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return DirectFnApiRunner(provision_info=provision)


@functools.cache
def freeze_gc_at_exit() -> None:
    """Registers ``gc.freeze`` to run at interpreter exit, once per process (see the module docstring)."""
    atexit.register(gc.freeze)


def make_pipeline(beam_args: list[str]) -> beam.Pipeline:
    """A Pipeline for these runner arguments, never the network-dependent PrismRunner."""
    freeze_gc_at_exit()
    options = pipeline_options(beam_args)
    return beam.Pipeline(runner=make_runner(options), options=options)
