"""Parses a CSV impression log whose header names its columns by the feature config.

Required columns: ``sample_id``, ``click``, ``conversion``, the ordering column and one
column per feature. Weighted lists are written ``id:weight|id:weight``; an empty cell is
a missing value and gets the feature's default.
"""
from __future__ import annotations

import csv
from typing import Mapping

from components.ingest.rows import (
    NO_COMMON,
    ParsedRow,
    RowError,
    SharedPart,
    feature_value,
    parse_float,
    parse_labels,
    parse_order_key,
)
from esmm_model.config import Config
from esmm_model.errors import InputError


def required_columns(config: Config) -> list[str]:
    columns = ["sample_id", "click", "conversion", config.input.order_by]
    return list(dict.fromkeys(columns + [f.name for f in config.features]))


def check_columns(config: Config, header: list[str], path: str) -> None:
    """InputError naming the file and the columns its header lacks."""
    missing = [c for c in required_columns(config) if c not in header]
    if missing:
        raise InputError(f"CSV file {path!r} lacks column(s) {', '.join(missing)} named by the config")


class CsvReader:
    """Maps a CSV header onto the config's features; one reader per header."""

    def __init__(self, config: Config, header: list[str], path: str):
        check_columns(config, header, path)
        self._config = config
        self._width = len(header)
        index = {name: i for i, name in enumerate(header)}
        self._sample_id, self._click, self._conversion = index["sample_id"], index["click"], index["conversion"]
        self._order = index[config.input.order_by]
        self._features = [(f, index[f.name]) for f in config.features]
        required = set(required_columns(config))
        self._unused = [(name, i) for i, name in enumerate(header) if name not in required]

    def keys(self, line: str) -> tuple[str, float]:
        """(sample_id, ordering key) alone, for the time split point and duplicate ids."""
        cells = next(csv.reader([line]), [])
        if len(cells) != self._width:
            raise RowError("wrong_column_count", f"line has {len(cells)} columns, header has {self._width}")
        return cells[self._sample_id], parse_order_key(cells[self._order], self._config.input.order_by)

    def parse(self, line: str, common: Mapping[str, SharedPart] = NO_COMMON) -> ParsedRow:
        """Parses one CSV line (quoting as the csv module reads it); raises RowError.

        ``common`` is there for the readers' one signature: a CSV row carries all its features.
        """
        cells = next(csv.reader([line]), [])
        if len(cells) != self._width:
            raise RowError("wrong_column_count", f"line has {len(cells)} columns, header has {self._width}")
        click, conversion = parse_labels(cells[self._click], cells[self._conversion], self._config)
        order_key = parse_order_key(cells[self._order], self._config.input.order_by)
        values, present = {}, set()
        for feature, column in self._features:
            try:
                pairs = _pairs(feature.kind, cells[column])
                values[feature.name] = feature_value(feature, pairs)
            except RowError as exc:
                raise RowError(exc.code, f"column {feature.name}: {exc}") from None
            if pairs:
                present.add(feature.name)
        return ParsedRow(sample_id=cells[self._sample_id], order_key=order_key, click=click,
                         conversion=conversion, values=values, present=frozenset(present),
                         unused=frozenset(name for name, i in self._unused if cells[i].strip()))


def _pairs(kind: str, cell: str) -> list[tuple[str, float]]:
    cell = cell.strip()
    if not cell:
        return []
    if kind == "dense":
        return [("", parse_float(cell, "dense value"))]
    if kind == "id":
        return [(cell, 1.0)]
    pairs = []
    for item in cell.split("|"):
        fid, sep, weight = item.rpartition(":")
        if not sep or not fid:
            raise RowError("bad_weighted_list", f"{item!r} is not id:weight")
        pairs.append((fid, parse_float(weight, f"weight of {fid!r}")))
    return pairs
