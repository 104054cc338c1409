"""One validated YAML file configures the whole pipeline.

The YAML is parsed once, at the edge, into frozen pydantic models: the classes below are the
schema, typing, defaulting and bounding every key. Code below this edge takes these objects,
never raw dicts. Every validation error is one line naming the offending key path (for example
``features[3].preprocessing.vocab.top_k``) and, for a file, its line.

``pipelines.config`` extends ``Config`` with the Kubernetes section; this module knows nothing of pods.
"""
from __future__ import annotations

import importlib.resources
import json
import os
import re
from typing import Annotated, Any, Literal, Optional, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Strict,
    StrictBool,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from esmm_model.errors import ConfigError
from esmm_model.variants import VARIANTS

FeatureKind = Literal["id", "weighted_ids", "dense"]
Side = Literal["user", "context", "item"]
IdDtype = Literal["bytes", "int64"]
Combiner = Literal["sum", "mean", "softmax"]

LABEL_CLICK = "click"
LABEL_CONVERSION = "conversion"
LABEL_CTCVR = "ctcvr"
LABELS = (LABEL_CLICK, LABEL_CONVERSION, LABEL_CTCVR)
WEIGHT_SUFFIX = "_weight"


class ConfigKeyError(ConfigError):
    """A config error at one key; ``loc`` is its path as keys and list indices, to find its line in the YAML."""

    def __init__(self, message: str, loc: tuple[str | int, ...]):
        super().__init__(message)
        self.loc = loc


def invalid(message: str, *at: str | int, value_check: bool = False, show_input: bool = False) -> PydanticCustomError:
    """A validation error for a section's validator to raise. ``at``: the keys below the section it concerns;
    ``value_check``: a bad value rather than a bad shape, so the error names the feature it is in;
    ``show_input``: the message ends with the value as the YAML gave it (``got 7``)."""
    return PydanticCustomError("config_value" if value_check else "config", "{message}",
                               {"message": message, "at": at, "show_input": show_input})


def bounded(*, gt: float | None = None, ge: float | None = None, lt: float | None = None,
            le: float | None = None) -> AfterValidator:
    """A range check for ``Annotated[number, bounded(...)]``: a lower bound, and maybe an upper one; its error
    says the whole range (``must lie in [0, 1)``)."""
    low, high = (gt if gt is not None else ge), (lt if lt is not None else le)
    if high is None:
        wording = ("be positive" if low == 0 else f"exceed {low}") if gt is not None else (
            "be zero or more" if low == 0 else f"be at least {low}")
    else:
        left, right = "(" if gt is not None else "[", ")" if lt is not None else "]"
        wording = {"()": f"lie strictly between {low} and {high}", "[]": f"lie between {low} and {high}"}.get(
            left + right, f"lie in {left}{low}, {high}{right}")

    def check(value: float) -> float:
        if ((gt is not None and value <= gt) or (ge is not None and value < ge)
                or (lt is not None and value >= lt) or (le is not None and value > le)):
            raise invalid(f"must {wording}", value_check=True, show_input=True)
        return value

    return AfterValidator(check)


# YAML's 3.0, true or "3" is not an integer here, nor is "1e-8" (quoted) a number; an integer is a fine number.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), AllowInfNan(False)]
PositiveInt = Annotated[Int, bounded(gt=0)]
PositiveFloat = Annotated[Float, bounded(gt=0)]


