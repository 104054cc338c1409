"""A fingerprint of a run's input files, so that caches key on the data and not on its path.

A scheduled run reads the same ``input_path`` every day; caching on that string would replay
yesterday's ingestion. The fingerprint hashes the listing instead (each matched file's path,
size and modification time, through Beam's FileSystems, so ``gs://`` works too): a new,
grown or rewritten file changes it, an untouched input keeps it.
"""
from __future__ import annotations

import hashlib
import json
from typing import Optional

from apache_beam.io.filesystems import FileSystems

from components.ingest.executor import resolve_inputs
from esmm_model.config import Config
from esmm_model.errors import InputError


def _listing(pattern: str) -> list[tuple[str, int, float]]:
    (result,) = FileSystems.match([pattern])
    return sorted((m.path, m.size_in_bytes, m.last_updated_in_seconds) for m in result.metadata_list)


def input_fingerprint(config: Config, input_path: str, ground_truth: Optional[str] = None) -> str:
    """SHA-256 over the listing of every file ingestion (and, if given, the ground truth) reads."""
    files = resolve_inputs(config, input_path)
    patterns = [p for p in (files.impressions, files.common, ground_truth) if p]
    listing = {pattern: _listing(pattern) for pattern in patterns}
    if ground_truth and not listing[ground_truth]:
        raise InputError(f"ground truth file {ground_truth!r} does not exist")
    return hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()
