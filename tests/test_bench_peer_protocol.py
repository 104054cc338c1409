"""bench_peer.py's dev/test protocol: reporting never reuses a seed or world a choice was made with."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_peer  # noqa: E402
from components.devtools.simulator import STORIES  # noqa: E402
from esmm_model.config import load_config, with_overrides  # noqa: E402


def test_test_seeds_and_world_were_never_used_for_choosing():
    assert not set(bench_peer.TEST_SEEDS) & set(bench_peer.DEV_SEEDS)
    assert bench_peer.TEST_DATA_SEED != bench_peer.DEV_DATA_SEED
    assert len(bench_peer.TEST_SEEDS) >= 3 and len(bench_peer.DEV_SEEDS) >= 3


def test_protocol_runs():
    assert bench_peer.protocol_runs("test", None, 3) == (list(STORIES), 2001, [1001, 1002, 1003])
    assert bench_peer.protocol_runs("test", ["clickbait"], 5) == (["clickbait"], 2001, [1001, 1002, 1003, 1004, 1005])
    assert bench_peer.protocol_runs("dev", None, 3) == (["baseline"], 7, [42, 43, 44])
    assert bench_peer.protocol_runs("dev", ["clickbait"], 2) == (["clickbait"], 7, [42, 43])
    with pytest.raises(SystemExit, match="unknown preset 'viral'"):
        bench_peer.protocol_runs("test", ["viral"], 3)
    with pytest.raises(SystemExit, match="--seeds must be 1..3"):
        bench_peer.protocol_runs("dev", None, 4)


def test_cached_data_are_keyed_by_what_ingest_and_transform_read(tmp_path):
    config = load_config("aliccp")
    dirs = bench_peer.data_dirs(config, tmp_path, "small")
    assert bench_peer.data_dirs(with_overrides(config, {"training": {"epochs": 1}}), tmp_path, "small") == dirs
    changed = with_overrides(config, {"input": {"train_fraction": 0.6}})
    assert bench_peer.data_dirs(changed, tmp_path, "small")[0] != dirs[0]
    assert bench_peer.data_dirs(changed, tmp_path, "small")[1] != dirs[1]
    assert bench_peer.data_dirs(config, tmp_path, "aliccp")[1] != dirs[1]
