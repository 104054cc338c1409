"""Compiles the pipeline to KFP YAML for Kubernetes, and submits it to a KFP endpoint (once or on a schedule)."""
from __future__ import annotations

import json
import re
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Optional

from esmm_model.errors import EsmmError
from pipelines.config import PipelineConfig
from pipelines.pipeline import Cluster, create_pipeline

_CRON_FIELD = re.compile(r"[0-9*,/?LW#A-Za-z-]+")


def compile_pipeline(out_path: str, image: str, config: PipelineConfig, *, model_store_pvc: str,
                     work_pvc: Optional[str]) -> str:
    """Writes the pipeline YAML whose steps run in ``image`` with the config's resources and retries,
    the model store mounted on push and the work volume (if any) on train; returns the path."""
    import posixpath

    import tensorflow as tf
    from kfp import compiler

    if posixpath.dirname(out_path):
        tf.io.gfile.makedirs(posixpath.dirname(out_path))
    on_cluster = Cluster(config.kubernetes, model_store_pvc=model_store_pvc, work_pvc=work_pvc)
    compiler.Compiler().compile(create_pipeline(image, on_cluster), package_path=out_path)
    return out_path


def kfp_cron(schedule: str) -> str:
    """KFP's six-field cron (seconds first) from a five- or six-field expression; EsmmError if malformed."""
    fields = schedule.split()
    if len(fields) not in (5, 6) or not all(_CRON_FIELD.fullmatch(f) for f in fields):
        raise EsmmError(f"--schedule {schedule!r} is not a cron expression: give 5 fields (minute hour day month "
                        f"weekday, e.g. '0 3 * * *') or KFP's 6 (seconds first)")
    return " ".join(["0", *fields] if len(fields) == 5 else fields)


@dataclass(frozen=True)
class Submission:
    """Everything ``esmm submit`` sends to the KFP API; ``--dry-run`` prints it."""

    host: str
    package: str
    arguments: dict[str, Any]
    experiment: Optional[str] = None
    run_name: Optional[str] = None
    namespace: Optional[str] = None
    service_account: Optional[str] = None
    pipeline_root: Optional[str] = None
    enable_caching: Optional[bool] = None  # None: as compiled (every step but snapshot, evaluate and push caches)
    schedule: Optional[str] = None  # KFP cron; None: a single run

    def describe(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}, indent=2, sort_keys=True)


def submit(request: Submission, client_factory=None) -> str:
    """Starts the run (or creates the recurring run) and returns what KFP calls it.

    Connection and authentication failures raise EsmmError naming the host, so the CLI prints
    one line instead of the HTTP client's traceback.
    """
    try:
        client = (client_factory or _client)(request.host, request.namespace)
        if request.schedule:
            experiment = client.create_experiment(request.experiment or "Default", namespace=request.namespace)
            job = client.create_recurring_run(
                experiment.experiment_id, job_name=request.run_name or "esmm", cron_expression=request.schedule,
                pipeline_package_path=request.package, params=request.arguments, pipeline_root=request.pipeline_root,
                enable_caching=request.enable_caching, service_account=request.service_account)
            return f"recurring run {job.recurring_run_id} ({request.schedule})"
        run = client.create_run_from_pipeline_package(
            request.package, arguments=request.arguments, run_name=request.run_name,
            experiment_name=request.experiment, namespace=request.namespace, pipeline_root=request.pipeline_root,
            enable_caching=request.enable_caching, service_account=request.service_account)
        return f"run {run.run_id}"
    except Exception as exc:
        raise EsmmError(_explain(request.host, exc)) from None


def _client(host: str, namespace: Optional[str]):
    import kfp

    with warnings.catch_warnings():
        # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later"
        warnings.simplefilter("ignore", FutureWarning)
        return kfp.Client(host=host, namespace=namespace)


def _explain(host: str, exc: Exception) -> str:
    """One line saying what went wrong with the KFP endpoint ``host``."""
    import urllib3
    from kfp_server_api.exceptions import ApiException

    if isinstance(exc, ApiException):
        if exc.status in (401, 403):
            return (f"the KFP endpoint {host} refused the request (HTTP {exc.status} {exc.reason}): check the "
                    f"credentials (KF_PIPELINES_SA_TOKEN_PATH, a kubeflow-userid header or an IAP token) "
                    f"and --namespace")
        return f"the KFP endpoint {host} answered HTTP {exc.status} {exc.reason}: {str(exc.body or '').strip()[:200]}"
    if isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, OSError)):
        reason = getattr(exc, "reason", None) or exc
        return f"cannot reach the KFP endpoint {host}: {reason}"
    return f"submitting to the KFP endpoint {host} failed: {type(exc).__name__}: {exc}"
