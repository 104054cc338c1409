"""Optimizers and the compiled train step, shared by the trainer and the benchmark."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import tensorflow as tf
import tf_keras as keras

from esmm_model.config import TrainingConfig
from esmm_model.losses import variant_loss
from esmm_model.model import EsmmModel
from esmm_model.optimizers import LazyAdam

TrainStep = Callable[[dict, dict, tf.Tensor], dict]


@dataclass
class Optimizers:
    """The main optimizer and, unless ``embedding_optimizer`` is ``same``, one for the tables."""

    main: keras.optimizers.Optimizer
    embedding: Optional[keras.optimizers.Optimizer]

    def trackables(self) -> dict[str, keras.optimizers.Optimizer]:
        """Checkpoint entries."""
        return {"optimizer": self.main, **({"embedding_optimizer": self.embedding} if self.embedding else {})}


def build_optimizers(training: TrainingConfig) -> Optimizers:
    """Adam with the paper's β1, β2, ε (default) or Adagrad; optionally a sparse one for the
    embedding tables, whose cost per step scales with the looked-up rows: ``lazy_adam``
    (Adam's hyperparameters, moments of touched rows only), Adagrad or SGD."""
    adam = dict(beta_1=training.adam_beta_1, beta_2=training.adam_beta_2, epsilon=training.adam_epsilon)
    if training.optimizer == "adam":
        main = keras.optimizers.Adam(training.learning_rate, **adam)
    else:
        main = keras.optimizers.Adagrad(training.learning_rate)
    rate = training.embedding_learning_rate or training.learning_rate
    embedding = {"same": None, "lazy_adam": lambda: LazyAdam(rate, **adam),
                 "adagrad": lambda: keras.optimizers.Adagrad(rate),
                 "sgd": lambda: keras.optimizers.SGD(rate)}[training.embedding_optimizer]
    return Optimizers(main, embedding() if embedding else None)


def build_optimizer_state(model: EsmmModel, optimizers: Optimizers) -> None:
    """Creates the optimizers' slots now (the model must be built), so checkpoints restore eagerly."""
    embedding_ids = {id(v) for v in model.embedding_variables()}
    if optimizers.embedding is None:
        optimizers.main.build(model.trainable_variables)
    else:
        optimizers.main.build([v for v in model.trainable_variables if id(v) not in embedding_ids])
        optimizers.embedding.build(model.embedding_variables())


def make_train_step(model: EsmmModel, training: TrainingConfig, optimizers: Optimizers) -> TrainStep:
    """A ``tf.function`` (XLA when ``training.jit_compile``): (inputs, labels, step) -> losses."""
    model_config = model.model_config
    embedding_ids = {id(v) for v in model.embedding_variables()} if optimizers.embedding else set()

    @tf.function(jit_compile=training.jit_compile, reduce_retracing=True)
    def train_step(inputs: dict, labels: dict, step: tf.Tensor) -> dict:
        with tf.GradientTape() as tape:
            outputs = model(inputs, training=True)
            losses = variant_loss(model_config, labels, outputs, tf.stack([tf.cast(training.seed, tf.int64), step]))
        variables = model.trainable_variables
        gradients = tape.gradient(losses["loss"], variables)
        pairs = list(zip(gradients, variables))
        optimizers.main.apply_gradients([(g, v) for g, v in pairs if id(v) not in embedding_ids])
        if optimizers.embedding:
            optimizers.embedding.apply_gradients([(g, v) for g, v in pairs if id(v) in embedding_ids])
        return losses

    return train_step
