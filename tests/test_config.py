"""The feature config: the shipped files load, and every mistake names its key."""
import copy
import re
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

import pytest
import yaml

from esmm_model.config import (
    Vocab,
    _build,
    _to_plain,
    config_from_dict,
    config_from_json,
    config_to_json,
    load_config,
    portable_config_ref,
    read_config_text,
    shipped_config_names,
)
from esmm_model.errors import ConfigError


def base() -> dict:
    return {
        "name": "t",
        "features": [
            {"name": "user_id", "kind": "id", "side": "user", "preprocessing": {"hash_buckets": 100}},
            {"name": "hist_items", "kind": "weighted_ids", "side": "user", "shared_embedding": "item",
             "preprocessing": {"vocab": {"oov_buckets": 2}}},
            {"name": "item_id", "kind": "id", "side": "item", "shared_embedding": "item",
             "preprocessing": {"vocab": {"oov_buckets": 2}}},
            {"name": "price", "kind": "dense", "side": "item", "preprocessing": "zscore"},
            {"name": "hour", "kind": "dense", "side": "context", "preprocessing": {"buckets": [6, 12, 18]}},
        ],
    }


@pytest.mark.parametrize("name", ["simulator", "aliccp", "seed_layout"])
def test_shipped_configs_load_by_name_and_round_trip(name):
    config = load_config(name)
    assert config_from_dict(config.to_dict()) == config
    assert {f.side for f in config.features} == {"user", "item", "context"}


def test_shipped_names_are_the_package_yaml_files():
    assert shipped_config_names() == ["aliccp", "seed_layout", "simulator"]


def test_a_path_or_a_uri_loads_the_same_config_as_the_name(tmp_path):
    import tensorflow as tf

    text = read_config_text("aliccp")
    (tmp_path / "mine.yaml").write_text(text)
    uri = "ram://configs/mine.yaml"
    tf.io.gfile.makedirs("ram://configs")
    with tf.io.gfile.GFile(uri, "w") as handle:
        handle.write(text)
    assert load_config(tmp_path / "mine.yaml") == load_config(uri) == load_config("aliccp")


