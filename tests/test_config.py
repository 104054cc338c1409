"""The feature config: the shipped files load, and every mistake names its key."""
import copy
import re
import subprocess
import sys

import pytest
import yaml
from pydantic import ValidationError

from esmm_model.config import (
    Config,
    Threshold,
    config_from_dict,
    config_from_json,
    config_to_json,
    load_config,
    portable_config_ref,
    read_config_text,
    shipped_config_names,
    with_overrides,
)
from esmm_model.errors import ConfigError
from pipelines.config import PipelineConfig
from pipelines.config import config_from_dict as pipeline_config_from_dict
from pipelines.config import config_from_json as pipeline_config_from_json
from pipelines.config import load_config as load_pipeline_config


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
     "features[0] (user_id).preprocessing: an id feature takes hash_buckets, vocab or auto"),
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
    (lambda d: d["features"][1].update(preprocessing={"auto": {"max_vocab": 0}}),
     "features[1] (hist_items).preprocessing.auto.max_vocab: must be positive"),
    (lambda d: d["features"][0].update(preprocessing={"auto": {"oov_buckets": 0}}),
     "features[0] (user_id).preprocessing.auto.oov_buckets: must be at least 1"),
    (lambda d: d["features"][3].update(preprocessing="auto"),
     "features[3] (price).preprocessing: a dense feature takes zscore or buckets, not auto"),
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
    (lambda d: d.update(model={"escm2": {"propensity_clip": 0.0}}),
     "model.escm2.propensity_clip: must lie strictly between 0 and 1, got 0.0"),
    (lambda d: d.update(model={"escm2": {"counterfactual_weight": -0.1}}),
     "model.escm2.counterfactual_weight: must be zero or more, got -0.1"),
    (lambda d: d.update(model={"escm2": {"weight": 1}}), "model.escm2.weight: unknown key"),
    (lambda d: d.update(model={"variant": "mmoe"}),
     "model.variant: 'mmoe' is not one of base, aman, oversampling, unbias, division, esmm_ns, esmm"),
    (lambda d: d.update(training={"batch_size": 0}), "training.batch_size: must be positive"),
    (lambda d: d.update(training={"input_cache_rows": -1}), "training.input_cache_rows: must be zero or more, got -1"),
    (lambda d: d.update(training={"epoch_eval": {"mode": "sometimes"}}), "training.epoch_eval.mode:"),
    (lambda d: d.update(training={"epoch_eval": {"rows": 0}}), "training.epoch_eval.rows: must be positive"),
    (lambda d: d.update(training={"early_stopping_patience": 2, "epoch_eval": {"mode": "off"}}),
     "training.early_stopping_patience: early stopping reads an evaluation after every epoch"),
    (lambda d: d.update(training={"early_stopping_patience": 2, "epoch_eval": {"every_epochs": 2}}),
     "training.early_stopping_patience: early stopping reads an evaluation after every epoch"),
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
    ("min_feature_presence", float("nan"), "input.min_feature_presence: must be a finite number, got nan"),
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
    resources = pipeline_config_from_dict(data).kubernetes.resources
    train, push = resources.for_step("train"), resources.for_step("push")
    assert (train.cpu, train.memory, train.cpu_limit, train.memory_limit) == ("5", "3Gi", "6", "3Gi")
    assert (push.cpu, push.memory, push.cpu_limit, push.memory_limit) == ("1", "3Gi", "6", "3Gi")
    builtin = pipeline_config_from_dict(base()).kubernetes.resources.for_step("train")
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
    ({"scratch_storage": "20GB"}, "kubernetes.scratch_storage: '20GB' is not a Kubernetes quantity"),
    ({"scratch_storage": "0Gi"}, "kubernetes.scratch_storage: must be positive"),
])
def test_kubernetes_errors_name_the_key(kubernetes, expected):
    data = base()
    data["kubernetes"] = kubernetes
    with pytest.raises(ConfigError, match=re.escape(expected)):
        pipeline_config_from_dict(data)


