"""Ranking: the seed's formula, a custom one, ties in input order, and shape checks."""
from __future__ import annotations

import numpy as np
import pytest

from serving_client.client import Predictions
from serving_client.ranking import Ranker, linear_score


def predictions(ctr: list[float], cvr: list[float]) -> Predictions:
    ctr_a, cvr_a = np.float32(ctr), np.float32(cvr)
    return Predictions(ctr_a, cvr_a, ctr_a * cvr_a, model_version=1)


def test_default_is_the_seed_score_sim_plus_ctr_plus_twice_cvr() -> None:
    ranked = Ranker().rank(["a", "b", "c"], predictions([0.1, 0.5, 0.2], [0.3, 0.0, 0.25]), sim_scores=[0.0, 0.1, 0.05])
    assert [r.candidate for r in ranked] == ["c", "a", "b"]
    assert [r.index for r in ranked] == [2, 0, 1]
    assert [r.score for r in ranked] == pytest.approx([0.05 + 0.2 + 2 * 0.25, 0.1 + 2 * 0.3, 0.1 + 0.5])
    top = ranked[0]
    assert (top.sim_score, top.ctr, top.cvr) == pytest.approx((0.05, 0.2, 0.25))
    assert top.ctcvr == pytest.approx(0.05)


def test_ties_keep_input_order_and_nan_goes_last() -> None:
    ranked = Ranker().rank(list("abcde"), predictions([0.2, 0.1, 0.2, float("nan"), 0.2], [0.0] * 5))
    assert [r.candidate for r in ranked] == ["a", "c", "e", "b", "d"]


def test_configurable_formula() -> None:
    by_ctcvr = Ranker(linear_score(sim=0.0, ctr=0.0, cvr=0.0, ctcvr=1.0))
    ranked = by_ctcvr.rank(["a", "b"], predictions([0.9, 0.5], [0.1, 0.5]), sim_scores=[10.0, 0.0])
    assert [r.candidate for r in ranked] == ["b", "a"]
    ranked = Ranker(lambda sim, ctr, cvr, ctcvr: -ctr).rank(["a", "b"], predictions([0.9, 0.5], [0.1, 0.5]))
    assert [r.score for r in ranked] == pytest.approx([-0.5, -0.9])


def test_length_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="3 candidates but 2 predictions"):
        Ranker().rank(["a", "b", "c"], predictions([0.1, 0.2], [0.1, 0.2]))
    with pytest.raises(ValueError, match="returned shape"):
        Ranker(lambda *_: np.zeros(1)).rank(["a", "b"], predictions([0.1, 0.2], [0.1, 0.2]))
