"""Compiles the pipeline to KFP YAML for Kubernetes, and submits it to a KFP endpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pipelines.pipeline import create_pipeline


def compile_pipeline(out_path: str, image: str) -> str:
    """Writes the pipeline YAML whose five steps run in ``image``; returns the path."""
    from kfp import compiler

    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(create_pipeline(image), package_path=out_path)
    return out_path


def submit_pipeline(package_path: str, host: str, arguments: dict[str, Any], *,
                    experiment: Optional[str] = None, run_name: Optional[str] = None) -> str:
    """Starts a run of a compiled pipeline on the KFP endpoint ``host``; returns the run id."""
    import kfp

    client = kfp.Client(host=host)
    run = client.create_run_from_pipeline_package(package_path, arguments=arguments, run_name=run_name,
                                                  experiment_name=experiment)
    return run.run_id
