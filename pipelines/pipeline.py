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

# Steps that may fail for reasons a retry cures (evicted or preempted pods, object-store hiccups);
# the push is left out: a retried push would judge the model against its own half-finished push.
RETRIED_STEPS = ("snapshot", "ingest", "transform", "train", "evaluate")
# Steps that stage data on the pod's disk (Beam temp files, TFMA, copies of their input artifacts).
STAGING_STEPS = ("ingest", "transform", "train", "evaluate")
# The image's user (Dockerfile: USER 1000:1000), set on every step so the pods meet Pod Security "restricted".
STEP_UID = 1000
SCRATCH_VOLUME = "scratch"


@dataclass(frozen=True)
class Cluster:
    """How the compiled pipeline runs on Kubernetes: pod resources and retries from the config, and volumes."""

    kubernetes: KubernetesConfig = KubernetesConfig()
    model_store_pvc: str = cluster.MODEL_STORE_PVC
    work_pvc: Optional[str] = cluster.WORK_PVC


def create_pipeline(image: str, on_cluster: Optional[Cluster] = None):
    """The pipeline function, its steps running in ``image``; ``on_cluster`` adds Kubernetes settings.

    The volumes' claim names are pipeline parameters (``model_store_pvc``, ``work_pvc``), defaulting to
    ``on_cluster``'s: the same package runs in KFP's namespace (standalone) or a Profile's (multi-user),
    whatever the claims are called there. They mean nothing to a local run."""
    steps = build_steps(image)
    volumes = on_cluster or Cluster()
    default_work_root = cluster.WORK_MOUNT if on_cluster and on_cluster.work_pvc else None

    @dsl.pipeline(name="esmm",
                  description="ESMM: Beam ingestion, tf.Transform, Keras trainer, TFMA evaluation, TF Serving push")
    def esmm_pipeline(config_path: str, input_path: str, serving_base: str = cluster.MODEL_STORE_MOUNT,
                      work_root: Optional[str] = default_work_root, beam_runner: Optional[str] = None,
                      beam_options: Optional[list] = None, variant: Optional[str] = None, epochs: Optional[int] = None,
                      thresholds: Optional[list] = None, ground_truth: Optional[str] = None,
                      max_rejected_fraction: Optional[float] = None, beam_worker_image: Optional[str] = image,
                      model_store_pvc: str = volumes.model_store_pvc, work_pvc: str = volumes.work_pvc or ""):
        # The config with this run's overrides, and a fingerprint of the input files: what the caches key on.
        # On a cluster it also gets the run's schedule time (KFP's driver resolves the placeholder; kfp.local
        # 2.17 cannot) to format input_path's schedule-time macros (pipelines.schedule).
        snapshot = steps.snapshot(config_path=config_path, input_path=input_path, ground_truth=ground_truth,
                                  variant=variant, epochs=epochs, thresholds=thresholds,
                                  max_rejected_fraction=max_rejected_fraction,
                                  **({"schedule_time": dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER}
                                     if on_cluster else {}))
        snapshot.set_caching_options(False)  # must see an edited config and new data on every run
        config, fingerprint = snapshot.outputs["config"], snapshot.outputs["input_fingerprint"]
        # Raw impression logs -> raw tf.Example split by time (Beam); fails past input.max_rejected_fraction,
        # so nothing trains on a log the config does not fit.
        # A remote Beam runner's workers run beam_worker_image (the component image unless overridden).
        ingest = steps.ingest(config=config, input_path=snapshot.outputs["input_path"], input_fingerprint=fingerprint,
                              beam_runner=beam_runner, beam_options=beam_options, beam_worker_image=beam_worker_image)
        # Hash, vocabulary, z-score and buckets, analyzed on train only (tf.Transform on Beam).
        transform = steps.transform(config=config, beam_runner=beam_runner, beam_options=beam_options,
                                    beam_worker_image=beam_worker_image, examples=ingest.outputs["examples"])
        # The ESMM variant, exported with the transform graph inside serving_default.
        # In the step's pod, or (kubernetes.train_workers) as a TFJob of N workers in the same image.
        train = steps.train(config=config, work_root=work_root, transformed=transform.outputs["transformed"],
                            **({"tfjob_image": image, "work_pvc": work_pvc} if on_cluster else {}))
        # The candidate and the served model scored on the raw eval split, TFMA sliced all / clicked /
        # unclicked, entire-space metrics, and the blessing judged on those same rows.
        evaluate = steps.evaluate(config=config, input_fingerprint=fingerprint, serving_base=serving_base,
                                  beam_runner=beam_runner, beam_options=beam_options, ground_truth=ground_truth,
                                  beam_worker_image=beam_worker_image, examples=ingest.outputs["examples"],
                                  model=train.outputs["model"])
        evaluate.set_caching_options(False)  # it reads the serving directory (the baseline): never replayed from cache
        # Atomic push, with warmup requests from evaluate's few eval examples (not the whole split: KFP's
        # launcher downloads every input artifact in full), only if blessed against the version still served.
        push = steps.push(config=config, serving_base=serving_base, warmup=evaluate.outputs["warmup"],
                          model=train.outputs["model"], evaluation=evaluate.outputs["evaluation"],
                          blessing=evaluate.outputs["blessing"])
        push.set_caching_options(False)  # it reads and writes the serving directory: never replayed from cache
        if on_cluster:
            _configure(on_cluster, {"snapshot": snapshot, "ingest": ingest, "transform": transform, "train": train,
                                    "evaluate": evaluate, "push": push}, model_store_pvc, work_pvc)

    return esmm_pipeline


