"""Tables sized from the data (``preprocessing: auto``) on the real-format Ali-CCP fixtures.

The expected sizes are counted here with numpy from the ingested train split, as tf.Transform
reads it: exact vocabularies (ids seen ``min_frequency`` times or more, plus ``oov_buckets``), or,
past ``max_vocab``, ceil(``hash_rows_per_id`` × distinct ids) hash rows.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from components.ingest.executor import ingest
from components.transform.executor import transform
from esmm_model.config import Config, config_from_dict, load_config
from esmm_model.contracts import layout
from esmm_model.preprocessing import table_sizes
from esmm_model.schema import feature_spec

pytestmark = pytest.mark.slow

REAL = Path(__file__).resolve().parent / "fixtures" / "aliccp"
BEAM_ARGS = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]


def _parsed(pattern: str, spec: dict) -> dict:
    files = sorted(tf.io.gfile.glob(pattern))
    records = list(tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator())
    return tf.io.parse_example(records, spec)


def _ids(parsed: dict, name: str) -> np.ndarray:
    value = parsed[name]
    return (value.values if isinstance(value, tf.SparseTensor) else value).numpy()


def expected_sizes(config: Config, raw_train: dict) -> dict[str, int]:
    """Each auto table's rows, counted from the raw train split (every feature its own table)."""
    sizes = {}
    for feature in config.features:
        auto = feature.preprocessing.auto
        if auto is None:
            continue
        counts = Counter(_ids(raw_train, feature.name).tolist())
        vocabulary = sum(1 for n in counts.values() if n >= auto.min_frequency)
        if vocabulary <= auto.max_vocab:
            # tf.Transform writes one placeholder entry into a vocabulary no id qualifies for
            sizes[feature.table_name] = max(vocabulary, 1) + auto.oov_buckets
        else:
            sizes[feature.table_name] = math.ceil(auto.hash_rows_per_id * len(counts))
    return sizes


def _run(config: Config, root: Path):
    ingested = layout.IngestLayout(str(root / "ingest"))
    ingest(config, str(REAL), ingested.root, BEAM_ARGS)
    outputs = transform(config, ingested.root, str(root / "transform"), BEAM_ARGS)
    tft_output = tft.TFTransformOutput(outputs.graph)
    raw_train = _parsed(ingested.split_pattern(layout.TRAIN), feature_spec(config))
    transformed = {split: _parsed(outputs.split_pattern(split), tft_output.transformed_feature_spec())
                   for split in (layout.TRAIN, layout.EVAL)}
    return table_sizes(config, tft_output), raw_train, transformed


def _assert_ids_index_their_tables(config: Config, sizes: dict[str, int], transformed: dict) -> None:
    for split, parsed in transformed.items():
        for feature in config.features:
            if feature.preprocessing.auto is not None:
                ids = _ids(parsed, feature.name)
                assert ids.min() >= 0 and ids.max() < sizes[feature.table_name], (split, feature.name)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    config = load_config("aliccp")
    return (config, *_run(config, tmp_path_factory.mktemp("aliccp")))


def test_shipped_aliccp_sizes_every_table_from_the_train_splits_ids(shipped):
    config, sizes, raw_train, transformed = shipped
    assert all(f.preprocessing.method == "auto" and f.table_name == f.name for f in config.features)
    assert sizes == expected_sizes(config, raw_train)
    # What the 20 training impressions of the fixture imply: every id seen in training (min_frequency 1),
    # plus each table's OOV rows (10 for the large fields, 2 for the small ones, 1 by default).
    assert sizes == {
        "user_id": 13, "user_categorical": 5, "user_group": 4, "gender": 3, "age": 4, "consumption_level_1": 4,
        "consumption_level_2": 4, "occupation": 3, "geo": 5, "hist_categories": 9, "hist_shops": 16,
        "hist_brands": 16, "hist_intentions": 10, "item_id": 27, "category": 15, "shop": 21, "intentions": 31,
        "brand": 24, "cross_category": 30, "cross_shop": 34, "cross_brand": 30, "cross_intention": 25,
        "scenario": 4}
    _assert_ids_index_their_tables(config, sizes, transformed)


def test_an_auto_vocabulary_lists_ids_by_frequency_and_the_transform_looks_them_up_in_it(shipped):
    config, sizes, raw_train, transformed = shipped
    hist = config.feature("hist_categories")
    counts = Counter(_ids(raw_train, hist.name).tolist())
    kept = sorted((token for token, n in counts.items() if n >= hist.preprocessing.auto.min_frequency and token),
                  key=lambda token: (counts[token], token), reverse=True)  # tft.vocabulary's order
    assert sizes[hist.name] == len(kept) + hist.preprocessing.auto.oov_buckets
    position = {token: i for i, token in enumerate(kept)}
    raw, ids = _ids(raw_train, hist.name), _ids(transformed[layout.TRAIN], hist.name)
    for token, index in zip(raw.tolist(), ids.tolist()):  # same values in the same order: the list's ids
        if token in position:
            assert index == position[token]
        else:
            assert len(kept) <= index < sizes[hist.name]  # an OOV row


def test_a_table_past_max_vocab_is_hashed_into_as_many_rows_as_distinct_ids(tmp_path):
    data = load_config("aliccp").to_dict()
    for plain in data["features"]:
        if plain["name"] in ("item_id", "cross_shop"):  # an id and a weighted list
            plain["preprocessing"] = {"auto": {"max_vocab": 1, "hash_rows_per_id": 1.5}}
    config = config_from_dict(data)
    sizes, raw_train, transformed = _run(config, tmp_path)
    for name in ("item_id", "cross_shop"):
        assert sizes[name] == math.ceil(1.5 * len(set(_ids(raw_train, name).tolist())))
    assert sizes == expected_sizes(config, raw_train)
    _assert_ids_index_their_tables(config, sizes, transformed)
