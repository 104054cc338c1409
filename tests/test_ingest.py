"""Ingestion through Beam on ~2k simulated rows plus hand-written bad lines."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import anomalies_pb2

from components.devtools.simulator import COMMON_FILE, CSV_FILE, SKELETON_FILE, SimulationSpec, simulate
from components.ingest.executor import EVAL, TRAIN, RejectionError, ingest
from esmm_model.config import config_from_dict, load_config, with_overrides
from esmm_model.contracts import layout
from esmm_model.schema import feature_spec

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "tests" / "fixtures" / "aliccp"
FIXTURES = ROOT / "tests" / "fixtures" / "aliccp_defects"
BEAM_ARGS = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]
ROWS = 2_000

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    spec = SimulationSpec(rows=ROWS, users=300, items=800, categories=40, brands=100, shops=150, seed=9)
    simulate(spec, load_config("simulator"), out, write_csv=True)
    # Bad lines appended to the simulated log: each must be rejected with its reason.
    bad = [line for line in (FIXTURES / "sample_skeleton_defects.csv").read_text().splitlines()
           if line.split(",", 1)[0] in {"4", "5", "6", "7", "8"}]
    with open(out / SKELETON_FILE, "a") as f:
        f.write("\n".join(bad) + "\n")
    return out


def read_split(out: Path, split: str, config) -> dict:
    files = sorted(str(p) for p in (out / split).glob(layout.RECORD_PATTERN))
    records = list(tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator())
    return tf.io.parse_example(records, feature_spec(config)) if records else {}


@pytest.fixture(scope="module")
def ingested(sim_dir, tmp_path_factory):
    # 5 bad lines of 2,005 (0.25 %) are within the default max_rejected_fraction (1 %).
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
    assert json.loads(Path(layout.IngestLayout(str(out)).counts).read_text()) == counts.data
    rejected = [json.loads(line) for p in Path(layout.IngestLayout(str(out)).rejected_dir).glob("*.jsonl")
                for line in p.read_text().splitlines()]
    assert sorted(r["code"] for r in rejected) == sorted(
        ["conversion_without_click", "unknown_common_feature_index", "unknown_common_feature_index",
         "wrong_column_count", "bad_click"])
    # Line 8's unknown index is reported before its malformed entry would be.
    assert all(r["source"] == "impressions" and r["reason"] and r["line"] for r in rejected)
    assert Path(layout.IngestLayout(str(out)).schema).read_text().count("feature {") == len(feature_spec(config))


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
    files = sorted(str(p) for p in out.glob(f"*/{layout.RECORD_PATTERN}"))
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


def read_anomalies(out: Path) -> anomalies_pb2.Anomalies:
    return text_format.Parse(Path(layout.IngestLayout(str(out)).anomalies).read_text(), anomalies_pb2.Anomalies())


def test_real_format_rows_ingest_with_the_shipped_config_rejecting_nothing(tmp_path):
    counts = ingest(load_config("aliccp"), str(REAL), str(tmp_path / "out"), BEAM_ARGS)
    assert counts.rows_read == 40 and counts.rejected == {} and counts.data.get("common_rejected", {}) == {}
    assert counts.split(TRAIN)["rows"] == counts.split(EVAL)["rows"] == 20
    # One user of five (8 rows) lacks fields 128 and 110_14; every other field is on most rows.
    presence = {name: counts.data["presence"][TRAIN][name] + counts.data["presence"][EVAL][name]
                for name in counts.data["presence"][TRAIN]}
    assert presence["occupation"] == presence["hist_shops"] == 32 and presence["item_id"] == 40
    assert min(presence.values()) / 40 >= load_config("aliccp").input.min_feature_presence
    assert dict(read_anomalies(tmp_path / "out").anomaly_info) == {}


# The Ali-CCP fields the simulator wrote before its stories (user categorical and group, consumption level 2,
# occupation, intention history, the item's intentions, the four crosses): a log without them, as in issue 19.
LACKED_FIELDS = {"121", "122", "127", "128", "150_14", "210", "508", "509", "702", "853"}


def _without_fields(src: Path, dst: Path, fields: set[str]) -> Path:
    """A copy of the simulator's raw log whose skeleton and common feature lists lack ``fields``."""
    dst.mkdir()
    for name, head in ((SKELETON_FILE, 4), (COMMON_FILE, 1)):
        lines = []
        for line in (src / name).read_text().splitlines():
            parts = line.split(",", head + 1)
            entries = parts[-1].split("\x01")
            kept = [e for e in entries if e.split("\x02", 1)[0] not in fields]
            if len(parts) != head + 2 or len(kept) == len(entries):  # a defect line, or nothing to drop: as it is
                lines.append(line)
                continue
            lines.append(",".join(parts[:head] + [str(len(kept)), "\x01".join(kept)]))
        (dst / name).write_text("\n".join(lines) + "\n")
    return dst


