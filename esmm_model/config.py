"""One validated YAML file configures the whole pipeline.

The YAML is parsed once, at the edge, into frozen dataclasses. Code below this edge
takes dataclasses, never raw dicts. Every validation error names the offending key
path (for example ``features[3].preprocessing.vocab.top_k``) and says how to fix it.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

import yaml

from esmm_model.errors import ConfigError
from esmm_model.variants import VARIANTS

FeatureKind = Literal["id", "weighted_ids", "dense"]
Side = Literal["user", "context", "item"]
IdDtype = Literal["bytes", "int64"]
Combiner = Literal["sum", "mean"]

LABEL_CLICK = "click"
LABEL_CONVERSION = "conversion"
LABEL_CTCVR = "ctcvr"
LABELS = (LABEL_CLICK, LABEL_CONVERSION, LABEL_CTCVR)
WEIGHT_SUFFIX = "_weight"


@dataclass(frozen=True)
class Vocab:
    """A vocabulary computed on the train split; ids outside it go to OOV buckets."""

    top_k: Optional[int] = None
    min_frequency: int = 1
    oov_buckets: int = 1


@dataclass(frozen=True)
class Preprocessing:
    """Exactly one of the four preprocessing methods."""

    hash_buckets: Optional[int] = None
    vocab: Optional[Vocab] = None
    zscore: bool = False
    buckets: Optional[tuple[float, ...]] = None

    @property
    def method(self) -> str:
        if self.hash_buckets is not None:
            return "hash_buckets"
        if self.vocab is not None:
            return "vocab"
        if self.zscore:
            return "zscore"
        return "buckets"

    @property
    def is_categorical(self) -> bool:
        """True when the output is an id that indexes an embedding table."""
        return self.method != "zscore"


@dataclass(frozen=True)
class Feature:
    """One model feature: where it comes from, how it is preprocessed and embedded.

    ``source`` is the Ali-CCP field id that carries it (default: the name); a CSV log
    names its column by the feature name. ``side`` tells the serving client which
    features are the request's shared user/context part and which are per candidate.
    """

    name: str
    kind: FeatureKind
    side: Side
    preprocessing: Preprocessing
    source: Optional[str] = None
    dtype: IdDtype = "bytes"
    embedding_dim: Optional[int] = None
    shared_embedding: Optional[str] = None
    combiner: Combiner = "sum"

    @property
    def weight_name(self) -> str:
        """The tf.Example key of the weights that go with a weighted_ids feature."""
        return self.name + WEIGHT_SUFFIX

    @property
    def table_name(self) -> str:
        """The embedding table this feature reads: its shared group, or its own."""
        return self.shared_embedding or self.name


@dataclass(frozen=True)
class InputConfig:
    """Which raw format to read, how to split it by time, and how much of it may be rejected.

    ``max_rejected_fraction``: ingestion fails when a larger share of the impression lines
    is rejected (it still writes its outputs for inspection). ``max_line_bytes``: longer
    lines are rejected as ``line_too_long`` without being read into memory.
    """

    format: Literal["aliccp", "csv"] = "aliccp"
    order_by: str = "sample_id"
    train_fraction: float = 0.5
    conversion_without_click: Literal["reject", "keep"] = "reject"
    max_rejected_fraction: float = 0.01
    max_line_bytes: int = 1 << 20


@dataclass(frozen=True)
class ModelConfig:
    """The ESMM family: shared embeddings, two towers, and the paper's competitors."""

    variant: str = "esmm"  # a key of esmm_model.variants.VARIANTS
    embedding_dim: int = 18
    embedding_init_stddev: Optional[float] = None
    tower_units: tuple[int, ...] = (200, 80)
    activation: Literal["relu", "tanh", "gelu"] = "relu"
    dropout: float = 0.0
    ctr_loss_weight: float = 1.0
    ctcvr_loss_weight: float = 1.0
    aman_negative_rate: float = 0.1
    oversampling_k: int = 5
    unbias_min_ctr: float = 0.01