def _configure(on_cluster: Cluster, tasks: dict, model_store_pvc, work_pvc) -> None:
    """Requests, limits and retries from the config; the image's non-root user; a scratch volume on the steps
    that stage data; the model store on evaluate (which re-scores the served version) and push, the work
    volume on train, both named by pipeline parameters; and, for a TFJob, the train pod's own name and uid
    (the TFJob's owner) with requests sized for waiting on it."""
    from kfp import kubernetes

    from pipelines.tfjob import POD_NAME_ENV, POD_UID_ENV, POLLER_RESOURCES

    settings = on_cluster.kubernetes
    for name, task in tasks.items():
        resources = (POLLER_RESOURCES if name == "train" and settings.train_workers
                     else settings.resources.for_step(name))
        (task.set_cpu_request(resources.cpu).set_cpu_limit(resources.cpu_limit)
         .set_memory_request(resources.memory).set_memory_limit(resources.memory_limit))
        if name in RETRIED_STEPS and settings.retries:
            task.set_retry(num_retries=settings.retries, backoff_duration=f"{settings.retry_backoff_s}s",
                           backoff_factor=2.0, backoff_max_duration="3600s")
        # KFP >= 2.16 adds allowPrivilegeEscalation: false, drop ALL and RuntimeDefault seccomp itself.
        kubernetes.set_security_context(task, run_as_user=STEP_UID, run_as_group=STEP_UID, run_as_non_root=True)
        if name in STAGING_STEPS and settings.scratch_storage:
            kubernetes.empty_dir_mount(task, SCRATCH_VOLUME, cluster.SCRATCH_MOUNT, size_limit=settings.scratch_storage)
            task.set_env_variable("TMPDIR", cluster.SCRATCH_MOUNT)
    for name in ("evaluate", "push"):
        kubernetes.mount_pvc(tasks[name], pvc_name=model_store_pvc, mount_path=cluster.MODEL_STORE_MOUNT)
    if on_cluster.work_pvc:
        kubernetes.mount_pvc(tasks["train"], pvc_name=work_pvc, mount_path=cluster.WORK_MOUNT)
    kubernetes.use_field_path_as_env(tasks["train"], POD_NAME_ENV, "metadata.name")
    kubernetes.use_field_path_as_env(tasks["train"], POD_UID_ENV, "metadata.uid")