def test_a_config_naming_fields_the_log_lacks_fails_naming_every_missing_feature(sim_dir, tmp_path):
    """A log without 10 of the Ali-CCP config's 23 fields, read with that config: those features are on no row."""
    raw = _without_fields(sim_dir, tmp_path / "raw", LACKED_FIELDS)
    with pytest.raises(RejectionError) as failure:
        ingest(load_config("aliccp"), str(raw), str(tmp_path / "out"), BEAM_ARGS)
    missing = ["user_categorical", "user_group", "consumption_level_2", "occupation", "hist_intentions",
               "intentions", "cross_category", "cross_shop", "cross_brand", "cross_intention"]
    message = str(failure.value)
    assert "\n" not in message
    assert message.startswith("10 of 23 features are in fewer than 1.00% of the 2,000 rows kept")
    assert [name for name in missing if f"{name} (field " in message] == missing
    anomalies = read_anomalies(tmp_path / "out")
    errors = {k for k, v in anomalies.anomaly_info.items() if v.severity == anomalies_pb2.AnomalyInfo.ERROR}
    assert errors == set(missing)
    assert all(anomalies.anomaly_info[k].reason[0].type == anomalies_pb2.AnomalyInfo.FEATURE_TYPE_LOW_FRACTION_PRESENT
               for k in errors)
    # The simulator's hist_items, price_bucket, price and hour fields are reported, not fatal.
    warnings = {k for k, v in anomalies.anomaly_info.items() if v.severity == anomalies_pb2.AnomalyInfo.WARNING}
    assert warnings == {"205_14", "220", "221", "302"}
    counts = json.loads(Path(layout.IngestLayout(str(tmp_path / "out")).counts).read_text())
    assert sum(counts["unused_fields"][split]["221"] for split in (TRAIN, EVAL)) == 2_000


def test_duplicate_sample_ids_keep_the_first_line_by_file_then_line_order(tmp_path):
    """The same ids in two files one glob matches, and a repeat within the first file."""
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "common_features_train.csv").write_bytes((REAL / "common_features_train.csv").read_bytes())
    lines = (REAL / "sample_skeleton_train.csv").read_text().splitlines()
    (raw / "sample_skeleton_train_a.csv").write_text("\n".join(lines + [lines[4]]) + "\n")
    # The second file's copies carry another item id (205), so the kept copy shows which file won.
    (raw / "sample_skeleton_train_b.csv").write_text(
        "\n".join(line.replace("\x01205\x02", "\x01205\x029", 1).replace(",205\x02", ",205\x029", 1)
                  for line in lines) + "\n")
    with pytest.raises(RejectionError, match=r"rejected 50\.62% of 81 rows \(41\), .* top reasons: "
                                             r"duplicate_sample_id 41;"):
        ingest(load_config("aliccp"), str(raw), str(tmp_path / "strict"), BEAM_ARGS)

    config = with_overrides(load_config("aliccp"), {"input": {"max_rejected_fraction": 0.6}})
    counts = ingest(config, str(raw), str(tmp_path / "out"), BEAM_ARGS)
    assert counts.rejected == {"duplicate_sample_id": 41}
    written = read_all(tmp_path / "out", config)
    assert sorted(written["sample_id"].numpy().astype(int).tolist()) == list(range(1, 41))
    expected = read_all_from_fixture(config)
    order = np.argsort(written["sample_id"].numpy().astype(int))
    assert written["item_id"].numpy()[order].tolist() == expected
    rejected = [json.loads(line) for p in Path(layout.IngestLayout(str(tmp_path / "out")).rejected_dir).glob("*.jsonl")
                for line in p.read_text().splitlines()]
    sample_5 = [r for r in rejected if r["line"].startswith("5,")]
    assert len(sample_5) == 2 and all(
        f"is also on the line at byte {sum(len(line) + 1 for line in lines[:4]):,} of "
        f"{raw / 'sample_skeleton_train_a.csv'}, which is kept" in r["reason"] for r in sample_5)


