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
from the writing thread alone (``DATA_BUFFER_TIME_LIMIT_MS = 0``); the steps also count what
they wrote (``components.record_counts``).

A process that ran tf.Transform on Beam segfaults at interpreter exit (exit 139) while the
garbage collector tears TensorFlow objects down, after the pipeline succeeded. So every
process that builds a pipeline here freezes the collector at exit: the objects are left to
the OS, and the process exits 0 (CLI, kfp.local tasks and pytest alike).
"""
from __future__ import annotations

import atexit
import functools
import gc
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from esmm_model.config import BeamConfig

DIRECT_RUNNERS = {"directrunner", "direct", "switchingdirectrunner"}


def beam_args(beam_config: BeamConfig, runner: Optional[str] = None, options: Optional[Sequence[str]] = None) -> list[str]:
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


def make_runner(options: PipelineOptions):
    """The runner instance for these options: the FnApiRunner for DirectRunner, else Beam's own choice."""
    if not is_direct(options):
        return None
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner, worker_handlers
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 0  # no racing time-based flush on the runner's data streams
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return fn_runner.FnApiRunner(provision_info=provision)


@functools.cache
def freeze_gc_at_exit() -> None:
    """Registers ``gc.freeze`` to run at interpreter exit, once per process (see the module docstring)."""
    atexit.register(gc.freeze)


def make_pipeline(beam_args: list[str]) -> beam.Pipeline:
    """A Pipeline for these runner arguments, never the network-dependent PrismRunner."""
    freeze_gc_at_exit()
    options = pipeline_options(beam_args)
    return beam.Pipeline(runner=make_runner(options), options=options)
