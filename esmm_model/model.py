"""The ESMM model and the paper's competitors, built from ``model.variant``'s ``VariantSpec``.

Every variant has a CTR network and a second network with the same towers, over one set of
embedding tables (``shared_tables``) or a set each. The second tower predicts pCVR, or pCTCVR
(``second_head: ctcvr``, division), whence pCVR = clip(pCTCVR / pCTR, 0, 1). Every variant
outputs ``ctcvr`` = ``ctr`` · ``cvr`` (for a ctcvr head, its own output wherever the ratio
needed no clipping). ESCM²-DR adds a third tower over the shared tables, the imputation tower, whose
``imputed_error`` = softplus(logit) ≥ 0 predicts the CVR tower's BCE on every impression (a
probability, as in the authors' release, could not reach a BCE above 1); only its loss reads it.
"""
from __future__ import annotations

from typing import Optional

import tensorflow as tf
import tf_keras as keras

from esmm_model.config import LABEL_CLICK, LABELS, Config
from esmm_model.layers import FeatureEmbeddings, Tower
from esmm_model.losses import variant_loss
from esmm_model.variants import VARIANTS

PAD_MULTIPLE = 8


def _padded(ids: tf.SparseTensor, weights: tf.SparseTensor, multiple: int) -> tuple[tf.Tensor, tf.Tensor]:
    """A weighted id list as [batch, length] dense ids and weights (zeros past each row's end), length
    rounded up to a multiple, so XLA sees few shapes. Ids and weights share their indices and shape: the
    padded shape is computed once, and each is scattered into it directly (no separate pad)."""
    length = ids.dense_shape[1]
    shape = tf.stack([ids.dense_shape[0], tf.maximum((length + multiple - 1) // multiple, 1) * multiple])
    return tuple(tf.sparse.to_dense(tf.SparseTensor(x.indices, x.values, shape)) for x in (ids, weights))


def model_inputs(config: Config, transformed: dict) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
    """Transformed features -> (model inputs, labels): weighted id lists padded dense, labels split off."""
    inputs = {}
    for feature in config.features:
        if feature.kind == "weighted_ids":
            inputs[feature.name], inputs[feature.weight_name] = _padded(
                transformed[feature.name], transformed[feature.weight_name], PAD_MULTIPLE)
        else:
            inputs[feature.name] = transformed[feature.name]
    labels = {label: transformed[label] for label in LABELS if label in transformed}
    return inputs, labels


def serving_inputs(config: Config, transformed: dict) -> dict[str, tf.Tensor | tf.SparseTensor]:
    """Transformed features -> model inputs for scoring: weighted id lists stay sparse (the embedding layer
    pools only the ids present, the same sums as over the padded form), the rest as in ``model_inputs``."""
    return {name: transformed[name] for feature in config.features
            for name in ((feature.name, feature.weight_name) if feature.kind == "weighted_ids" else (feature.name,))}


class EsmmModel(keras.Model):
    """Outputs logits ``ctr_logit`` and ``cvr_logit`` (division: ``ctcvr_logit``) and
    probabilities ``ctr``, ``cvr``, ``ctcvr``, each of shape [batch].

    ``train_step`` (what ``fit`` runs, and the benchmark's and experiments' bare step) minimises
    the variant's loss (``esmm_model.losses``) with the compiled optimizer and, when
    ``compile_for_training`` is given one, a second optimizer for the embedding tables; it
    reports the epoch's running mean of every loss part.
    """

    def __init__(self, config: Config, table_sizes: dict[str, int], **kwargs):
        super().__init__(**kwargs)
        self.model_config = config.model
        self.spec = VARIANTS[config.model.variant]
        second = self.spec.second_head
        if self.spec.shared_tables:
            self.ctr_embeddings = self.second_embeddings = FeatureEmbeddings(config, table_sizes, name="embeddings")
        else:
            self.ctr_embeddings = FeatureEmbeddings(config, table_sizes, name="ctr_embeddings")
            self.second_embeddings = FeatureEmbeddings(config, table_sizes, name=f"{second}_embeddings")
        self.ctr_tower = Tower(config.model, name="ctr_tower")
        self.second_tower = Tower(config.model, name=f"{second}_tower")
        self.imputation_tower = Tower(config.model, name="imputation_tower") \
            if self.spec.counterfactual == "dr" else None

    def compile_for_training(self, optimizer: keras.optimizers.Optimizer,
                             embedding_optimizer: Optional[keras.optimizers.Optimizer], *, seed: int,
                             jit_compile: bool) -> None:
        """``compile`` plus the tables' optimizer (None: ``optimizer`` updates them too) and the
        seed of the stateless sampling some losses draw (per step: ``(seed, optimizer step)``)."""
        self.compile(optimizer=optimizer, jit_compile=jit_compile)
        self.embedding_optimizer = embedding_optimizer
        self.training_seed = seed
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in self.spec.loss_parts}
        self.examples_seen = keras.metrics.Sum(name="examples")

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        """Reset by ``fit`` at every epoch's start: the loss parts' means and the examples trained on."""
        return [*self.loss_trackers.values(), self.examples_seen] if hasattr(self, "loss_trackers") else []

    def train_step(self, data) -> dict[str, tf.Tensor]:
        inputs, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        seed = tf.stack([tf.cast(self.training_seed, tf.int64), tf.cast(self.optimizer.iterations, tf.int64)])
        with tf.GradientTape() as tape:
            losses = variant_loss(self.model_config, labels, self(inputs, training=True), seed)
            # Each replica's gradients are summed across replicas: scale its mean loss to their mean.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            replica_loss = (losses["loss"] + self.embedding_penalty()) / replicas
        variables = self.trainable_variables
        pairs = list(zip(tape.gradient(replica_loss, variables), variables))
        if self.embedding_optimizer is None:
            self.optimizer.apply_gradients(pairs)
        else:
            tables = {id(v) for v in self.embedding_variables()}
            self.optimizer.apply_gradients([(g, v) for g, v in pairs if id(v) not in tables])
            self.embedding_optimizer.apply_gradients([(g, v) for g, v in pairs if id(v) in tables])
        for name, value in losses.items():
            self.loss_trackers[name].update_state(value)
        self.examples_seen.update_state(tf.cast(tf.shape(labels[LABEL_CLICK])[0], tf.float32))
        # fit sums what each replica returns: report each replica's share of the mean.
        return {name: tracker.result() / replicas for name, tracker in self.loss_trackers.items()}

    def embedding_penalty(self) -> tf.Tensor:
        """``model.embedding_l2`` · the sum of squares of every table's rows, added to the loss (0 when unset, or
        when the tables' optimizer applies it itself: ``LazyAdam``, at the cost of the rows a batch touches)."""
        if not self.model_config.embedding_l2 or getattr(getattr(self, "embedding_optimizer", None), "l2", 0):
            return tf.constant(0.0)
        return self.model_config.embedding_l2 * tf.add_n(
            [tf.reduce_sum(tf.square(part)) for part in self.embedding_variables()])

    def embedding_tables(self) -> list[tf.Variable]:
        """Every embedding table once (a ShardedVariable when partitioned over parameter servers)."""
        layers = {id(layer): layer for layer in (self.ctr_embeddings, self.second_embeddings)}
        return [table for layer in layers.values() for table in layer.tables.values()]

    def embedding_variables(self) -> list[tf.Variable]:
        """The variables ``training.embedding_optimizer`` may update sparsely: the tables, a
        partitioned one as its shards (what the model's trainable variables list)."""
        return [part for table in self.embedding_tables() for part in getattr(table, "variables", [table])]

    def call(self, inputs: dict[str, tf.Tensor], training: bool = False) -> dict[str, tf.Tensor]:
        ctr_x = self.ctr_embeddings(inputs)
        second_x = ctr_x if self.second_embeddings is self.ctr_embeddings else self.second_embeddings(inputs)
        logits = {"ctr": self.ctr_tower(ctr_x, training=training),
                  "second": self.second_tower(second_x, training=training)}
        if self.imputation_tower is not None:
            logits["imputation"] = self.imputation_tower(second_x, training=training)
        return self._outputs(logits)

    def score_with_contexts(self, inputs: dict[str, tf.Tensor], context_rows: tf.Tensor) -> dict[str, tf.Tensor]:
        """``call``'s outputs (inference) for the ranking signature: the shared features' inputs hold one row per
        distinct request context, the others one per candidate, and candidate b's context is ``context_rows[b]``.
        Shared features are embedded, and multiplied into each tower's first layer, once per context."""
        ctr_blocks = self.ctr_embeddings.blocks(inputs)
        second_blocks = ctr_blocks if self.second_embeddings is self.ctr_embeddings else \
            self.second_embeddings.blocks(inputs)
        logits = {"ctr": self.ctr_tower.call_blocks(ctr_blocks, context_rows),
                  "second": self.second_tower.call_blocks(second_blocks, context_rows)}
        if self.imputation_tower is not None:
            logits["imputation"] = self.imputation_tower.call_blocks(second_blocks, context_rows)
        return self._outputs(logits)

    def _outputs(self, logits: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        ctr_logit, second_logit = logits["ctr"], logits["second"]
        p_ctr = tf.sigmoid(ctr_logit)
        if self.spec.second_head == "ctcvr":
            p_cvr = tf.clip_by_value(tf.math.divide_no_nan(tf.sigmoid(second_logit), p_ctr), 0.0, 1.0)
        else:
            p_cvr = tf.sigmoid(second_logit)
        outputs = {"ctr_logit": ctr_logit, f"{self.spec.second_head}_logit": second_logit,
                   "ctr": p_ctr, "cvr": p_cvr, "ctcvr": p_ctr * p_cvr}
        if "imputation" in logits:
            outputs["imputed_error"] = tf.nn.softplus(logits["imputation"])
        return outputs
