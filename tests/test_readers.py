"""Ali-CCP raw and CSV parsing, from hand-written lines with the real separators."""
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from components.ingest.aliccp_reader import AliccpReader
from components.ingest.csv_reader import CsvReader
from components.ingest.example_batch import encode_rows
from components.ingest.rows import RowError
from esmm_model.config import config_from_dict, load_config
from esmm_model.errors import InputError
from esmm_model.schema import feature_spec

ROOT = Path(__file__).resolve().parents[1]
# Real-format rows (see fixtures/README.md): every one must parse with the shipped config.
REAL = ROOT / "tests" / "fixtures" / "aliccp"
DEFECTS = ROOT / "tests" / "fixtures" / "aliccp_defects"
# sample_skeleton_defects.csv, line by line:
#  1: clicked and converted, user a..01, field 508 twice (multi-valued)
#  2, 3: user a..02, not clicked / clicked
#  4: conversion=1 with click=0      5: unknown common_feature_index
#  6: five columns                   7: click is 'x'
#  8: an entry without \x03          9: user a..03, whose common line is bad (feature_num 3, 2 entries)
# 10: two values for the single-valued item_id
EXPECTED_REJECTS = {4: "conversion_without_click", 5: "unknown_common_feature_index", 6: "wrong_column_count",
                    7: "bad_click", 8: "bad_feature_entry", 9: "unknown_common_feature_index", 10: "multiple_values"}


@pytest.fixture(scope="module")
def aliccp():
    return load_config("aliccp")


def parse_fixture(config, directory=DEFECTS, name="defects"):
    reader = AliccpReader(config)
    common, common_errors = {}, []
    for line in (directory / f"common_features_{name}.csv").read_text().splitlines():
        try:
            index, shared = reader.parse_common(line)
            common[index] = shared
        except RowError as exc:
            common_errors.append(exc.code)
    results = {}
    for number, line in enumerate((directory / f"sample_skeleton_{name}.csv").read_text().splitlines(), start=1):
        try:
            results[number] = reader.parse(line, common)
        except RowError as exc:
            results[number] = exc
    return common_errors, results


def parse(config, rows):
    return tf.io.parse_example(encode_rows(config, rows), feature_spec(config))


def test_aliccp_fixture_rows_parse_or_reject_with_reason(aliccp):
    common_errors, results = parse_fixture(aliccp)
    assert common_errors == ["feature_num_mismatch"]
    rejected = {n: r.code for n, r in results.items() if isinstance(r, RowError)}
    assert rejected == EXPECTED_REJECTS
    assert "common_feature_index 'ffffffffffffffff'" in str(results[5])
    assert "feature item_id takes one value but got 2" in str(results[10])

    rows = [results[n] for n in (1, 2, 3)]
    parsed = parse(aliccp, rows)
    assert parsed["click"].numpy().tolist() == [1, 0, 1]
    assert parsed["conversion"].numpy().tolist() == [1, 0, 0]
    assert parsed["ctcvr"].numpy().tolist() == [1, 0, 0]
    assert parsed["sample_id"].numpy().tolist() == [b"1", b"2", b"3"]
    assert parsed["user_id"].numpy().tolist() == [b"1001", b"1002", b"1002"]
    assert parsed["item_id"].numpy().tolist() == [b"70001", b"70002", b"70002"]
    # Multi-valued fields are kept whole, with their values as weights.
    hist = tf.sparse.to_dense(parsed["hist_categories"], default_value=b"").numpy()
    weights = tf.sparse.to_dense(parsed["hist_categories_weight"]).numpy()
    assert hist[0].tolist() == [b"4001", b"4002", b"4003"]
    assert weights[0].tolist() == [2.0, 5.0, 1.0]
    assert parsed["hist_categories"].indices.numpy()[:, 0].tolist() == [0, 0, 0]  # user a..02 has none
    cross = tf.sparse.to_dense(parsed["cross_category"], default_value=b"").numpy()
    assert cross[0].tolist() == [b"880001", b"880002"]
    assert tf.sparse.to_dense(parsed["cross_category_weight"]).numpy()[0].tolist() == [1.0, 2.0]
    # A field absent from both lines gets the default.
    assert parsed["occupation"].numpy().tolist() == [b"", b"", b""]
    assert parsed["scenario"].numpy().tolist() == [b"1", b"2", b"2"]


