"""Packs one ranking request (one user, many candidate items) into serialized tf.Examples.

Feature types come from the feature config (see ``esmm_model.schema``): an ``id`` is one
bytes or int64 value, ``weighted_ids`` are ``(ids, weights)`` written as ``<name>`` and
``<name>_weight``, and ``dense`` is one float. A missing value (``None`` or an empty text
field) is left out, so the serving signature parses it as the feature's default.

The user and context features are the same for every candidate of a request. They are
encoded once, as one serialized Example, and each candidate's own Example is appended to
it: the concatenation parses as the merged Example (``wire`` explains why), so the cost
per candidate is only its own fields. Encoding writes the wire format directly, and an
optional ``ItemCache`` reuses each item's encoded part across requests.
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np

from esmm_model.config import Config, Feature, Side
from serving_client import wire
from serving_client.errors import PackingError

SIDES: tuple[Side, ...] = ("user", "context", "item")
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_Encoder = Callable[[Any], bytes]


class ItemCache:
    """A thread-safe LRU of encoded item parts, keyed by the caller's ``(item_id, version)``.

    The key must change whenever the item's features change (a feature-store version or
    update timestamp does), since a hit returns the bytes encoded for the first row seen.
    """

    def __init__(self, max_items: int = 100_000) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be positive, got {max_items}")
        self.max_items = max_items
        self._parts: OrderedDict[Hashable, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._parts)

    def get(self, key: Hashable) -> bytes | None:
        with self._lock:
            part = self._parts.get(key)
            if part is not None:
                self._parts.move_to_end(key)
            return part

    def put(self, key: Hashable, part: bytes) -> None:
        with self._lock:
            self._parts[key] = part
            self._parts.move_to_end(key)
            if len(self._parts) > self.max_items:
                self._parts.popitem(last=False)


class ExamplePacker:
    """Builds the ``examples`` input of a PredictRequest from feature dicts or pipe-delimited rows.

    Rows follow the seed's key-value layout: one string per side, the side's features in
    config order (``columns(side)``) joined by ``field_sep``; a weighted list is written
    ``id:weight,id:weight`` (``weight_sep``, ``list_sep``).
    """

    def __init__(self, config: Config, *, field_sep: str = "|", list_sep: str = ",", weight_sep: str = ":",
                 item_cache: ItemCache | None = None) -> None:
        separators = (field_sep, list_sep, weight_sep)
        if len(set(separators)) != 3 or not all(len(s) == 1 for s in separators):
            raise ValueError("field_sep, list_sep and weight_sep must be three different single characters")
        self.config = config
        self.field_sep = field_sep.encode()
        self.item_cache = item_cache
        self._value_encoders: dict[str, _Encoder] = {}
        self._text_encoders: dict[str, _Encoder] = {}
        for feature in config.features:
            self._value_encoders[feature.name], self._text_encoders[feature.name] = _encoders(
                feature, list_sep.encode(), weight_sep.encode())
        self._columns = {side: tuple(f.name for f in config.features_on(side)) for side in SIDES}
        self._row_encoders = {side: [self._text_encoders[n] for n in self._columns[side]] for side in SIDES}

    def columns(self, side: Side) -> tuple[str, ...]:
        """The feature names of one side, in the order its pipe-delimited row holds them."""
        return self._columns[side]

    def encode(self, values: Mapping[str, Any], *, where: str = "features") -> bytes:
        """One serialized Example from ``{feature name: value}``; ``where`` names it in errors."""
        entries = []
        for name, value in values.items():
            encoder = self._value_encoders.get(name)
            if encoder is None:
                raise PackingError(f"{where}: unknown feature {name!r}; the config {self.config.name!r} has "
                                   f"{', '.join(self._value_encoders)} "
                                   f"(weighted ids go under their own name as (ids, weights))")
            if value is not None:
                try:
                    entries.append(encoder(value))
                except (TypeError, ValueError, OverflowError) as exc:
                    raise PackingError(f"{where}: feature {name!r}: {exc}") from None
        return wire.example(entries)

    def pack(self, shared: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]], *,
             item_keys: Sequence[Hashable] | None = None) -> list[bytes]:
        """Serialized Examples, one per candidate: the shared features (encoded once) plus its own.

        A candidate value overrides a shared value of the same feature. With ``item_keys``
        and an ``item_cache``, each candidate's part is encoded once per key.
        """
        head, parts = self.pack_parts(shared, candidates, item_keys=item_keys)
        return [head + part for part in parts]

    def pack_parts(self, shared: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]], *,
                   item_keys: Sequence[Hashable] | None = None) -> tuple[bytes, list[bytes]]:
        """The request's shared features as one serialized Example, and each candidate's own: the ranking
        signature's inputs (``PredictionClient.predict(parts, context=head)``). ``pack`` joins them. The
        ranking signature reads user and context features from the head only and item features from the
        parts only, so there a candidate cannot override a shared value."""
        head = self.encode(shared, where="shared features")
        return head, self._parts(candidates, item_keys, lambda c, where: self.encode(c, where=where))

    def encode_row(self, side: Side, row: str | bytes, *, where: str | None = None) -> bytes:
        """One serialized Example from a pipe-delimited row of ``side``."""
        return wire.example([self._row_entries(side, row, where or f"{side} row")])

    def pack_rows(self, user: str | bytes, context: str | bytes, items: Sequence[str | bytes], *,
                  item_keys: Sequence[Hashable] | None = None) -> list[bytes]:
        """Like ``pack``, from the seed's pipe-delimited user, context and item rows."""
        head, parts = self.pack_rows_parts(user, context, items, item_keys=item_keys)
        return [head + part for part in parts]

    def pack_rows_parts(self, user: str | bytes, context: str | bytes, items: Sequence[str | bytes], *,
                        item_keys: Sequence[Hashable] | None = None) -> tuple[bytes, list[bytes]]:
        """Like ``pack_parts``, from the seed's pipe-delimited user, context and item rows."""
        head = wire.example([self._row_entries("user", user, "user row"),
                             self._row_entries("context", context, "context row")])
        return head, self._parts(items, item_keys, lambda row, where: self.encode_row("item", row, where=where))

    def _parts(self, items: Sequence[Any], item_keys: Sequence[Hashable] | None,
               encode: Callable[[Any, str], bytes]) -> list[bytes]:
        cache = self.item_cache
        if item_keys is None or cache is None:
            return [encode(item, f"candidate {i}") for i, item in enumerate(items)]
        if len(item_keys) != len(items):
            raise PackingError(f"item_keys has {len(item_keys)} keys for {len(items)} candidates")
        packed = []
        for i, (item, key) in enumerate(zip(items, item_keys)):
            part = cache.get(key)
            if part is None:
                part = encode(item, f"candidate {i} ({key!r})")
                cache.put(key, part)
            packed.append(part)
        return packed

    def _row_entries(self, side: Side, row: str | bytes, where: str) -> bytes:
        if isinstance(row, str):
            row = row.encode()
        fields = row.split(self.field_sep)
        encoders = self._row_encoders[side]
        if len(fields) != len(encoders):
            raise PackingError(f"{where}: expected {len(encoders)} fields "
                               f"({self.field_sep.decode().join(self._columns[side])}), got {len(fields)}")
        try:
            return b"".join([encode(field) for encode, field in zip(encoders, fields)])
        except (TypeError, ValueError, OverflowError):
            pass
        for name, encode, field in zip(self._columns[side], encoders, fields):  # slow path: name the field
            try:
                encode(field)
            except (TypeError, ValueError, OverflowError) as exc:
                raise PackingError(f"{where}: field {name!r}: {exc}") from None
        raise AssertionError("unreachable: the fast path failed but no field did")


