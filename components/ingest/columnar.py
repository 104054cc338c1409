"""Parses, joins and encodes a batch of impression lines column by column: ingestion's fast path.

A batch of Ali-CCP skeleton lines is split into Arrow columns by Arrow's compute kernels (the
columns, then the feature_list entries, then each entry's field, id and value), the entries are
routed to their feature by one stable sort, and each feature becomes one Arrow list column.
The user's common features are joined as bytes: each common line was serialized once
(``SharedPart``) and prefixes the row's own example, so a row costs only its own fields. The
row's own columns are encoded by tfx_bsl's C++ ``RecordBatchToExamples``.

Every check the row reader (``AliccpReader.parse``) makes is made here on whole columns; a row
that any check flags (and every line of a CSV log) goes through the row reader instead, which
rejects it with its reason code or, where it accepts what the columns did not (``" 1"`` as a
click), parses it. So the fast path changes speed, never results: both paths write the same
bytes for the same row (tests/test_columnar.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tfx_bsl.coders import example_coder

from components.ingest.aliccp_reader import FIELD_SEP, SKELETON_COLUMNS, AliccpReader
from components.ingest.example_batch import encode_rows
from components.ingest.rows import ParsedRow, Rejected, RowError, SharedPart, decode_line
from esmm_model.config import LABEL_CLICK, LABEL_CONVERSION, LABEL_CTCVR, Config
from esmm_model.schema import SAMPLE_ID, default_value

_ENTRY = "^(?P<field>[^\x02\x03]+)\x02(?P<fid>[^\x02\x03]+)\x03(?P<value>[^\x02\x03]+)$"
_DECIMAL = r"^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]{1,2})?$"  # numbers float() and Arrow's cast read alike
_DIGITS = r"^[0-9]{1,15}$"  # an integer a float64 holds exactly
_INTEGER = r"^-?[0-9]{1,18}$"  # an integer an int64 holds
_ZERO_ONE = pa.array(["0", "1"])


@dataclass
class EncodedBatch:
    """Parsed lines of one batch: the kept rows in line order with their encoded examples, and the rejected lines.

    ``rows[i]``: the index in the batch of kept row i's line; ``present[i, j]``: row i carried
    feature j (config order); ``unused[field][i]``: row i carried an input field no feature reads.
    """

    rows: np.ndarray
    sample_ids: list[str]
    order_keys: np.ndarray
    clicks: np.ndarray
    conversions: np.ndarray
    examples: list[bytes]
    present: np.ndarray
    unused: dict[str, np.ndarray]
    rejected: list[Rejected]

    def take(self, keep: np.ndarray) -> EncodedBatch:
        """The kept rows where ``keep`` is True (the rejected lines unchanged)."""
        idx = np.flatnonzero(keep)
        unused = {field: column[idx] for field, column in self.unused.items()}
        return EncodedBatch(self.rows[idx], [self.sample_ids[i] for i in idx], self.order_keys[idx],
                            self.clicks[idx], self.conversions[idx], [self.examples[i] for i in idx],
                            self.present[idx], {f: c for f, c in unused.items() if c.any()}, self.rejected)


def encode_parsed(config: Config, rows: list[ParsedRow], line_index: list[int],
                  rejected: list[Rejected]) -> EncodedBatch:
    """Rows from a row reader -> an EncodedBatch."""
    names = [f.name for f in config.features]
    fields = sorted({field for row in rows for field in row.unused})
    return EncodedBatch(
        rows=np.asarray(line_index, dtype=np.int64), sample_ids=[row.sample_id for row in rows],
        order_keys=np.array([row.order_key for row in rows], dtype=np.float64),
        clicks=np.array([row.click for row in rows], dtype=np.int64),
        conversions=np.array([row.conversion for row in rows], dtype=np.int64),
        examples=encode_rows(config, rows),
        present=np.array([[name in row.present for name in names] for row in rows], dtype=bool).reshape(
            len(rows), len(names)),
        unused={field: np.array([field in row.unused for row in rows], dtype=bool) for field in fields},
        rejected=rejected)


def parse_rows(reader, config: Config, lines: list[bytes], line_index: list[int],
               common: Mapping[str, SharedPart]) -> EncodedBatch:
    """Lines through the row reader (``reader.parse``); ``line_index`` gives each line's index in its batch."""
    rows, kept, rejected = [], [], []
    for raw, i in zip(lines, line_index):
        try:
            rows.append(reader.parse(decode_line(raw), common))
            kept.append(i)
        except RowError as exc:
            rejected.append(Rejected.of("impressions", raw, exc))
    return encode_parsed(config, rows, kept, rejected)


