"""JSON inputs that must hold one object fail with an InputError naming the file or line."""
import pytest

from esmm_model.config import load_config
from esmm_model.errors import InputError
from esmm_model.json_object import parse_json_object
from serving_client.candidate_files import read_candidates, read_shared


def test_an_object_parses_and_anything_else_names_where_it_came_from():
    assert parse_json_object('{"user_id": "u1", "age": [3]}', "x") == {"user_id": "u1", "age": [3]}
    with pytest.raises(InputError, match=r"^metrics file 'm.json' is not valid JSON: Expecting property name"):
        parse_json_object("{'auc': 0.7}", "metrics file 'm.json'")
    with pytest.raises(InputError, match=r"^c.jsonl:2 must hold a JSON object, not a list$"):
        parse_json_object("[1, 2]", "c.jsonl:2")


def test_candidate_and_shared_files_name_the_bad_line_and_file(tmp_path):
    config = load_config("simulator")
    candidates = tmp_path / "c.jsonl"
    candidates.write_text('{"item_id": "i1"}\n\n"i2"\n')
    with pytest.raises(InputError, match=rf"^{candidates}:3 must hold a JSON object, not a str$"):
        read_candidates(candidates, config)
    shared = tmp_path / "shared.json"
    shared.write_text('{"user_id": "u1"')
    with pytest.raises(InputError, match=rf"^shared features file '{shared}' is not valid JSON"):
        read_shared(shared)
    shared.write_text('{"user_id": "u1"}')
    assert read_shared(shared) == {"user_id": "u1"}
