"""Keras layers of the ESMM family: embedding tables with pooling, and the MLP towers.

Model inputs are dense tensors (see ``esmm_model.model.model_inputs``): an ``id``
feature is int64 [batch]; a ``weighted_ids`` feature is ids int64 [batch, length] with
``<name>_weight`` float32 [batch, length], padded with weight 0; a z-scored ``dense``
feature is float32 [batch]. The serving signature passes a weighted_ids feature as the two
SparseTensors it parsed instead (``esmm_model.model.serving_inputs``): the same sums, without
looking up padding.
"""
from __future__ import annotations

import math

import tensorflow as tf
import tf_keras as keras

from esmm_model.config import Config, Feature, ModelConfig
from esmm_model.schema import is_shared


class FeatureEmbeddings(keras.layers.Layer):
    """One embedding table per feature or shared group; looks up, pools and concatenates.

    Tables start truncated-normal with stddev ``model.embedding_init_stddev``, by default
    1/√dim (unit-norm rows). Members of a shared group read one table. A weighted_ids feature is pooled by its
    combiner: ``sum`` is the weighted sum (the seed's), ``mean`` divides it by the weights'
    sum, ``softmax`` weighs each entry by the softmax of the list's weights (DeepCTR's weighted
    sequences with ``weight_norm``), computed as the mean under the weights exp(w − max w). An empty
    list pools to zeros under every combiner. Z-scored dense features are appended as they are.

    Rows are read with ``tf.nn.embedding_lookup``, not ``tf.gather``: on a table partitioned over
    parameter servers (a ShardedVariable), ``tf.gather`` in a layer's call reaches
    ``ShardedVariable.sparse_read``, which returns the rows grouped by shard instead of in the
    ids' order (TF 2.21), so examples silently got other ids' rows, and refuses the [batch, length]
    ids of a weighted_ids feature ("indices must be 1D").

    A weighted list is pooled sparsely (``sparse_pooling``, ``weighted_sum``): each distinct id
    of the batch is read once and the non-zero weights pool them by a sparse-dense matmul, so
    the table's gradient holds one row per distinct id. Gathering the padded [batch, length]
    ids and pooling with an einsum gave the gradient one row per slot, padding included, which
    the optimizer then summed by id (``UnsortedSegmentSum``): that sum was a third of the train
    step's CPU time (docs/benchmarks.md#training). ``compile_for_training`` turns it off under
    XLA, which needs the padded path's static shapes.
    """

    def __init__(self, config: Config, table_sizes: dict[str, int], **kwargs):
        super().__init__(**kwargs)
        self._features = config.features
        self.sparse_pooling = True
        self.tables: dict[str, tf.Variable] = {}
        for feature in config.features:
            if not feature.preprocessing.is_categorical or feature.table_name in self.tables:
                continue
            dim = config.embedding_dim(feature)
            stddev = config.model.embedding_init_stddev or 1.0 / math.sqrt(dim)
            self.tables[feature.table_name] = self.add_weight(
                name=f"{feature.table_name}_embedding", shape=(table_sizes[feature.table_name], dim),
                initializer=keras.initializers.TruncatedNormal(stddev=stddev), trainable=True)

    def call(self, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        """[batch, width]: every feature's column, in config order."""
        return tf.concat([self._column(feature, inputs) for feature in self._features], axis=1)

    def blocks(self, inputs: dict[str, tf.Tensor]) -> list[tuple[bool, tf.Tensor]]:
        """``call``'s columns as blocks of consecutive features of one kind, in config order: (shared, [rows,
        width]), shared blocks (user and context features) with the rows of the shared inputs (the ranking
        signature's: one per distinct request context), the others with the candidates' rows."""
        blocks: list[tuple[bool, list[tf.Tensor]]] = []
        for feature in self._features:
            shared, column = is_shared(feature), self._column(feature, inputs)
            if blocks and blocks[-1][0] == shared:
                blocks[-1][1].append(column)
            else:
                blocks.append((shared, [column]))
        return [(shared, tf.concat(columns, axis=1)) for shared, columns in blocks]

    def _column(self, feature: Feature, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        if not feature.preprocessing.is_categorical:
            return tf.expand_dims(inputs[feature.name], -1)
        table = self.tables[feature.table_name]
        if feature.kind != "weighted_ids":
            return tf.nn.embedding_lookup(table, inputs[feature.name])
        ids, weights = inputs[feature.name], inputs[feature.weight_name]
        if feature.combiner == "softmax":  # the mean under weights exp(w - the list's largest w)
            weights = shifted_exp(weights)
        if isinstance(ids, tf.SparseTensor):
            pooled, total = _pooled_sparse(table, ids, weights)
        else:
            pooled = weighted_sum(table, ids, weights) if self.sparse_pooling else \
                tf.einsum("bld,bl->bd", tf.nn.embedding_lookup(table, ids), weights)
            total = tf.reduce_sum(weights, axis=1, keepdims=True)
        return pooled if feature.combiner == "sum" else tf.math.divide_no_nan(pooled, total)


def shifted_exp(weights: tf.Tensor | tf.SparseTensor) -> tf.Tensor | tf.SparseTensor:
    """exp(w − the largest w of its list) for every entry, in the form given (dense [batch, length] or sparse):
    the softmax of a list's weights up to its sum, which the ``softmax`` combiner divides by once per list. The
    shift keeps exp finite for large counts. An entry of weight 0 is absent, as padding is in the dense form,
    and stays 0."""
    if isinstance(weights, tf.SparseTensor):
        rows, batch = weights.indices[:, 0], weights.dense_shape[0]
        return tf.SparseTensor(weights.indices, _shifted_exp_where_present(
            weights.values, lambda x: tf.gather(tf.math.unsorted_segment_max(x, rows, batch), rows)),
            weights.dense_shape)
    return _shifted_exp_where_present(weights, lambda x: tf.reduce_max(x, axis=1, keepdims=True))


def _shifted_exp_where_present(values: tf.Tensor, list_max) -> tf.Tensor:
    """exp(values − ``list_max``(values)) over the non-zero entries; ``list_max`` gives each entry its list's max."""
    present = tf.not_equal(values, 0.0)
    return tf.where(present, tf.exp(values - list_max(tf.where(present, values, values.dtype.min))), 0.0)


def weighted_sum(table: tf.Variable, ids: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """[batch, dim]: row b is Σ_l weights[b, l] · table[ids[b, l]] over the non-zero weights, each
    distinct id read once (its gradient is one row per distinct id)."""
    present = tf.not_equal(weights, 0.0)
    positions = tf.where(present)  # (row, slot) of every weighted id, row-major
    distinct, column = tf.unique(tf.boolean_mask(ids, present), out_idx=tf.int64)
    bags = tf.SparseTensor(tf.stack([positions[:, 0], column], axis=1), tf.boolean_mask(weights, present),
                           tf.stack([tf.shape(ids, out_type=tf.int64)[0], tf.size(distinct, out_type=tf.int64)]))
    return tf.sparse.sparse_dense_matmul(bags, tf.nn.embedding_lookup(table, distinct))


def _pooled_sparse(table: tf.Variable, ids: tf.SparseTensor, weights: tf.SparseTensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The weighted sum of each row's embeddings, and of its weights, [batch, dim] and [batch, 1], from
    sparse ids and weights of the same indices: only the ids present are looked up (no padding)."""
    rows, batch = ids.indices[:, 0], ids.dense_shape[0]
    weighted = tf.nn.embedding_lookup(table, ids.values) * tf.expand_dims(weights.values, -1)
    total = tf.math.unsorted_segment_sum(weights.values, rows, batch)
    return tf.math.unsorted_segment_sum(weighted, rows, batch), tf.expand_dims(total, -1)


class Tower(keras.layers.Layer):
    """An MLP with optional dropout, ending in one logit per example: shape [batch]."""

    def __init__(self, model_config: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        self.hidden = [keras.layers.Dense(units, activation=model_config.activation, name=f"dense_{i}")
                       for i, units in enumerate(model_config.tower_units)]
        self.dropout = [keras.layers.Dropout(model_config.dropout) for _ in model_config.tower_units] \
            if model_config.dropout else []
        self.logit = keras.layers.Dense(1, name="logit")

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        for i, dense in enumerate(self.hidden):
            x = dense(x)
            if self.dropout:
                x = self.dropout[i](x, training=training)
        return tf.squeeze(self.logit(x), axis=-1)

    def call_blocks(self, blocks: list[tuple[bool, tf.Tensor]], context_rows: tf.Tensor) -> tf.Tensor:
        """The logits [n] (inference) from ``FeatureEmbeddings.blocks``: the first layer multiplies each block by
        its rows of the kernel, a shared block once per distinct context, and candidate b adds the product of
        context ``context_rows[b]``. Equals ``call`` on the blocks gathered and concatenated, to float rounding
        (the products are summed in another order)."""
        layers = [*self.hidden, self.logit]
        first = layers[0]
        shared, own, offset = [], [], 0
        for is_shared_block, x in blocks:
            width = x.shape[-1]
            (shared if is_shared_block else own).append(tf.matmul(x, first.kernel[offset:offset + width]))
            offset += width
        parts = own + ([tf.gather(tf.add_n(shared), context_rows)] if shared else [])
        x = first.activation(tf.nn.bias_add(tf.add_n(parts), first.bias))
        for dense in layers[1:]:
            x = dense(x)
        return tf.squeeze(x, axis=-1)
