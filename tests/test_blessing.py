"""The blessing gate: absolute thresholds, change thresholds against the pushed model, the artifact."""
from __future__ import annotations

import json

import pytest
import yaml

from components.evaluate.gate import bless, metric_value
from esmm_model.config import EvaluationConfig, Threshold, config_from_dict, load_config, read_config_text
from esmm_model.contracts.blessing import BLESSED, NOT_BLESSED, read_blessing, write_blessing
from esmm_model.errors import ConfigError, InputError

GATE = EvaluationConfig(thresholds=(
    Threshold("ctr/all/auc", min=0.55, max_regression=0.01),
    Threshold("ctcvr/all/auc", min=0.55, max_regression=0.01),
    Threshold("cvr/clicked/auc", min=0.52, max_regression=0.01),
    Threshold("ctr/all/bce", max=0.5, max_regression=0.005),
))


def metrics(ctr_auc: float, ctcvr_auc: float, cvr_clicked_auc: float, ctr_bce: float = 0.18) -> dict:
    """The evaluator's nested mapping, trimmed to what the gate reads plus a neighbour or two."""
    return {
        "ctr": {"all": {"auc": ctr_auc, "bce": ctr_bce, "example_count": 1000.0},
                "clicked": {"auc": 0.5}},
        "ctcvr": {"all": {"auc": ctcvr_auc}},
        "cvr": {"clicked": {"auc": cvr_clicked_auc}, "all": {"auc": 0.9}},
        "entire_space": {"cvr_auc": 0.7},
    }


PUSHED = metrics(0.70, 0.68, 0.62)


def test_better_candidate_is_blessed_against_the_baseline():
    blessing = bless(metrics(0.72, 0.69, 0.64, ctr_bce=0.17), PUSHED, GATE, baseline_version=3)
    assert blessing.blessed and blessing.status == BLESSED
    assert blessing.failures == ()
    assert [(c.metric, c.rule, c.outcome) for c in blessing.checks] == [
        ("ctr/all/auc", "min", "pass"), ("ctr/all/auc", "max_regression", "pass"),
        ("ctcvr/all/auc", "min", "pass"), ("ctcvr/all/auc", "max_regression", "pass"),
        ("cvr/clicked/auc", "min", "pass"), ("cvr/clicked/auc", "max_regression", "pass"),
        ("ctr/all/bce", "max", "pass"), ("ctr/all/bce", "max_regression", "pass"),
    ]
    regression = blessing.checks[5]
    assert (regression.value, regression.baseline, regression.bound) == (0.64, 0.62, pytest.approx(0.61))
    assert "pushed version 3" in regression.reason


def test_shuffled_label_model_is_rejected_with_its_reasons():
    # Shuffled labels give AUCs near 0.5: below the absolute floors and far below the baseline.
    blessing = bless(metrics(0.501, 0.497, 0.503), PUSHED, GATE, baseline_version=3)
    assert not blessing.blessed and blessing.status == NOT_BLESSED
    assert len(blessing.failures) == 6
    assert "cvr/clicked/auc = 0.5030 is below min 0.5200" in blessing.failures
    assert ("cvr/clicked/auc = 0.5030 vs 0.6200 in pushed version 3 (higher is better): "
            "worse by 0.1170, more than max_regression 0.0100") in blessing.failures


def test_small_regression_within_delta_passes_and_larger_one_fails():
    within = bless(metrics(0.69, 0.68, 0.62), PUSHED, GATE, baseline_version=1)  # exactly δ = 0.01 lower
    assert within.blessed
    beyond = bless(metrics(0.689, 0.68, 0.62), PUSHED, GATE, baseline_version=1)
    assert beyond.failures == ("ctr/all/auc = 0.6890 vs 0.7000 in pushed version 1 (higher is better): "
                               "worse by 0.0110, more than max_regression 0.0100",)


def test_lower_is_better_metric_regresses_upwards():
    worse_bce = bless(metrics(0.70, 0.68, 0.62, ctr_bce=0.19), PUSHED, GATE, baseline_version=1)
    assert [(c.metric, c.rule) for c in worse_bce.checks if c.outcome == "fail"] == [("ctr/all/bce", "max_regression")]
    assert "(lower is better): worse by 0.0100" in worse_bce.failures[0]
    assert bless(metrics(0.70, 0.68, 0.62, ctr_bce=0.10), PUSHED, GATE, baseline_version=1).blessed