class ConfigSection(BaseModel):
    """A frozen section of the config: unknown keys, wrong types and numbers out of range are errors.
    Numbers given where a string is expected (``source: 101``) are read as that string."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    @model_validator(mode="before")
    @classmethod
    def _read(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(str(key) for key in data if key not in cls.model_fields)
            if unknown:
                raise invalid(f"unknown key; known keys are {', '.join(sorted(cls.model_fields))}", unknown[0])
        return data


class Vocab(ConfigSection):
    """A vocabulary computed on the train split; ids outside it go to OOV buckets."""

    top_k: Optional[PositiveInt] = None
    min_frequency: PositiveInt = 1
    oov_buckets: Annotated[Int, bounded(ge=1)] = 1


class AutoSize(ConfigSection):
    """A table sized from the train split by tf.Transform's analyzers (``esmm_model.preprocessing``).

    When at most ``max_vocab`` ids occur ``min_frequency`` times or more, they get an exact vocabulary
    plus ``oov_buckets``; otherwise every id is hashed into ``hash_rows_per_id`` × (distinct ids) rows.
    """

    min_frequency: PositiveInt = 1
    oov_buckets: Annotated[Int, bounded(ge=1)] = 1
    max_vocab: PositiveInt = 1_000_000
    hash_rows_per_id: PositiveFloat = 1.0


class Preprocessing(ConfigSection):
    """Exactly one of the five preprocessing methods. In YAML: ``zscore`` or ``auto``, or a mapping of one key,
    ``hash_buckets: N``, ``vocab: {top_k, min_frequency, oov_buckets}``,
    ``auto: {min_frequency, oov_buckets, max_vocab, hash_rows_per_id}`` or ``buckets: [boundaries]``."""

    hash_buckets: Optional[PositiveInt] = None
    vocab: Optional[Vocab] = None
    zscore: StrictBool = False
    buckets: Optional[tuple[Float, ...]] = None
    auto: Optional[AutoSize] = None

    @model_validator(mode="before")
    @classmethod
    def _read(cls, data: Any) -> Any:
        if isinstance(data, Preprocessing):
            return data
        if data == "zscore":
            return {"zscore": True}
        if data == "auto":
            return {"auto": {}}
        if not isinstance(data, dict) or len(data) != 1:
            raise invalid("give exactly one of hash_buckets: N, vocab: {top_k, min_frequency, oov_buckets}, "
                          "auto: {min_frequency, oov_buckets, max_vocab, hash_rows_per_id}, zscore, "
                          f"buckets: [boundaries]; got {data!r}")
        (key, value), = data.items()
        if key == "zscore":
            return {"zscore": True}
        if key in ("vocab", "auto"):
            return {key: {} if value is None else value}
        if key not in ("hash_buckets", "buckets"):
            raise invalid(f"unknown preprocessing {key!r}; use hash_buckets, vocab, auto, zscore or buckets")
        return data

    @field_validator("buckets")
    @classmethod
    def _increasing(cls, buckets: Optional[tuple[float, ...]]) -> Optional[tuple[float, ...]]:
        if buckets is None:
            return None
        if not buckets:
            raise invalid("give at least one boundary", value_check=True)
        if list(buckets) != sorted(set(buckets)):
            raise invalid("boundaries must be strictly increasing", value_check=True)
        return buckets

    @model_serializer(mode="wrap")
    def _yaml_form(self, handler: Any) -> Any:
        """The YAML form: ``zscore``, or ``{method: value}``."""
        return "zscore" if self.zscore else {self.method: handler(self)[self.method]}

    @property
    def method(self) -> str:
        if self.hash_buckets is not None:
            return "hash_buckets"
        if self.vocab is not None:
            return "vocab"
        if self.auto is not None:
            return "auto"
        if self.zscore:
            return "zscore"
        return "buckets"

    @property
    def is_categorical(self) -> bool:
        """True when the output is an id that indexes an embedding table."""
        return self.method != "zscore"


class Feature(ConfigSection):
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
    embedding_dim: Optional[PositiveInt] = None
    shared_embedding: Optional[str] = None
    combiner: Combiner = "sum"

    @model_validator(mode="after")
    def _fits_kind(self) -> Feature:
        method = self.preprocessing.method
        if self.kind == "dense" and method not in ("zscore", "buckets"):
            raise invalid(f"a dense feature takes zscore or buckets, not {method}", "preprocessing", value_check=True)
        if self.kind != "dense" and method not in ("hash_buckets", "vocab", "auto"):
            raise invalid(f"an {self.kind} feature takes hash_buckets, vocab or auto, not {method}", "preprocessing",
                          value_check=True)
        if self.shared_embedding and not self.preprocessing.is_categorical:
            raise invalid("a z-scored dense feature has no embedding to share", "shared_embedding", value_check=True)
        if self.combiner != "sum" and self.kind != "weighted_ids":
            raise invalid("only weighted_ids features are pooled", "combiner", value_check=True)
        return self

    @property
    def weight_name(self) -> str:
        """The tf.Example key of the weights that go with a weighted_ids feature."""
        return self.name + WEIGHT_SUFFIX

    @property
    def table_name(self) -> str:
        """The embedding table this feature reads: its shared group, or its own."""
        return self.shared_embedding or self.name


class InputConfig(ConfigSection):
    """Which raw format to read, how to split it by time, and how much of it may be rejected.

    ``max_rejected_fraction``: ingestion fails when a larger share of the impression lines
    is rejected (it still writes its outputs for inspection). ``max_line_bytes``: longer
    lines are rejected as ``line_too_long`` without being read into memory.
    ``min_feature_presence``: ingestion fails when a feature's input field is present in a
    smaller share of the rows it keeps (a config that names fields the log does not carry).
    """

    format: Literal["aliccp", "csv"] = "aliccp"
    order_by: str = "sample_id"
    train_fraction: Annotated[Float, bounded(gt=0, lt=1)] = 0.5
    conversion_without_click: Literal["reject", "keep"] = "reject"
    max_rejected_fraction: Annotated[Float, bounded(ge=0, le=1)] = 0.01
    max_line_bytes: PositiveInt = 1 << 20
    min_feature_presence: Annotated[Float, bounded(ge=0, le=1)] = 0.01

    @model_validator(mode="after")
    def _ordered_as_the_format_is(self) -> InputConfig:
        if self.format == "aliccp" and self.order_by != "sample_id":
            raise invalid(f"Ali-CCP raw logs are ordered by sample_id, not {self.order_by!r}", "order_by")
        return self


Fraction = Annotated[Float, bounded(gt=0, lt=1)]


class Escm2Config(ConfigSection):
    """ESCM²'s counterfactual regulariser (variants escm2_ips, escm2_dr; esmm_model.losses).

    ``counterfactual_weight``: λ_c, the regulariser's weight beside the CTR and CTCVR losses (the
    authors' release uses 0.5). ``propensity_clip``: pCTR is clipped from below to this before it
    divides, so no clicked impression weighs more than 1 / propensity_clip.
    """

    counterfactual_weight: Annotated[Float, bounded(ge=0)] = 0.5
    propensity_clip: Fraction = 0.05


class ModelConfig(ConfigSection):
    """The ESMM family: shared embeddings, two towers, and the paper's competitors."""

    variant: str = "esmm"  # a key of esmm_model.variants.VARIANTS, read when validating (a registry one may extend)
    embedding_dim: PositiveInt = 18
    embedding_init_stddev: Optional[PositiveFloat] = None
    # λ of an L2 penalty λ·Σ w² over every row of every table (DeepCTR's l2_reg_embedding). lazy_adam applies it
    # lazily, at the cost of the rows a batch touches (esmm_model/optimizers.py); with any other tables' optimizer
    # its gradient reaches every row on every step. 0: none.
    embedding_l2: Annotated[Float, bounded(ge=0)] = 0.0
    tower_units: tuple[PositiveInt, ...] = (200, 80)
    activation: Literal["relu", "tanh", "gelu"] = "relu"
    dropout: Annotated[Float, bounded(ge=0, lt=1)] = 0.0
    ctr_loss_weight: Annotated[Float, bounded(ge=0)] = 1.0
    ctcvr_loss_weight: Annotated[Float, bounded(ge=0)] = 1.0
    aman_negative_rate: Annotated[Float, bounded(gt=0, le=1)] = 0.1
    oversampling_k: PositiveInt = 5
    unbias_min_ctr: Fraction = 0.01
    escm2: Escm2Config = Escm2Config()

    @field_validator("variant")
    @classmethod
    def _registered(cls, variant: str) -> str:
        if variant not in VARIANTS:
            raise invalid(f"{variant!r} is not one of {', '.join(VARIANTS)}")
        return variant

    @field_validator("tower_units")
    @classmethod
    def _some_layers(cls, units: tuple[int, ...]) -> tuple[int, ...]:
        if not units:
            raise invalid("give one or more positive layer widths")
        return units

    @model_validator(mode="after")
    def _some_loss(self) -> ModelConfig:
        if self.ctr_loss_weight == 0 and self.ctcvr_loss_weight == 0:
            raise invalid("ctr_loss_weight and ctcvr_loss_weight are both 0, so nothing would train; make one "
                          "positive", "ctcvr_loss_weight")
        return self


