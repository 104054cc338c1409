"""counts.json from flat (key, n) pairs: nesting, summing, and the keys every run has."""
from components.ingest.graph import nest_counts


def test_pairs_nest_by_key_path_and_sum():
    pairs = [(("rows_read",), 7), (("train", "rows"), 4), (("eval", "rows"), 2), (("train", "clicks"), 1),
             (("rejected", "bad_click"), 1), (("common_rows_read",), 3), (("common_rejected", "wrong_column_count"), 2),
             (("rejected", "bad_click"), 1)]
    assert nest_counts(pairs) == {
        "rows_read": 7, "rejected": {"bad_click": 2}, "common_rows_read": 3,
        "common_rejected": {"wrong_column_count": 2},
        "train": {"rows": 4, "clicks": 1, "conversions": 0}, "eval": {"rows": 2, "clicks": 0, "conversions": 0}}


def test_no_pairs_still_name_both_splits_and_the_rejections():
    assert nest_counts([]) == {"rows_read": 0, "rejected": {}, "train": {"rows": 0, "clicks": 0, "conversions": 0},
                               "eval": {"rows": 0, "clicks": 0, "conversions": 0}}
