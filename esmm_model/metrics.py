"""Exact evaluation metrics over a whole split (never averaged over batches).

The paper's protocol: CTR AUC over all impressions, CTCVR AUC over all impressions, CVR AUC
over clicked impressions.
"""
from __future__ import annotations

import numpy as np


def exact_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank statistic, ties counted half; NaN when a class is absent."""
    positive = np.asarray(labels).astype(bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(np.asarray(scores), return_inverse=True, return_counts=True)
    mean_ranks = np.cumsum(counts) - (counts - 1) / 2.0
    rank_sum = mean_ranks[inverse][positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision (tied scores grouped); NaN without positives."""
    positive = np.asarray(labels).astype(bool)
    n_pos = int(positive.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores), kind="stable")
    sorted_scores, y = np.asarray(scores)[order], positive[order]
    last_of_tie = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    tps = np.cumsum(y)[last_of_tie]
    seen = (np.arange(1, y.size + 1))[last_of_tie]
    recall_gain = np.diff(np.r_[0, tps]) / n_pos
    return float(np.sum(recall_gain * tps / seen))


def log_loss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy; probabilities clipped to [eps, 1 - eps]."""
    p = np.clip(np.asarray(probabilities, np.float64), eps, 1.0 - eps)
    y = np.asarray(labels, np.float64)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p))) if y.size else float("nan")


def esmm_metrics(click: np.ndarray, conversion: np.ndarray, p_ctr: np.ndarray, p_cvr: np.ndarray,
                 p_ctcvr: np.ndarray) -> dict[str, float]:
    """AUCs and log losses by the paper's protocol, with the example counts they rest on."""
    click = np.asarray(click).astype(bool)
    ctcvr = click & np.asarray(conversion).astype(bool)
    return {
        "ctr_auc": exact_auc(click, p_ctr),
        "ctcvr_auc": exact_auc(ctcvr, p_ctcvr),
        "cvr_auc_clicked": exact_auc(ctcvr[click], p_cvr[click]),
        "ctr_logloss": log_loss(click, p_ctr),
        "ctcvr_logloss": log_loss(ctcvr, p_ctcvr),
        "cvr_logloss_clicked": log_loss(ctcvr[click], p_cvr[click]),
        "examples": int(click.size),
        "clicks": int(click.sum()),
        "conversions": int(ctcvr.sum()),
    }


def paper_aucs(click: np.ndarray, conversion: np.ndarray, p_ctr: np.ndarray, p_cvr: np.ndarray, p_ctcvr: np.ndarray,
               would_convert: np.ndarray | None = None) -> dict[str, float]:
    """The four AUCs: CTR and CTCVR over all impressions, CVR over clicked ones (the paper's protocol), and CVR
    over all impressions against ``would_convert`` (NaN without ground truth)."""
    click = np.asarray(click).astype(bool)
    ctcvr = click & np.asarray(conversion).astype(bool)
    entire_space = float("nan") if would_convert is None else exact_auc(np.asarray(would_convert).astype(bool), p_cvr)
    return {"ctr_auc": exact_auc(click, p_ctr), "ctcvr_auc": exact_auc(ctcvr, p_ctcvr),
            "cvr_auc_clicked": exact_auc(ctcvr[click], p_cvr[click]), "entire_space_cvr_auc": entire_space}


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROC curve at every example, highest score first: (fpr, tpr, score), each starting at (0, 0, 1)."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    y = np.asarray(labels).astype(bool)[order]
    tps, fps = np.cumsum(y), np.cumsum(~y)
    fpr = np.concatenate([[0.0], fps / max(fps[-1], 1) if y.size else []])
    tpr = np.concatenate([[0.0], tps / max(tps[-1], 1) if y.size else []])
    return fpr, tpr, np.concatenate([[1.0], np.asarray(scores, np.float64)[order]])