@dataclass(frozen=True)
class EpochEvalConfig:
    """The eval figures after each epoch (TensorBoard, history, early stopping); the final
    evaluation, after the last epoch trained, always scores the whole eval split exactly.

    ``mode``: ``sample`` scores the first ``rows`` eval rows (parsed once, held in memory),
    ``every`` the whole split, ``off`` nothing until the final evaluation. ``every_epochs``:
    evaluate after every K-th epoch only."""

    mode: Literal["sample", "every", "off"] = "sample"
    rows: int = 50_000
    every_epochs: int = 1


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation: the paper's Adam by default, Adagrad as the seed uses."""

    optimizer: Literal["adam", "adagrad"] = "adam"
    embedding_optimizer: Literal["same", "lazy_adam", "adagrad", "sgd"] = "lazy_adam"
    learning_rate: float = 0.001
    embedding_learning_rate: Optional[float] = None
    adam_beta_1: float = 0.9
    adam_beta_2: float = 0.999
    adam_epsilon: float = 1e-8
    batch_size: int = 4096
    epochs: int = 4
    steps_per_epoch: Optional[int] = None
    seed: int = 42
    early_stopping_patience: Optional[int] = None
    jit_compile: bool = False
    # With TF_CONFIG set: auto = parameter_server when it names ps tasks, else multi_worker_mirrored.
    distribution: Literal["auto", "multi_worker_mirrored", "parameter_server"] = "auto"
    # Under parameter_server: variables of at least this many bytes are split over the ps tasks.
    ps_min_shard_bytes: int = 256 << 10
    epoch_eval: EpochEvalConfig = EpochEvalConfig()
    # In one process, a train split of at most this many examples is parsed once and held in memory
    # (0: read and parse it every epoch).
    input_cache_rows: int = 1_000_000


@dataclass(frozen=True)
class BeamConfig:
    """Runner and options of every Beam step; ``components.beam_runner.beam_args`` adds a run's overrides."""

    runner: str = "DirectRunner"
    options: tuple[str, ...] = ()


# Metrics where a lower value is better; every other metric is higher-is-better.
LOWER_IS_BETTER = frozenset({"bce", "loss", "log_loss", "brier_score"})
# Metrics with no better direction (a rate should match the label's): bound them with min/max only.
DIRECTIONLESS = frozenset({"mean_prediction", "mean_label", "example_count", "calibration"})


@dataclass(frozen=True)
class Threshold:
    """A gate on one evaluation metric, addressed by path: ``cvr/clicked/auc``, ``entire_space/cvr_auc``.

    ``min`` and ``max`` bound the candidate's value. ``max_regression`` is the largest change
    for the worse allowed against the pushed model: a drop for higher-is-better metrics (AUCs),
    a rise for the lower-is-better ones in LOWER_IS_BETTER (bce).
    """

    metric: str
    min: Optional[float] = None
    max: Optional[float] = None
    max_regression: Optional[float] = None

    @property
    def metric_name(self) -> str:
        """The last path segment: ``auc`` for ``cvr/clicked/auc``."""
        return self.metric.rsplit("/", 1)[-1]

    @property
    def higher_is_better(self) -> bool:
        return self.metric_name not in LOWER_IS_BETTER


DEFAULT_THRESHOLDS = (
    Threshold("ctr/all/auc", min=0.55, max_regression=0.01),
    Threshold("ctcvr/all/auc", min=0.55, max_regression=0.01),
    Threshold("cvr/clicked/auc", min=0.52, max_regression=0.01),
)


@dataclass(frozen=True)
class EvaluationConfig:
    """The blessing gate: absolute bounds on the candidate, change bounds against the pushed model."""

    thresholds: tuple[Threshold, ...] = DEFAULT_THRESHOLDS


@dataclass(frozen=True)
class PushConfig:
    """Where blessed models go: ``<serving_base>/<model_name>/<version>/``, the last N versions kept."""

    model_name: str = "esmm"
    keep_versions: int = 5


@dataclass(frozen=True)
class StepResources:
    """One step's pod: CPU and memory requests and limits in Kubernetes quantities ("500m", "2", "8Gi")."""

    cpu: Optional[str] = None
    memory: Optional[str] = None
    cpu_limit: Optional[str] = None
    memory_limit: Optional[str] = None


