"""Optimizers for embedding tables whose cost per step scales with the rows a batch touches.

The tf_keras Adam decays both moment slots of a table densely on every step, even for an
``IndexedSlices`` gradient: with Ali-CCP-sized tables (millions of rows) that pass over
every row dominates the step. ``LazyAdam`` is TF1's ``LazyAdamOptimizer`` on tf_keras: for
a sparse gradient it reads, updates and writes back the moments and the variable of the
looked-up rows only; rows no batch touched keep their moments unchanged (they do not decay).
Bias correction uses the optimizer's global step, as Adam's does. Dense gradients get
plain Adam.
"""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras


class LazyAdam(keras.optimizers.Adam):
    """Adam whose sparse updates touch only the gradient's rows (moments included)."""

    def __init__(self, learning_rate: float = 0.001, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7, name: str = "LazyAdam", **kwargs):
        kwargs.setdefault("jit_compile", False)  # scatter updates; XLA on CPU only slows them down
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                         name=name, **kwargs)

    def update_step(self, gradient, variable):
        """One Adam step; for ``IndexedSlices`` (indices already deduplicated by
        ``apply_gradients``), m, v and the variable change on those rows only."""
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable)
        dtype = variable.dtype
        local_step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        alpha = (tf.cast(self.learning_rate, dtype) * tf.sqrt(1 - tf.pow(beta_2, local_step))
                 / (1 - tf.pow(beta_1, local_step)))
        index = self._index_dict[self._var_key(variable)]
        m, v = self._momentums[index], self._velocities[index]
        indices, values = gradient.indices, gradient.values
        m_rows = beta_1 * tf.gather(m, indices) + (1 - beta_1) * values
        v_rows = beta_2 * tf.gather(v, indices) + (1 - beta_2) * tf.square(values)
        m.scatter_update(tf.IndexedSlices(m_rows, indices))
        v.scatter_update(tf.IndexedSlices(v_rows, indices))
        variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon), indices))
