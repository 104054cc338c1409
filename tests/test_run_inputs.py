"""What a run's caches key on (the input fingerprint) and the one source of Beam arguments."""
from __future__ import annotations

import os

import pytest

from components.beam.runner import beam_args
from components.devtools.simulator import COMMON_FILE, GROUND_TRUTH_FILE, SKELETON_FILE, SimulationSpec, simulate
from components.ingest.fingerprint import input_fingerprint
from esmm_model.config import BeamConfig, load_config
from esmm_model.errors import InputError

CONFIG = load_config("simulator")


@pytest.fixture
def logs(tmp_path):
    simulate(SimulationSpec(rows=200, users=20, items=40, seed=1), CONFIG, tmp_path)
    return tmp_path


def test_fingerprint_follows_the_files_not_the_path(logs):
    first = input_fingerprint(CONFIG, str(logs))
    assert input_fingerprint(CONFIG, str(logs)) == first  # untouched input: a cache may be used
    skeleton = logs / SKELETON_FILE
    stat = skeleton.stat()
    with open(skeleton, "a") as f:
        f.write(skeleton.read_text().splitlines()[0] + "\n")  # a grown file, same path
    grown = input_fingerprint(CONFIG, str(logs))
    assert grown != first
    os.utime(logs / COMMON_FILE, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rewritten in place
    assert input_fingerprint(CONFIG, str(logs)) != grown


def test_fingerprint_covers_the_ground_truth(logs):
    truth = str(logs / GROUND_TRUTH_FILE)
    before = input_fingerprint(CONFIG, str(logs), truth)
    assert before != input_fingerprint(CONFIG, str(logs))
    with open(truth, "a") as f:
        f.write("999999,0.5,0.5,1\n")
    assert input_fingerprint(CONFIG, str(logs), truth) != before
    with pytest.raises(InputError, match="ground truth file .*missing.csv.* does not exist"):
        input_fingerprint(CONFIG, str(logs), str(logs / "missing.csv"))


def test_beam_args_are_the_config_plus_overrides():
    beam = BeamConfig(runner="DirectRunner", options=("--direct_num_workers=2",))
    assert beam_args(beam) == ["--runner=DirectRunner", "--direct_num_workers=2"]
    assert beam_args(beam, "FlinkRunner", ["--flink_master=flink:8081", "--direct_num_workers=4"]) == [
        "--runner=FlinkRunner", "--direct_num_workers=2", "--flink_master=flink:8081", "--direct_num_workers=4"]
    assert beam_args(CONFIG.beam)[1:] == list(CONFIG.beam.options)  # the shipped config's section reaches Beam