# Requests per step when the config names none: TF training and TFMA are the heavy pods.
BUILTIN_RESOURCES = {"snapshot": ("500m", "1Gi"), "ingest": ("2", "4Gi"), "transform": ("2", "8Gi"),
                     "train": ("4", "8Gi"), "evaluate": ("2", "8Gi"), "push": ("1", "2Gi")}


@dataclass(frozen=True)
class ResourcesConfig:
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

    def for_step(self, step: str) -> StepResources:
        """The step's requests and limits, every field filled."""
        own, default = getattr(self, step), self.default
        builtin_cpu, builtin_memory = BUILTIN_RESOURCES[step]
        cpu = own.cpu or default.cpu or builtin_cpu
        memory = own.memory or default.memory or builtin_memory
        return StepResources(cpu=cpu, memory=memory, cpu_limit=own.cpu_limit or default.cpu_limit or cpu,
                             memory_limit=own.memory_limit or default.memory_limit or memory)


@dataclass(frozen=True)
class KubernetesConfig:
    """How the compiled pipeline's pods run: resources per step, and retries of the transient steps."""

    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    retries: int = 2
    retry_backoff_s: int = 60
    # 0: the train step trains in its own pod; N: it runs a TFJob of N workers (pipelines.tfjob),
    # which needs the work volume.
    train_workers: int = 0


@dataclass(frozen=True)
class Config:
    """The root of the YAML file."""

    name: str
    features: tuple[Feature, ...]
    input: InputConfig = field(default_factory=InputConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    beam: BeamConfig = field(default_factory=BeamConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    push: PushConfig = field(default_factory=PushConfig)
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)

    def feature(self, name: str) -> Feature:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(name)

    def embedding_dim(self, feature: Feature) -> int:
        return feature.embedding_dim or self.model.embedding_dim

    def features_on(self, side: Side) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.side == side)

    def shared_groups(self) -> dict[str, tuple[Feature, ...]]:
        groups: dict[str, list[Feature]] = {}
        for feature in self.features:
            if feature.shared_embedding:
                groups.setdefault(feature.shared_embedding, []).append(feature)
        return {name: tuple(members) for name, members in groups.items()}

    def to_dict(self) -> dict[str, Any]:
        """A plain-data form that round-trips through ``config_from_dict``."""
        return _to_plain(self)


SHIPPED_CONFIGS = "esmm_model.configs"
_YAML_SUFFIXES = (".yaml", ".yml")


def shipped_config_names() -> list[str]:
    """The configs shipped inside the package (``simulator``, ``aliccp``, ...), read through importlib.resources."""
    return sorted(entry.name.rsplit(".", 1)[0] for entry in importlib.resources.files(SHIPPED_CONFIGS).iterdir()
                  if entry.name.endswith(_YAML_SUFFIXES))


def is_shipped_name(ref: str | os.PathLike) -> bool:
    """True when ``ref`` names a shipped config rather than a file: no directory, no scheme, no YAML suffix."""
    ref = os.fspath(ref)
    return bool(ref) and "/" not in ref and os.sep not in ref and not ref.endswith(_YAML_SUFFIXES)


def portable_config_ref(ref: str | os.PathLike) -> str:
    """``ref`` as another process can read it: shipped names and URIs unchanged, local paths made absolute."""
    ref = os.fspath(ref)
    if is_shipped_name(ref) or "://" in ref:
        return ref
    return os.path.abspath(ref)


def read_config_text(ref: str | os.PathLike) -> str:
    """The YAML text of a shipped config name, or of a local path or URI (``gs://...``) read with tf.io.gfile."""
    ref = os.fspath(ref)
    if is_shipped_name(ref):
        resource = importlib.resources.files(SHIPPED_CONFIGS) / f"{ref}.yaml"
        if not resource.is_file():
            raise ConfigError(f"config {ref!r} is neither a shipped config ({', '.join(shipped_config_names())}) "
                              f"nor a path to a .yaml file")
        return resource.read_text(encoding="utf-8")
    import tensorflow as tf  # only a file or URI needs TensorFlow's filesystems

    try:
        if not tf.io.gfile.exists(ref) or tf.io.gfile.isdir(ref):
            raise ConfigError(f"config file {ref!r} does not exist")
        with tf.io.gfile.GFile(ref, "r") as handle:
            return handle.read()
    except tf.errors.OpError as exc:
        raise ConfigError(f"config file {ref!r} cannot be read: {' '.join(exc.message.split())}") from None


