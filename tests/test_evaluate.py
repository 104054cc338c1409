"""The evaluator: one scoring pass, TFMA on the scores, the served model re-scored on the same rows, the gate."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from components.evaluate.executor import (
    BASELINE,
    CANDIDATE,
    Scores,
    check_example_counts,
    evaluate,
    read_block,
    write_blocks,
)
from components.evaluate.gate import bless
from components.evaluate.report import presence_rows
from esmm_model.config import EvaluationConfig, Threshold, load_config
from esmm_model.contracts.blessing import NOT_BLESSED, read_blessing
from esmm_model.errors import EsmmError
from esmm_model.metrics import exact_auc, log_loss
from tests.raw_examples import make_example, random_rows, write_ingest_dir
from tests.stub_models import save_stub_model

BEAM_ARGS = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]
GATE = EvaluationConfig(thresholds=(
    Threshold("ctr/all/auc", min=0.1, max_regression=0.01),
    Threshold("ctr/all/bce", max=5.0, max_regression=1.0),
    Threshold("ctr/clicked/mean_label", min=0.99),
    Threshold("ctr/clicked/example_count", min=1e6),
))


def _score(model_dir: Path, examples: list[bytes]) -> dict[str, np.ndarray]:
    serve = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    return {k: v.numpy() for k, v in serve(examples=tf.constant(examples)).items()}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """Serves version 1, whose recorded metrics say it is poor; today's rows are clicked where it scores high.

    The candidate ranks backwards: worse than version 1 on today's rows, better than its record.
    """
    root = tmp_path_factory.mktemp("evaluate")
    config = load_config("simulator")
    config = type(config)(**{**config.__dict__, "evaluation": GATE})
    serving = root / "serving" / "esmm"
    served = save_stub_model(config, serving, 1)
    candidate = save_stub_model(config, root / "candidate", 7, backwards=True)
    rows = random_rows(config, 800, seed=5)
    served_ctr = _score(served, [make_example(config, r) for r in rows])["ctr"]
    rng = np.random.default_rng(0)
    clicked = rng.random(len(rows)) < np.where(served_ctr > np.quantile(served_ctr, 0.7), 0.6, 0.1)
    for row, click in zip(rows, clicked):
        row["click"], row["conversion"] = int(click), int(click and rng.random() < 0.4)
    ingest = write_ingest_dir(config, root / "ingest", rows[:50], rows)
    (ingest / "counts.json").write_text(json.dumps({"rows_read": 850, "rejected": {"bad_click": 3},
                                                    "train": {"rows": 50, "clicks": 9, "conversions": 2},
                                                    "eval": {"rows": 800, "clicks": int(clicked.sum()),
                                                             "conversions": 0}}))
    recorded = {"ctr": {"all": {"auc": 0.15, "bce": 9.0}}}  # what version 1 scored on an older split
    (served / "assets.extra").mkdir()
    (served / "assets.extra" / "metrics.json").write_text(json.dumps(recorded))
    result = evaluate(config, str(candidate), str(ingest), str(root / "out"), BEAM_ARGS,
                      serving_base=str(root / "serving"))
    examples = [make_example(config, r) for r in rows]
    return result, rows, _score(served, examples), _score(candidate, examples), recorded, config


def test_baseline_is_rescored_on_the_same_rows(evaluated):
    result, rows, served, candidate, _, _ = evaluated
    metrics = result.metrics
    click = np.array([r["click"] for r in rows], bool)
    baseline = metrics["baseline"]
    assert baseline["version"] == 1 and baseline["path"].endswith("esmm/1")
    assert baseline["ctr"]["all"]["auc"] == pytest.approx(exact_auc(click, served["ctr"]), abs=1e-12)
    assert metrics["ctr"]["all"]["auc"] == pytest.approx(exact_auc(click, candidate["ctr"]), abs=1e-12)
    assert baseline["ctr"]["all"]["auc"] > 0.6 > metrics["ctr"]["all"]["auc"]
    # TFMA's block metrics over both models, row for row.
    assert metrics["ctr"]["all"]["example_count"] == baseline["ctr"]["all"]["example_count"] == 800
    assert metrics["ctr"]["clicked"]["example_count"] == click.sum()
    assert baseline["ctr"]["all"]["bce"] == pytest.approx(log_loss(click, served["ctr"]), rel=1e-6)
    assert metrics["ctr"]["unclicked"]["mean_prediction"] == pytest.approx(candidate["ctr"][~click].mean(), rel=1e-6)
    assert metrics["ctr"]["clicked"]["mean_label"] == 1.0
    assert metrics["data"]["eval_rows"] == 800 and metrics["data"]["ingest"]["rejected"] == {"bad_click": 3}


def test_gate_fails_a_candidate_worse_on_the_same_rows_though_better_than_the_record(evaluated):
    result, _, _, _, recorded, config = evaluated
    metrics = result.metrics
    # Against the served model's recorded metrics the candidate's AUC would pass...
    auc_gate = EvaluationConfig(thresholds=config.evaluation.thresholds[:1])
    assert bless(metrics, recorded, auc_gate, baseline_version=1).blessed
    # ...re-scored on the same rows, it fails the change threshold (and the impossible count floor).
    blessing = result.blessing
    assert blessing.status == NOT_BLESSED and blessing.baseline_version == 1
    failed = [(c.metric, c.rule) for c in blessing.checks if c.outcome == "fail"]
    assert failed == [("ctr/all/auc", "max_regression"), ("ctr/clicked/example_count", "min")]
    regression = next(c for c in blessing.checks if c.rule == "max_regression" and c.metric == "ctr/all/auc")
    assert regression.baseline == metrics["baseline"]["ctr"]["all"]["auc"]
    assert read_blessing(str(Path(result.out_dir) / "blessing.json")) == blessing


def test_tfma_checks_the_thresholds_on_metrics_it_computes(evaluated):
    result, *_ = evaluated
    by_rule = {(c.metric, c.rule): c for c in result.blessing.checks}
    for key in (("ctr/all/bce", "max"), ("ctr/all/bce", "max_regression"), ("ctr/clicked/mean_label", "min")):
        assert by_rule[key].outcome == "pass" and by_rule[key].reason.endswith("[TFMA]"), key
    assert "[TFMA" not in by_rule[("ctr/all/auc", "min")].reason
    count = by_rule[("ctr/clicked/example_count", "min")]
    assert count.outcome == "fail" and "[TFMA: " in count.reason
    import tensorflow_model_analysis as tfma

    validation = tfma.load_validation_result(str(Path(result.out_dir) / "tfma"))
    assert not validation.validation_ok
    (per_slice,) = validation.metric_validations_per_slice
    assert [f.metric_key.name for f in per_slice.failures] == ["example_count"]


def test_report_shows_verdict_comparison_data_and_note(evaluated):
    result, *_ = evaluated
    report = (Path(result.out_dir) / "report.md").read_text()
    assert "NOT_BLESSED (baseline: pushed version 1)" in report
    assert "fail: ctr/all/auc = " in report and "Candidate vs served version 1, same eval rows" in report
    assert "| rejected | 3 | bad_click 3 |" in report
    assert "unconditional conversion" in report
    assert "Candidate vs served version 1" in result.table()
    html = (Path(result.out_dir) / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "NOT_BLESSED" in html
    written = json.loads((Path(result.out_dir) / "metrics.json").read_text())
    assert written["baseline"]["ctr"]["all"]["auc"] == pytest.approx(result.metrics["baseline"]["ctr"]["all"]["auc"])


def test_blocks_share_one_click_value_and_keep_every_row(tmp_path):
    click = np.array([0, 1, 0, 0, 1, 1, 0, 1, 0, 0])
    scores = Scores(np.arange(10).astype(bytes), click, click * 0,
                    {CANDIDATE: {o: np.linspace(0, 1, 10) for o in ("ctr", "cvr", "ctcvr")},
                     BASELINE: {o: np.linspace(1, 0, 10) for o in ("ctr", "cvr", "ctcvr")}})
    paths = write_blocks(scores, str(tmp_path / "blocks"), block_rows=4)
    batches = [batch for path in paths for batch in read_block(path)]
    # 6 unclicked rows in blocks of 4 and 2, the 4 clicked in one.
    assert [[v[0] for v in b.column("click").to_pylist()] for b in batches] == [[0] * 4, [0] * 2, [1] * 4]
    ctr = [v[0] for b in batches for v in b.column("candidate_ctr").to_pylist()]
    assert sorted(ctr) == pytest.approx(np.linspace(0, 1, 10))


def test_first_model_without_a_served_baseline_is_judged_on_absolute_bounds(tmp_path):
    config = load_config("simulator")
    config = type(config)(**{**config.__dict__, "evaluation": GATE})
    candidate = save_stub_model(config, tmp_path / "candidate", 1)
    rows = random_rows(config, 300, seed=2)
    ingest = write_ingest_dir(config, tmp_path / "ingest", rows[:10], rows)
    result = evaluate(config, str(candidate), str(ingest), str(tmp_path / "out"), BEAM_ARGS,
                      serving_base=str(tmp_path / "nothing_served"))
    click = np.array([r["click"] for r in rows], bool)
    assert result.metrics["baseline"] is None and result.blessing.baseline_version is None
    assert result.metrics["ctr"]["clicked"]["example_count"] == click.sum()
    assert result.metrics["ctr"]["all"]["bce"] == pytest.approx(log_loss(click, _score(candidate, [
        make_example(config, r) for r in rows])["ctr"]), rel=1e-6)
    by_rule = {(c.metric, c.rule): c for c in result.blessing.checks}
    assert by_rule[("ctr/all/auc", "max_regression")].outcome == "skip"
    assert by_rule[("ctr/all/bce", "max_regression")].outcome == "skip"
    assert by_rule[("ctr/clicked/example_count", "min")].outcome == "fail"
    assert "Candidate vs served" not in (tmp_path / "out" / "report.md").read_text()


def test_rows_lost_by_tfma_fail_the_evaluation():
    click = np.array([1, 0, 0, 1, 0])
    scores = Scores(sample_id=np.arange(5), click=click, conversion=np.zeros(5), outputs={})
    counted = {CANDIDATE: {"ctr": {"all": {"example_count": 5.0}, "clicked": {"example_count": 2.0}},
                           "cvr": {"clicked": {"example_count": float("nan")}}}}
    check_example_counts(counted, scores)
    counted[CANDIDATE]["ctr"]["clicked"]["example_count"] = 1.0
    with pytest.raises(EsmmError, match=r"TFMA counted 1 rows in slice 'clicked' of candidate/ctr where 2 were scored"):
        check_example_counts(counted, scores)


def test_presence_shows_train_and_eval_side_by_side_from_the_ingest_counts():
    ingest = {"train": {"rows": 8}, "eval": {"rows": 4},
              "presence": {"train": {"user_id": 8, "occupation": 2}, "eval": {"user_id": 4, "occupation": 0}},
              "unused_fields": {"train": {"302": 8}}}
    assert presence_rows({"data": {"ingest": ingest}}) == [
        ["user_id", "100.0%", "100.0%"], ["occupation", "25.0%", "0.0%"], ["field 302 (unused)", "100.0%", "0.0%"]]
    assert presence_rows({"data": {"ingest": {"train": {"rows": 3}}}}) == []
