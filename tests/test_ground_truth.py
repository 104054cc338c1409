"""The ground-truth sidecar's join checks every id, and the paper's four AUCs and the ROC curve."""
import numpy as np
import pytest

from esmm_model.contracts.ground_truth import join_ground_truth, load_ground_truth
from esmm_model.errors import InputError
from esmm_model.metrics import exact_auc, paper_aucs, roc_points


def _sidecar(tmp_path, ids):
    path = tmp_path / "ground_truth.csv"
    path.write_text("sample_id,p_click,p_cvr,would_convert\n"
                    + "".join(f"{sid},0.{i + 1},0.0{i + 1},{i % 2}\n" for i, sid in enumerate(ids)))
    return str(path)


def test_the_join_follows_the_scored_order(tmp_path):
    path = _sidecar(tmp_path, ["a", "b", "c"])
    rows = join_ground_truth(load_ground_truth(path), [b"c", b"a"], path)
    np.testing.assert_array_equal(rows, [[0.3, 0.03, 0.0], [0.1, 0.01, 0.0]])


def test_a_missing_id_past_the_first_rows_is_named(tmp_path):
    ids = [f"s{i}" for i in range(10)]
    path = _sidecar(tmp_path, ids)
    with pytest.raises(InputError, match=r"no row for sample_id b'late' \(eval row 10 of 11\)"):
        join_ground_truth(load_ground_truth(path), [sid.encode() for sid in ids] + [b"late"], path)


def test_a_sidecar_without_its_columns_is_refused(tmp_path):
    path = tmp_path / "truth.csv"
    path.write_text("sample_id,p_click\na,0.1\n")
    with pytest.raises(InputError, match="lacks column.*p_cvr, would_convert"):
        load_ground_truth(str(path))


def test_paper_aucs_follow_the_protocol():
    click = np.array([1, 1, 1, 0, 0, 0])
    conversion = np.array([1, 0, 0, 0, 0, 0])
    ctr = np.array([0.9, 0.8, 0.1, 0.7, 0.2, 0.3])
    cvr = np.array([0.9, 0.1, 0.5, 0.8, 0.2, 0.3])
    would_convert = np.array([1, 0, 0, 1, 0, 0])
    aucs = paper_aucs(click, conversion, ctr, cvr, ctr * cvr, would_convert)
    assert aucs["ctr_auc"] == pytest.approx(exact_auc(click, ctr)) == pytest.approx(6 / 9)
    assert aucs["cvr_auc_clicked"] == 1.0  # the clicked conversion outranks both clicked non-conversions
    assert aucs["ctcvr_auc"] == 1.0
    assert aucs["entire_space_cvr_auc"] == 1.0
    assert np.isnan(paper_aucs(click, conversion, ctr, cvr, ctr * cvr)["entire_space_cvr_auc"])


def test_roc_points_walk_down_the_scores():
    fpr, tpr, threshold = roc_points(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.3, 0.1]))
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(threshold, [1, 0.9, 0.8, 0.3, 0.1])