def read_all_from_fixture(config) -> list[bytes]:
    """item_id of the fixture's 40 rows, in sample_id order."""
    ids = {}
    for line in (REAL / "sample_skeleton_train.csv").read_text().splitlines():
        entries = line.split(",", 5)[5].split("\x01")
        ids[int(line.split(",", 1)[0])] = next(e.split("\x02")[1].split("\x03")[0].encode()
                                                for e in entries if e.startswith("205\x02"))
    return [ids[k] for k in sorted(ids)]


def test_a_csv_with_a_utf8_byte_order_mark_is_read(ingested, sim_dir, tmp_path):
    config, _, _ = ingested
    data = config.to_dict()
    data["input"]["format"] = "csv"
    csv_config = config_from_dict(data)
    with_bom = tmp_path / "bom.csv"
    with_bom.write_bytes(b"\xef\xbb\xbf" + (sim_dir / CSV_FILE).read_bytes())
    counts = ingest(csv_config, str(with_bom), str(tmp_path / "out"), BEAM_ARGS)
    assert counts.rows_read == ROWS and counts.rejected == {}


def test_a_duplicated_common_feature_index_rejects_both_lines_and_that_users_rows(tmp_path):
    """A user's common line repeated with other values: neither can be trusted, so no row joins either."""
    real = tmp_path / "real"
    real.mkdir()
    skeleton = (REAL / "sample_skeleton_train.csv").read_text()
    (real / "sample_skeleton_train.csv").write_text(skeleton)
    common = (REAL / "common_features_train.csv").read_text().splitlines()
    index = common[0].split(",", 1)[0]
    changed = common[0].replace("\x01101\x02", "\x01101\x0299", 1)
    assert changed != common[0]
    (real / "common_features_train.csv").write_text("\n".join([*common, changed]) + "\n")
    users_rows = sum(1 for line in skeleton.splitlines() if line.split(",")[3] == index)
    config = with_overrides(load_config("aliccp"), {"input": {"max_rejected_fraction": 0.5}})
    counts = ingest(config, str(real), str(tmp_path / "out"), BEAM_ARGS)
    assert counts.data["common_rejected"] == {"duplicate_common_feature_index": 2}
    assert counts.rejected == {"unknown_common_feature_index": users_rows} and users_rows == 8
    assert counts.split(TRAIN)["rows"] + counts.split(EVAL)["rows"] == 40 - users_rows
    rejected = [json.loads(line) for p in Path(layout.IngestLayout(str(tmp_path / "out")).rejected_dir).glob("*.jsonl")
                for line in p.read_text().splitlines()]
    duplicates = [r for r in rejected if r["code"] == "duplicate_common_feature_index"]
    assert len(duplicates) == 2 and all(index in r["reason"] and "2 lines" in r["reason"] for r in duplicates)


def _defective_log(root: Path) -> Path:
    """1,945 simulated rows plus 55 defective lines: 11 each of five reason codes, 2.75 % of 2,000."""
    sim = root / "sim"
    spec = SimulationSpec(rows=1_945, users=300, items=800, categories=40, brands=100, shops=150, seed=5)
    simulate(spec, load_config("simulator"), sim)
    lines = (sim / SKELETON_FILE).read_text().splitlines()
    defects = []
    for i in range(55):
        sample_id = str(1_946 + i)
        _, click, conversion, index, num, features = lines[i].split(",", 5)
        defects.append([
            f"{sample_id},{click},{conversion},{index},{num}",
            f"{sample_id},x,{conversion},{index},{num},{features}",
            f"{sample_id},{click},{conversion},ffffffffffffffff,{num},{features}",
            f"{sample_id},0,1,{index},{num},{features}",
            f"{sample_id},{click},{conversion},{index},{num},{features.replace(chr(3), '', 1)}",
        ][i % 5])
    (sim / SKELETON_FILE).write_text("\n".join(lines + defects) + "\n")
    return sim