def test_real_format_rows_all_parse_with_the_shipped_config(aliccp):
    common_errors, results = parse_fixture(aliccp, REAL, "train")
    assert common_errors == []
    assert {n: r for n, r in results.items() if isinstance(r, RowError)} == {}
    rows = [results[n] for n in sorted(results)]
    assert len(rows) == 40 and len({row.shared for row in rows}) == 5  # eight impressions per page view
    parsed = parse(aliccp, rows)
    # Field 210 repeats (1-3 intention nodes per sample), kept whole beside the user's 150_14 list.
    per_row = np.bincount(parsed["intentions"].indices.numpy()[:, 0], minlength=len(rows))
    assert per_row.min() == 1 and per_row.max() == 3 and (per_row > 1).sum() > 10
    assert parsed["intentions"].values.numpy()[:2].tolist() == [b"400003", b"400018"]
    assert parsed["intentions_weight"].values.numpy()[:2].tolist() == [1.0, 1.0]
    # Cross fields keep their weights (ln counts), aligned with their ids.
    assert parsed["cross_category"].values.numpy()[:2].tolist() == [b"9017955", b"9006894"]
    assert parsed["cross_category_weight"].values.numpy()[:2].tolist() == pytest.approx([1.09861, 0.69315])
    assert parsed["cross_intention"].indices.shape == parsed["cross_intention_weight"].indices.shape
    assert parsed["click"].numpy().sum() == 18 and parsed["conversion"].numpy().sum() == 5


def test_conversion_without_click_can_be_kept(aliccp):
    data = aliccp.to_dict()
    data["input"]["conversion_without_click"] = "keep"
    _, results = parse_fixture(config_from_dict(data))
    assert not isinstance(results[4], RowError)
    assert parse(aliccp, [results[4]])["ctcvr"].numpy().tolist() == [0]


def sim_csv_config():
    data = load_config("simulator").to_dict()
    data["input"]["format"] = "csv"
    return config_from_dict(data)


HEADER = ("sample_id,click,conversion,user_id,gender,age,consumption_level,geo,hist_categories,hist_shops,"
          "hist_brands,hist_items,item_id,category,shop,brand,price_bucket,price,position,hour").split(",")


def test_csv_rows_parse_and_reject():
    config = sim_csv_config()
    reader = CsvReader(config, HEADER, "log.csv")
    good = '7,1,0,u9,1,3,2,12,"3:2|22:1",,5:1.5,100:3,100,3,8,5,2,19.5,4,13'
    row = reader.parse(good)
    assert reader.keys(good) == ("7", 7.0)
    parsed = parse(config, [row])
    assert parsed["user_id"].numpy().tolist() == [b"u9"]
    assert parsed["position"].numpy().tolist() == [4]
    assert parsed["price"].numpy().tolist() == [19.5]
    assert parsed["hist_categories"].values.numpy().tolist() == [b"3", b"22"]
    assert parsed["hist_categories_weight"].values.numpy().tolist() == [2.0, 1.0]
    assert parsed["hist_shops"].values.numpy().size == 0
    cases = {
        "7,1,0,u9": "wrong_column_count",
        good.replace("7,1,0", "7,2,0", 1): "bad_click",
        good.replace("7,1,0", "late,1,0", 1): "bad_order_key",
        good.replace("100:3", "100-3"): "bad_weighted_list",
        good.replace(",19.5,", ",cheap,"): "bad_value",
        good.replace(",19.5,4,", ",19.5,four,"): "bad_id",
    }
    for line, code in cases.items():
        with pytest.raises(RowError) as err:
            reader.parse(line)
        assert err.value.code == code, line


def test_csv_header_must_name_every_feature():
    with pytest.raises(InputError, match="lacks column\\(s\\) hour"):
        CsvReader(sim_csv_config(), HEADER[:-1], "log.csv")


# The common-features line of user a1b2c3d4e5f60001 (common_features_defects.csv, line 1), as its text reads.
USER_01_SHARED = {"user_id": b"1001", "user_categorical": b"7", "gender": b"1", "age": b"3",
                  "hist_categories": ([b"4001", b"4002", b"4003"], [2.0, 5.0, 1.0]),
                  "hist_intentions": ([b"9001"], [1.0]), "hist_brands": ([b"6001"], [3.0])}


def test_shared_part_concatenation_parses_like_a_whole_example(aliccp):
    _, results = parse_fixture(aliccp)
    row = results[1]
    assert sorted(row.shared.names) == sorted(USER_01_SHARED)
    whole = parse(aliccp, [type(row)(**{**row.__dict__, "shared": None, "values": {**row.values, **USER_01_SHARED}})])
    joined = parse(aliccp, [row])
    for name, tensor in whole.items():
        a, b = (t.values if isinstance(t, tf.SparseTensor) else t for t in (tensor, joined[name]))
        assert np.array_equal(a.numpy(), b.numpy()), name