class EpochEvalConfig(ConfigSection):
    """The eval figures after each epoch (TensorBoard, history, early stopping); the final
    evaluation, after the last epoch trained, always scores the whole eval split exactly.

    ``mode``: ``sample`` scores the first ``rows`` eval rows (parsed once, held in memory),
    ``every`` the whole split, ``off`` nothing until the final evaluation. ``every_epochs``:
    evaluate after every K-th epoch only."""

    mode: Literal["sample", "every", "off"] = "sample"
    rows: PositiveInt = 50_000
    every_epochs: PositiveInt = 1


class TrainingConfig(ConfigSection):
    """Optimisation: the paper's Adam by default, Adagrad as the seed uses."""

    optimizer: Literal["adam", "adagrad"] = "adam"
    embedding_optimizer: Literal["same", "lazy_adam", "adagrad", "sgd"] = "lazy_adam"
    learning_rate: PositiveFloat = 0.001
    embedding_learning_rate: Optional[PositiveFloat] = None
    adam_beta_1: Fraction = 0.9
    adam_beta_2: Fraction = 0.999
    adam_epsilon: PositiveFloat = 1e-8
    batch_size: PositiveInt = 4096
    epochs: PositiveInt = 4
    steps_per_epoch: Optional[PositiveInt] = None
    seed: Annotated[Int, bounded(ge=0, le=2**32 - 1)] = 42  # NumPy's seed range (keras.utils.set_random_seed)
    early_stopping_patience: Optional[PositiveInt] = None
    jit_compile: StrictBool = False
    # With TF_CONFIG set: auto = parameter_server when it names ps tasks, else multi_worker_mirrored.
    distribution: Literal["auto", "multi_worker_mirrored", "parameter_server"] = "auto"
    # Under parameter_server: variables of at least this many bytes are split over the ps tasks.
    ps_min_shard_bytes: PositiveInt = 256 << 10
    epoch_eval: EpochEvalConfig = EpochEvalConfig()
    # In one process, a train split of at most this many examples is parsed once and held in memory
    # (0: read and parse it every epoch).
    input_cache_rows: Annotated[Int, bounded(ge=0)] = 1_000_000

    @model_validator(mode="after")
    def _early_stopping_sees_every_epoch(self) -> TrainingConfig:
        if self.early_stopping_patience and (self.epoch_eval.mode == "off" or self.epoch_eval.every_epochs != 1):
            raise invalid("early stopping reads an evaluation after every epoch; set training.epoch_eval.mode to "
                          "sample or every, with every_epochs 1", "early_stopping_patience")
        return self


