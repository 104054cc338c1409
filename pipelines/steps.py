"""The kfp components: thin wrappers that call the plain step functions in ``components/``.

kfp ships each function's source into its container, so a body imports what it uses and
only moves paths, parameters and artifact metadata. The config travels as its JSON text
(``config``, from the snapshot step), so every cache key holds the config's contents, not
a path to a file that may have changed. ``build_steps(image)`` turns them into
components running in ``image``, the project's image on Kubernetes; locally kfp.local runs
the same functions in this Python environment.
"""

from types import SimpleNamespace
from typing import NamedTuple, Optional

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output


def snapshot_step(config_path: str, input_path: str, ground_truth: Optional[str] = None, variant: Optional[str] = None,
                  epochs: Optional[int] = None, thresholds: Optional[list] = None,
                  max_rejected_fraction: Optional[float] = None, schedule_time: Optional[str] = None) -> NamedTuple(
                      "Snapshot", [("config", str), ("input_fingerprint", str), ("input_path", str)]):
    """Reads the config with the run's overrides and fingerprints the input files: the values every
    cache key below depends on. Never cached itself, so an edited config or new data is always seen.
    ``input_path``'s schedule-time macros are formatted at ``schedule_time`` (KFP's schedule-time
    placeholder, dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER; pipelines.schedule), and the result is
    what ingest reads. (No placeholder text here: kfp.local substitutes it in the shipped source.)"""
    from collections import namedtuple

    from components.ingest.fingerprint import input_fingerprint
    from esmm_model.config import config_to_json
    from pipelines.config import load_config
    from pipelines.run_overrides import with_run_overrides
    from pipelines.schedule import with_schedule_time

    config = with_run_overrides(load_config(config_path), variant=variant, epochs=epochs, thresholds=thresholds,
                                max_rejected_fraction=max_rejected_fraction)
    input_path = with_schedule_time(input_path, schedule_time)
    fingerprint = input_fingerprint(config, input_path, ground_truth)
    print(f"config {config.name} ({config.model.variant}), input {input_path}, input fingerprint {fingerprint}")
    return namedtuple("Snapshot", ["config", "input_fingerprint", "input_path"])(
        config_to_json(config), fingerprint, input_path)


def ingest_step(config: str, input_path: str, input_fingerprint: str, examples: Output[Dataset],
                counts: Output[Metrics], beam_runner: Optional[str] = None, beam_options: Optional[list] = None,
                beam_worker_image: Optional[str] = None):
    """Raw logs -> tf.Example TFRecords split by time, schema, counts and rejected rows.

    Fails (so nothing downstream runs) when more than the config's input.max_rejected_fraction
    of the lines are rejected or a split is empty. ``input_fingerprint`` keys the cache on the
    input files' listing, not on ``input_path``. A remote Beam runner gets the artifact's URI and
    ``beam_worker_image`` as its workers' container (``components.beam.runner``)."""
    from components.artifacts.output_dir import clear_task_output
    from components.beam.runner import artifact_location, beam_args, with_worker_image
    from components.ingest.executor import ingest
    from pipelines.config import config_from_json

    run_config = config_from_json(config)
    clear_task_output(examples.path)  # a retried pod's leftovers
    args = with_worker_image(beam_args(run_config.beam, beam_runner, beam_options), beam_worker_image)
    result = ingest(run_config, input_path, artifact_location(args, examples.uri, examples.path), args)
    examples.metadata["input_fingerprint"] = input_fingerprint
    counts.log_metric("rows_read", result.rows_read)
    counts.log_metric("rows_rejected", sum(result.rejected.values()))
    for split in ("train", "eval"):
        for key, value in result.split(split).items():
            counts.log_metric(f"{split}_{key}", value)


def transform_step(config: str, examples: Input[Dataset], transformed: Output[Dataset],
                   beam_runner: Optional[str] = None, beam_options: Optional[list] = None,
                   beam_worker_image: Optional[str] = None):
    """tf.Transform: analyze train, transform train and eval, keep the transform graph.
    A remote Beam runner gets the artifacts' URIs and ``beam_worker_image`` as its workers' container."""
    from components.artifacts.output_dir import clear_task_output
    from components.beam.runner import artifact_location, beam_args, with_worker_image
    from components.transform.executor import transform
    from pipelines.config import config_from_json

    run_config = config_from_json(config)
    clear_task_output(transformed.path)  # a retried pod's leftovers
    args = with_worker_image(beam_args(run_config.beam, beam_runner, beam_options), beam_worker_image)
    transform(run_config, artifact_location(args, examples.uri, examples.path),
              artifact_location(args, transformed.uri, transformed.path), args)