def test_config_json_round_trips_canonically():
    config = load_config("simulator")
    text = config_to_json(config)
    assert config_from_json(text) == config
    assert config_to_json(config_from_json(text)) == text


def write_config(tmp_path, extra: str) -> str:
    """The base config as YAML with ``extra`` (YAML text) appended, so values such as ``.nan`` come from YAML."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(base()) + extra)
    return str(path)


@pytest.mark.parametrize("extra, message", [
    ("training:\n  learning_rate: .nan\n", "training.learning_rate: must be a finite number, got nan"),
    ("training:\n  learning_rate: .inf\n", "training.learning_rate: must be a finite number, got inf"),
    ("training:\n  learning_rate: -.inf\n", "training.learning_rate: must be a finite number, got -inf"),
    ("training:\n  learning_rate: 0\n", "training.learning_rate: must be positive, got 0"),
    ("training:\n  embedding_learning_rate: .inf\n",
     "training.embedding_learning_rate: must be a finite number, got inf"),
    ("training:\n  embedding_learning_rate: -0.1\n", "training.embedding_learning_rate: must be positive, got -0.1"),
    ("training:\n  adam_beta_1: 7\n", "training.adam_beta_1: must lie strictly between 0 and 1, got 7"),
    ("training:\n  adam_beta_1: 0\n", "training.adam_beta_1: must lie strictly between 0 and 1, got 0"),
    ("training:\n  adam_beta_1: 1.0\n", "training.adam_beta_1: must lie strictly between 0 and 1, got 1.0"),
    ("training:\n  adam_beta_2: 1\n", "training.adam_beta_2: must lie strictly between 0 and 1, got 1"),
    ("training:\n  adam_beta_2: .nan\n", "training.adam_beta_2: must be a finite number, got nan"),
    ("training:\n  adam_epsilon: -1\n", "training.adam_epsilon: must be positive, got -1"),
    ("training:\n  adam_epsilon: 0\n", "training.adam_epsilon: must be positive, got 0"),
    ("model:\n  embedding_init_stddev: .nan\n", "model.embedding_init_stddev: must be a finite number, got nan"),
    ("model:\n  embedding_init_stddev: .inf\n", "model.embedding_init_stddev: must be a finite number, got inf"),
    ("model:\n  embedding_init_stddev: 0\n", "model.embedding_init_stddev: must be positive, got 0"),
    ("model:\n  dropout: 1\n", "model.dropout: must lie in [0, 1), got 1"),
    ("model:\n  dropout: -0.5\n", "model.dropout: must lie in [0, 1), got -0.5"),
    ("model:\n  ctr_loss_weight: -1\n", "model.ctr_loss_weight: must be zero or more, got -1"),
    ("model:\n  ctcvr_loss_weight: .nan\n", "model.ctcvr_loss_weight: must be a finite number, got nan"),
    ("model:\n  ctr_loss_weight: 0\n  ctcvr_loss_weight: 0\n",
     "model.ctcvr_loss_weight: ctr_loss_weight and ctcvr_loss_weight are both 0, so nothing would train; make one "
     "positive"),
    ("model:\n  aman_negative_rate: 0\n", "model.aman_negative_rate: must lie in (0, 1], got 0"),
    ("model:\n  aman_negative_rate: 1.5\n", "model.aman_negative_rate: must lie in (0, 1], got 1.5"),
    ("model:\n  unbias_min_ctr: 1\n", "model.unbias_min_ctr: must lie strictly between 0 and 1, got 1"),
    ("model:\n  oversampling_k: 0\n", "model.oversampling_k: must be positive, got 0"),
    ("model:\n  embedding_dim: -8\n", "model.embedding_dim: must be positive, got -8"),
    ("model:\n  tower_units: [200, 0]\n", "model.tower_units[1]: must be positive, got 0"),
    ("training:\n  epochs: 0\n", "training.epochs: must be positive, got 0"),
    ("training:\n  steps_per_epoch: 0\n", "training.steps_per_epoch: must be positive, got 0"),
    ("training:\n  early_stopping_patience: -1\n", "training.early_stopping_patience: must be positive, got -1"),
    ("training:\n  ps_min_shard_bytes: 0\n", "training.ps_min_shard_bytes: must be positive, got 0"),
    ("training:\n  seed: -1\n", "training.seed: must lie between 0 and 4294967295, got -1"),
    ("training:\n  seed: 4294967296\n", "training.seed: must lie between 0 and 4294967295, got 4294967296"),
    ("training:\n  batch_size: 2.5\n", "training.batch_size: expected an integer, got 2.5"),
    ("training:\n  batch_size: '64'\n", "training.batch_size: expected an integer, got '64'"),
    ("training:\n  batch_size: true\n", "training.batch_size: expected an integer, got True"),
    ("training:\n  jit_compile: 'no'\n", "training.jit_compile: expected true or false, got 'no'"),
    ("training: [adam]\n", "training: expected a mapping, got list"),
    ("input:\n  train_fraction: .nan\n", "input.train_fraction: must be a finite number, got nan"),
    ("input:\n  max_rejected_fraction: .inf\n", "input.max_rejected_fraction: must be a finite number, got inf"),
    ("evaluation:\n  thresholds:\n    - {metric: ctr/all/auc, min: .inf}\n",
     "evaluation.thresholds[0].min: must be a finite number, got inf"),
    ("evaluation:\n  thresholds:\n    - {metric: ctr/all/auc, max_regression: .nan}\n",
     "evaluation.thresholds[0].max_regression: must be a finite number, got nan"),
])
def test_numbers_that_cannot_train_are_rejected_with_their_key(tmp_path, extra, message):
    """Issue 19's bad numbers (a NaN or infinite rate, a beta outside (0, 1), a negative epsilon, a NaN
    stddev) and the ranges of every other number in the schema."""
    path = write_config(tmp_path, extra)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert re.fullmatch(re.escape(f"{path}: {message}") + r" \(line \d+\)", str(err.value)), str(err.value)


@pytest.mark.parametrize("change, expected", [
    (lambda d: d["features"][1]["preprocessing"]["vocab"].update(min_frequency=0),
     "features[1] (hist_items).preprocessing.vocab.min_frequency: must be positive, got 0"),
    (lambda d: d["features"][1]["preprocessing"]["vocab"].update(oov_buckets=0),
     "features[1] (hist_items).preprocessing.vocab.oov_buckets: must be at least 1, got 0"),
    (lambda d: d["features"][0].update(embedding_dim=0),
     "features[0] (user_id).embedding_dim: must be positive, got 0"),
    (lambda d: d["features"][4].update(preprocessing={"buckets": []}),
     "features[4] (hour).preprocessing.buckets: give at least one boundary"),
    (lambda d: d["features"][4].update(preprocessing={"buckets": [1, float("nan")]}),
     "features[4] (hour).preprocessing.buckets[1]: must be a finite number, got nan"),
    (lambda d: d["features"][4].update(preprocessing={"buckets": [1, 1]}),
     "features[4] (hour).preprocessing.buckets: boundaries must be strictly increasing"),
    (lambda d: d["features"][1]["preprocessing"]["vocab"].update(top_n=3),
     "features[1].preprocessing.vocab.top_n: unknown key; known keys are min_frequency, oov_buckets, top_k"),
    (lambda d: d.update(training={"learning_rate": "fast"}), "training.learning_rate: expected a number, got 'fast'"),
    (lambda d: d.update(beam={"options": "--direct_num_workers=2"}),
     "beam.options: expected a list, got '--direct_num_workers=2'"),
    (lambda d: d.update(push={"keep_versions": 0}), "push.keep_versions: keep at least 1 version, got 0"),
    (lambda d: d["features"][1].update(source=101) or d["features"][2].update(source="101"),
     "features[2] (item_id).source: '101' is already read by hist_items"),
])
def test_more_errors_name_the_offending_key(change, expected):
    with pytest.raises(ConfigError) as err:
        config_from_dict(mutate(change))
    assert str(err.value) == expected


def test_numbers_read_as_their_fields_types():
    """An integer where a number is expected is a float; a number where a string is expected is that string."""
    config = config_from_dict(mutate(lambda d: d["features"][0].update(source=101)
                                     or d.update(training={"learning_rate": 1})))
    assert config.feature("user_id").source == "101"
    assert type(config.training.learning_rate) is float
    assert config.to_dict()["training"]["learning_rate"] == 1.0


@pytest.mark.parametrize("text, line", [
    ("name: t\nfeatures:\n  - name: u\n    kind: idd\n    side: user\n    preprocessing: {hash_buckets: 3}\n", 4),
    ("name: t\nfeatures:\n  - {name: u, kind: id, side: user, preprocessing: {hash_buckets: 3}}\n"
     "training:\n  epochs: 4\n  learning_rate: .nan\n", 6),
    ("name: t\nfeatures:\n  - {name: u, kind: id, side: user, preprocessing: {hash_buckets: 3}}\n"
     "  - {name: v, kind: id, side: user, preprocessing: {hash_buckets: 3}, combiner: mean}\n", 4),
    ("name: t\nfeatures:\n  - {name: u, kind: id, side: user, preprocessing: {hash_buckets: 3}, shared_embedding: g}\n"
     "  - {name: v, kind: id, side: user, preprocessing: {hash_buckets: 4}, shared_embedding: g}\n", 4),
    ("name: t\nfeatures:\n  - name: u\n    kind: id\n    side: user\n", 3),  # preprocessing missing: the entry's line
])
def test_errors_in_a_file_name_the_line(tmp_path, text, line):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).endswith(f" (line {line})")
    assert "\n" not in str(err.value)


def test_a_yaml_syntax_error_is_one_line_with_its_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: t\nfeatures: [unclosed\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (f"config file '{path}' is not valid YAML: line 3, column 1: expected ',' or ']', but got "
                              "'<stream end>' (while parsing a flow sequence from line 2, column 11)")


def test_the_cli_prints_a_yaml_syntax_error_as_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: t\ntraining:\n  epochs: 4\n   batch_size: 64\n")
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "compile", "--config", str(path), "--image", "x",
                             "--out", str(tmp_path / "p.yaml")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"esmm compile: error: config file '{path}' is not valid YAML: line 4, column 14: mapping values are not "
        "allowed here"]


def test_a_config_is_frozen_and_hashable():
    config = config_from_dict(base())
    with pytest.raises(ValidationError, match="frozen"):
        config.training.epochs = 1
    assert hash(config) == hash(config_from_dict(base()))
    assert {config.feature("user_id"), config_from_dict(base()).feature("user_id")} == {config.feature("user_id")}


def test_thresholds_take_their_metric_by_position():
    assert Threshold("ctr/all/auc", min=0.5) == Threshold(metric="ctr/all/auc", min=0.5)
    with pytest.raises(ValidationError, match="give a metric path"):
        Threshold("auc", min=0.5)


def test_the_kubernetes_section_belongs_to_the_pipeline_config(tmp_path):
    """The model's Config knows nothing of pods; the pipeline's loaders read the kubernetes section, and a
    pipeline config keeps its type through overrides and JSON."""
    path = write_config(tmp_path, "kubernetes:\n  retries: 5\n")
    with pytest.raises(ConfigError, match=r"kubernetes: unknown key; known keys are beam, .*training \(line \d+\)"):
        load_config(path)
    config = load_pipeline_config(path)
    assert isinstance(config, PipelineConfig) and isinstance(config, Config)
    assert config.kubernetes.retries == 5
    changed = with_overrides(config, {"kubernetes": {"train_workers": 2}})
    assert type(changed) is PipelineConfig
    assert (changed.kubernetes.retries, changed.kubernetes.train_workers) == (5, 2)
    assert pipeline_config_from_json(config_to_json(changed)) == changed
    assert "kubernetes" not in load_config("simulator").to_dict()
