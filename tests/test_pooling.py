"""Sparse pooling of weighted id lists: the padded einsum's values, one gradient row per distinct id."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from esmm_model.config import config_from_dict
from esmm_model.layers import FeatureEmbeddings, weighted_sum

TABLE = np.arange(24, dtype=np.float32).reshape(6, 4) / 10.0
# Row 0: id 2 twice and id 5; row 1: id 0 (a real id, not padding: its weight is not 0); row 2: empty.
IDS = np.array([[2, 5, 2, 0], [0, 0, 0, 0], [0, 0, 0, 0]], np.int64)
WEIGHTS = np.array([[1.0, 0.5, 2.0, 0.0], [3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32)


def test_weighted_sum_is_the_sum_over_non_zero_weights():
    pooled = weighted_sum(tf.constant(TABLE), tf.constant(IDS), tf.constant(WEIGHTS)).numpy()
    np.testing.assert_allclose(pooled[0], 3.0 * TABLE[2] + 0.5 * TABLE[5], rtol=1e-6)
    np.testing.assert_allclose(pooled[1], 3.0 * TABLE[0], rtol=1e-6)
    np.testing.assert_array_equal(pooled[2], np.zeros(4))


def test_the_tables_gradient_has_one_row_per_distinct_weighted_id():
    table = tf.Variable(TABLE)
    upstream = tf.constant([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(weighted_sum(table, tf.constant(IDS), tf.constant(WEIGHTS)) * upstream)
    gradient = tape.gradient(loss, table)
    assert isinstance(gradient, tf.IndexedSlices)
    rows = dict(zip(gradient.indices.numpy().tolist(), gradient.values.numpy()))
    assert sorted(rows) == [0, 2, 5]  # the padding's id 0 slots add no row; row 1's real id 0 does
    np.testing.assert_allclose(rows[2], [3.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(rows[5], [0.5, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(rows[0], [0.0, 3.0, 0.0, 0.0])


def test_sparse_and_padded_pooling_give_the_same_embeddings():
    config = config_from_dict({
        "name": "tiny",
        "features": [
            {"name": "hist", "kind": "weighted_ids", "side": "user", "shared_embedding": "items",
             "preprocessing": {"hash_buckets": 6}},
            {"name": "hist_mean", "kind": "weighted_ids", "side": "user", "combiner": "mean",
             "shared_embedding": "items", "preprocessing": {"hash_buckets": 6}},
        ],
        "model": {"embedding_dim": 4},
    })
    layer = FeatureEmbeddings(config, {"items": 6})
    inputs = {"hist": tf.constant(IDS), "hist_weight": tf.constant(WEIGHTS),
              "hist_mean": tf.constant(IDS), "hist_mean_weight": tf.constant(WEIGHTS)}
    sparse = layer(inputs).numpy()
    layer.sparse_pooling = False
    padded = layer(inputs).numpy()
    np.testing.assert_allclose(sparse, padded, rtol=1e-6, atol=1e-7)
    assert sparse.shape == (3, 8) and np.abs(sparse[:2]).min() > 0