class BeamConfig(ConfigSection):
    """Runner and options of every Beam step; ``components.beam_runner.beam_args`` adds a run's overrides."""

    runner: str = "DirectRunner"
    options: tuple[str, ...] = ()


# Metrics where a lower value is better; every other metric is higher-is-better.
LOWER_IS_BETTER = frozenset({"bce", "loss", "log_loss", "brier_score"})
# Metrics with no better direction (a rate should match the label's): bound them with min/max only.
DIRECTIONLESS = frozenset({"mean_prediction", "mean_label", "example_count", "calibration"})


class Threshold(ConfigSection):
    """A gate on one evaluation metric, addressed by path: ``cvr/clicked/auc``, ``entire_space/cvr_auc``.

    ``min`` and ``max`` bound the candidate's value. ``max_regression`` is the largest change
    for the worse allowed against the pushed model: a drop for higher-is-better metrics (AUCs),
    a rise for the lower-is-better ones in LOWER_IS_BETTER (bce).
    """

    metric: str
    min: Optional[Float] = None
    max: Optional[Float] = None
    max_regression: Optional[Annotated[Float, bounded(ge=0)]] = None

    def __init__(self, metric: Optional[str] = None, /, **data: Any) -> None:
        """``Threshold("cvr/clicked/auc", min=0.52)``: the metric may come first, by position."""
        super().__init__(**(data if metric is None else {"metric": metric, **data}))

    @field_validator("metric")
    @classmethod
    def _a_path(cls, metric: str) -> str:
        parts = metric.split("/")
        if len(parts) < 2 or not all(part.strip() for part in parts):
            raise invalid(f"give a metric path like cvr/clicked/auc or entire_space/cvr_auc, not {metric!r}")
        return metric

    @model_validator(mode="after")
    def _bounds_fit(self) -> Threshold:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise invalid(f"min {self.min} exceeds max {self.max}")
        if self.max_regression is not None and self.metric_name in DIRECTIONLESS:
            raise invalid(f"{self.metric_name} has no better direction, so it cannot regress; bound it with min "
                          f"and max instead", "max_regression")
        return self

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


