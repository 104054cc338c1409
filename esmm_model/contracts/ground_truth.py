"""The simulator's ground-truth sidecar: ``sample_id,p_click,p_cvr,would_convert`` per impression, and its join.

Evaluation and the experiment harness join it to the eval split by ``sample_id`` to score the entire-space
CVR AUC (against ``would_convert``, the counterfactual conversion of every impression) and the oracle AUCs.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from esmm_model.errors import InputError

COLUMNS = ("sample_id", "p_click", "p_cvr", "would_convert")
GroundTruth = dict[bytes, tuple[float, float, int]]


def load_ground_truth(path: str) -> GroundTruth:
    """sample_id -> (p_click, p_cvr, would_convert) from the sidecar at ``path`` (local or a URI)."""
    if not tf.io.gfile.exists(path):
        raise InputError(f"ground truth file {path!r} does not exist")
    with tf.io.gfile.GFile(path) as f:
        table = np.genfromtxt(f, delimiter=",", names=True, dtype=None, encoding="utf-8")
    absent = [name for name in COLUMNS if name not in (table.dtype.names or ())]
    if absent:
        raise InputError(f"ground truth file {path!r} lacks column(s) {', '.join(absent)}; "
                         f"its header must be {','.join(COLUMNS)}")
    ids = np.char.encode(np.atleast_1d(table["sample_id"]).astype(str))
    return {sid: (float(pc), float(pv), int(w)) for sid, pc, pv, w in
            zip(ids, np.atleast_1d(table["p_click"]), np.atleast_1d(table["p_cvr"]),
                np.atleast_1d(table["would_convert"]))}


def join_ground_truth(truth: GroundTruth, sample_ids: Sequence[bytes], where: str) -> np.ndarray:
    """[n, 3] float64 rows (p_click, p_cvr, would_convert) in the order of ``sample_ids``.

    Every id must have a row; the first that has none is named, with ``where`` (the sidecar's path).
    """
    rows = np.empty((len(sample_ids), 3), dtype=np.float64)
    for i, sid in enumerate(sample_ids):
        row = truth.get(sid)
        if row is None:
            raise InputError(f"ground truth {where!r} has no row for sample_id {sid!r} (eval row {i:,} of "
                             f"{len(sample_ids):,}); was it written by the same simulation?")
        rows[i] = row
    return rows
