"""The columnar fast path gives what the row reader gives, line for line, on real-format and defective lines."""
from pathlib import Path

import numpy as np
import pytest
from tensorflow.core.example import example_pb2

from components.devtools.simulator import COMMON_FILE, SKELETON_FILE, SimulationSpec, simulate
from components.ingest.aliccp_reader import AliccpReader
from components.ingest.columnar import ColumnarAliccp, parse_rows
from components.ingest.rows import RowError
from esmm_model.config import load_config, with_overrides

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "tests" / "fixtures" / "aliccp"
DEFECTS = ROOT / "tests" / "fixtures" / "aliccp_defects"


def common_of(config, path: Path) -> dict:
    reader, common = AliccpReader(config), {}
    for line in path.read_text().splitlines():
        try:
            index, part = reader.parse_common(line)
        except RowError:
            continue
        common[index] = part
    return common


def assert_same(config, lines: list[bytes], common: dict):
    fast = ColumnarAliccp(config).parse(lines, common)
    rows = parse_rows(AliccpReader(config), config, lines, list(range(len(lines))), common)
    assert fast.rows.tolist() == rows.rows.tolist()
    assert fast.sample_ids == rows.sample_ids
    assert np.array_equal(fast.order_keys, rows.order_keys)
    assert np.array_equal(fast.clicks, rows.clicks) and np.array_equal(fast.conversions, rows.conversions)
    assert np.array_equal(fast.present, rows.present)
    assert fast.unused.keys() == rows.unused.keys()
    assert all(np.array_equal(fast.unused[k], rows.unused[k]) for k in fast.unused)
    assert sorted((r.code, r.line, r.reason) for r in fast.rejected) == sorted(
        (r.code, r.line, r.reason) for r in rows.rejected)
    # The C++ encoder orders a tf.Example's map entries by a per-process hash, so compare messages, not bytes.
    assert ([example_pb2.Example.FromString(e) for e in fast.examples]
            == [example_pb2.Example.FromString(e) for e in rows.examples])
    return fast


def test_real_format_lines_all_take_the_fast_path_and_match():
    config = load_config("aliccp")
    lines = (REAL / "sample_skeleton_train.csv").read_bytes().splitlines()
    fast = assert_same(config, lines, common_of(config, REAL / "common_features_train.csv"))
    assert len(fast.rows) == 40 and not fast.rejected


@pytest.mark.parametrize("unclicked", ["reject", "keep"])
def test_defective_and_unusual_lines_match_the_row_reader(unclicked):
    config = with_overrides(load_config("aliccp"), {"input": {"conversion_without_click": unclicked}})
    common = common_of(config, DEFECTS / "common_features_defects.csv")
    lines = (DEFECTS / "sample_skeleton_defects.csv").read_bytes().splitlines()
    good = lines[0].decode()
    sample_id, click, conversion, index, num, features = good.split(",", 5)

    def value(text: str) -> str:
        return features.replace("\x031\x01", f"\x03{text}\x01", 1)
    lines += [f"99,{click}, 1 ,{index},{num},{features}".encode(),  # padded label: the row reader accepts it
              f"100,{click},{conversion},{index},{num},{features}\r".encode(),
              f"101,{click},{conversion},{index},{num},{value('1e999')}".encode(),
              f"102,{click},{conversion},{index},{num},{value('nan')}".encode(),
              f"107,{click},{conversion},{index},{num},{value(' 2.5')}".encode(),
              f"1_03,{click},{conversion},{index},{num},{features}".encode(),
              f"104,{click},{conversion},{index},0,".encode(),
              b"105,1,0,\xff\xfe,1,205\x02500001\x031.0",
              f"106,{click},{conversion},{index},{int(num) + 1},{features}\x01999\x027\x032.5".encode()]
    fast = assert_same(config, lines, common)
    assert [r.line.split(",", 1)[0] for r in fast.rejected if r.code == "bad_value"] == ["101", "102"]
    assert {r.code for r in fast.rejected} >= {"bad_encoding", "multiple_values", "bad_feature_entry"}
    # What float() reads, the row reader keeps: a padded label or value, an underscore in a number.
    assert {"99", "107", "1_03", "104", "106"} <= set(fast.sample_ids)
    assert fast.unused["999"].tolist() == [sample_id == "106" for sample_id in fast.sample_ids]


def test_int64_ids_dense_values_and_unused_fields_match(tmp_path):
    """The simulator's log: an int64 id (position) and dense values; read by the Ali-CCP config, unused fields."""
    config = load_config("simulator")
    simulate(SimulationSpec(rows=300, users=40, items=80, categories=8, brands=10, shops=15, seed=2), config, tmp_path)
    lines = (tmp_path / SKELETON_FILE).read_bytes().splitlines()
    lines[7] = lines[7].replace(b"\x01301\x02", b"\x01301\x02x", 1)  # a position id that is not int64
    fast = assert_same(config, lines, common_of(config, tmp_path / COMMON_FILE))
    assert len(fast.rows) == 299 and [r.code for r in fast.rejected] == ["bad_id"]
    aliccp = load_config("aliccp")
    fast = assert_same(aliccp, lines, common_of(aliccp, tmp_path / COMMON_FILE))
    assert sorted(fast.unused) == ["205_14", "220", "221", "302"] and fast.unused["221"].all()
    # The simulator writes every real Ali-CCP field (user 121/122/127/128, intentions 150_14 and 210, the crosses).
    assert fast.present.any(axis=0).all()
