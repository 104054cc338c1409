"""The feature contract for other-language callers: it lists exactly what the serving signature parses,
and what the Python packer sends conforms to it."""
from __future__ import annotations

import json

import pytest
import tensorflow as tf

from esmm_model.config import load_config
from esmm_model.contracts.feature_contract import FILE_NAME, write_feature_contract
from esmm_model.schema import feature_spec
from serving_client.packing import ExamplePacker

LIST_OF_DTYPE = {tf.string: "bytes_list", tf.int64: "int64_list", tf.float32: "float_list"}


@pytest.mark.parametrize("name", ["simulator", "aliccp"])
def test_the_contract_lists_every_key_the_signature_parses_with_its_type(name, tmp_path):
    config = load_config(name)
    write_feature_contract(config, str(tmp_path / FILE_NAME))
    contract = json.loads((tmp_path / FILE_NAME).read_text())  # what a Java or Go client reads
    assert contract["signature"]["input"] == "examples" and contract["model_name"] == config.push.model_name
    keys = {key["key"]: key["list"] for feature in contract["features"] for key in feature["keys"]}
    spec = feature_spec(config, labels=False)
    assert keys == {key: LIST_OF_DTYPE[parsed.dtype] for key, parsed in spec.items()}
    shared = {f["name"] for f in contract["features"] if f["shared_per_request"]}
    assert shared == {f.name for f in config.features if f.side in ("user", "context")}
    assert shared and shared != {f.name for f in config.features}  # both kinds exist in a real config
    rank = contract["rank_signature"]
    assert rank["name"] == "rank" and sorted(rank["inputs"]) == ["context", "examples"]
    shared_keys = {key["key"] for f in contract["features"] if f["shared_per_request"] for key in f["keys"]}
    assert shared_keys == set(feature_spec(config, labels=False, shared=True))  # what rank parses from context


def test_what_the_python_packer_sends_conforms_to_the_contract(tmp_path):
    config = load_config("simulator")
    contract = write_feature_contract(config, str(tmp_path / FILE_NAME))
    lists = {key["key"]: key["list"] for feature in contract["features"] for key in feature["keys"]}
    shared_keys = {key["key"] for feature in contract["features"] if feature["shared_per_request"]
                   for key in feature["keys"]}
    shared = {"user_id": "u-1", "age": "3", "hist_categories": (["c1", "c2"], [2.0, 1.0]), "position": 0, "hour": 9.0}
    candidates = [{"item_id": f"i-{i}", "category": f"c{i}", "price": float(i)} for i in range(3)]
    examples = [tf.train.Example.FromString(raw) for raw in ExamplePacker(config).pack(shared, candidates)]
    for example in examples:
        for key, value in example.features.feature.items():
            assert value.WhichOneof("kind") == lists[key], key
    sent_shared = [{k: v for k, v in e.features.feature.items() if k in shared_keys} for e in examples]
    assert sent_shared[0] and all(s == sent_shared[0] for s in sent_shared)  # the same for every candidate
    assert len({e.features.feature["item_id"].SerializeToString() for e in examples}) == 3