def train_step(config: str, transformed: Input[Dataset], model: Output[Model], work_root: Optional[str] = None,
               tfjob_image: Optional[str] = None, work_pvc: Optional[str] = None):
    """Trains the ESMM variant and exports the serving SavedModel; its metadata locates it (layout.SAVED_MODEL_KEY).

    With ``work_root`` (a work volume or an object-store URI), checkpoints go to a directory
    keyed by this task's output URI, which KFP hands a retried pod unchanged and no other task
    or run shares: a retried pod resumes where the last one stopped. Without it they stay
    inside the model artifact. With ``kubernetes.train_workers`` set in the config (and
    ``tfjob_image``, which the compiled pipeline passes), training runs as a TFJob of that many
    workers in that image (``pipelines.tfjob``), staged on the work volume (claim ``work_pvc``, which the
    TFJob's workers mount too), owned by this step's pod.
    """
    import hashlib

    from components.train.executor import train
    from esmm_model.contracts import layout
    from pipelines.config import config_from_json

    run_config = config_from_json(config)
    run_key = hashlib.sha256(model.uri.encode()).hexdigest()[:20]
    workers = run_config.kubernetes.train_workers
    if workers and tfjob_image:
        import json

        from components.artifacts import storage
        from esmm_model.errors import ConfigError
        from pipelines.tfjob import train_as_tfjob

        if not work_root:
            raise ConfigError("kubernetes.train_workers: a TFJob needs the work volume (compile with a work PVC)")
        export_dir = train_as_tfjob(config, transformed.path, model.path, image=tfjob_image, workers=workers,
                                    resources=run_config.kubernetes.resources.for_step("train"),
                                    work_root=work_root, run_key=run_key, work_pvc=work_pvc or None)
        steps = json.loads(storage.read_text(layout.TrainLayout(model.path).metrics))["final"]["step"]
    else:
        checkpoints = layout.checkpoint_dir(work_root, run_key) if work_root else None
        print(f"checkpoints: {checkpoints or 'inside the model artifact'}")
        result = train(run_config, transformed.path, model.path, checkpoint_dir=checkpoints)
        export_dir, steps = result.export_dir, result.step
    model.metadata[layout.SAVED_MODEL_KEY] = layout.TrainLayout(model.path).relative(export_dir)
    model.metadata["variant"] = run_config.model.variant
    model.metadata["steps"] = steps