class EvaluationConfig(ConfigSection):
    """The blessing gate: absolute bounds on the candidate, change bounds against the pushed model."""

    thresholds: tuple[Threshold, ...] = DEFAULT_THRESHOLDS

    @model_validator(mode="after")
    def _gates_complete_and_distinct(self) -> EvaluationConfig:
        seen: dict[str, int] = {}
        for i, threshold in enumerate(self.thresholds):
            if threshold.min is None and threshold.max is None and threshold.max_regression is None:
                raise invalid("give at least one of min, max, max_regression", "thresholds", i)
            if threshold.metric in seen:
                first = seen[threshold.metric]
                raise invalid(f"{threshold.metric!r} is already gated by evaluation.thresholds[{first}]; merge the "
                              "two entries", "thresholds", i, "metric")
            seen[threshold.metric] = i
        return self


class PushConfig(ConfigSection):
    """Where blessed models go: ``<serving_base>/<model_name>/<version>/``, the last N versions kept.

    ``model_config_file`` (a path or URI) is the ModelServerConfig TF Serving reads: the versions it
    labels (``stable``, ``canary``) or pins are kept whatever ``keep_versions`` says, and the version
    labelled ``stable`` is the baseline a new model must beat."""

    model_name: str = "esmm"
    keep_versions: Int = 5
    model_config_file: Optional[str] = None

    @field_validator("model_name")
    @classmethod
    def _a_directory_name(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name) or name.isdigit():
            raise invalid(f"use letters, digits, '_', '-' and '.', not all digits, got {name!r}")
        return name

    @field_validator("keep_versions")
    @classmethod
    def _at_least_one(cls, keep: int) -> int:
        if keep < 1:
            raise invalid(f"keep at least 1 version, got {keep}", value_check=True)
        return keep


class Config(ConfigSection):
    """The root of the YAML file."""

    name: str
    features: tuple[Feature, ...]
    input: InputConfig = InputConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    beam: BeamConfig = BeamConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    push: PushConfig = PushConfig()

    @model_validator(mode="after")
    def _features_fit_together(self) -> Config:
        _check_features(self)
        return self

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
        """A plain-data form (the YAML's) that round-trips through ``config_from_dict``."""
        return self.model_dump(mode="json", exclude_none=True)