def load_config(ref: str | os.PathLike) -> Config:
    """Reads and validates a config: a shipped name (``aliccp``) or a YAML path or URI; errors name the file and key."""
    ref = os.fspath(ref)
    text = read_config_text(ref)
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {ref!r} is not valid YAML: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{ref}: {exc}") from None
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{ref}: {exc}") from None


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading numbers with an exponent as YAML 1.2 and JSON do: YAML 1.1 makes
    ``1e-8`` (no dot) and ``1.0e5`` (unsigned exponent) strings, so ``adam_epsilon: 1e-8`` would be refused."""


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"))


def parse_yaml(text: str) -> Any:
    """Plain data from YAML text (``ConfigLoader``); a key repeated within one mapping is a ConfigError
    naming its path (plain YAML loading keeps the last value silently)."""
    _reject_duplicate_keys(yaml.compose(text, Loader=ConfigLoader), "")
    return yaml.load(text, Loader=ConfigLoader)


def _reject_duplicate_keys(node: Optional[yaml.Node], where: str) -> None:
    if isinstance(node, yaml.MappingNode):
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else key_node.start_mark.line
            path = _join(where, str(key))
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise ConfigError(f"{path}: duplicate key on line {line} (first on line {first_line[key]}); "
                                  f"keep one of them")
            first_line[key] = line
            _reject_duplicate_keys(value_node, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _reject_duplicate_keys(item, f"{where}[{i}]")


def config_from_dict(data: Any) -> Config:
    """Validates plain data (as parsed from YAML) into a Config."""
    if not isinstance(data, dict):
        raise ConfigError("the config must be a mapping at the top level")
    config = _build(Config, data, "")
    if config.model.variant not in VARIANTS:
        raise ConfigError(f"model.variant: {config.model.variant!r} is not one of {', '.join(VARIANTS)}")
    _check_numbers(config)
    _check_features(config)
    _check_evaluation_and_push(config)
    _check_kubernetes(config.kubernetes)
    return config


def _check_features(config: Config) -> None:
    if not config.features:
        raise ConfigError("features: at least one feature is required")
    seen: dict[str, int] = {}
    reserved = set(LABELS) | {config.input.order_by, "sample_id"}
    for i, feature in enumerate(config.features):
        where = f"features[{i}] ({feature.name})"
        if not feature.name.isidentifier():
            raise ConfigError(f"{where}.name: use letters, digits and underscores, not {feature.name!r}")
        if feature.name in seen:
            raise ConfigError(f"{where}.name: duplicate feature name, first used by features[{seen[feature.name]}]")
        if feature.name in reserved:
            raise ConfigError(f"{where}.name: {feature.name!r} is reserved for labels and ordering")
        if feature.name.endswith(WEIGHT_SUFFIX):
            raise ConfigError(f"{where}.name: names ending in {WEIGHT_SUFFIX!r} are reserved for weights")
        seen[feature.name] = i
        method = feature.preprocessing.method
        if feature.kind == "dense" and method not in ("zscore", "buckets"):
            raise ConfigError(f"{where}.preprocessing: a dense feature takes zscore or buckets, not {method}")
        if feature.kind != "dense" and method not in ("hash_buckets", "vocab"):
            raise ConfigError(f"{where}.preprocessing: an {feature.kind} feature takes hash_buckets or vocab, not "
                              f"{method}")
        if feature.shared_embedding and not feature.preprocessing.is_categorical:
            raise ConfigError(f"{where}.shared_embedding: a z-scored dense feature has no embedding to share")
        if feature.combiner != "sum" and feature.kind != "weighted_ids":
            raise ConfigError(f"{where}.combiner: only weighted_ids features are pooled")
    sources: dict[str, str] = {}
    for feature in config.features:
        source = feature.source or feature.name
        if source in sources:
            raise ConfigError(f"features ({feature.name}).source: {source!r} is already read by {sources[source]}")
        sources[source] = feature.name
    for group, members in config.shared_groups().items():
        first = members[0]
        for other in members[1:]:
            if other.preprocessing != first.preprocessing:
                raise ConfigError(
                    f"shared_embedding {group!r}: {first.name} and {other.name} use different preprocessing "
                    f"({_to_plain(first.preprocessing)} vs {_to_plain(other.preprocessing)}); members of a group must "
                    "map into one id space")
            if config.embedding_dim(other) != config.embedding_dim(first):
                raise ConfigError(f"shared_embedding {group!r}: {first.name} and {other.name} have different "
                                  "embedding_dim")
            if other.dtype != first.dtype:
                raise ConfigError(f"shared_embedding {group!r}: {first.name} is {first.dtype} but {other.name} is "
                                  f"{other.dtype}")
        if group in seen and config.feature(group).shared_embedding != group:
            raise ConfigError(f"shared_embedding {group!r}: the group name clashes with feature {group!r}")


def _check_numbers(config: Config) -> None:
    def positive(value: float | int | None, where: str) -> None:
        if value is not None and value <= 0:
            raise ConfigError(f"{where}: must be positive, got {value}")

    for i, feature in enumerate(config.features):
        where = f"features[{i}] ({feature.name})"
        pre = feature.preprocessing
        positive(pre.hash_buckets, f"{where}.preprocessing.hash_buckets")
        positive(feature.embedding_dim, f"{where}.embedding_dim")
        if pre.vocab is not None:
            positive(pre.vocab.top_k, f"{where}.preprocessing.vocab.top_k")
            positive(pre.vocab.min_frequency, f"{where}.preprocessing.vocab.min_frequency")
            if pre.vocab.oov_buckets < 1:
                raise ConfigError(f"{where}.preprocessing.vocab.oov_buckets: must be at least 1")
        if pre.buckets is not None:
            if not pre.buckets:
                raise ConfigError(f"{where}.preprocessing.buckets: give at least one boundary")
            if list(pre.buckets) != sorted(set(pre.buckets)):
                raise ConfigError(f"{where}.preprocessing.buckets: boundaries must be strictly increasing")
    if config.input.format == "aliccp" and config.input.order_by != "sample_id":
        raise ConfigError(f"input.order_by: Ali-CCP raw logs are ordered by sample_id, not {config.input.order_by!r}")
    if not 0.0 < config.input.train_fraction < 1.0:
        raise ConfigError(f"input.train_fraction: must lie strictly between 0 and 1, got {config.input.train_fraction}")
    if not 0.0 <= config.input.max_rejected_fraction <= 1.0:
        raise ConfigError("input.max_rejected_fraction: must lie between 0 and 1, got "
                          f"{config.input.max_rejected_fraction}")
    positive(config.input.max_line_bytes, "input.max_line_bytes")
    positive(config.model.embedding_dim, "model.embedding_dim")
    positive(config.model.embedding_init_stddev, "model.embedding_init_stddev")
    if not config.model.tower_units or any(u <= 0 for u in config.model.tower_units):
        raise ConfigError("model.tower_units: give one or more positive layer widths")
    if not 0.0 <= config.model.dropout < 1.0:
        raise ConfigError(f"model.dropout: must lie in [0, 1), got {config.model.dropout}")
    if not 0.0 < config.model.aman_negative_rate <= 1.0:
        raise ConfigError("model.aman_negative_rate: must lie in (0, 1]")
    positive(config.model.oversampling_k, "model.oversampling_k")
    if not 0.0 < config.model.unbias_min_ctr < 1.0:
        raise ConfigError("model.unbias_min_ctr: must lie in (0, 1)")
    for key in ("learning_rate", "batch_size", "epochs", "steps_per_epoch", "embedding_learning_rate",
                "early_stopping_patience", "ps_min_shard_bytes"):
        positive(getattr(config.training, key), f"training.{key}")
    positive(config.training.epoch_eval.rows, "training.epoch_eval.rows")
    if config.training.input_cache_rows < 0:
        raise ConfigError("training.input_cache_rows: must be 0 (no cache) or more, got "
                          f"{config.training.input_cache_rows}")
    positive(config.training.epoch_eval.every_epochs, "training.epoch_eval.every_epochs")
    if config.training.early_stopping_patience and (config.training.epoch_eval.mode == "off"
                                                    or config.training.epoch_eval.every_epochs != 1):
        raise ConfigError("training.early_stopping_patience: early stopping reads an evaluation after every epoch; "
                          "set training.epoch_eval.mode to sample or every, with every_epochs 1")


def _check_evaluation_and_push(config: Config) -> None:
    seen: dict[str, int] = {}
    for i, threshold in enumerate(config.evaluation.thresholds):
        where = f"evaluation.thresholds[{i}]"
        parts = threshold.metric.split("/")
        if len(parts) < 2 or not all(part.strip() for part in parts):
            raise ConfigError(f"{where}.metric: give a metric path like cvr/clicked/auc or entire_space/cvr_auc, "
                              f"not {threshold.metric!r}")
        if threshold.metric in seen:
            raise ConfigError(f"{where}.metric: {threshold.metric!r} is already gated by "
                              f"evaluation.thresholds[{seen[threshold.metric]}]; "
                              f"merge the two entries")
        seen[threshold.metric] = i
        bounds = {"min": threshold.min, "max": threshold.max, "max_regression": threshold.max_regression}
        if all(value is None for value in bounds.values()):
            raise ConfigError(f"{where} ({threshold.metric}): give at least one of min, max, max_regression")
        for key, value in bounds.items():
            if value is not None and not math.isfinite(value):
                raise ConfigError(f"{where}.{key}: must be a finite number, got {value}")
        if threshold.min is not None and threshold.max is not None and threshold.min > threshold.max:
            raise ConfigError(f"{where} ({threshold.metric}): min {threshold.min} exceeds max {threshold.max}")
        if threshold.max_regression is not None:
            if threshold.max_regression < 0:
                raise ConfigError(f"{where}.max_regression: must be zero or positive, got {threshold.max_regression}")
            if threshold.metric_name in DIRECTIONLESS:
                raise ConfigError(f"{where}.max_regression: {threshold.metric_name} has no better direction, "
                                  f"so it cannot regress; bound it with min and max instead")
    name = config.push.model_name
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name) or name.isdigit():
        raise ConfigError(f"push.model_name: use letters, digits, '_', '-' and '.', not all digits, got {name!r}")
    if config.push.keep_versions < 1:
        raise ConfigError(f"push.keep_versions: keep at least 1 version, got {config.push.keep_versions}")


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


def _check_kubernetes(kubernetes: KubernetesConfig) -> None:
    if kubernetes.retries < 0:
        raise ConfigError(f"kubernetes.retries: must be zero or more, got {kubernetes.retries}")
    if kubernetes.retry_backoff_s < 1:
        raise ConfigError(f"kubernetes.retry_backoff_s: must be at least 1 second, got {kubernetes.retry_backoff_s}")
    if kubernetes.train_workers < 0:
        raise ConfigError(f"kubernetes.train_workers: 0 trains in the step's pod, N >= 1 in a TFJob of N workers; "
                          f"got {kubernetes.train_workers}")
    resources = kubernetes.resources
    for step in ("default", *BUILTIN_RESOURCES):
        where = f"kubernetes.resources.{step}"
        own = getattr(resources, step)
        for key, parse, example in (("cpu", cpu_cores, "500m or 2"), ("cpu_limit", cpu_cores, "500m or 2"),
                                    ("memory", memory_bytes, "512Mi or 8Gi"),
                                    ("memory_limit", memory_bytes, "512Mi or 8Gi")):
            value = getattr(own, key)
            if value is None:
                continue
            try:
                amount = parse(value)
            except ValueError:
                raise ConfigError(f"{where}.{key}: {value!r} is not a Kubernetes quantity; write it like "
                                  f"{example}") from None
            if amount <= 0:
                raise ConfigError(f"{where}.{key}: must be positive, got {value!r}")
        if step == "default":
            continue
        final = resources.for_step(step)
        if cpu_cores(final.cpu_limit) < cpu_cores(final.cpu):
            raise ConfigError(f"{where}.cpu_limit: {final.cpu_limit} is below the request {final.cpu}")
        if memory_bytes(final.memory_limit) < memory_bytes(final.memory):
            raise ConfigError(f"{where}.memory_limit: {final.memory_limit} is below the request {final.memory}")


def _parse_preprocessing(data: Any, where: str) -> Preprocessing:
    if data == "zscore":
        return Preprocessing(zscore=True)
    if not isinstance(data, dict) or len(data) != 1:
        raise ConfigError(
            f"{where}: give exactly one of hash_buckets: N, vocab: {{top_k, min_frequency, oov_buckets}}, "
            f"zscore, buckets: [boundaries]; got {data!r}")
    (key, value), = data.items()
    if key == "hash_buckets":
        return Preprocessing(hash_buckets=_coerce(int, value, f"{where}.hash_buckets"))
    if key == "vocab":
        return Preprocessing(vocab=_build(Vocab, value or {}, f"{where}.vocab"))
    if key == "zscore":
        return Preprocessing(zscore=True)
    if key == "buckets":
        return Preprocessing(buckets=_coerce(tuple[float, ...], value, f"{where}.buckets"))
    raise ConfigError(f"{where}: unknown preprocessing {key!r}; use hash_buckets, vocab, zscore or buckets")


_CUSTOM_PARSERS = {Preprocessing: _parse_preprocessing}


def _build(cls: type, data: Any, where: str) -> Any:
    """Builds dataclass ``cls`` from a mapping, checking keys and types by annotation."""
    if cls in _CUSTOM_PARSERS:
        return _CUSTOM_PARSERS[cls](data, where)
    label = where or "the config"
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{_join(where, unknown[0])}: unknown key; known keys are {', '.join(sorted(fields))}")
    values = {}
    for name, f in fields.items():
        if name in data:
            values[name] = _coerce(hints[name], data[name], _join(where, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(where, name)}: required key is missing")
    return cls(**values)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """``value`` checked against type ``hint`` (and converted: lists to tuples, ints to floats);
    a ConfigError names ``where`` and what was expected."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:
            return _coerce(members[0], value, where)
        for member in members:  # the first member that takes the value, in declared order
            try:
                return _coerce(member, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {' or '.join(_describe(m) for m in members)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(args[0], item, f"{where}[{i}]") for i, item in enumerate(value))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_hint, value_hint = args or (str, Any)
        items = {}
        for key, item in value.items():
            at = _join(where, str(key))
            items[_coerce(key_hint, key, at)] = _coerce(value_hint, item, at)
        return types.MappingProxyType(items)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"no coercion for {hint} at {where}")