def test_first_model_is_judged_on_absolute_thresholds_alone():
    # Far below what a baseline of 0.70 would allow, yet above every absolute floor.
    blessing = bless(metrics(0.56, 0.56, 0.53), None, GATE)
    assert blessing.blessed
    skipped = [c for c in blessing.checks if c.outcome == "skip"]
    assert [c.metric for c in skipped] == ["ctr/all/auc", "ctcvr/all/auc", "cvr/clicked/auc", "ctr/all/bce"]
    assert all("first model" in c.reason and c.rule == "max_regression" for c in skipped)


def test_first_model_failing_absolute_thresholds_is_not_blessed():
    blessing = bless(metrics(0.60, 0.54, 0.58), None, GATE)
    assert blessing.status == NOT_BLESSED
    assert blessing.failures == ("ctcvr/all/auc = 0.5400 is below min 0.5500",)


def test_missing_or_nan_candidate_metric_fails_closed():
    candidate = metrics(0.70, 0.68, 0.62)
    del candidate["cvr"]["clicked"]
    candidate["ctr"]["all"]["auc"] = float("nan")
    blessing = bless(candidate, None, GATE)
    assert blessing.failures == (
        "candidate: ctr/all/auc is nan, not a finite number",
        "candidate: cvr/clicked/auc is missing: cvr has no 'clicked' (it has all)",
    )


def test_pushed_model_without_recorded_metrics_skips_change_thresholds_and_says_so():
    blessing = bless(metrics(0.70, 0.68, 0.62), None, GATE, baseline_version=4)
    assert blessing.blessed
    assert "skip: ctr/all/auc: pushed version 4 has no recorded metrics; max_regression not applied" in blessing.reasons


def test_baseline_lacking_a_metric_skips_only_that_change_threshold():
    baseline = metrics(0.70, 0.68, 0.62)
    del baseline["ctcvr"]
    blessing = bless(metrics(0.70, 0.68, 0.62), baseline, GATE, baseline_version=2)
    assert [c.metric for c in blessing.checks if c.outcome == "skip"] == ["ctcvr/all/auc"]


def test_empty_gate_blesses_and_says_nothing_was_checked():
    blessing = bless(metrics(0.5, 0.5, 0.5), None, EvaluationConfig(thresholds=()))
    assert blessing.blessed
    assert blessing.reasons == ("pass: evaluation.thresholds is empty, so there was nothing to check",)


def test_metric_value_reads_paths_and_names_what_is_missing():
    assert metric_value(PUSHED, "entire_space/cvr_auc") == 0.7
    with pytest.raises(KeyError, match=r"the top level has no 'ctrr' \(it has ctcvr, ctr, cvr, entire_space\)"):
        metric_value(PUSHED, "ctrr/all/auc")
    with pytest.raises(KeyError, match="entire_space/cvr_auc has no 'all'"):
        metric_value(PUSHED, "entire_space/cvr_auc/all")


def test_artifact_round_trips_and_is_readable_json(tmp_path):
    blessing = bless(metrics(0.501, 0.497, 0.503), PUSHED, GATE, baseline_version=3,
                     model_fingerprint="sha256:" + "ab" * 32)
    path = str(tmp_path / "out" / "blessing.json")
    write_blessing(blessing, path)
    record = json.loads((tmp_path / "out" / "blessing.json").read_text())
    assert record["status"] == "NOT_BLESSED" and record["baseline_version"] == 3
    assert record["model_fingerprint"] == "sha256:" + "ab" * 32
    assert record["reasons"][0] == "fail: ctr/all/auc = 0.5010 is below min 0.5500"
    assert record["checks"][0] == {"metric": "ctr/all/auc", "rule": "min", "outcome": "fail", "value": 0.501,
                                   "bound": 0.55, "baseline": None,
                                   "reason": "ctr/all/auc = 0.5010 is below min 0.5500"}
    assert read_blessing(path) == blessing
    del record["model_fingerprint"]  # written before blessings were bound to their model: it binds to none
    (tmp_path / "old.json").write_text(json.dumps(record))
    assert read_blessing(str(tmp_path / "old.json")).model_fingerprint is None


