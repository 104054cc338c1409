"""LazyAdam: sparse steps touch only the looked-up rows, and agree with Adam where they should."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from esmm_model.config import TrainingConfig
from esmm_model.optimizers import LazyAdam
from esmm_model.training import build_optimizers

ROWS, DIM = 10, 3
TOUCHED = [1, 4, 7]
UNTOUCHED = [i for i in range(ROWS) if i not in TOUCHED]


def table(seed: int = 0) -> tf.Variable:
    return tf.Variable(np.random.default_rng(seed).normal(size=(ROWS, DIM)).astype(np.float32))


def sparse_gradient(variable: tf.Variable, ids: list[int], weights: np.ndarray) -> tf.IndexedSlices:
    """The IndexedSlices gradient of sum(weights * gather(variable, ids)), as an embedding lookup gives."""
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.gather(variable, ids) * weights)
    gradient = tape.gradient(loss, variable)
    assert isinstance(gradient, tf.IndexedSlices)
    return gradient


def slots(optimizer: keras.optimizers.Adam, variable: tf.Variable) -> tuple[np.ndarray, np.ndarray]:
    index = optimizer._index_dict[optimizer._var_key(variable)]
    return optimizer._momentums[index].numpy(), optimizer._velocities[index].numpy()


def test_first_step_matches_dense_adam_on_touched_rows_and_leaves_the_rest():
    weights = np.arange(1, 1 + 4 * DIM, dtype=np.float32).reshape(4, DIM) / 7.0
    ids = [1, 4, 7, 4]  # a duplicate id: its gradients add up
    lazy_var, dense_var = table(), table()
    before = lazy_var.numpy()
    lazy = LazyAdam(0.01, epsilon=1e-8)
    dense = keras.optimizers.Adam(0.01, epsilon=1e-8, jit_compile=False)
    lazy.apply_gradients([(sparse_gradient(lazy_var, ids, weights), lazy_var)])
    dense.apply_gradients([(sparse_gradient(dense_var, ids, weights), dense_var)])

    after = lazy_var.numpy()
    np.testing.assert_allclose(after[TOUCHED], dense_var.numpy()[TOUCHED], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(after[UNTOUCHED], before[UNTOUCHED])
    assert np.all(np.abs(after[TOUCHED] - before[TOUCHED]) > 1e-3)  # Adam's first step moves each touched entry by ~lr
    m, v = slots(lazy, lazy_var)
    expected_gradient = np.zeros((ROWS, DIM), np.float32)
    np.add.at(expected_gradient, ids, weights)
    np.testing.assert_allclose(m, 0.1 * expected_gradient, rtol=1e-6)
    np.testing.assert_allclose(v, 0.001 * expected_gradient ** 2, rtol=1e-4)  # float32 1 - 0.999


def test_untouched_rows_and_their_slots_do_not_decay():
    variable = table()
    optimizer = LazyAdam(0.01)
    weights = np.ones((3, DIM), np.float32)
    optimizer.apply_gradients([(sparse_gradient(variable, TOUCHED, weights), variable)])
    m_first, v_first = slots(optimizer, variable)
    values_first = variable.numpy()

    optimizer.apply_gradients([(sparse_gradient(variable, [4], weights[:1]), variable)])
    m, v = slots(optimizer, variable)
    others = [1, 7]
    np.testing.assert_array_equal(m[others], m_first[others])  # dense Adam would have multiplied them by beta_1
    np.testing.assert_array_equal(v[others], v_first[others])
    np.testing.assert_array_equal(variable.numpy()[others], values_first[others])
    np.testing.assert_allclose(m[4], 0.9 * m_first[4] + 0.1 * weights[0], rtol=1e-6)
    np.testing.assert_allclose(v[4], 0.999 * v_first[4] + 0.001 * weights[0] ** 2, rtol=1e-4)
    # The bias correction follows the global step (2), not the row's own update count.
    alpha = 0.01 * np.sqrt(1 - 0.999 ** 2) / (1 - 0.9 ** 2)
    np.testing.assert_allclose(variable.numpy()[4], values_first[4] - alpha * m[4] / (np.sqrt(v[4]) + 1e-7), rtol=1e-5)
    assert int(optimizer.iterations) == 2


def test_dense_gradients_get_plain_adam():
    lazy_var, dense_var = table(1), table(1)
    gradient = tf.constant(np.random.default_rng(2).normal(size=(ROWS, DIM)), tf.float32)
    lazy, dense = LazyAdam(0.01), keras.optimizers.Adam(0.01, jit_compile=False)
    for _ in range(3):
        lazy.apply_gradients([(gradient, lazy_var)])
        dense.apply_gradients([(gradient, dense_var)])
    np.testing.assert_allclose(lazy_var.numpy(), dense_var.numpy(), rtol=1e-6)


def test_inside_a_tf_function_the_step_updates_touched_rows_only():
    variable = table()
    before = variable.numpy()
    optimizer = LazyAdam(0.05)

    @tf.function
    def step(ids):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(tf.gather(variable, ids)))
        optimizer.apply_gradients([(tape.gradient(loss, variable), variable)])

    for _ in range(3):
        step(tf.constant([2, 5]))
    changed = np.flatnonzero(np.any(variable.numpy() != before, axis=1))
    assert changed.tolist() == [2, 5]
    assert np.all(np.abs(variable.numpy()[[2, 5]]) < np.abs(before[[2, 5]]))  # descends on x²


def test_training_config_builds_lazy_adam_for_tables_with_adams_hyperparameters():
    optimizers = build_optimizers(TrainingConfig(embedding_optimizer="lazy_adam", adam_epsilon=1e-6,
                                                 embedding_learning_rate=0.002))
    assert isinstance(optimizers.embedding, LazyAdam)
    assert optimizers.embedding.epsilon == 1e-6
    assert float(optimizers.embedding.learning_rate) == np.float32(0.002)
    assert set(optimizers.trackables()) == {"optimizer", "embedding_optimizer"}


@pytest.mark.parametrize("name, kind", [("same", None), ("lazy_adam", LazyAdam), ("adagrad", keras.optimizers.Adagrad),
                                        ("sgd", keras.optimizers.SGD)])
def test_every_embedding_optimizer_takes_its_own_rate_and_updates_only_looked_up_rows(name, kind):
    optimizers = build_optimizers(TrainingConfig(optimizer="adagrad", embedding_optimizer=name, learning_rate=0.01,
                                                 embedding_learning_rate=0.05))
    assert type(optimizers.main) is keras.optimizers.Adagrad
    assert float(optimizers.main.learning_rate) == np.float32(0.01)
    if kind is None:  # the main optimizer updates the tables too
        assert optimizers.embedding is None and set(optimizers.trackables()) == {"optimizer"}
        return
    assert type(optimizers.embedding) is kind and float(optimizers.embedding.learning_rate) == np.float32(0.05)
    assert set(optimizers.trackables()) == {"optimizer", "embedding_optimizer"}
    fallback = build_optimizers(TrainingConfig(embedding_optimizer=name, learning_rate=0.003)).embedding
    assert float(fallback.learning_rate) == np.float32(0.003)  # no embedding_learning_rate: the main rate
    variable = table()
    before = variable.numpy()
    optimizers.embedding.apply_gradients([(sparse_gradient(variable, TOUCHED, np.ones(DIM, np.float32)), variable)])
    changed = np.flatnonzero(np.any(variable.numpy() != before, axis=1))
    assert changed.tolist() == TOUCHED
    if name == "sgd":
        np.testing.assert_allclose(variable.numpy()[TOUCHED], before[TOUCHED] - 0.05, rtol=1e-6)


L2 = 0.05


def test_l2_on_rows_every_batch_holds_is_adam_on_the_penalised_gradient():
    """Where every step holds every row, LazyAdam(l2) is dense Adam on the gradient of loss + λ·Σw²."""
    weights = np.arange(1, 1 + ROWS * DIM, dtype=np.float32).reshape(ROWS, DIM) / 50.0
    lazy_var, dense_var = table(), table()
    lazy = LazyAdam(0.01, epsilon=1e-8, l2=L2)
    dense = keras.optimizers.Adam(0.01, epsilon=1e-8, jit_compile=False)
    for _ in range(3):
        lazy.apply_gradients([(sparse_gradient(lazy_var, list(range(ROWS)), weights), lazy_var)])
        penalised = tf.convert_to_tensor(sparse_gradient(dense_var, list(range(ROWS)), weights)) + 2 * L2 * dense_var
        dense.apply_gradients([(penalised, dense_var)])
    np.testing.assert_allclose(lazy_var.numpy(), dense_var.numpy(), rtol=1e-5, atol=1e-6)


def test_l2_shrinks_a_row_for_every_step_it_sat_out_at_its_own_adam_scale():
    """A row left out of k steps is first shrunk by (1 − 2αλ/(√v + ε))^k, α this step's bias-corrected rate and
    v the row's second moment, then takes its Adam step with 2λw added to its gradient; rows no step held keep
    their values until a step holds them."""
    rate, eps = 0.01, 1e-8
    variable = table()
    optimizer = LazyAdam(rate, epsilon=eps, l2=L2)
    weights = np.full((1, DIM), 0.3, np.float32)
    optimizer.apply_gradients([(sparse_gradient(variable, [2], weights), variable)])  # step 1 holds row 2
    for _ in range(4):  # steps 2-5 hold row 5 only
        optimizer.apply_gradients([(sparse_gradient(variable, [5], weights), variable)])
    np.testing.assert_array_equal(variable.numpy()[0], table().numpy()[0])  # never held: untouched so far
    row, (m, v) = variable.numpy()[2].astype(np.float64), (s[2].astype(np.float64) for s in slots(optimizer, variable))
    optimizer.apply_gradients([(sparse_gradient(variable, [2], weights), variable)])  # step 6: row 2 again
    t = 6
    alpha = rate * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
    shrunk = row * np.maximum(1 - alpha * 2 * L2 / (np.sqrt(v) + eps), 0) ** 4
    gradient = 0.3 + 2 * L2 * shrunk
    m, v = 0.9 * m + 0.1 * gradient, 0.999 * v + 0.001 * gradient ** 2
    np.testing.assert_allclose(variable.numpy()[2], shrunk - alpha * m / (np.sqrt(v) + eps), rtol=1e-5)
    assert np.all(np.abs(shrunk) < np.abs(row))


def test_the_model_adds_the_penalty_to_its_loss_only_when_the_tables_optimizer_does_not_apply_it():
    lazy = build_optimizers(TrainingConfig(embedding_optimizer="lazy_adam"), embedding_l2=1e-4).embedding
    assert lazy.l2 == 1e-4
    assert build_optimizers(TrainingConfig(embedding_optimizer="same"), embedding_l2=1e-4).embedding is None