def _describe(hint: Any) -> str:
    """What a value of type ``hint`` looks like in YAML, for error messages."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(hint)))
    if origin is tuple:
        return "a list"
    if origin is dict or hint is dict or dataclasses.is_dataclass(hint):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _to_plain(value: Any) -> Any:
    if isinstance(value, Preprocessing):
        if value.zscore:
            return "zscore"
        method = value.method
        return {method: _to_plain(getattr(value, method))}
    if dataclasses.is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if getattr(value, f.name) is not None}
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    if isinstance(value, types.MappingProxyType):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


def config_to_json(config: Config) -> str:
    """The config as canonical JSON text: equal configs give equal text (a pipeline's cache keys hold it)."""
    return json.dumps(config.to_dict(), sort_keys=True)


def config_from_json(text: str) -> Config:
    """The inverse of ``config_to_json``, validated again."""
    return config_from_dict(json.loads(text))


def with_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """A new Config with ``overrides`` (a nested mapping, e.g. {"model": {"variant": "base"}}) deep-merged
    and re-validated."""
    def merge(base: dict, extra: dict) -> dict:
        merged = dict(base)
        for key, value in extra.items():
            merged[key] = merge(merged.get(key) or {}, value) if isinstance(value, dict) else value
        return merged

    return config_from_dict(merge(config.to_dict(), overrides))