def test_the_fingerprint_follows_the_graph_and_the_variables_index_only(tmp_path):
    from esmm_model.contracts.fingerprint import model_fingerprint

    model = tmp_path / "model"
    (model / "variables").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"graph")
    (model / "variables" / "variables.index").write_bytes(b"index")
    first = model_fingerprint(str(model))
    assert first.startswith("sha256:") and len(first) == len("sha256:") + 64
    (model / "assets.extra").mkdir()
    (model / "assets.extra" / "blessing.json").write_text("{}")  # the pusher's record does not change the model
    assert model_fingerprint(str(model)) == first
    (model / "variables" / "variables.index").write_bytes(b"other")
    retrained = model_fingerprint(str(model))
    (model / "variables" / "variables.index").unlink()
    stripped = model_fingerprint(str(model))
    assert len({first, retrained, stripped}) == 3
    with pytest.raises(InputError, match="'.*nothing' is not a SavedModel: it has no saved_model.pb"):
        model_fingerprint(str(tmp_path / "nothing"))


def test_reading_a_tampered_or_missing_artifact_names_the_file(tmp_path):
    path = tmp_path / "blessing.json"
    write_blessing(bless(metrics(0.5, 0.5, 0.5), None, GATE), str(path))
    record = json.loads(path.read_text())
    record["status"] = "BLESSED"
    path.write_text(json.dumps(record))
    with pytest.raises(InputError, match="says BLESSED but its checks say NOT_BLESSED"):
        read_blessing(str(path))
    with pytest.raises(InputError, match="nope.json' does not exist"):
        read_blessing(str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="must hold a JSON object, not a list"):
        read_blessing(str(tmp_path / "bad.json"))


def _config(**sections) -> dict:
    return {"name": "t", "features": [{"name": "f", "kind": "dense", "side": "item", "preprocessing": "zscore"}],
            **sections}


def test_shipped_configs_gate_the_three_paper_aucs():
    for name in ("simulator", "aliccp"):
        # stated, not left to code defaults
        assert {"evaluation", "push"} <= set(yaml.safe_load(read_config_text(name)))
        config = load_config(name)
        assert {t.metric: (t.min, t.max_regression) for t in config.evaluation.thresholds} == {
            "ctr/all/auc": (0.55, 0.01), "ctcvr/all/auc": (0.55, 0.01), "cvr/clicked/auc": (0.52, 0.01)}
        assert (config.push.model_name, config.push.keep_versions) == ("esmm", 5)


def test_config_parses_thresholds_and_round_trips():
    config = config_from_dict(_config(
        evaluation={"thresholds": [{"metric": "ctr/all/bce", "max": 0.3, "max_regression": 0.002}]},
        push={"model_name": "esmm_ranker", "keep_versions": 2}))
    (threshold,) = config.evaluation.thresholds
    assert threshold == Threshold("ctr/all/bce", max=0.3, max_regression=0.002)
    assert not threshold.higher_is_better and Threshold("cvr/clicked/auc").higher_is_better
    assert config_from_dict(config.to_dict()) == config


@pytest.mark.parametrize("evaluation, push, message", [
    ({"thresholds": [{"metric": "auc", "min": 0.5}]}, {}, r"evaluation.thresholds\[0\].metric: give a metric path"),
    ({"thresholds": [{"metric": "cvr//auc", "min": 0.5}]}, {}, r"evaluation.thresholds\[0\].metric"),
    ({"thresholds": [{"metric": "cvr/all/auc"}]}, {}, r"thresholds\[0\] \(cvr/all/auc\): give at least one of"),
    ({"thresholds": [{"metric": "cvr/all/auc", "min": 0.6, "max": 0.5}]}, {}, "min 0.6 exceeds max 0.5"),
    ({"thresholds": [{"metric": "cvr/all/auc", "max_regression": -0.1}]}, {},
     r"thresholds\[0\].max_regression: must be zero"),
    ({"thresholds": [{"metric": "cvr/all/auc", "min": float("nan")}]}, {},
     r"thresholds\[0\].min: must be a finite number"),
    ({"thresholds": [{"metric": "ctr/all/mean_prediction", "max_regression": 0.1}]}, {}, "has no better direction"),
    ({"thresholds": [{"metric": "a/b", "min": 0.1}, {"metric": "a/b", "max": 0.9}]}, {},
     r"thresholds\[1\].metric: 'a/b' is already gated by evaluation.thresholds\[0\]"),
    ({"thresholds": [{"metric": "a/b", "mni": 0.1}]}, {}, r"evaluation.thresholds\[0\].mni: unknown key"),
    ({}, {"model_name": "models/esmm"}, "push.model_name"),
    ({}, {"model_name": "123"}, "push.model_name"),
    ({}, {"keep_versions": 0}, "push.keep_versions: keep at least 1"),
])
def test_config_errors_name_the_key(evaluation, push, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(_config(evaluation=evaluation, push=push))
