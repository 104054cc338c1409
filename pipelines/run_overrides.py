"""A run's overrides of the config: what `esmm run` and the pipeline's parameters may change for one run."""
from __future__ import annotations

from typing import Optional

from esmm_model.config import Config, with_overrides


def with_run_overrides(config: Config, *, variant: Optional[str] = None, epochs: Optional[int] = None,
                       thresholds: Optional[list] = None, max_rejected_fraction: Optional[float] = None) -> Config:
    """``config`` with each override that is not None in place of the config's value."""
    overrides = {"input": {"max_rejected_fraction": max_rejected_fraction} if max_rejected_fraction is not None else {},
                 "model": {"variant": variant} if variant is not None else {},
                 "training": {"epochs": epochs} if epochs is not None else {},
                 "evaluation": {"thresholds": thresholds} if thresholds is not None else {}}
    return with_overrides(config, overrides)