def _encoders(feature: Feature, list_sep: bytes, weight_sep: bytes) -> tuple[_Encoder, _Encoder]:
    """Encoders of one feature's map entries from a Python value and from a text field."""
    if feature.kind == "dense":
        entry = wire.FloatEntry(feature.name)
        return (lambda v: entry(_to_float(v))), (lambda t: entry(_parse_float(t)) if t else b"")
    if feature.kind == "id":
        if feature.dtype == "int64":
            entry = wire.Int64Entry(feature.name)
            return (lambda v: entry(_to_int(v))), (lambda t: entry(_parse_int(t)) if t else b"")
        entry = wire.BytesEntry(feature.name)
        return (lambda v: entry(_to_bytes(v))), (lambda t: entry(t) if t else b"")

    ids_key, weights_key = feature.name.encode(), feature.weight_name.encode()
    to_id = _to_int if feature.dtype == "int64" else _to_bytes

    def ids_feature(ids: list) -> bytes:
        return wire.int64_feature(ids) if feature.dtype == "int64" else wire.bytes_feature(ids)

    def entries(ids: list, weights: list[float]) -> bytes:
        if not ids:
            return b""
        return wire.map_entry(ids_key, ids_feature(ids)) + wire.map_entry(weights_key, wire.float_feature(weights))

    def from_value(value: Any) -> bytes:
        if not (isinstance(value, (tuple, list)) and len(value) == 2) or isinstance(value[0], (str, bytes)):
            raise TypeError(f"expected (ids, weights), two lists of equal length, got {value!r:.80}")
        ids, weights = value
        if len(ids) != len(weights):
            raise ValueError(f"{len(ids)} ids but {len(weights)} weights")
        return entries([to_id(i) for i in ids], [_to_float(w) for w in weights])

    def from_text(text: bytes) -> bytes:
        if not text:
            return b""
        parts = text.replace(weight_sep, list_sep).split(list_sep)  # id, weight, id, weight, ...
        if len(parts) % 2 or text.count(weight_sep) * 2 != len(parts):
            raise ValueError(f"expected id{weight_sep.decode()}weight pairs separated by {list_sep.decode()!r}, "
                             f"got {text.decode(errors='replace')!r:.80}")
        ids = parts[0::2] if feature.dtype == "bytes" else [_parse_int(i) for i in parts[0::2]]
        written = b",".join(parts[1::2]).decode(errors="replace")
        try:
            weights = list(map(float, parts[1::2]))
        except ValueError:
            raise ValueError(f"weights must be numbers, got {written!r:.80}") from None
        if not all(map(math.isfinite, weights)):
            raise ValueError(f"a weight in {written!r:.80} is not a finite number")
        try:
            return entries(ids, weights)
        except OverflowError:
            raise OverflowError(f"a weight in {written!r:.80} is outside the float32 range") from None

    return from_value, from_text


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"expected str or bytes, got {type(value).__name__} {value!r:.80}")


def _to_int(value: Any) -> int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    raise TypeError(f"expected an integer, got {type(value).__name__} {value!r:.80}")


def _to_float(value: Any) -> float:
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        value = float(value)
        if not math.isfinite(value):  # the model would serve NaN scores for the candidate
            raise ValueError(f"{value} is not a finite number")
        if abs(value) > _FLOAT32_MAX:
            raise OverflowError(f"{value} is outside the float32 range")
        return value
    raise TypeError(f"expected a number, got {type(value).__name__} {value!r:.80}")


def _parse_int(text: bytes) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected an integer, got {text.decode(errors='replace')!r}") from None


def _parse_float(text: bytes) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text.decode(errors='replace')!r}") from None
    return _to_float(value)

