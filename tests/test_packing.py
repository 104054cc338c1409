"""Packing: the direct wire encoder and the shared-part trick parse exactly like message-class Examples."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.example import example_pb2

from esmm_model.config import load_config
from esmm_model.schema import feature_spec
from serving_client import wire
from serving_client.errors import PackingError
from serving_client.packing import ExamplePacker, ItemCache
from stub_models import reference_example, reference_pack

CONFIG = load_config("simulator")

SHARED = {
    "user_id": "u-17", "gender": b"2", "age": "3", "consumption_level": "1", "geo": "北京",
    "hist_categories": (["c1", "c2", "c3"], [1.0, 2.5, 0.25]),
    "hist_shops": ([], []),
    "hist_brands": (["b" * 130], [3.0]),
    "hist_items": None,
    "position": -5,
    "hour": 13.0,
}
CANDIDATES = [
    {"item_id": "i-1", "category": "c1", "shop": "s" * 99, "brand": "b" * 100, "price_bucket": "4", "price": 19.99},
    {"item_id": "i-2", "category": "c2", "shop": "", "brand": "b2", "price": 7, "position": 2**62},
    {"item_id": b"i-3", "hour": -1.5, "hist_items": (np.array([b"i-9"]), np.array([0.5], np.float32))},
]


def parse(examples: list[bytes]) -> dict[str, np.ndarray]:
    parsed = tf.io.parse_example(examples, feature_spec(CONFIG, labels=False, defaults=True))
    return {k: (tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v).numpy() for k, v in parsed.items()}


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 2**35, 2**64 - 1])
def test_varint_matches_protobuf(n: int) -> None:
    message = example_pb2.Example()
    message.features.feature["k"].int64_list.value.append(n - 2**64 if n >= 2**63 else n)
    assert wire.example([wire.map_entry(b"k", wire.int64_feature([n - 2**64 if n >= 2**63 else n]))]) \
        == message.SerializeToString()


def test_single_value_entries_match_protobuf() -> None:
    for value in [b"", b"x", b"y" * 99, b"z" * 100, b"w" * 5000]:
        message = example_pb2.Example()
        message.features.feature["id"].bytes_list.value.append(value)
        assert wire.example([wire.BytesEntry("id")(value)]) == message.SerializeToString()
    message = example_pb2.Example()
    message.features.feature["price"].float_list.value.append(1.25)
    assert wire.example([wire.FloatEntry("price")(1.25)]) == message.SerializeToString()
    with pytest.raises(OverflowError):
        wire.Int64Entry("n")(2**63)


def test_packed_examples_parse_like_the_straightforward_construction() -> None:
    packed = ExamplePacker(CONFIG).pack(SHARED, CANDIDATES)
    reference = reference_pack(CONFIG, SHARED, CANDIDATES)
    assert len(packed) == len(CANDIDATES)
    for mine, theirs, candidate in zip(packed, reference, CANDIDATES):
        assert mine != theirs  # different bytes (a second Example appended) ...
        assert example_pb2.Example.FromString(mine) == example_pb2.Example.FromString(theirs)  # ... same message
        assert example_pb2.Example.FromString(mine) == reference_example(CONFIG, {**SHARED, **candidate})
    ours, expected = parse(packed), parse(reference)
    assert ours.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(ours[key], expected[key], err_msg=key)
    # a candidate's own value wins over the shared one, and a missing one takes the default
    np.testing.assert_array_equal(ours["position"], [-5, 2**62, -5])
    np.testing.assert_array_equal(ours["price"], np.float32([19.99, 7.0, 0.0]))
    np.testing.assert_array_equal(ours["shop"], [b"s" * 99, b"", b""])
    assert ours["geo"][0].decode() == "北京"


def test_rows_pack_like_dicts() -> None:
    packer = ExamplePacker(CONFIG)
    assert packer.columns("item") == ("item_id", "category", "shop", "brand", "price_bucket", "price")
    assert packer.columns("context") == ("position", "hour")
    user = "u-17|2|3|1|北京|c1:1,c2:2.5,c3:0.25||" + "b" * 130 + ":3|"
    items = ["i-1|c1|" + "s" * 99 + "|" + "b" * 100 + "|4|19.99", "i-2|c2||b2||7"]
    from_rows = packer.pack_rows(user, b"-5|13", items)
    candidates = [CANDIDATES[0], {"item_id": "i-2", "category": "c2", "brand": "b2", "price": 7}]
    assert [example_pb2.Example.FromString(e) for e in from_rows] == \
        [reference_example(CONFIG, {**SHARED, **c}) for c in candidates]


def test_item_cache_reuses_parts_by_key_and_evicts_least_recent() -> None:
    cache = ItemCache(max_items=2)
    packer = ExamplePacker(CONFIG, item_cache=cache)
    first = packer.pack_rows("u||||||||", "1|2", ["a|||||1", "b|||||2"], item_keys=[("a", 1), ("b", 1)])
    assert len(cache) == 2
    # the key, not the row, decides: a stale row under a cached key is not re-encoded
    again = packer.pack_rows("u||||||||", "1|2", ["a|||||999"], item_keys=[("a", 1)])
    assert again[0] == first[0]
    packer.pack_rows("u||||||||", "1|2", ["c|||||3"], item_keys=[("c", 1)])
    assert cache.get(("b", 1)) is None and cache.get(("a", 1)) is not None
    with pytest.raises(PackingError, match="2 keys for 1 candidates"):
        packer.pack_rows("u||||||||", "1|2", ["c|||||3"], item_keys=[("c", 1), ("d", 1)])


@pytest.mark.parametrize("candidate, message", [
    ({"item_id": 5}, r"candidate 1: feature 'item_id': expected str or bytes, got int 5"),
    ({"price": "cheap"}, r"candidate 1: feature 'price': expected a number, got str 'cheap'"),
    ({"price": True}, r"candidate 1: feature 'price': expected a number, got bool"),
    ({"price": 1e39}, r"candidate 1: feature 'price': 1e\+39 is outside the float32 range"),
    ({"price": float("nan")}, r"candidate 1: feature 'price': nan is not a finite number"),
    ({"price": float("-inf")}, r"candidate 1: feature 'price': -inf is not a finite number"),
    ({"hist_items": (["a"], [float("inf")])}, r"candidate 1: feature 'hist_items': inf is not a finite number"),
    ({"position": 1.0}, r"candidate 1: feature 'position': expected an integer, got float"),
    ({"colour": "red"}, r"candidate 1: unknown feature 'colour'"),
    ({"hist_items_weight": [1.0]}, r"candidate 1: unknown feature 'hist_items_weight'.*\(ids, weights\)"),
    ({"hist_items": (["a", "b"], [1.0])}, r"candidate 1: feature 'hist_items': 2 ids but 1 weights"),
    ({"hist_items": "a"}, r"candidate 1: feature 'hist_items': expected \(ids, weights\)"),
])
def test_bad_candidates_name_the_candidate_and_field(candidate: dict, message: str) -> None:
    with pytest.raises(PackingError, match=message):
        ExamplePacker(CONFIG).pack(SHARED, [CANDIDATES[0], candidate])


@pytest.mark.parametrize("items, message", [
    (["i|c|s|b|p"], r"candidate 0: expected 6 fields \(item_id\|category\|shop\|brand\|price_bucket\|price\), got 5"),
    (["i|c|s|b|p|x1"], r"candidate 0: field 'price': expected a number, got 'x1'"),
    (["i|c|s|b|p|nan"], r"candidate 0: field 'price': nan is not a finite number"),
])
def test_bad_rows_name_the_row_and_field(items: list[str], message: str) -> None:
    with pytest.raises(PackingError, match=message):
        ExamplePacker(CONFIG).pack_rows("u||||||||", "1|2", items)
    with pytest.raises(PackingError, match=r"context row: field 'position': expected an integer, got '1.5'"):
        ExamplePacker(CONFIG).pack_rows("u||||||||", "1.5|2", [])
    for hist, error in [("c1", "expected id:weight pairs separated by ',', got 'c1'"),
                        ("c1:1,c2", "expected id:weight pairs"), ("c1:1:2", "expected id:weight pairs"),
                        ("c1:1,c2:x", "weights must be numbers, got '1,x'"),
                        ("c1:1e39", "a weight in '1e39' is outside the float32 range"),
                        ("c1:nan", "a weight in 'nan' is not a finite number")]:
        with pytest.raises(PackingError, match=f"user row: field 'hist_categories': {error}"):
            ExamplePacker(CONFIG).pack_rows(f"u|||||{hist}|||", "1|2", [])
