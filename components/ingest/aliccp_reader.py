"""Parses Ali-CCP raw lines.

``sample_skeleton_*.csv``: ``sample_id,click,conversion,common_feature_index,feature_num,feature_list``.
``common_features_*.csv``: ``common_feature_index,feature_num,feature_list``.
A feature_list is entries separated by \\x01, each ``field_id \\x02 feature_id \\x03 value``.
A field may repeat: every (id, value) pair is kept, the value being the id's weight
(public preprocessors that keep only the last value per field lose the behaviour lists).
User fields come from the common line joined on common_feature_index, item, context and
cross fields from the skeleton line; the config's ``source`` names the field.
"""
from __future__ import annotations

from typing import Mapping

from components.ingest.example_batch import encode_shared
from components.ingest.rows import (
    NO_COMMON,
    FeatureValue,
    ParsedRow,
    RowError,
    SharedPart,
    feature_value,
    parse_float,
    parse_labels,
    parse_order_key,
)
from esmm_model.config import Config

FIELD_SEP, KEY_SEP, VALUE_SEP = "\x01", "\x02", "\x03"
SKELETON_COLUMNS = 6
COMMON_COLUMNS = 3

FeatureValues = dict[str, FeatureValue]


def parse_feature_list(text: str, feature_num: str) -> dict[str, list[tuple[str, float]]]:
    """field id -> [(feature id, value)], checking the declared feature count."""
    entries = text.split(FIELD_SEP) if text else []
    try:
        declared = int(feature_num)
    except ValueError:
        raise RowError("bad_feature_num", f"feature_num {feature_num!r} is not an integer") from None
    if declared != len(entries):
        raise RowError("feature_num_mismatch",
                       f"feature_num says {declared} but feature_list has {len(entries)} entries")
    fields: dict[str, list[tuple[str, float]]] = {}
    for entry in entries:
        field, sep1, rest = entry.partition(KEY_SEP)
        fid, sep2, value = rest.partition(VALUE_SEP)
        if not (sep1 and sep2 and field and fid):
            raise RowError("bad_feature_entry", f"feature entry {entry!r} is not field\\x02id\\x03value")
        fields.setdefault(field, []).append((fid, parse_float(value, f"field {field} value")))
    return fields


class AliccpReader:
    """Maps Ali-CCP fields onto the config's features."""

    def __init__(self, config: Config):
        self._config = config
        self._features = [(f, f.source or f.name) for f in config.features]
        self._sources = frozenset(source for _, source in self._features)

    def _extract(self, fields: dict[str, list[tuple[str, float]]]) -> FeatureValues:
        values = {}
        for feature, source in self._features:
            if source in fields:
                try:
                    values[feature.name] = feature_value(feature, fields[source])
                except RowError as exc:
                    raise RowError(exc.code, f"field {source}: {exc}") from None
        return values

    def parse_common_values(self, line: str) -> tuple[str, FeatureValues, frozenset[str]]:
        """One common_features line -> (common_feature_index, its feature values, the fields no feature reads)."""
        parts = line.rstrip("\r\n").split(",", COMMON_COLUMNS - 1)
        if len(parts) != COMMON_COLUMNS:
            raise RowError("wrong_column_count",
                           f"common_features line has {len(parts)} columns, expected {COMMON_COLUMNS}")
        index, feature_num, feature_list = parts
        if not index:
            raise RowError("missing_common_feature_index", "common_feature_index is empty")
        fields = parse_feature_list(feature_list, feature_num)
        return index, self._extract(fields), frozenset(fields) - self._sources

    def parse_common(self, line: str) -> tuple[str, SharedPart]:
        """One common_features line -> (common_feature_index, its features serialized once)."""
        index, values, unused = self.parse_common_values(line)
        return index, encode_shared(self._config, [values], [unused])[0]

    def keys(self, line: str) -> tuple[str, float]:
        """(sample_id, ordering key) alone, for the time split point and duplicate ids; the key is the sample_id."""
        sample_id = line.split(",", 1)[0]
        return sample_id, parse_order_key(sample_id, "sample_id")

    def parse(self, line: str, common: Mapping[str, SharedPart] = NO_COMMON) -> ParsedRow:
        """One sample_skeleton line, joined with its user's common features (serialized once)."""
        parts = line.rstrip("\r\n").split(",", SKELETON_COLUMNS - 1)
        if len(parts) != SKELETON_COLUMNS:
            raise RowError("wrong_column_count",
                           f"sample_skeleton line has {len(parts)} columns, expected {SKELETON_COLUMNS}")
        sample_id, click_text, conversion_text, index, feature_num, feature_list = parts
        click, conversion = parse_labels(click_text, conversion_text, self._config)
        order_key = parse_order_key(sample_id, "sample_id")
        user = common.get(index)
        if user is None:
            raise RowError("unknown_common_feature_index", f"common_feature_index {index!r} is not in common_features")
        fields = parse_feature_list(feature_list, feature_num)
        values = self._extract(fields)
        both = values.keys() & user.names
        if both:
            raise RowError("field_in_both_files",
                           f"feature {sorted(both)[0]} appears in both the skeleton and the common line")
        present = frozenset(values) | user.names
        for feature, _ in self._features:
            if feature.name not in present:
                values[feature.name] = feature_value(feature, [])
        return ParsedRow(sample_id=sample_id, order_key=order_key, click=click, conversion=conversion,
                         values=values, shared=user, present=present,
                         unused=(frozenset(fields) - self._sources) | user.unused)