def _check_features(config: Config) -> None:
    """The checks across features: names, sources and shared embedding groups."""
    def fail(i: int, key: str, message: str) -> ConfigKeyError:
        return ConfigKeyError(f"features[{i}] ({config.features[i].name}).{key}: {message}", ("features", i, key))

    if not config.features:
        raise ConfigKeyError("features: at least one feature is required", ("features",))
    seen: dict[str, int] = {}
    sources: dict[str, str] = {}
    reserved = set(LABELS) | {config.input.order_by, "sample_id"}
    for i, feature in enumerate(config.features):
        if not feature.name.isidentifier():
            raise fail(i, "name", f"use letters, digits and underscores, not {feature.name!r}")
        if feature.name in seen:
            raise fail(i, "name", f"duplicate feature name, first used by features[{seen[feature.name]}]")
        if feature.name in reserved:
            raise fail(i, "name", f"{feature.name!r} is reserved for labels and ordering")
        if feature.name.endswith(WEIGHT_SUFFIX):
            raise fail(i, "name", f"names ending in {WEIGHT_SUFFIX!r} are reserved for weights")
        seen[feature.name] = i
        source = feature.source or feature.name
        if source in sources:
            raise fail(i, "source", f"{source!r} is already read by {sources[source]}")
        sources[source] = feature.name
    for group, members in config.shared_groups().items():
        first = members[0]
        for other in members[1:]:
            at = ("features", seen[other.name], "shared_embedding")
            plain = [member.preprocessing.model_dump(mode="json", exclude_none=True) for member in (first, other)]
            if other.preprocessing != first.preprocessing:
                raise ConfigKeyError(
                    f"shared_embedding {group!r}: {first.name} and {other.name} use different preprocessing "
                    f"({plain[0]} vs {plain[1]}); members of a group must map into one id space", at)
            if config.embedding_dim(other) != config.embedding_dim(first):
                raise ConfigKeyError(f"shared_embedding {group!r}: {first.name} and {other.name} have different "
                                     "embedding_dim", at)
            if other.dtype != first.dtype:
                raise ConfigKeyError(f"shared_embedding {group!r}: {first.name} is {first.dtype} but {other.name} is "
                                     f"{other.dtype}", at)
        if group in seen and config.feature(group).shared_embedding != group:
            raise ConfigKeyError(f"shared_embedding {group!r}: the group name clashes with feature {group!r}",
                                 ("features", seen[group], "name"))


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
    """The YAML text of a shipped config name, of a local path, or of a URI (``gs://...``) read with tf.io.gfile."""
    ref = os.fspath(ref)
    if is_shipped_name(ref):
        resource = importlib.resources.files(SHIPPED_CONFIGS) / f"{ref}.yaml"
        if not resource.is_file():
            raise ConfigError(f"config {ref!r} is neither a shipped config ({', '.join(shipped_config_names())}) "
                              f"nor a path to a .yaml file")
        return resource.read_text(encoding="utf-8")
    if "://" not in ref:  # a local file: no TensorFlow import (seconds, and its log lines) to read it
        if not os.path.isfile(ref):
            raise ConfigError(f"config file {ref!r} does not exist")
        try:
            with open(ref, encoding="utf-8") as handle:
                return handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {ref!r} cannot be read: {exc}") from None
    import tensorflow as tf  # only a URI needs TensorFlow's filesystems

    try:
        if not tf.io.gfile.exists(ref) or tf.io.gfile.isdir(ref):
            raise ConfigError(f"config file {ref!r} does not exist")
        with tf.io.gfile.GFile(ref, "r") as handle:
            return handle.read()
    except tf.errors.OpError as exc:
        raise ConfigError(f"config file {ref!r} cannot be read: {' '.join(exc.message.split())}") from None


C = TypeVar("C", bound=Config)


