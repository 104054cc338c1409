"""Optimizers for embedding tables whose cost per step scales with the rows a batch touches.

The tf_keras Adam decays both moment slots of a table densely on every step, even for an
``IndexedSlices`` gradient: with Ali-CCP-sized tables (millions of rows) that pass over
every row dominates the step. ``LazyAdam`` is TF1's ``LazyAdamOptimizer`` on tf_keras: for
a sparse gradient it reads, updates and writes back the moments and the variable of the
looked-up rows only; rows no batch touched keep their moments unchanged (they do not decay).
Bias correction uses the optimizer's global step, as Adam's does. Dense gradients get
plain Adam.

With ``l2`` (the model's ``embedding_l2``, λ of the penalty λ·Σw² over whole tables), ``LazyAdam`` applies
that penalty at the same per-step cost. Under dense Adam its gradient 2λw reaches every row on every step:
a row no batch holds has m → 2λw and moves by about α·2λw/√v a step, v being what its own gradients left,
so it shrinks by (1 − 2αλ/(√v + ε)) a step; rows seldom trained (small v) shrink fast, rows trained often
hardly at all. ``LazyAdam`` keeps the step each row was last updated, and when a batch holds the row again
first shrinks it by that factor for every step it sat out (at the row's v and this step's α), then takes
the Adam step with 2λw added to its gradient. What this leaves out against dense Adam: the momentum a row
keeps moving with after its batch, and the decay of its v while it sits out.
"""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras


class LazyAdam(keras.optimizers.Adam):
    """Adam whose sparse updates touch only the gradient's rows (moments included)."""

    def __init__(self, learning_rate: float = 0.001, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7, l2: float = 0.0, name: str = "LazyAdam", **kwargs):
        kwargs.setdefault("jit_compile", False)  # scatter updates; XLA on CPU only slows them down
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                         name=name, **kwargs)
        self.l2 = l2

    def build(self, var_list):
        """Adam's moments and, with ``l2``, the step each row was last updated (0: never)."""
        super().build(var_list)
        if self.l2 and not hasattr(self, "_last_updates"):
            self._last_updates = [self.add_variable_from_reference(var, "last_update", shape=var.shape[:1])
                                  for var in var_list]

    def update_step(self, gradient, variable):
        """One Adam step; for ``IndexedSlices`` (indices already deduplicated by
        ``apply_gradients``), m, v and the variable change on those rows only."""
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient + 2 * self.l2 * variable if self.l2 else gradient, variable)
        dtype = variable.dtype
        local_step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        alpha = (tf.cast(self.learning_rate, dtype) * tf.sqrt(1 - tf.pow(beta_2, local_step))
                 / (1 - tf.pow(beta_1, local_step)))
        index = self._index_dict[self._var_key(variable)]
        m, v = self._momentums[index], self._velocities[index]
        indices, values = gradient.indices, gradient.values
        m_rows, v_rows = tf.gather(m, indices), tf.gather(v, indices)
        if self.l2:
            last = self._last_updates[index]
            rows = tf.gather(variable, indices)
            idle = local_step - 1 - tf.gather(last, indices)  # steps since the row's last update
            per_step = tf.maximum(1 - alpha * 2 * self.l2 / (tf.sqrt(v_rows) + self.epsilon), 0.0)
            rows = rows * tf.pow(per_step, tf.expand_dims(idle, -1))
            values = values + 2 * self.l2 * rows
            last.scatter_update(tf.IndexedSlices(tf.fill(tf.shape(indices), local_step), indices))
        m_rows = beta_1 * m_rows + (1 - beta_1) * values
        v_rows = beta_2 * v_rows + (1 - beta_2) * tf.square(values)
        m.scatter_update(tf.IndexedSlices(m_rows, indices))
        v.scatter_update(tf.IndexedSlices(v_rows, indices))
        step = alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon)
        if self.l2:
            variable.scatter_update(tf.IndexedSlices(rows - step, indices))
        else:
            variable.scatter_sub(tf.IndexedSlices(step, indices))