def test_rejection_guard_fails_ingest_past_the_limit_and_the_flag_raises_it(tmp_path):
    sim = _defective_log(tmp_path)
    one_process = ["--beam-option=--direct_running_mode=in_memory"]
    # As a user runs it (the config's two worker processes, each loading TensorFlow): the error, and no
    # library noise around it (TensorFlow's GPU probe, absl, Beam workers' warnings).
    failed = run_cli("ingest", "--input", str(sim), "--out", str(tmp_path / "strict"))
    assert failed.returncode == 2, failed.stderr
    assert "Traceback" not in failed.stderr
    assert len(failed.stderr.strip().splitlines()) <= 3, failed.stderr
    assert failed.stderr.strip().splitlines()[-1:] == [
        "esmm ingest: error: rejected 2.75% of 2,000 rows (55), over input.max_rejected_fraction 1.00% "
        "(--max-rejected-fraction to change it); top reasons: bad_click 11, bad_feature_entry 11, "
        f"conversion_without_click 11; rejected rows in {tmp_path / 'strict' / 'rejected'}/"]
    # The outputs stay for inspection.
    counts = json.loads(Path(layout.IngestLayout(str(tmp_path / "strict")).counts).read_text())
    assert counts["rejected"] == {code: 11 for code in ("bad_click", "bad_feature_entry", "conversion_without_click",
                                                        "unknown_common_feature_index", "wrong_column_count")}
    strict_rejected = Path(layout.IngestLayout(str(tmp_path / "strict")).rejected_dir).glob("*.jsonl")
    assert sum(1 for p in strict_rejected for _ in p.open()) == 55

    passed = run_cli("ingest", "--input", str(sim), "--out", str(tmp_path / "lenient"),
                     "--max-rejected-fraction", "0.05", *one_process)
    assert passed.returncode == 0, passed.stderr
    assert "rejected: 55" in passed.stdout

    # Re-running into a directory that holds a run is refused, before any work.
    again = run_cli("ingest", "--input", str(sim), "--out", str(tmp_path / "lenient"),
                    "--max-rejected-fraction", "0.05")
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1:] == [
        f"esmm ingest: error: ingest output directory {str(tmp_path / 'lenient')!r} is not empty "
        "(it holds anomalies.pbtxt, counts.json, eval and 5 more); steps never write over an earlier run: "
        "delete it or choose another directory"]


def test_invalid_utf8_long_and_binary_lines_are_rejected_rows(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("sample_skeleton_train.csv", "common_features_train.csv"):
        (raw / name).write_bytes((REAL / name).read_bytes())
    with open(raw / "sample_skeleton_train.csv", "ab") as f:
        f.write(b"41,0,0,\xff\xfebad,1,205\x02500001\x031.0\n")  # one invalid byte
        f.write(b"42,0,0," + b"9" * (2 << 20) + b"\n")  # 2 MiB, over the default 1 MiB
    binary = np.random.default_rng(3).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    (raw / "sample_skeleton_binary.csv").write_bytes(binary)
    binary_lines = len(binary.rstrip(b"\n").split(b"\n"))
    config = with_overrides(load_config("aliccp"), {"input": {"max_rejected_fraction": 1.0}})

    counts = ingest(config, str(raw), str(tmp_path / "out"), BEAM_ARGS)
    assert counts.rows_read == 42 + binary_lines
    assert counts.split(TRAIN)["rows"] + counts.split(EVAL)["rows"] == 40
    assert counts.rejected["line_too_long"] == 1 and counts.rejected["bad_encoding"] >= 1
    rejected = [json.loads(line) for p in Path(layout.IngestLayout(str(tmp_path / "out")).rejected_dir).glob("*.jsonl")
                for line in p.open()]
    by_id = {r["line"].split(",", 1)[0]: r for r in rejected}
    assert by_id["41"]["code"] == "bad_encoding"
    assert by_id["41"]["reason"] == "line is not UTF-8: byte 7 is 0xff (invalid start byte)"
    assert by_id["41"]["line"].startswith("41,0,0,\\xff\\xfebad,1,")
    assert by_id["42"]["code"] == "line_too_long" and len(by_id["42"]["line"]) == 200
    assert f"is {(2 << 20) + 7:,} bytes, over input.max_line_bytes (1,048,576)" in by_id["42"]["reason"]
    assert not list((tmp_path / "out").glob("**/beam-temp-*"))


@pytest.mark.parametrize("lines, message", [
    ([], "no impression lines in"),
    ([1], "the eval split is empty (1 train and 0 eval rows kept of 1 read)"),
])
def test_empty_input_or_split_stops_at_ingest(tmp_path, lines, message):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "common_features_train.csv").write_bytes((REAL / "common_features_train.csv").read_bytes())
    skeleton = (REAL / "sample_skeleton_train.csv").read_text().splitlines()
    (raw / "sample_skeleton_train.csv").write_text("".join(skeleton[n - 1] + "\n" for n in lines))
    with pytest.raises(RejectionError, match=re.escape(message)):
        ingest(load_config("aliccp"), str(raw), str(tmp_path / "out"), BEAM_ARGS)
    assert Path(layout.IngestLayout(str(tmp_path / "out")).counts).is_file()