def evaluate_step(config: str, input_fingerprint: str, serving_base: str, examples: Input[Dataset],
                  model: Input[Model], evaluation: Output[Metrics], report: Output[HTML], blessing: Output[Artifact],
                  roc_ctr: Output[ClassificationMetrics], roc_cvr: Output[ClassificationMetrics],
                  roc_ctcvr: Output[ClassificationMetrics], warmup: Output[Dataset], beam_runner: Optional[str] = None,
                  beam_options: Optional[list] = None, ground_truth: Optional[str] = None,
                  beam_worker_image: Optional[str] = None):
    """Scores the candidate and the served model on the raw eval split, TFMA sliced all/clicked/unclicked,
    the gate on those same rows (TFX's Evaluator: it writes the blessing), the report, and the kfp metrics.
    ``blessing`` is the verdict as JSON (TFX's ModelBlessing; kfp 2 admits only system.* and google.* types,
    so a plain Artifact), its metadata ``blessed``, ``status``, ``baseline_version`` and ``reasons``.
    ``warmup`` holds the first few hundred raw eval examples (a GZIP TFRecord): all the push step needs
    of the data, so its pod does not download the whole split.

    ``input_fingerprint`` covers the ground-truth file too, so an edited one is not replayed from cache.
    Beam (TFMA) reads and writes only the evaluation directory: a remote runner gets its URI and
    ``beam_worker_image`` as its workers' container."""
    import json

    import tensorflow as tf

    from components.artifacts.output_dir import clear_task_output
    from components.beam.runner import artifact_location, beam_args, with_worker_image
    from components.evaluate.executor import evaluate
    from esmm_model.contracts import layout
    from esmm_model.contracts.blessing import write_blessing
    from esmm_model.contracts.warmup import BATCH_SIZES, read_examples, write_examples
    from pipelines.config import config_from_json

    run_config = config_from_json(config)
    saved_model = layout.TrainLayout(model.path).saved_model(model.metadata[layout.SAVED_MODEL_KEY])
    warmup.metadata["examples"] = write_examples(
        warmup.path, read_examples(layout.IngestLayout(examples.path).split_pattern(layout.EVAL), max(BATCH_SIZES)))
    clear_task_output(evaluation.path)  # a retried pod's leftovers
    args = with_worker_image(beam_args(run_config.beam, beam_runner, beam_options), beam_worker_image)
    result = evaluate(run_config, saved_model, examples.path, artifact_location(args, evaluation.uri, evaluation.path),
                      args, serving_base=serving_base, ground_truth=ground_truth)
    evaluation.metadata["input_fingerprint"] = input_fingerprint
    for name, value in result.headline().items():
        evaluation.log_metric(name, value)
    evaluation.log_metric("blessed", float(result.blessing.blessed))
    out = layout.EvaluationLayout(evaluation.path)
    tf.io.gfile.copy(out.report_html, report.path, overwrite=True)
    write_blessing(result.blessing, blessing.path)
    blessing.metadata.update({"blessed": result.blessing.blessed, "status": result.blessing.status,
                              "baseline_version": result.blessing.baseline_version,
                              "reasons": list(result.blessing.reasons)})
    with tf.io.gfile.GFile(out.roc) as f:
        curves = json.load(f)
    for artifact, output in ((roc_ctr, "ctr"), (roc_cvr, "cvr"), (roc_ctcvr, "ctcvr")):
        curve = curves[output]
        artifact.log_roc_curve(curve["fpr"], curve["tpr"], curve["threshold"])
        artifact.metadata["slice"] = curve["slice"]
    print(result.blessing.describe())


def push_step(config: str, serving_base: str, warmup: Input[Dataset], model: Input[Model],
              evaluation: Input[Metrics], blessing: Input[Artifact], pushed: Output[Model]):
    """Pushes the model atomically, with warmup requests from evaluate's few eval examples (``warmup``), if
    the evaluator blessed it against the version still served."""
    import json

    import tensorflow as tf

    from components.push.executor import push
    from esmm_model.contracts import layout
    from esmm_model.contracts.blessing import read_blessing, read_json
    from esmm_model.contracts.warmup import BATCH_SIZES, read_examples
    from pipelines.config import config_from_json

    run_config = config_from_json(config)
    verdict = read_blessing(blessing.path)
    metrics = read_json(layout.EvaluationLayout(evaluation.path).metrics, "evaluation metrics")
    saved_model = layout.TrainLayout(model.path).saved_model(model.metadata[layout.SAVED_MODEL_KEY])
    warmup_examples = read_examples(warmup.path, max(BATCH_SIZES)) if verdict.blessed else ()
    result = push(saved_model, verdict, serving_base, run_config.push.model_name, run_config.push.keep_versions,
                  metrics, warmup_examples, model_config_file=run_config.push.model_config_file)
    pushed.metadata.update({"pushed": result.pushed, "version": result.version, "path": result.path,
                            "reason": result.reason})
    with tf.io.gfile.GFile(pushed.path, "w") as f:
        json.dump({"pushed": result.pushed, "version": result.version, "path": result.path, "reason": result.reason}, f)
    print(result.describe())


def build_steps(image: str) -> SimpleNamespace:
    """The six steps as kfp components running in ``image``."""
    def component(func):
        return dsl.component(func, base_image=image, install_kfp_package=False)

    return SimpleNamespace(snapshot=component(snapshot_step), ingest=component(ingest_step),
                           transform=component(transform_step), train=component(train_step),
                           evaluate=component(evaluate_step), push=component(push_step))
