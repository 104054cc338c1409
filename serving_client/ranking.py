"""Re-ranks candidates by a score that combines their similarity with the predicted rates."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, Sequence, TypeVar

import numpy as np

from serving_client.client import Predictions

T = TypeVar("T")
ScoreFormula = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""(sim_score, ctr, cvr, ctcvr), arrays of n, -> score, an array of n."""


def linear_score(sim: float = 1.0, ctr: float = 1.0, cvr: float = 2.0, ctcvr: float = 0.0) -> ScoreFormula:
    """``sim * sim_score + ctr * ctr + cvr * cvr + ctcvr * ctcvr``; the defaults are the seed's formula."""
    def score(sim_score: np.ndarray, p_ctr: np.ndarray, p_cvr: np.ndarray, p_ctcvr: np.ndarray) -> np.ndarray:
        return sim * sim_score + ctr * p_ctr + cvr * p_cvr + ctcvr * p_ctcvr
    return score


SEED_SCORE = linear_score()


@dataclass(frozen=True)
class RankedCandidate(Generic[T]):
    """A candidate with its predictions and score; ``index`` is its position in the input."""

    candidate: T
    index: int
    sim_score: float
    ctr: float
    cvr: float
    ctcvr: float
    score: float


class Ranker:
    """Orders candidates by descending score; ties keep the input order, NaN scores go last."""

    def __init__(self, formula: ScoreFormula = SEED_SCORE) -> None:
        self.formula = formula

    def rank(self, candidates: Sequence[T], predictions: Predictions,
             sim_scores: Sequence[float] | None = None) -> list[RankedCandidate[T]]:
        """The candidates re-ranked; ``sim_scores`` default to 0 (rank by the predictions alone)."""
        n = len(candidates)
        sim = np.zeros(n) if sim_scores is None else np.asarray(sim_scores, np.float64)
        if len(predictions) != n or sim.shape != (n,):
            raise ValueError(f"{n} candidates but {len(predictions)} predictions and {sim.size} similarity scores")
        ctr, cvr, ctcvr = (np.asarray(a, np.float64) for a in (predictions.ctr, predictions.cvr, predictions.ctcvr))
        score = np.asarray(self.formula(sim, ctr, cvr, ctcvr), np.float64)
        if score.shape != (n,):
            raise ValueError(f"the score formula returned shape {score.shape} for {n} candidates")
        order = np.argsort(-score, kind="stable")
        return [RankedCandidate(candidates[i], int(i), float(sim[i]), float(ctr[i]), float(cvr[i]), float(ctcvr[i]),
                                float(score[i])) for i in order]
