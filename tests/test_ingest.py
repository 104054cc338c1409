"""Ingestion through Beam on ~2k simulated rows plus hand-written bad lines."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from components.ingest import EVAL, TRAIN, ingest
from components.simulator import CSV_FILE, SKELETON_FILE, SimulationSpec, simulate
from esmm_model.config import config_from_dict, load_config
from esmm_model.schema import feature_spec

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "aliccp"
BEAM_ARGS = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]
ROWS = 2_000

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    spec = SimulationSpec(rows=ROWS, users=300, items=800, categories=40, brands=100, shops=150, seed=9)
    simulate(spec, load_config("simulator"), out, write_csv=True)
    # Bad lines appended to the simulated log: each must be rejected with its reason.
    bad = [line for line in (FIXTURES / "sample_skeleton_fixture.csv").read_text().splitlines()
           if line.split(",", 1)[0] in {"4", "5", "6", "7", "8"}]
    with open(out / SKELETON_FILE, "a") as f:
        f.write("\n".join(bad) + "\n")
    return out


def read_split(out: Path, split: str, config) -> dict:
    files = sorted(str(p) for p in (out / split).glob("*.tfrecord.gz"))
    records = list(tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator())
    return tf.io.parse_example(records, feature_spec(config)) if records else {}


@pytest.fixture(scope="module")
def ingested(sim_dir, tmp_path_factory):
    config = load_config("simulator")
    out = tmp_path_factory.mktemp("ingest")
    counts = ingest(config, str(sim_dir), str(out), BEAM_ARGS)
    return config, out, counts


def test_counts_add_up_and_bad_lines_are_rejected_with_reasons(ingested):
    config, out, counts = ingested
    assert counts.rows_read == ROWS + 5
    assert counts.rejected == {"conversion_without_click": 1, "unknown_common_feature_index": 2,
                               "wrong_column_count": 1, "bad_click": 1}
    train, evaluation = counts.split(TRAIN), counts.split(EVAL)
    assert train["rows"] + evaluation["rows"] + sum(counts.rejected.values()) == counts.rows_read
    # The split point is the median key of every line whose key parses, so the five
    # bad lines (keys 4..8) may pull it down by up to five rows.
    assert ROWS // 2 - 5 <= train["rows"] <= ROWS // 2
    assert json.loads((out / "counts.json").read_text()) == counts.data
    rejected = [json.loads(line) for p in (out / "rejected").glob("*.jsonl") for line in p.read_text().splitlines()]
    assert sorted(r["code"] for r in rejected) == sorted(
        ["conversion_without_click", "unknown_common_feature_index", "unknown_common_feature_index",
         "wrong_column_count", "bad_click"])
    # Line 8's unknown index is reported before its malformed entry would be.
    assert all(r["source"] == "impressions" and r["reason"] and r["line"] for r in rejected)
    assert (out / "schema.pbtxt").read_text().count("feature {") == len(feature_spec(config))


def test_records_read_back_split_by_time(ingested):
    config, out, counts = ingested
    train, evaluation = read_split(out, TRAIN, config), read_split(out, EVAL, config)
    train_ids = train["sample_id"].numpy().astype(int)
    eval_ids = evaluation["sample_id"].numpy().astype(int)
    assert train_ids.max() < eval_ids.min()  # the earlier half trains
    assert sorted(np.concatenate([train_ids, eval_ids]).tolist()) == list(range(1, ROWS + 1))
    for split, parsed in ((TRAIN, train), (EVAL, evaluation)):
        click, conversion, ctcvr = (parsed[k].numpy() for k in ("click", "conversion", "ctcvr"))
        assert click.sum() == counts.split(split)["clicks"]
        assert conversion.sum() == counts.split(split)["conversions"]
        assert np.array_equal(ctcvr, click & conversion)
        assert (parsed["hist_items"].indices.shape[0] ==
                parsed["hist_items_weight"].indices.shape[0])  # ids and weights stay aligned


def test_csv_log_gives_the_same_examples(ingested, sim_dir, tmp_path):
    config, out, _ = ingested
    data = config.to_dict()
    data["input"]["format"] = "csv"
    csv_config = config_from_dict(data)
    counts = ingest(csv_config, str(sim_dir / CSV_FILE), str(tmp_path), BEAM_ARGS)
    assert counts.rows_read == ROWS and counts.rejected == {}
    a, b = (read_all(d, config) for d in (out, tmp_path))
    order_a, order_b = (np.argsort(p["sample_id"].numpy().astype(int)) for p in (a, b))
    for name in ("sample_id", "user_id", "item_id", "price", "position", "hour", "click", "conversion"):
        assert np.array_equal(a[name].numpy()[order_a], b[name].numpy()[order_b]), name
    dense_a = tf.sparse.to_dense(a["hist_brands_weight"]).numpy()[order_a]
    dense_b = tf.sparse.to_dense(b["hist_brands_weight"]).numpy()[order_b]
    assert np.array_equal(dense_a, dense_b)


def read_all(out: Path, config) -> dict:
    files = sorted(str(p) for p in out.glob("*/*.tfrecord.gz"))
    records = list(tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator())
    return tf.io.parse_example(records, feature_spec(config))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_missing_input_exits_non_zero_with_one_clear_line(tmp_path):
    result = run_cli("ingest", "--input", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"esmm ingest: error: no Ali-CCP sample_skeleton files match '{tmp_path / 'nowhere'}/sample_skeleton_*.csv*'")
    assert "Traceback" not in result.stderr


def test_bad_config_exits_non_zero_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nfeatures:\n  - {name: a, kind: idd, side: user, preprocessing: {hash_buckets: 3}}\n")
    result = run_cli("ingest", "--config", str(bad), "--input", str(tmp_path), "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "features[0].kind: 'idd' is not one of id, weighted_ids, dense" in result.stderr
    assert "Traceback" not in result.stderr