def merge(a: EncodedBatch, b: EncodedBatch) -> EncodedBatch:
    """Two EncodedBatches of disjoint lines of one batch -> one, in line order."""
    order = np.argsort(np.concatenate([a.rows, b.rows]), kind="stable")
    n_a, n_b = len(a.rows), len(b.rows)

    def cat(x: list, y: list) -> list:
        both = x + y
        return [both[i] for i in order]

    unused = {field: np.concatenate([a.unused.get(field, np.zeros(n_a, bool)),
                                     b.unused.get(field, np.zeros(n_b, bool))])[order]
              for field in sorted(a.unused.keys() | b.unused.keys())}
    return EncodedBatch(
        rows=np.concatenate([a.rows, b.rows])[order], sample_ids=cat(a.sample_ids, b.sample_ids),
        order_keys=np.concatenate([a.order_keys, b.order_keys])[order],
        clicks=np.concatenate([a.clicks, b.clicks])[order],
        conversions=np.concatenate([a.conversions, b.conversions])[order],
        examples=cat(a.examples, b.examples), present=np.concatenate([a.present, b.present])[order],
        unused=unused, rejected=a.rejected + b.rejected)


def _strings(lines: list[bytes]) -> pa.StringArray | None:
    """The lines as one Arrow string array (one copy, no per-line objects); None when one is not UTF-8."""
    lengths = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))
    offsets = np.zeros(len(lines) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    array = pa.LargeStringArray.from_buffers(len(lines), pa.py_buffer(offsets), pa.py_buffer(b"".join(lines)))
    try:
        array.validate(full=True)
    except pa.ArrowInvalid:
        return None
    return array


def _is_utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class CommonTable:
    """The common features of a join, laid out once per side input: key -> position, and per position
    its serialized part and its group (the set of features it carries and of unused fields)."""

    def __init__(self, common: Mapping[str, SharedPart], features: list):
        self.source = common
        self.position = {key: i for i, key in enumerate(common)}
        parts = list(common.values())
        self.serialized = [part.serialized for part in parts]
        groups: dict[tuple[frozenset[str], frozenset[str]], int] = {}
        self.group = np.array([groups.setdefault((part.names, part.unused), len(groups)) for part in parts],
                              dtype=np.int64)
        self.group_names = [names for names, _ in groups]
        self.shared = np.array([[f.name in names for f in features] for names in self.group_names],
                               dtype=bool).reshape(len(groups), len(features))
        self.unused_fields = sorted({field for _, unused in groups for field in unused})
        self.unused = np.array([[field in unused for field in self.unused_fields] for _, unused in groups],
                               dtype=bool).reshape(len(groups), len(self.unused_fields))


def _list_column(offsets: np.ndarray, values: pa.Array) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


class ColumnarAliccp:
    """Ali-CCP skeleton lines -> EncodedBatch, column by column; flagged rows go through ``AliccpReader``."""

    def __init__(self, config: Config):
        self._config = config
        self._reader = AliccpReader(config)
        self._features = list(config.features)
        self._feature_of_source = {(f.source or f.name): j for j, f in enumerate(self._features)}
        self._reject_unclicked = config.input.conversion_without_click == "reject"
        self._common: CommonTable | None = None

    def parse(self, lines: list[bytes], common: Mapping[str, SharedPart]) -> EncodedBatch:
        """A batch of skeleton lines joined with ``common`` -> EncodedBatch."""
        fast, batch = self._parse_columns(lines, common)
        slow = np.flatnonzero(~fast)
        if not len(slow):
            return batch
        flagged = parse_rows(self._reader, self._config, [lines[i] for i in slow], slow.tolist(), common)
        return merge(batch, flagged)

    def _parse_columns(self, lines: list[bytes], common: Mapping[str, SharedPart]) -> tuple[np.ndarray, EncodedBatch]:
        """(the lines the columns handled, their EncodedBatch); the other lines are left to the row reader."""
        n = len(lines)
        fast = np.zeros(n, dtype=bool)
        text = _strings(lines)
        if text is None:  # a line that is not UTF-8: those lines go to the row reader, which names the byte
            utf8 = np.array([_is_utf8(line) for line in lines])
            if not utf8.any():
                return fast, self._empty()
            fast_idx = np.flatnonzero(utf8)
            inner_fast, batch = self._parse_columns([lines[i] for i in fast_idx], common)
            batch.rows = fast_idx[batch.rows]
            fast[fast_idx[inner_fast]] = True
            return fast, batch
        columns = pc.split_pattern(text, ",", max_splits=SKELETON_COLUMNS - 1)
        whole = np.flatnonzero(pc.equal(pc.list_value_length(columns), SKELETON_COLUMNS).to_numpy(zero_copy_only=False))
        columns = columns.take(pa.array(whole))
        sample_id, click, conversion, index, feature_num, feature_list = (
            pc.list_element(columns, i) for i in range(SKELETON_COLUMNS))
        ok = (pc.match_substring_regex(sample_id, _DIGITS).to_numpy(zero_copy_only=False)
              & pc.is_in(click, value_set=_ZERO_ONE).to_numpy(zero_copy_only=False)
              & pc.is_in(conversion, value_set=_ZERO_ONE).to_numpy(zero_copy_only=False)
              & pc.match_substring_regex(feature_num, _DIGITS).to_numpy(zero_copy_only=False)
              & pc.greater(pc.utf8_length(feature_list), 0).to_numpy(zero_copy_only=False))
        table = self._table(common)
        position = np.fromiter((table.position.get(key, -1) for key in index.to_pylist()), dtype=np.int64,
                               count=len(whole))
        ok &= position >= 0
        clicks = np.where(ok, pc.equal(click, "1").to_numpy(zero_copy_only=False), 0).astype(np.int64)
        conversions = np.where(ok, pc.equal(conversion, "1").to_numpy(zero_copy_only=False), 0).astype(np.int64)
        if self._reject_unclicked:
            ok &= ~((conversions == 1) & (clicks == 0))

        entries = pc.split_pattern(feature_list, FIELD_SEP)
        declared = pc.cast(pc.if_else(pa.array(ok), feature_num, "0"), pa.int64()).to_numpy()
        ok &= pc.list_value_length(entries).to_numpy() == declared
        parent = pc.list_parent_indices(entries).to_numpy()
        parts = pc.extract_regex(pc.list_flatten(entries), _ENTRY)
        entry_ok = parts.is_valid().to_numpy(zero_copy_only=False)
        field, fid, value = (parts.field(name) for name in ("field", "fid", "value"))
        entry_ok &= pc.fill_null(pc.match_substring_regex(value, _DECIMAL), False).to_numpy(zero_copy_only=False)
        field_codes = pc.dictionary_encode(pc.fill_null(field, ""))
        feature_of_code = np.array([self._feature_of_source.get(name, -1)
                                    for name in field_codes.dictionary.to_pylist()] + [-1], dtype=np.int64)
        feature = feature_of_code[field_codes.indices.to_numpy(zero_copy_only=False)]
        int_ids = np.array([f.dtype == "int64" and f.kind != "dense" for f in self._features] + [False])[feature]
        entry_ok &= ~int_ids | pc.fill_null(pc.match_substring_regex(fid, _INTEGER), False).to_numpy(
            zero_copy_only=False)
        ok &= np.bincount(parent[~entry_ok], minlength=len(whole)) == 0

        # Per row and feature: how many entries; single-valued features take at most one.
        n_features = len(self._features)
        used = feature >= 0
        counts = np.zeros((len(whole), n_features), dtype=np.int64)
        np.add.at(counts, (parent[used], feature[used]), 1)
        single = np.array([f.kind != "weighted_ids" for f in self._features])
        ok &= ~(counts[:, single] > 1).any(axis=1)
        # A feature in both the skeleton and the user's common line is an error.
        group = np.where(position >= 0, table.group[position], 0)
        if len(table.group_names):
            ok &= ~((counts > 0) & table.shared[group]).any(axis=1)

        # Keep the rows that passed; renumber their entries.
        rows = np.flatnonzero(ok)
        fast[whole[rows]] = True
        new_row = np.full(len(whole), -1, dtype=np.int64)
        new_row[rows] = np.arange(len(rows))
        keep_entry = ok[parent]
        parent, feature = new_row[parent[keep_entry]], feature[keep_entry]
        keep_entry = pa.array(keep_entry)
        fid, value = fid.filter(keep_entry), value.filter(keep_entry)
        fields = pc.fill_null(field, "").filter(keep_entry)
        position, group = position[rows], group[rows]
        m = len(rows)

        present = (counts[rows] > 0) | table.shared[group] if m else counts[rows] > 0
        unused: dict[str, np.ndarray] = {}
        unused_entries = np.flatnonzero(feature < 0)
        if len(unused_entries):
            unused_fields = np.array(fields.take(pa.array(unused_entries)).to_pylist(), dtype=object)
            for name in sorted(set(unused_fields)):
                column = np.zeros(m, dtype=bool)
                column[parent[unused_entries[unused_fields == name]]] = True
                unused[name] = column
        for k, name in enumerate(table.unused_fields):
            column = table.unused[group, k] if m else np.zeros(0, dtype=bool)
            if column.any():
                unused[name] = unused[name] | column if name in unused else column

        values = pc.cast(value, pa.float64()).to_numpy(zero_copy_only=False)
        own = self._columns(m, parent, feature, fid, values)
        sample_ids = sample_id.take(pa.array(rows))
        clicks, conversions = clicks[rows], conversions[rows]
        examples = self._encode(own, table, position, group, clicks, conversions, sample_ids)
        batch = EncodedBatch(rows=whole[rows], sample_ids=sample_ids.to_pylist(),
                             order_keys=pc.cast(sample_ids, pa.float64()).to_numpy(zero_copy_only=False),
                             clicks=clicks, conversions=conversions, examples=examples, present=present,
                             unused=unused, rejected=[])
        return fast, batch

    def _columns(self, m: int, parent: np.ndarray, feature: np.ndarray, fid: pa.Array,
                 values: np.ndarray) -> dict[str, pa.Array]:
        """Every feature's tf.Example column(s) over m rows, a missing single value as its default."""
        order = np.argsort(feature * (m + 1) + parent, kind="stable")
        sorted_feature = feature[order]
        columns: dict[str, pa.Array] = {}
        for j, f in enumerate(self._features):
            lo, hi = np.searchsorted(sorted_feature, [j, j + 1])
            picked = order[lo:hi]
            rows = parent[picked]
            ids = fid.take(pa.array(picked))
            if f.kind == "weighted_ids":
                offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=m))])
                columns[f.name] = _list_column(offsets, pc.cast(ids, pa.int64()) if f.dtype == "int64"
                                               else ids.cast(pa.binary()))
                columns[f.weight_name] = _list_column(offsets, pa.array(values[picked].astype(np.float32)))
                continue
            offsets = np.arange(m + 1)
            if f.kind == "dense":
                column = np.full(m, default_value(f), dtype=np.float32)
                column[rows] = values[picked]
                columns[f.name] = _list_column(offsets, pa.array(column))
            elif f.dtype == "int64":
                column = np.full(m, default_value(f), dtype=np.int64)
                column[rows] = pc.cast(ids, pa.int64()).to_numpy(zero_copy_only=False)
                columns[f.name] = _list_column(offsets, pa.array(column))
            else:
                where = np.full(m, len(picked), dtype=np.int64)  # the default, appended after the ids
                where[rows] = np.arange(len(picked))
                ids = pa.concat_arrays([ids.cast(pa.binary()), pa.array([default_value(f)], pa.binary())])
                columns[f.name] = _list_column(offsets, ids.take(pa.array(where)))
        return columns

    def _encode(self, own: dict[str, pa.Array], table: CommonTable, position: np.ndarray, group: np.ndarray,
                clicks: np.ndarray, conversions: np.ndarray, sample_ids: pa.Array) -> list[bytes]:
        """Each row's shared part + its own columns, encoded by C++ once per set of shared feature names."""
        m = len(position)
        offsets = np.arange(m + 1)
        labels = {LABEL_CLICK: _list_column(offsets, pa.array(clicks)),
                  LABEL_CONVERSION: _list_column(offsets, pa.array(conversions)),
                  LABEL_CTCVR: _list_column(offsets, pa.array(clicks & conversions)),
                  SAMPLE_ID: _list_column(offsets, sample_ids.cast(pa.binary()))}
        columns = {**own, **labels}
        # Rows whose users carry the same features share one encoding call (usually the whole batch).
        by_names: dict[frozenset[str], list[int]] = {}
        for g in np.unique(group):
            by_names.setdefault(table.group_names[g], []).append(g)
        encoded: list[bytes] = [b""] * m
        for names, groups in by_names.items():
            members = np.flatnonzero(np.isin(group, groups))
            skip = {name for f in self._features if f.name in names for name in (f.name, f.weight_name)}
            take = None if len(members) == m else pa.array(members)
            batch = pa.RecordBatch.from_pydict({name: column if take is None else column.take(take)
                                                for name, column in columns.items() if name not in skip})
            own_examples = example_coder.RecordBatchToExamples(batch)
            if take is None:
                encoded = own_examples
            else:
                for i, example in zip(members, own_examples):
                    encoded[i] = example
        serialized = table.serialized
        return [serialized[p] + example for p, example in zip(position.tolist(), encoded)]

    def _table(self, common: Mapping[str, SharedPart]) -> CommonTable:
        """The CommonTable of this side input, built on its first batch."""
        if self._common is None or self._common.source is not common:
            self._common = CommonTable(common, self._features)
        return self._common

    def _empty(self) -> EncodedBatch:
        return EncodedBatch(np.zeros(0, np.int64), [], np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64),
                            [], np.zeros((0, len(self._features)), bool), {}, [])
