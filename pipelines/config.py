"""The pipeline's config: the model's config (``esmm_model.config``) plus how the compiled pipeline's pods run.

The ``kubernetes`` section of the YAML lives here, with the pipelines, so the model's config module
knows nothing of pods: ``PipelineConfig`` extends ``Config`` with it, and the loaders below read a
YAML into a ``PipelineConfig``. Every step function still takes it as the ``Config`` it is.
"""
from __future__ import annotations

import os
import re
from typing import Annotated, Any, Optional

from pydantic import field_validator, model_validator

from esmm_model import config as model_config
from esmm_model.config import Config, ConfigSection, Int, bounded, invalid

_CPU = re.compile(r"(\d+(\.\d+)?|\.\d+)(m)?")
_MEMORY = re.compile(r"(\d+(\.\d+)?)(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?")
_MEMORY_UNITS = {None: 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
                 "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}


def cpu_cores(quantity: str) -> float:
    """A Kubernetes CPU quantity in cores: "500m" is 0.5."""
    match = _CPU.fullmatch(quantity)
    if not match:
        raise ValueError(quantity)
    return float(match.group(1)) / (1000 if match.group(3) else 1)


def memory_bytes(quantity: str) -> float:
    """A Kubernetes memory quantity in bytes: "2Gi" is 2**31."""
    match = _MEMORY.fullmatch(quantity)
    if not match:
        raise ValueError(quantity)
    return float(match.group(1)) * _MEMORY_UNITS[match.group(3)]


def _check_quantity(value: Optional[str], parse: Any, example: str) -> Optional[str]:
    if value is None:
        return None
    try:
        amount = parse(value)
    except ValueError:
        raise invalid(f"{value!r} is not a Kubernetes quantity; write it like {example}") from None
    if amount <= 0:
        raise invalid("must be positive", value_check=True, show_input=True)
    return value


class StepResources(ConfigSection):
    """One step's pod: CPU and memory requests and limits in Kubernetes quantities ("500m", "2", "8Gi")."""

    cpu: Optional[str] = None
    memory: Optional[str] = None
    cpu_limit: Optional[str] = None
    memory_limit: Optional[str] = None

    @field_validator("cpu", "cpu_limit")
    @classmethod
    def _cpu_quantity(cls, value: Optional[str]) -> Optional[str]:
        return _check_quantity(value, cpu_cores, "500m or 2")

    @field_validator("memory", "memory_limit")
    @classmethod
    def _memory_quantity(cls, value: Optional[str]) -> Optional[str]:
        return _check_quantity(value, memory_bytes, "512Mi or 8Gi")


# Requests per step when the config names none: TF training and TFMA are the heavy pods.
BUILTIN_RESOURCES = {"snapshot": ("500m", "1Gi"), "ingest": ("2", "4Gi"), "transform": ("2", "8Gi"),
                     "train": ("4", "8Gi"), "evaluate": ("2", "8Gi"), "push": ("1", "2Gi")}


class ResourcesConfig(ConfigSection):
    """Requests and limits per step of the compiled pipeline, so no pod runs BestEffort.

    Each field resolves in order: the step's own entry, ``default``, then the built-in
    request for that step (BUILTIN_RESOURCES); a limit left out equals the request.
    """

    default: StepResources = StepResources()
    snapshot: StepResources = StepResources()
    ingest: StepResources = StepResources()
    transform: StepResources = StepResources()
    train: StepResources = StepResources()
    evaluate: StepResources = StepResources()
    push: StepResources = StepResources()

    @model_validator(mode="after")
    def _limits_cover_requests(self) -> ResourcesConfig:
        for step in BUILTIN_RESOURCES:
            final = self.for_step(step)
            if cpu_cores(final.cpu_limit) < cpu_cores(final.cpu):
                raise invalid(f"{final.cpu_limit} is below the request {final.cpu}", step, "cpu_limit")
            if memory_bytes(final.memory_limit) < memory_bytes(final.memory):
                raise invalid(f"{final.memory_limit} is below the request {final.memory}", step, "memory_limit")
        return self

    def for_step(self, step: str) -> StepResources:
        """The step's requests and limits, every field filled."""
        own, default = getattr(self, step), self.default
        builtin_cpu, builtin_memory = BUILTIN_RESOURCES[step]
        cpu = own.cpu or default.cpu or builtin_cpu
        memory = own.memory or default.memory or builtin_memory
        return StepResources(cpu=cpu, memory=memory, cpu_limit=own.cpu_limit or default.cpu_limit or cpu,
                             memory_limit=own.memory_limit or default.memory_limit or memory)


class KubernetesConfig(ConfigSection):
    """How the compiled pipeline's pods run: resources per step, and retries of the transient steps."""

    resources: ResourcesConfig = ResourcesConfig()
    retries: Annotated[Int, bounded(ge=0)] = 2
    retry_backoff_s: Annotated[Int, bounded(ge=1)] = 60
    # 0: the train step trains in its own pod; N: it runs a TFJob of N workers (pipelines.tfjob),
    # which needs the work volume.
    train_workers: Int = 0
    # The sizeLimit of the scratch emptyDir (/scratch, TMPDIR) of the steps that stage data (ingest,
    # transform, train, evaluate); the kubelet evicts a pod past it. None: no scratch volume.
    scratch_storage: Optional[str] = "20Gi"

    @field_validator("scratch_storage")
    @classmethod
    def _scratch_quantity(cls, value: Optional[str]) -> Optional[str]:
        return _check_quantity(value, memory_bytes, "20Gi, or null for no scratch volume")

    @field_validator("train_workers")
    @classmethod
    def _pod_or_tfjob(cls, workers: int) -> int:
        if workers < 0:
            raise invalid(f"0 trains in the step's pod, N >= 1 in a TFJob of N workers; got {workers}",
                          value_check=True)
        return workers


class PipelineConfig(Config):
    """The root of the YAML file as the pipeline reads it: the model's config and the ``kubernetes`` section."""

    kubernetes: KubernetesConfig = KubernetesConfig()


def load_config(ref: str | os.PathLike) -> PipelineConfig:
    """``esmm_model.config.load_config`` with the kubernetes section: what the CLI and the pipeline read."""
    return model_config.load_config(ref, PipelineConfig)


def config_from_dict(data: Any) -> PipelineConfig:
    return model_config.config_from_dict(data, PipelineConfig)


def config_from_json(text: str) -> PipelineConfig:
    """A step's config from the snapshot's JSON text (``esmm_model.config.config_to_json``)."""
    return model_config.config_from_json(text, PipelineConfig)
