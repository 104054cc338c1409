"""The transform step on a tiny hand-made dataset: exact ids, z-scores, buckets, one id space per group; and
the Ali-CCP config's transformed rows against a golden file written by an earlier implementation."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
from apache_beam.transforms import util as beam_util

from components.artifacts.record_counts import RowCountError
from components.transform.executor import transform
from esmm_model.config import config_from_dict, load_config
from esmm_model.errors import InputError
from raw_examples import random_rows, write_ingest_dir

CONFIG = config_from_dict({
    "name": "tiny",
    "features": [
        {"name": "user_id", "kind": "id", "side": "user", "preprocessing": {"hash_buckets": 100}},
        {"name": "hist_items", "kind": "weighted_ids", "side": "user", "shared_embedding": "item",
         "preprocessing": {"vocab": {"oov_buckets": 2}}},
        {"name": "item_id", "kind": "id", "side": "item", "shared_embedding": "item",
         "preprocessing": {"vocab": {"oov_buckets": 2}}},
        {"name": "price", "kind": "dense", "side": "item", "preprocessing": "zscore"},
        {"name": "position", "kind": "id", "side": "context", "dtype": "int64", "preprocessing": {"vocab": {}}},
        {"name": "hour", "kind": "dense", "side": "context", "preprocessing": {"buckets": [6, 12, 18]}},
    ],
})
# Item ids over item_id and hist_items together: a 4 times, b 3, c 2, d 1 (d only in a history).
TRAIN = [
    {"user_id": "u1", "item_id": "a", "hist_items": [("a", 1.0), ("d", 2.0)], "price": 1.0, "position": 1, "hour": 3.0},
    {"user_id": "u2", "item_id": "a", "hist_items": [("b", 3.0)], "price": 2.0, "position": 1, "hour": 8.0, "click": 1},
    {"user_id": "u3", "item_id": "b", "hist_items": [("a", 1.5), ("b", 2.0)], "price": 3.0, "position": 1,
     "hour": 13.0},
    {"user_id": "u1", "item_id": "c", "hist_items": [("c", 1.0)], "price": 4.0, "position": 2, "hour": 20.0,
     "click": 1, "conversion": 1},
]
EVAL = [
    {"user_id": "u9", "item_id": "b", "hist_items": [("d", 0.5), ("zzz", 2.0), ("a", 1.0)], "price": 5.0,
     "position": 2, "hour": 13.0, "click": 1, "conversion": 1},
    {"user_id": "u1", "item_id": "zzz", "hist_items": [], "price": 7.5, "position": 9, "hour": 3.0},
]


def _read(pattern: str, spec: dict) -> dict[str, np.ndarray | tf.SparseTensor]:
    files = tf.io.gfile.glob(pattern)
    batch = next(iter(tf.data.TFRecordDataset(files, compression_type="GZIP").batch(100)))
    parsed = tf.io.parse_example(batch, spec)
    order = np.argsort(parsed["price"].numpy())  # rows back in input order (price rises with it)
    return {name: tf.gather(tf.sparse.to_dense(v, default_value=-7), order).numpy() if isinstance(v, tf.SparseTensor)
            else v.numpy()[order] for name, v in parsed.items()}


@pytest.fixture(scope="module")
def transformed(tmp_path_factory) -> tuple:
    root = tmp_path_factory.mktemp("transform")
    ingest = write_ingest_dir(CONFIG, root / "ingest", TRAIN, EVAL)
    outputs = transform(CONFIG, ingest, root / "out", ["--runner=DirectRunner"])
    tft_output = tft.TFTransformOutput(outputs.graph)
    spec = tft_output.transformed_feature_spec()
    return tft_output, _read(outputs.split_pattern("train"), spec), _read(outputs.split_pattern("eval"), spec)


@pytest.mark.slow
def test_shared_group_has_one_vocabulary_over_all_members(transformed):
    tft_output, train, _ = transformed
    assert tft_output.vocabulary_by_name("item") == [b"a", b"b", b"c", b"d"]
    assert sorted(p.name for p in Path(tft_output.transform_savedmodel_dir, "assets").iterdir()) == [
        "item", "position"]
    np.testing.assert_array_equal(train["item_id"], [0, 0, 1, 2])
    np.testing.assert_array_equal(train["hist_items"], [[0, 3], [1, -7], [0, 1], [2, -7]])


@pytest.mark.slow
def test_eval_ids_weights_and_oov_share_the_id_space(transformed):
    _, _, evaluation = transformed
    assert evaluation["item_id"][0] == 1
    oov = evaluation["item_id"][1]
    assert 4 <= oov < 6
    np.testing.assert_array_equal(evaluation["hist_items"], [[3, oov, 0], [-7, -7, -7]])
    np.testing.assert_allclose(evaluation["hist_items_weight"], [[0.5, 2.0, 1.0], [-7, -7, -7]])
    np.testing.assert_array_equal(evaluation["position"], [1, 2])  # "2" known, 9 -> the one OOV bucket


@pytest.mark.slow
def test_zscore_uses_train_statistics_and_buckets_and_hashes_are_exact(transformed):
    _, train, evaluation = transformed
    mean, std = 2.5, np.sqrt(1.25)
    np.testing.assert_allclose(train["price"], (np.array([1, 2, 3, 4]) - mean) / std, rtol=1e-5)
    np.testing.assert_allclose(evaluation["price"], [(5 - mean) / std, (7.5 - mean) / std], rtol=1e-5)
    np.testing.assert_array_equal(train["hour"], [0, 1, 2, 3])
    expected_hash = tf.strings.to_hash_bucket_fast(["u1", "u2", "u3", "u1"], 100).numpy()
    np.testing.assert_array_equal(train["user_id"], expected_hash)


@pytest.mark.slow
def test_labels_pass_through(transformed):
    _, train, evaluation = transformed
    np.testing.assert_array_equal(train["click"], [0, 1, 0, 1])
    np.testing.assert_array_equal(train["ctcvr"], [0, 0, 0, 1])
    np.testing.assert_array_equal(evaluation["conversion"], [1, 0])


def test_missing_split_is_named(tmp_path):
    write_ingest_dir(CONFIG, tmp_path / "ingest", TRAIN, EVAL)
    for f in (tmp_path / "ingest" / "eval").iterdir():
        f.unlink()
    with pytest.raises(InputError, match="eval"):
        transform(CONFIG, tmp_path / "ingest", tmp_path / "out", ["--runner=DirectRunner"])


@pytest.mark.slow
def test_rows_missing_against_ingestions_counts_fail_the_step_naming_split_and_counts(tmp_path):
    ingest = write_ingest_dir(CONFIG, tmp_path / "ingest", TRAIN, EVAL)
    counts = json.loads((ingest / "counts.json").read_text())
    counts["train"]["rows"] = len(TRAIN) + 3  # ingestion claims three rows the files do not hold
    (ingest / "counts.json").write_text(json.dumps(counts))
    with pytest.raises(RowCountError) as err:
        transform(CONFIG, ingest, tmp_path / "out", ["--runner=DirectRunner"])
    assert str(err.value) == (f"transform wrote {len(TRAIN)} rows for the train split, but ingestion counted "
                              f"{len(TRAIN) + 3} (lost: 3); outputs in {tmp_path / 'out' / 'transformed'} "
                              "are incomplete")



def _transformed_records(ingest: Path, out: Path, seconds_per_row: float, monkeypatch) -> list[bytes]:
    """The transformed train records (features in a fixed order) on a machine where Beam's
    BatchElements times every batch at 10 ms plus ``seconds_per_row`` a row: it sizes the batches it
    tunes from those timings, so a loaded machine splits the same rows elsewhere."""
    @contextlib.contextmanager
    def record_time(estimator, batch_size: int):
        yield
        estimator._data.append((batch_size, 0.01 + seconds_per_row * batch_size))

    monkeypatch.setattr(beam_util._BatchSizeEstimator, "record_time", record_time)
    outputs = transform(CONFIG, ingest, out, ["--runner=DirectRunner"])
    records = tf.data.TFRecordDataset(tf.io.gfile.glob(outputs.split_pattern("train")), compression_type="GZIP")
    return [tf.train.Example.FromString(r).SerializeToString(deterministic=True) for r in records.as_numpy_iterator()]


@pytest.mark.slow
def test_the_output_does_not_depend_on_the_machines_speed(tmp_path, monkeypatch):
    # Prices far from zero: a batch's float32 mean then depends on which rows share the batch.
    rows = [{**row, "price": 1e6 + 0.37 * i} for i, row in enumerate(random_rows(CONFIG, 160, seed=1))]
    ingest = write_ingest_dir(CONFIG, tmp_path / "ingest", rows, rows[:8])
    fast = _transformed_records(ingest, tmp_path / "fast", 1e-5, monkeypatch)
    loaded = _transformed_records(ingest, tmp_path / "loaded", 1.0, monkeypatch)
    assert len(fast) == len(rows)
    assert fast == loaded


# Written by the transform of main at a0e98c1 (tf.Transform fed through TFXIO, unweighted vocabularies,
# distinct ids counted by beam.Distinct, Beam's TFRecord sink); later implementations must write the same.
GOLDEN = Path(__file__).resolve().parent / "fixtures" / "transform_golden" / "aliccp_random.json"


def golden_config():
    """The shipped Ali-CCP config with one shared auto table (brand, hist_brands) and two tables hashed
    (item_id, cross_shop: max_vocab 1), so exact vocabularies, hashing and a shared id space all occur."""
    data = load_config("aliccp").to_dict()
    for plain in data["features"]:
        auto = plain["preprocessing"].get("auto") if isinstance(plain["preprocessing"], dict) else None
        if auto and auto.get("oov_buckets", 1) > 1:  # the shipped config's thresholds when the file was written
            auto["min_frequency"] = 2
        if plain["name"] in ("item_id", "cross_shop"):
            plain["preprocessing"] = {"auto": {"max_vocab": 1, "hash_rows_per_id": 1.5}}
        if plain["name"] in ("brand", "hist_brands"):
            plain["shared_embedding"] = "brands"
            plain["preprocessing"] = {"auto": {"min_frequency": 2, "oov_buckets": 3}}
    return config_from_dict(data)


def golden_input(root: Path) -> Path:
    """120 train and 40 eval rows over 30 ids per feature, so some ids are rare, some unseen in training."""
    config = golden_config()
    return write_ingest_dir(config, root, random_rows(config, 120, seed=11, vocabulary=30),
                            random_rows(config, 40, seed=12, vocabulary=30))


def transformed_rows(transform_root: Path) -> dict:
    """A transform output as plain JSON: vocabulary files, table sizes in the schema, and each split's
    rows (each feature's values, in ``features`` order), sorted, since the files' row order is no contract."""
    graph = transform_root / "transform_graph"
    tft_output = tft.TFTransformOutput(str(graph))
    assets = Path(tft_output.transform_savedmodel_dir, "assets")
    schema = tft_output.transformed_metadata.schema
    names = sorted(f.name for f in schema.feature)  # every transformed feature is int64 or float
    splits = {}
    for split in ("train", "eval"):
        files = sorted(str(f) for f in (transform_root / "transformed" / split).iterdir())
        rows = []
        for record in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator():
            features = tf.train.Example.FromString(record).features.feature
            rows.append([list(features[name].int64_list.value or features[name].float_list.value)
                         for name in names])
        splits[split] = sorted(rows, key=json.dumps)
    return {"vocabularies": {f.name: f.read_text().splitlines() for f in sorted(assets.iterdir())},
            "table_rows": {f.name: f.int_domain.max + 1 for f in schema.feature if f.HasField("int_domain")},
            "features": names, **splits}


@pytest.mark.slow
def test_transformed_rows_equal_the_golden_files(tmp_path):
    ingest = golden_input(tmp_path / "ingest")
    transform(golden_config(), ingest, tmp_path / "out", ["--runner=DirectRunner"])
    got, expected = transformed_rows(tmp_path / "out"), json.loads(GOLDEN.read_text())
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == expected[key], key
