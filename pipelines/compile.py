"""Compiles the pipeline to KFP YAML for Kubernetes, and submits it to a KFP endpoint (once or on a schedule)."""
from __future__ import annotations

import json
import re
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, TextIO

from esmm_model.errors import EsmmError
from pipelines.config import PipelineConfig
from pipelines.pipeline import Cluster, create_pipeline
from pipelines.schedule import SCHEDULED_DATE, has_schedule_macro

_CRON_FIELD = re.compile(r"[0-9*,/?LW#A-Za-z-]+")
# A run's terminal states (kfp_server_api V2beta1RuntimeState); only SUCCEEDED is a success.
FINAL_STATES = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED")


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
    # Credentials by file, so no secret lands in the shell history, `ps` or --dry-run's output:
    token_file: Optional[str] = None  # a bearer token (an OIDC id token, `kubectl create token ...`)
    cookies_file: Optional[str] = None  # a Cookie header's value, e.g. an oauth2-proxy or Dex session
    ca_bundle: Optional[str] = None  # PEM CA certificates that sign the endpoint's TLS certificate

    def describe(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}, indent=2, sort_keys=True)

    def check_schedule_macros(self) -> Optional[str]:
        """Only ``input_path`` is formatted at the schedule time (pipelines.schedule): EsmmError for a macro in
        another argument; for a schedule whose input_path has none, a note that every run reads the same input."""
        elsewhere = sorted(k for k, v in self.arguments.items()
                           if k != "input_path" and isinstance(v, str) and has_schedule_macro(v))
        if elsewhere:
            raise EsmmError(f"--arguments {', '.join(elsewhere)}: a schedule-time macro is formatted in input_path "
                            f"only")
        if self.schedule and not has_schedule_macro(str(self.arguments.get("input_path", ""))):
            return (f"note: input_path holds no schedule-time macro, so every run reads the same input; "
                    f"e.g. \"input_path\": \"gs://bucket/logs/{SCHEDULED_DATE}\"")
        return None


@dataclass(frozen=True)
class Submitted:
    """What KFP created: a run (``run_id``) or a recurring run, and the client that created it."""

    description: str
    run_id: Optional[str] = None
    client: Any = field(default=None, repr=False)


def submit(request: Submission, client_factory=None) -> Submitted:
    """Starts the run (or creates the recurring run) and returns what KFP calls it.

    Connection and authentication failures raise EsmmError naming the host, so the CLI prints
    one line instead of the HTTP client's traceback.
    """
    credentials = {"existing_token": _read_secret(request.token_file, "--token-file"),
                   "cookies": _read_secret(request.cookies_file, "--cookies-file"),
                   "ssl_ca_cert": _existing(request.ca_bundle, "--ca-bundle")}
    try:
        client = (client_factory or _client)(request.host, request.namespace, **credentials)
        if request.schedule:
            experiment = client.create_experiment(request.experiment or "Default", namespace=request.namespace)
            job = client.create_recurring_run(
                experiment.experiment_id, job_name=request.run_name or "esmm", cron_expression=request.schedule,
                pipeline_package_path=request.package, params=request.arguments, pipeline_root=request.pipeline_root,
                enable_caching=request.enable_caching, service_account=request.service_account)
            return Submitted(f"recurring run {job.recurring_run_id} ({request.schedule})", client=client)
        run = client.create_run_from_pipeline_package(
            request.package, arguments=request.arguments, run_name=request.run_name,
            experiment_name=request.experiment, namespace=request.namespace, pipeline_root=request.pipeline_root,
            enable_caching=request.enable_caching, service_account=request.service_account)
        return Submitted(f"run {run.run_id}", run_id=run.run_id, client=client)
    except Exception as exc:
        raise EsmmError(_explain(request.host, exc)) from None


def watch(submitted: Submitted, host: str, *, poll_s: float = 10.0, out: Optional[TextIO] = None) -> str:
    """Follows the run to its end, printing each state it enters; returns the final state (FINAL_STATES).
    A failure to ask raises EsmmError naming the host."""
    if submitted.run_id is None:
        raise EsmmError("--watch follows a single run; a recurring run starts its runs later")
    out = out or sys.stdout
    state = None
    while True:
        try:
            run = submitted.client.get_run(submitted.run_id)
        except Exception as exc:
            raise EsmmError(_explain(host, exc)) from None
        if run.state != state:
            state = run.state
            print(f"run {submitted.run_id}: {state}", file=out, flush=True)
        if state in FINAL_STATES:
            if state != "SUCCEEDED" and getattr(run, "error", None) is not None:
                print(f"run {submitted.run_id}: {getattr(run.error, 'message', None) or run.error}", file=out)
            return state
        time.sleep(poll_s)


def _read_secret(path: Optional[str], flag: str) -> Optional[str]:
    if path is None:
        return None
    text = _existing(path, flag)
    with open(text) as f:
        secret = f.read().strip()
    if not secret:
        raise EsmmError(f"{flag} {path!r} is empty")
    return secret


def _existing(path: Optional[str], flag: str) -> Optional[str]:
    import os

    if path is not None and not os.path.isfile(path):
        raise EsmmError(f"{flag} {path!r} does not exist")
    return path


def _client(host: str, namespace: Optional[str], *, existing_token: Optional[str] = None,
            cookies: Optional[str] = None, ssl_ca_cert: Optional[str] = None):
    import kfp

    with warnings.catch_warnings():
        # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later"
        warnings.simplefilter("ignore", FutureWarning)
        return kfp.Client(host=host, namespace=namespace, existing_token=existing_token, cookies=cookies,
                          ssl_ca_cert=ssl_ca_cert)


def _explain(host: str, exc: Exception) -> str:
    """One line saying what went wrong with the KFP endpoint ``host``."""
    import urllib3
    from kfp_server_api.exceptions import ApiException

    if isinstance(exc, ApiException):
        if exc.status in (401, 403):
            return (f"the KFP endpoint {host} refused the request (HTTP {exc.status} {exc.reason}): check the "
                    f"credentials (--token-file, --cookies-file, or KF_PIPELINES_SA_TOKEN_PATH in a pod) "
                    f"and --namespace")
        return f"the KFP endpoint {host} answered HTTP {exc.status} {exc.reason}: {str(exc.body or '').strip()[:200]}"
    if isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, OSError)):
        reason = getattr(exc, "reason", None) or exc
        return f"cannot reach the KFP endpoint {host}: {reason}"
    return f"submitting to the KFP endpoint {host} failed: {type(exc).__name__}: {exc}"
