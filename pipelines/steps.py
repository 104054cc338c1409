"""The kfp components: thin wrappers that call the plain step functions in ``components/``.

kfp ships each function's source into its container, so a body imports what it uses and
only moves paths, parameters and artifact metadata. ``build_steps(image)`` turns them into
components running in ``image``, the project's image on Kubernetes; locally kfp.local runs
the same functions in this Python environment.
"""

from types import SimpleNamespace
from typing import Optional

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output


class Blessing(dsl.Artifact):
    """The validation verdict: a JSON file, BLESSED or NOT_BLESSED with every reason (TFX's ModelBlessing).

    kfp 2 admits only ``system.*`` and ``google.*`` schemas, so the type travels as
    ``system.Artifact``; its metadata carries ``blessed``, ``status`` and ``reasons``.
    """

    schema_title = "system.Artifact"
    schema_version = "0.0.1"


def ingest_step(config_path: str, input_path: str, beam_args: list, examples: Output[Dataset], counts: Output[Metrics],
                max_rejected_fraction: Optional[float] = None):
    """Raw logs -> tf.Example TFRecords split by time, schema, counts and rejected rows.

    Fails (so nothing downstream runs) when more than ``max_rejected_fraction`` of the lines
    are rejected (None: the config's input.max_rejected_fraction) or a split is empty.
    """
    from components.ingest import ingest
    from esmm_model.config import load_config, with_overrides

    config = load_config(config_path)
    if max_rejected_fraction is not None:
        config = with_overrides(config, {"input": {"max_rejected_fraction": max_rejected_fraction}})
    result = ingest(config, input_path, examples.path, beam_args)
    counts.log_metric("rows_read", result.rows_read)
    counts.log_metric("rows_rejected", sum(result.rejected.values()))
    for split in ("train", "eval"):
        for key, value in result.split(split).items():
            counts.log_metric(f"{split}_{key}", value)


def transform_step(config_path: str, beam_args: list, examples: Input[Dataset], transformed: Output[Dataset]):
    """tf.Transform: analyze train, transform train and eval, keep the transform graph."""
    from components.transform import transform
    from esmm_model.config import load_config

    transform(load_config(config_path), examples.path, transformed.path, beam_args)


def train_step(config_path: str, variant: str, epochs: int, transformed: Input[Dataset], model: Output[Model]):
    """Trains the ESMM variant and exports the serving SavedModel; its metadata locates it (layout.SAVED_MODEL_KEY)."""
    from components import layout
    from components.train import train
    from esmm_model.config import load_config, with_overrides

    overrides = {"model": {"variant": variant} if variant else {}, "training": {"epochs": epochs} if epochs else {}}
    config = with_overrides(load_config(config_path), overrides)
    result = train(config, transformed.path, model.path)
    model.metadata[layout.SAVED_MODEL_KEY] = layout.TrainLayout(model.path).relative(result.export_dir)
    model.metadata["variant"] = config.model.variant
    model.metadata["steps"] = result.step


def evaluate_step(config_path: str, beam_args: list, ground_truth: str, examples: Input[Dataset], model: Input[Model],
                  evaluation: Output[Metrics], report: Output[HTML]):
    """TFMA through serving_default on the raw eval split, sliced all/clicked/unclicked, with report."""
    import tensorflow as tf

    from components import layout
    from components.evaluate import evaluate
    from esmm_model.config import load_config

    saved_model = layout.TrainLayout(model.path).saved_model(model.metadata[layout.SAVED_MODEL_KEY])
    result = evaluate(load_config(config_path), saved_model, examples.path, evaluation.path, beam_args,
                      ground_truth=ground_truth or None)
    for name, value in result.headline().items():
        evaluation.log_metric(name, value)
    tf.io.gfile.copy(layout.EvaluationLayout(evaluation.path).report_html, report.path, overwrite=True)


def push_step(config_path: str, serving_base: str, thresholds: list, examples: Input[Dataset], model: Input[Model],
              evaluation: Input[Metrics], blessing: Output[Blessing], pushed: Output[Model]):
    """Blesses the model against the thresholds and the pushed baseline; pushes it atomically only if blessed,
    with warmup requests from the eval examples."""
    import json

    import tensorflow as tf

    from components import layout
    from components.blessing import read_json
    from components.push import validate_and_push
    from esmm_model.config import load_config, with_overrides

    config = load_config(config_path)
    if thresholds:
        config = with_overrides(config, {"evaluation": {"thresholds": thresholds}})
    metrics = read_json(layout.EvaluationLayout(evaluation.path).metrics, "evaluation metrics")
    saved_model = layout.TrainLayout(model.path).saved_model(model.metadata[layout.SAVED_MODEL_KEY])
    verdict, result = validate_and_push(config, saved_model, metrics, serving_base, blessing.path,
                                        layout.IngestLayout(examples.path).split_pattern(layout.EVAL))
    blessing.metadata.update({"blessed": verdict.blessed, "status": verdict.status, "reasons": list(verdict.reasons)})
    pushed.metadata.update({"pushed": result.pushed, "version": result.version, "path": result.path, "reason": result.reason})
    with tf.io.gfile.GFile(pushed.path, "w") as f:
        json.dump({"pushed": result.pushed, "version": result.version, "path": result.path, "reason": result.reason}, f)
    print(verdict.describe())
    print(result.describe())


def build_steps(image: str) -> SimpleNamespace:
    """The five steps as kfp components running in ``image``."""
    def component(func):
        return dsl.component(func, base_image=image, install_kfp_package=False)

    return SimpleNamespace(ingest=component(ingest_step), transform=component(transform_step),
                           train=component(train_step), evaluate=component(evaluate_step), push=component(push_step))