@pytest.mark.parametrize("ref, expected", [
    ("aliccp_v2", "config 'aliccp_v2' is neither a shipped config (aliccp, seed_layout, simulator) nor a path"),
    ("missing.yaml", "config file 'missing.yaml' does not exist"),
    ("ram://nowhere/missing.yaml", "config file 'ram://nowhere/missing.yaml' does not exist"),
])
def test_an_unknown_config_is_named(ref, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(ref)


def test_portable_refs_keep_names_and_uris_and_absolutise_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert portable_config_ref("aliccp") == "aliccp"
    assert portable_config_ref("gs://bucket/c.yaml") == "gs://bucket/c.yaml"
    assert portable_config_ref("c.yaml") == str(tmp_path / "c.yaml")


def test_shared_groups_and_defaults():
    config = config_from_dict(base())
    assert set(config.shared_groups()) == {"item"}
    assert [f.name for f in config.shared_groups()["item"]] == ["hist_items", "item_id"]
    assert config.feature("item_id").table_name == "item"
    assert config.feature("user_id").table_name == "user_id"
    assert config.embedding_dim(config.feature("user_id")) == 18
    assert config.feature("hour").preprocessing.buckets == (6.0, 12.0, 18.0)
    assert config.model.tower_units == (200, 80)


def mutate(change) -> dict:
    data = copy.deepcopy(base())
    change(data)
    return data


@pytest.mark.parametrize("change, expected", [
    (lambda d: d["features"][0].update(kind="categorical"),
     "features[0].kind: 'categorical' is not one of id, weighted_ids, dense"),
    (lambda d: d["features"][0].pop("preprocessing"), "features[0].preprocessing: required key is missing"),
    (lambda d: d["features"][0].update(preprocessing={}), "features[0].preprocessing: give exactly one of"),
    (lambda d: d["features"][0].update(preprocessing={"hash": 10}),
     "features[0].preprocessing: unknown preprocessing 'hash'"),
    (lambda d: d["features"][3].update(preprocessing={"hash_buckets": 10}),
     "features[3] (price).preprocessing: a dense feature takes zscore or buckets"),
    (lambda d: d["features"][0].update(preprocessing="zscore"),
     "features[0] (user_id).preprocessing: an id feature takes hash_buckets or vocab"),
    (lambda d: d["features"].append(dict(d["features"][0])),
     "features[5] (user_id).name: duplicate feature name, first used by features[0]"),
    (lambda d: d["features"][2].update(preprocessing={"hash_buckets": 1000}),
     "shared_embedding 'item': hist_items and item_id use different preprocessing"),
    (lambda d: d["features"][2].update(embedding_dim=8),
     "shared_embedding 'item': hist_items and item_id have different embedding_dim"),
    (lambda d: d["features"][0].update(hash_buckets=3), "features[0].hash_buckets: unknown key"),
    (lambda d: d["features"][0].update(preprocessing={"hash_buckets": "many"}),
     "features[0].preprocessing.hash_buckets: expected an integer"),
    (lambda d: d["features"][0].update(preprocessing={"hash_buckets": 0}),
     "features[0] (user_id).preprocessing.hash_buckets: must be positive"),
    (lambda d: d["features"][1].update(preprocessing={"vocab": {"top_k": -1}}),
     "features[1] (hist_items).preprocessing.vocab.top_k: must be positive"),
    (lambda d: d["features"][4].update(preprocessing={"buckets": [3, 1]}),
     "features[4] (hour).preprocessing.buckets: boundaries must be strictly increasing"),
    (lambda d: d["features"][0].update(name="click"), "features[0] (click).name: 'click' is reserved"),
    (lambda d: d["features"][0].update(combiner="mean"),
     "features[0] (user_id).combiner: only weighted_ids features are pooled"),
    (lambda d: d["features"][0].update(side="merchant"),
     "features[0].side: 'merchant' is not one of user, context, item"),
    (lambda d: d.update(input={"train_fraction": 1.5}), "input.train_fraction: must lie strictly between 0 and 1"),
    (lambda d: d.update(input={"format": "csv", "order_by": "ts",
                               "train_fraction": 0.5}) or d["features"][0].update(name="ts"),
     "features[0] (ts).name: 'ts' is reserved"),
    (lambda d: d.update(input={"order_by": "ts"}), "input.order_by: Ali-CCP raw logs are ordered by sample_id"),
    (lambda d: d.update(model={"tower_units": []}), "model.tower_units: give one or more positive layer widths"),
    (lambda d: d.update(model={"variant": "mmoe"}),
     "model.variant: 'mmoe' is not one of base, aman, oversampling, unbias, division, esmm_ns, esmm"),
    (lambda d: d.update(training={"batch_size": 0}), "training.batch_size: must be positive"),
    (lambda d: d.update(trainer={}), "trainer: unknown key; known keys are"),
    (lambda d: d.update(features=[]), "features: at least one feature is required"),
])
def test_errors_name_the_offending_key(change, expected):
    with pytest.raises(ConfigError) as err:
        config_from_dict(mutate(change))
    assert expected in str(err.value)


def test_load_names_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml' does not exist"):
        load_config(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("features: [unclosed")
    with pytest.raises(ConfigError, match="broken.yaml' is not valid YAML"):
        load_config(broken)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(mutate(lambda d: d["features"][0].update(kind="x"))))
    with pytest.raises(ConfigError, match=r"bad.yaml: features\[0\].kind"):
        load_config(bad)


def test_numbers_with_an_exponent_load_as_floats(tmp_path):
    """YAML 1.1 (PyYAML's default) makes ``1e-8`` and ``2E-3`` strings; the config loader reads them as JSON does."""
    path = tmp_path / "exponents.yaml"
    path.write_text(yaml.safe_dump(base()) + "training:\n  adam_epsilon: 1e-8\n  learning_rate: 2E-3\n"
                    "  embedding_learning_rate: 1.5e1\n")
    training = load_config(path).training
    assert (training.adam_epsilon, training.learning_rate, training.embedding_learning_rate) == (1e-8, 0.002, 15.0)
    path.write_text(yaml.safe_dump(base()) + "training:\n  adam_epsilon: '1e-8'\n")
    with pytest.raises(ConfigError, match="training.adam_epsilon: expected a number, got '1e-8'"):
        load_config(path)
    assert yaml.safe_load("adam_epsilon: 1e-8") == {"adam_epsilon": "1e-8"}  # PyYAML's own loader is left as it is


@pytest.mark.parametrize("text, message", [
    ("name: a\nname: b\nfeatures: []\n", "name: duplicate key on line 2 (first on line 1)"),
    ("name: a\ntraining:\n  epochs: 4\n  batch_size: 64\n  epochs: 1\nfeatures: []\n",
     "training.epochs: duplicate key on line 5 (first on line 3)"),
    ("name: a\nfeatures:\n  - {name: u, kind: id, side: user, preprocessing: {hash_buckets: 3}, kind: dense}\n",
     "features[0].kind: duplicate key on line 3 (first on line 3)"),
])
def test_duplicate_keys_are_rejected_with_their_path(tmp_path, text, message):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: {message}; keep one of them"


@pytest.mark.parametrize("key, value, message", [
    ("max_rejected_fraction", 1.5, "input.max_rejected_fraction: must lie between 0 and 1, got 1.5"),
    ("max_rejected_fraction", -0.1, "input.max_rejected_fraction: must lie between 0 and 1, got -0.1"),
    ("max_line_bytes", 0, "input.max_line_bytes: must be positive, got 0"),
    ("min_feature_presence", 1.5, "input.min_feature_presence: must lie between 0 and 1, got 1.5"),
    ("min_feature_presence", float("nan"), "input.min_feature_presence: must lie between 0 and 1, got nan"),
])
def test_input_limits_are_validated(key, value, message):
    data = base()
    data["input"] = {key: value}
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_dict(data)
    assert config_from_dict(base()).input.max_rejected_fraction == 0.01


def test_step_resources_resolve_step_then_default_then_builtin():
    data = base()
    data["kubernetes"] = {"resources": {"default": {"memory": "3Gi", "cpu_limit": "6"}, "train": {"cpu": "5"}}}
    resources = config_from_dict(data).kubernetes.resources
    train, push = resources.for_step("train"), resources.for_step("push")
    assert (train.cpu, train.memory, train.cpu_limit, train.memory_limit) == ("5", "3Gi", "6", "3Gi")
    assert (push.cpu, push.memory, push.cpu_limit, push.memory_limit) == ("1", "3Gi", "6", "3Gi")
    builtin = config_from_dict(base()).kubernetes.resources.for_step("train")
    assert (builtin.cpu, builtin.memory, builtin.cpu_limit, builtin.memory_limit) == ("4", "8Gi", "4", "8Gi")


@pytest.mark.parametrize("kubernetes, expected", [
    ({"resources": {"train": {"cpu": "4 cores"}}},
     "kubernetes.resources.train.cpu: '4 cores' is not a Kubernetes quantity"),
    ({"resources": {"evaluate": {"memory": "8GB"}}},
     "kubernetes.resources.evaluate.memory: '8GB' is not a Kubernetes quantity"),
    ({"resources": {"train": {"memory_limit": "4Gi"}}},
     "kubernetes.resources.train.memory_limit: 4Gi is below the request 8Gi"),
    ({"resources": {"push": {"cpu": "2", "cpu_limit": "1500m"}}},
     "kubernetes.resources.push.cpu_limit: 1500m is below the request 2"),
    ({"resources": {"default": {"cpu": "0"}}}, "kubernetes.resources.default.cpu: must be positive"),
    ({"resources": {"trainer": {}}}, "kubernetes.resources.trainer: unknown key"),
    ({"retries": -1}, "kubernetes.retries: must be zero or more"),
])
def test_kubernetes_errors_name_the_key(kubernetes, expected):
    data = base()
    data["kubernetes"] = kubernetes
    with pytest.raises(ConfigError, match=re.escape(expected)):
        config_from_dict(data)


def test_config_json_round_trips_canonically():
    config = load_config("simulator")
    text = config_to_json(config)
    assert config_from_json(text) == config
    assert config_to_json(config_from_json(text)) == text


@dataclass(frozen=True)
class _Typed:
    """Field types no shipped config section uses yet, for the coercer."""

    size: Union[int, Literal["auto"]] = "auto"
    rates: dict[str, float] = field(default_factory=dict)
    vocabs: Optional[dict[str, Vocab]] = None
    extra: dict = field(default_factory=dict)


@pytest.mark.parametrize("data, expected", [
    ({"size": 3}, _Typed(size=3)),
    ({"size": "auto"}, _Typed(size="auto")),
    ({"rates": {"ctr": 1, "cvr": 0.5}}, _Typed(rates={"ctr": 1.0, "cvr": 0.5})),
    ({"vocabs": {"item": {"top_k": 10}}}, _Typed(vocabs={"item": Vocab(top_k=10)})),
    ({"extra": {"a": [1, "b"]}}, _Typed(extra={"a": [1, "b"]})),
])
def test_unions_of_two_types_and_mappings_coerce(data, expected):
    assert _build(_Typed, data, "typed") == expected


def test_a_coerced_mapping_is_read_only_and_converts_back_to_plain_data():
    built = _build(_Typed, {"rates": {"ctr": 1}, "vocabs": {"item": {"top_k": 10}}}, "typed")
    assert type(built.rates["ctr"]) is float
    with pytest.raises(TypeError):
        built.rates["new"] = 1.0  # a frozen config holds read-only mappings
    assert _to_plain(built) == {"size": "auto", "rates": {"ctr": 1.0}, "extra": {},
                                "vocabs": {"item": {"top_k": 10, "min_frequency": 1, "oov_buckets": 1}}}


@pytest.mark.parametrize("data, message", [
    ({"size": "big"}, "typed.size: expected an integer or one of auto, got 'big'"),
    ({"size": 2.5}, "typed.size: expected an integer or one of auto, got 2.5"),
    ({"rates": [1.0]}, "typed.rates: expected a mapping, got [1.0]"),
    ({"rates": {"ctr": "high"}}, "typed.rates.ctr: expected a number, got 'high'"),
    ({"vocabs": {"item": {"top_n": 3}}},
     "typed.vocabs.item.top_n: unknown key; known keys are min_frequency, oov_buckets, top_k"),
])
def test_union_and_mapping_errors_name_the_key(data, message):
    with pytest.raises(ConfigError) as err:
        _build(_Typed, data, "typed")
    assert str(err.value) == message
