"""``esmm predict``: score a file of candidates on a model server and rank them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from esmm_model.config import Config
from serving_client.candidate_files import read_candidates, read_shared
from serving_client.client import Fallback, PredictionClient
from serving_client.packing import ExamplePacker
from serving_client.ranking import RankedCandidate, Ranker


def score_file(config: Config, client: PredictionClient, candidates_path: str | Path,
               shared_path: str | Path | None = None) -> tuple[list[RankedCandidate[dict[str, Any]]], bool]:
    """The candidates ranked by the seed's score, and whether the fallback scores were used."""
    candidates = read_candidates(candidates_path, config)
    shared = read_shared(shared_path) if shared_path else {}
    predictions = client.predict(ExamplePacker(config).pack(shared, candidates.features))
    return Ranker().rank(candidates.features, predictions, candidates.sim_scores), predictions.fallback


def format_ranking(ranked: list[RankedCandidate[dict[str, Any]]], id_feature: str = "item_id") -> str:
    """A fixed-width table: rank, input line, id, similarity, ctr, cvr, ctcvr, score."""
    lines = [f"{'rank':>4} {'line':>5} {id_feature:<20} {'sim':>8} {'ctr':>8} {'cvr':>8} {'ctcvr':>8} {'score':>8}"]
    for rank, r in enumerate(ranked, 1):
        item = str(r.candidate.get(id_feature, ""))[:20]
        lines.append(f"{rank:>4} {r.index + 1:>5} {item:<20} {r.sim_score:>8.4f} {r.ctr:>8.4f} {r.cvr:>8.4f} "
                     f"{r.ctcvr:>8.4f} {r.score:>8.4f}")
    return "\n".join(lines)


def predict_command(config: Config, target: str, model_name: str, candidates_path: str, *,
                    shared_path: str | None, version: int | None, timeout_s: float, fallback: bool,
                    version_label: str | None = None) -> str:
    """Runs one ``esmm predict`` and returns what it prints."""
    with PredictionClient(target, model_name, version=version, version_label=version_label, timeout_s=timeout_s,
                          fallback=Fallback() if fallback else None) as client:
        ranked, used_fallback = score_file(config, client, candidates_path, shared_path)
    note = "\n(serving was down: fallback scores 0.0)" if used_fallback else ""
    return format_ranking(ranked) + note
