"""The one ESMM pipeline: snapshot -> ingest -> transform -> train -> evaluate -> push.

``create_pipeline(image)`` returns the kfp pipeline function. kfp.local runs it as written
(``pipelines.local_run``); the compiler turns the same function, with ``Cluster`` settings
(resources, retries, volumes), into YAML for Kubernetes (``pipelines.compile``). The
pipeline never knows where it runs.

Run-time overrides are ``Optional`` parameters: None (left out) keeps what the config says.

Caching: the snapshot step reads the config and lists the input files on every run (never
cached); the steps below take the config's contents and the input fingerprint as inputs,
so a cache hit means the same data and the same config. The push step is never cached.
"""

from dataclasses import dataclass
from typing import Optional

from kfp import dsl

from pipelines import cluster
from pipelines.config import KubernetesConfig
from pipelines.steps import build_steps

DEFAULT_IMAGE = "ghcr.io/esmm-pipeline/esmm:0.1.0"
# Steps that may fail for reasons a retry cures (evicted or preempted pods, object-store hiccups);
# the push is left out: a retried push would judge the model against its own half-finished push.
RETRIED_STEPS = ("snapshot", "ingest", "transform", "train", "evaluate")


@dataclass(frozen=True)
class Cluster:
    """How the compiled pipeline runs on Kubernetes: pod resources and retries from the config, and volumes."""

    kubernetes: KubernetesConfig = KubernetesConfig()
    model_store_pvc: str = cluster.MODEL_STORE_PVC
    work_pvc: Optional[str] = cluster.WORK_PVC


def create_pipeline(image: str = DEFAULT_IMAGE, on_cluster: Optional[Cluster] = None):
    """The pipeline function, its steps running in ``image``; ``on_cluster`` adds Kubernetes settings."""
    steps = build_steps(image)
    default_work_root = cluster.WORK_MOUNT if on_cluster and on_cluster.work_pvc else None

    @dsl.pipeline(name="esmm",
                  description="ESMM: Beam ingestion, tf.Transform, Keras trainer, TFMA evaluation, TF Serving push")
    def esmm_pipeline(config_path: str, input_path: str, serving_base: str = cluster.MODEL_STORE_MOUNT,
                      work_root: Optional[str] = default_work_root, beam_runner: Optional[str] = None,
                      beam_options: Optional[list] = None, variant: Optional[str] = None, epochs: Optional[int] = None,
                      thresholds: Optional[list] = None, ground_truth: Optional[str] = None,
                      max_rejected_fraction: Optional[float] = None, beam_worker_image: Optional[str] = image):
        # The config with this run's overrides, and a fingerprint of the input files: what the caches key on.
        snapshot = steps.snapshot(config_path=config_path, input_path=input_path, ground_truth=ground_truth,
                                  variant=variant, epochs=epochs, thresholds=thresholds,
                                  max_rejected_fraction=max_rejected_fraction)
        snapshot.set_caching_options(False)  # must see an edited config and new data on every run
        config, fingerprint = snapshot.outputs["config"], snapshot.outputs["input_fingerprint"]
        # Raw impression logs -> raw tf.Example split by time (Beam); fails past input.max_rejected_fraction,
        # so nothing trains on a log the config does not fit.
        # A remote Beam runner's workers run beam_worker_image (the component image unless overridden).
        ingest = steps.ingest(config=config, input_path=input_path, input_fingerprint=fingerprint,
                              beam_runner=beam_runner, beam_options=beam_options, beam_worker_image=beam_worker_image)
        # Hash, vocabulary, z-score and buckets, analyzed on train only (tf.Transform on Beam).
        transform = steps.transform(config=config, beam_runner=beam_runner, beam_options=beam_options,
                                    beam_worker_image=beam_worker_image, examples=ingest.outputs["examples"])
        # The ESMM variant, exported with the transform graph inside serving_default.
        # In the step's pod, or (kubernetes.train_workers) as a TFJob of N workers in the same image.
        train = steps.train(config=config, work_root=work_root, transformed=transform.outputs["transformed"],
                            **({"tfjob_image": image} if on_cluster else {}))
        # The candidate and the served model scored on the raw eval split, TFMA sliced all / clicked /
        # unclicked, entire-space metrics, and the blessing judged on those same rows.
        evaluate = steps.evaluate(config=config, input_fingerprint=fingerprint, serving_base=serving_base,
                                  beam_runner=beam_runner, beam_options=beam_options, ground_truth=ground_truth,
                                  beam_worker_image=beam_worker_image, examples=ingest.outputs["examples"],
                                  model=train.outputs["model"])
        evaluate.set_caching_options(False)  # it reads the serving directory (the baseline): never replayed from cache
        # Atomic push, with warmup requests, only if blessed against the version still served.
        push = steps.push(config=config, serving_base=serving_base, examples=ingest.outputs["examples"],
                          model=train.outputs["model"], evaluation=evaluate.outputs["evaluation"],
                          blessing=evaluate.outputs["blessing"])
        push.set_caching_options(False)  # it reads and writes the serving directory: never replayed from cache
        if on_cluster:
            _configure(on_cluster, {"snapshot": snapshot, "ingest": ingest, "transform": transform, "train": train,
                                    "evaluate": evaluate, "push": push})

    return esmm_pipeline


def _configure(on_cluster: Cluster, tasks: dict) -> None:
    """Requests, limits and retries from the config; the model store on evaluate (which re-scores the served
    version) and push, the work volume on train."""
    from kfp import kubernetes

    settings = on_cluster.kubernetes
    for name, task in tasks.items():
        resources = settings.resources.for_step(name)
        (task.set_cpu_request(resources.cpu).set_cpu_limit(resources.cpu_limit)
         .set_memory_request(resources.memory).set_memory_limit(resources.memory_limit))
        if name in RETRIED_STEPS and settings.retries:
            task.set_retry(num_retries=settings.retries, backoff_duration=f"{settings.retry_backoff_s}s",
                           backoff_factor=2.0, backoff_max_duration="3600s")
    for name in ("evaluate", "push"):
        kubernetes.mount_pvc(tasks[name], pvc_name=on_cluster.model_store_pvc, mount_path=cluster.MODEL_STORE_MOUNT)
    if on_cluster.work_pvc:
        kubernetes.mount_pvc(tasks["train"], pvc_name=on_cluster.work_pvc, mount_path=cluster.WORK_MOUNT)