def load_config(ref: str | os.PathLike, schema: type[C] = Config) -> C:
    """Reads and validates a config: a shipped name (``aliccp``) or a YAML path or URI; errors name the file, the
    key and its line. ``schema``: ``Config`` or an extension of it (``pipelines.config.PipelineConfig``)."""
    ref = os.fspath(ref)
    text = read_config_text(ref)
    try:
        node, data = _parse(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {ref!r} is not valid YAML: {_yaml_problem(exc)}") from None
    except ConfigError as exc:
        raise ConfigError(f"{ref}: {exc}") from None
    try:
        return config_from_dict(data, schema)
    except ConfigKeyError as exc:
        line = _line_of(node, exc.loc)
        raise ConfigError(f"{ref}: {exc}" + (f" (line {line})" if line else "")) from None
    except ConfigError as exc:
        raise ConfigError(f"{ref}: {exc}") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML syntax error on one line: where, what, and the construct it was in."""
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return " ".join(str(exc).split())
    mark = exc.problem_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    if exc.context and exc.context_mark is not None:
        where += f" ({exc.context} from line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1})"
    return " ".join(where.split())


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
    return _parse(text)[1]


def _parse(text: str) -> tuple[Optional[yaml.Node], Any]:
    """The YAML's node tree (which knows each key's line) and its plain data, from one parse."""
    loader = ConfigLoader(text)
    try:
        node = loader.get_single_node()
        _reject_duplicate_keys(node, "")
        return node, None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()


def _reject_duplicate_keys(node: Optional[yaml.Node], where: str) -> None:
    if isinstance(node, yaml.MappingNode):
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else key_node.start_mark.line
            path = f"{where}.{key}" if where else str(key)
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise ConfigError(f"{path}: duplicate key on line {line} (first on line {first_line[key]}); "
                                  f"keep one of them")
            first_line[key] = line
            _reject_duplicate_keys(value_node, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _reject_duplicate_keys(item, f"{where}[{i}]")


def _line_of(node: Optional[yaml.Node], loc: tuple[str | int, ...]) -> Optional[int]:
    """The YAML line of the key at ``loc``, or of the nearest enclosing one that the file has."""
    line = None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            found = [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(key)]
            if not found:
                break
            key_node, node = found[0]
            line = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line


def config_from_dict(data: Any, schema: type[C] = Config) -> C:
    """Validates plain data (as parsed from YAML) into a ``schema``, by default a Config; a ConfigKeyError names
    the first offending key."""
    if not isinstance(data, dict):
        raise ConfigError("the config must be a mapping at the top level")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise _key_error(exc.errors(include_url=False)[0], data) from None


_EXPECTED = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
             "string_type": "a string", "tuple_type": "a list"}


def _key_error(error: Any, data: dict) -> ConfigKeyError:
    """One pydantic error as a line that names its key path: ``features[0].kind: 'x' is not one of ...``."""
    kind, value, context = error["type"], error.get("input"), error.get("ctx") or {}
    loc = (*error["loc"], *context.get("at", ()))
    if kind in ("config", "config_value"):
        message = context["message"] + (f", got {value!r}" if context["show_input"] else "")
    elif kind == "missing":
        message = "required key is missing"
    elif kind == "model_type":
        message = f"expected a mapping, got {type(value).__name__}"
    elif kind in _EXPECTED:
        message = f"expected {_EXPECTED[kind]}, got {value!r}"
    elif kind == "literal_error":
        allowed = re.findall(r"'([^']*)'", context["expected"])  # pydantic writes "'id', 'weighted_ids' or 'dense'"
        message = f"{value!r} is not one of {', '.join(allowed)}"
    elif kind == "finite_number":
        message = f"must be a finite number, got {value!r}"
    else:
        message = error["msg"]
    return ConfigKeyError(f"{_path(loc, data, value_check=kind in ('config_value', 'finite_number'))}: {message}", loc)


def _path(loc: tuple[str | int, ...], data: Any, value_check: bool) -> str:
    """``features[3] (price).preprocessing``: the key path of ``loc``. A bad value in a feature names the
    feature, and an error about a whole list entry names its feature or metric, as they appear in ``data``."""
    path, node, parent = "", data, None
    for depth, key in enumerate(loc):
        if isinstance(key, int):
            path += f"[{key}]"
            node = node[key] if isinstance(node, list) and key < len(node) else None
            label_key = {"features": "name", "thresholds": "metric"}.get(parent)
            whole_entry = depth == len(loc) - 1
            if isinstance(node, dict) and label_key and (whole_entry or (value_check and parent == "features")):
                label = node.get(label_key)
                path += f" ({label})" if isinstance(label, (str, int, float)) else ""
        else:
            path += f".{key}" if path else str(key)
            node = node.get(key) if isinstance(node, dict) else None
        parent = key
    return path


def config_to_json(config: Config) -> str:
    """The config as canonical JSON text: equal configs give equal text (a pipeline's cache keys hold it)."""
    return json.dumps(config.to_dict(), sort_keys=True)


def config_from_json(text: str, schema: type[C] = Config) -> C:
    """The inverse of ``config_to_json``, validated again."""
    return config_from_dict(json.loads(text), schema)


def with_overrides(config: C, overrides: dict[str, Any]) -> C:
    """A new config of the same schema with ``overrides`` (a nested mapping, e.g. {"model": {"variant": "base"}})
    deep-merged and re-validated."""
    def merge(base: dict, extra: dict) -> dict:
        merged = dict(base)
        for key, value in extra.items():
            merged[key] = merge(merged.get(key) or {}, value) if isinstance(value, dict) else value
        return merged

    return config_from_dict(merge(config.to_dict(), overrides), type(config))
