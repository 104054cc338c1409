"""Optimizers and the compiled model, shared by the trainer, the experiments and the benchmark."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import tensorflow as tf
import tf_keras as keras

from esmm_model.config import TrainingConfig
from esmm_model.model import EsmmModel
from esmm_model.optimizers import LazyAdam

TrainStep = Callable[[dict, dict], dict]


@dataclass
class Optimizers:
    """The main optimizer and, unless ``embedding_optimizer`` is ``same``, one for the tables."""

    main: keras.optimizers.Optimizer
    embedding: Optional[keras.optimizers.Optimizer]

    def trackables(self) -> dict[str, keras.optimizers.Optimizer]:
        """Checkpoint entries."""
        return {"optimizer": self.main, **({"embedding_optimizer": self.embedding} if self.embedding else {})}


def build_optimizers(training: TrainingConfig, embedding_l2: float = 0.0) -> Optimizers:
    """Adam with the paper's β1, β2, ε (default) or Adagrad; optionally a sparse one for the
    embedding tables, whose cost per step scales with the looked-up rows: ``lazy_adam``
    (Adam's hyperparameters, moments of touched rows only; it applies ``embedding_l2`` itself, lazily),
    Adagrad or SGD."""
    adam = dict(beta_1=training.adam_beta_1, beta_2=training.adam_beta_2, epsilon=training.adam_epsilon)
    if training.optimizer == "adam":
        main = keras.optimizers.Adam(training.learning_rate, **adam)
    else:
        main = keras.optimizers.Adagrad(training.learning_rate)
    rate = training.embedding_learning_rate or training.learning_rate
    embedding = {"same": None, "lazy_adam": lambda: LazyAdam(rate, l2=embedding_l2, **adam),
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


def compile_for_training(model: EsmmModel, training: TrainingConfig) -> None:
    """Compiles the built ``model`` with ``training``'s optimizers (their state created now, so a
    checkpoint restores eagerly); ``model.train_step`` is then the train step everywhere."""
    optimizers = build_optimizers(training, model.model_config.embedding_l2)
    if training.jit_compile:  # XLA compiles static shapes only: pool the padded lists densely
        for layer in {id(e): e for e in (model.ctr_embeddings, model.second_embeddings)}.values():
            layer.sparse_pooling = False
    model.compile_for_training(optimizers.main, optimizers.embedding, seed=training.seed,
                               jit_compile=training.jit_compile)
    build_optimizer_state(model, optimizers)


def bare_train_step(model: EsmmModel) -> TrainStep:
    """``model.train_step`` as one ``tf.function`` (XLA when compiled so): (inputs, labels) -> the
    running mean of each loss part since the last ``model.reset_metrics()``. For loops that
    feed batches from memory (the benchmarks' ceiling and profile) without ``fit``'s machinery."""
    return tf.function(lambda inputs, labels: model.train_step((inputs, labels)),
                       jit_compile=bool(model.jit_compile), reduce_retracing=True)
