"""Sparse pooling of weighted id lists: the padded einsum's values, one gradient row per distinct id."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from esmm_model.config import config_from_dict
from esmm_model.layers import FeatureEmbeddings, shifted_exp, weighted_sum

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


def test_shifted_exp_is_the_softmax_numerator_of_each_lists_weights_in_both_forms():
    expected = np.zeros_like(WEIGHTS)
    expected[0, :3] = np.exp(WEIGHTS[0, :3] - 2.0)
    expected[1, 0] = 1.0  # one entry: exp(0); the empty row stays empty
    np.testing.assert_allclose(shifted_exp(tf.constant(WEIGHTS)).numpy(), expected, rtol=1e-6)
    sparse = shifted_exp(tf.sparse.from_dense(tf.constant(WEIGHTS)))
    np.testing.assert_allclose(tf.sparse.to_dense(sparse).numpy(), expected, rtol=1e-6)
    large = tf.constant([[500.0, 1.0, 0.0]])  # no overflow: exp(w - max)
    np.testing.assert_allclose(shifted_exp(large).numpy(), [[1.0, np.exp(-499.0), 0.0]], atol=1e-30)


def test_the_softmax_combiner_pools_with_softmax_weights_sparse_or_padded():
    config = config_from_dict({
        "name": "tiny",
        "features": [{"name": "hist", "kind": "weighted_ids", "side": "user", "combiner": "softmax",
                      "preprocessing": {"hash_buckets": 6}}],
        "model": {"embedding_dim": 4},
    })
    layer = FeatureEmbeddings(config, {"hist": 6})
    table = layer.tables["hist"].numpy()
    padded = layer({"hist": tf.constant(IDS), "hist_weight": tf.constant(WEIGHTS)}).numpy()
    e = np.exp(np.array([1.0, 0.5, 2.0]) - 2.0)
    np.testing.assert_allclose(padded[0], (e[0] * table[2] + e[1] * table[5] + e[2] * table[2]) / e.sum(), rtol=1e-5)
    np.testing.assert_allclose(padded[1], table[0], rtol=1e-6)
    np.testing.assert_array_equal(padded[2], np.zeros(4))
    present = tf.constant(WEIGHTS) != 0
    sparse_ids = tf.SparseTensor(tf.where(present), tf.boolean_mask(tf.constant(IDS), present), IDS.shape)
    sparse = layer({"hist": sparse_ids, "hist_weight": tf.sparse.from_dense(tf.constant(WEIGHTS))}).numpy()
    np.testing.assert_allclose(sparse, padded, rtol=1e-6, atol=1e-7)
