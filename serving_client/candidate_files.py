"""Reads ranking candidates for ``esmm predict`` from JSONL or CSV files.

Each line or row is one candidate: feature values by config name, plus an optional
``sim_score`` (the retrieval similarity the ranker adds). JSONL holds typed values, a
weighted list as ``[[ids], [weights]]``; CSV holds text, a weighted list as
``id:weight|id:weight`` (the simulator's CSV layout). Shared user and context features
may repeat on every candidate or come once from a separate JSON object.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esmm_model.config import Config, Feature
from esmm_model.errors import InputError
from esmm_model.json_object import parse_json_object

SIM_SCORE = "sim_score"


@dataclass(frozen=True)
class Candidates:
    """Feature dicts in file order, and each one's similarity score (0.0 when absent)."""

    features: list[dict[str, Any]]
    sim_scores: list[float]


def read_candidates(path: str | Path, config: Config) -> Candidates:
    """Candidates from a ``.jsonl`` or ``.csv`` file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"candidate file {str(path)!r} does not exist")
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            rows = [(f"{path}:{i + 2}", _typed_row(row, config, f"{path}:{i + 2}"))
                    for i, row in enumerate(csv.DictReader(f))]
    elif path.suffix in (".jsonl", ".json"):
        rows = [(f"{path}:{i + 1}", parse_json_object(line, f"{path}:{i + 1}"))
                for i, line in enumerate(path.read_text().splitlines()) if line.strip()]
    else:
        raise InputError(f"candidate file {str(path)!r}: use a .jsonl or .csv file")
    features, sim_scores = [], []
    for where, row in rows:
        sim = row.pop(SIM_SCORE, None)
        try:
            sim_scores.append(0.0 if sim is None else float(sim))
        except (TypeError, ValueError):
            raise InputError(f"{where}: {SIM_SCORE} must be a number, got {sim!r}") from None
        features.append(row)
    return Candidates(features, sim_scores)


def read_shared(path: str | Path) -> dict[str, Any]:
    """The shared user and context features: one JSON object."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"shared features file {str(path)!r} does not exist")
    return parse_json_object(path.read_text(), f"shared features file {str(path)!r}")


def _typed_row(row: dict[str, str], config: Config, where: str) -> dict[str, Any]:
    typed: dict[str, Any] = {}
    for name, text in row.items():
        if name == SIM_SCORE or not text:
            typed[name] = text or None
            continue
        try:
            feature = config.feature(name)
        except KeyError:
            raise InputError(f"{where}: column {name!r} is not a feature of config {config.name!r}") from None
        try:
            typed[name] = _parse(feature, text)
        except ValueError as exc:
            raise InputError(f"{where}: column {name!r}: {exc}") from None
    return typed


def _parse(feature: Feature, text: str) -> Any:
    parse_id = int if feature.dtype == "int64" else str
    if feature.kind == "dense":
        return float(text)
    if feature.kind == "id":
        return parse_id(text)
    pairs = [pair.split(":") for pair in text.split("|")]
    if any(len(p) != 2 for p in pairs):
        raise ValueError(f"expected id:weight|id:weight, got {text!r}")
    return [parse_id(i) for i, _ in pairs], [float(w) for _, w in pairs]
