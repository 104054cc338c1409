"""The blessing artifact: the model-validation gate's verdict (``components.evaluate.gate``) as one JSON file
that the evaluator writes and the pusher reads ::

    {"status": "BLESSED" | "NOT_BLESSED", "baseline_version": 3 | null,
     "model_fingerprint": "sha256:..." (the judged model, ``esmm_model.contracts.fingerprint``),
     "reasons": ["pass: ctr/all/auc = 0.7100 >= min 0.5500", ...],
     "checks": [{"metric": "ctr/all/auc", "rule": "min", "outcome": "pass", "value": 0.71,
                 "bound": 0.55, "baseline": null, "reason": "ctr/all/auc = 0.7100 >= min 0.5500"}, ...]}
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Optional

import tensorflow as tf

from esmm_model.errors import InputError
from esmm_model.json_object import parse_json_object

BLESSED = "BLESSED"
NOT_BLESSED = "NOT_BLESSED"

Rule = Literal["present", "min", "max", "max_regression"]
Outcome = Literal["pass", "fail", "skip"]


@dataclass(frozen=True)
class Check:
    """One rule applied to one metric. ``bound`` is the limit the value was held to."""

    metric: str
    rule: Rule
    outcome: Outcome
    reason: str
    value: Optional[float] = None
    bound: Optional[float] = None
    baseline: Optional[float] = None


@dataclass(frozen=True)
class Blessing:
    """The gate's verdict: blessed when no check failed."""

    checks: tuple[Check, ...]
    baseline_version: Optional[int] = None
    model_fingerprint: Optional[str] = None  # the judged model's identity; the pusher refuses any other model

    @property
    def blessed(self) -> bool:
        return all(check.outcome != "fail" for check in self.checks)

    @property
    def status(self) -> str:
        return BLESSED if self.blessed else NOT_BLESSED

    @property
    def reasons(self) -> tuple[str, ...]:
        """Every check's outcome and why, in config order."""
        if not self.checks:
            return ("pass: evaluation.thresholds is empty, so there was nothing to check",)
        return tuple(f"{check.outcome}: {check.reason}" for check in self.checks)

    @property
    def failures(self) -> tuple[str, ...]:
        """The reasons a NOT_BLESSED model was refused; empty when blessed."""
        return tuple(check.reason for check in self.checks if check.outcome == "fail")

    def describe(self) -> str:
        against = ("no pushed baseline" if self.baseline_version is None
                   else f"baseline: pushed version {self.baseline_version}")
        return "\n".join([f"{self.status} ({against})", *(f"  {reason}" for reason in self.reasons)])


def write_blessing(blessing: Blessing, path: str) -> None:
    """Writes the blessing artifact JSON to ``path`` (a local path or a gfile URI)."""
    record = {"status": blessing.status, "baseline_version": blessing.baseline_version,
              "model_fingerprint": blessing.model_fingerprint, "reasons": list(blessing.reasons),
              "checks": [dataclasses.asdict(check) for check in blessing.checks]}
    write_json(record, path)


def read_blessing(path: str) -> Blessing:
    """Reads a blessing artifact written by ``write_blessing``; InputError naming the file otherwise."""
    record = read_json(path, "blessing")
    try:
        blessing = Blessing(checks=tuple(Check(**check) for check in record["checks"]),
                            baseline_version=record["baseline_version"],
                            model_fingerprint=record.get("model_fingerprint"))
        status = record["status"]
    except (KeyError, TypeError) as exc:
        raise InputError(f"blessing file {path!r} is not a blessing artifact ({exc!r}); "
                         f"write it with write_blessing") from None
    if status != blessing.status:
        raise InputError(f"blessing file {path!r} says {status} but its checks say {blessing.status}; "
                         f"it was edited or corrupted")
    return blessing


def read_json(path: str, what: str) -> dict[str, Any]:
    """Reads a JSON object (metrics, blessing) from a local path or gfile URI; InputError naming the file otherwise."""
    if not tf.io.gfile.exists(path):
        raise InputError(f"{what} file {path!r} does not exist")
    with tf.io.gfile.GFile(path) as f:
        return parse_json_object(f.read(), f"{what} file {path!r}")


def write_json(record: Mapping[str, Any], path: str) -> None:
    """Writes a JSON object to a local path or gfile URI, creating its directory."""
    parent = os.path.dirname(path)
    if parent:
        tf.io.gfile.makedirs(parent)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(record, indent=2) + "\n")
