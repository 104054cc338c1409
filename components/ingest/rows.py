"""Parsed impressions and rejected lines: what the readers hand to ingestion.

A reader turns one raw line into either a ParsedRow or a Rejected record with a stable
reason code and a message that names the offending field. Nothing is dropped silently.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Union

from esmm_model.config import Config, Feature
from esmm_model.schema import default_value

FeatureValue = Union[bytes, int, float, tuple[list, list]]


class RowError(ValueError):
    """A line is unusable; ``code`` is a stable reason key for the counts."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Rejected:
    """A rejected line, as written to rejected/*.jsonl."""

    source: str
    line: str
    code: str
    reason: str

    @classmethod
    def of(cls, source: str, raw: bytes, error: RowError) -> Rejected:
        """The record of raw line ``raw``; bytes that are not UTF-8 are kept as \\x escapes."""
        return cls(source, raw.decode("utf-8", "backslashreplace").rstrip("\r\n"), error.code, str(error))

    def to_json(self) -> dict:
        return {"source": self.source, "code": self.code, "reason": self.reason, "line": self.line}


@dataclass(frozen=True)
class SharedPart:
    """Features many rows share (an Ali-CCP user's common line), serialized once.

    ``serialized`` is a tf.Example holding only the features in ``names``. Protobuf
    merges concatenated messages, so ``serialized + <rest of the row>`` parses as the
    whole example: each impression then costs only its own fields.
    """

    serialized: bytes
    names: frozenset[str]
    unused: frozenset[str] = frozenset()  # fields on the line that no feature reads


# What a reader's ``parse`` gets as ``common`` when the format has no shared features (CSV).
NO_COMMON: Mapping[str, SharedPart] = MappingProxyType({})


@dataclass(frozen=True)
class ParsedRow:
    """One impression: labels, ordering key and feature values keyed by config name.

    ``values`` holds every feature not in ``shared``, a missing one as its default; ``present``
    names the features the line (or its shared part) carried, ``unused`` the input fields it
    carried that no feature reads.
    """

    sample_id: str
    order_key: float
    click: int
    conversion: int
    values: dict[str, FeatureValue]
    shared: SharedPart | None = None
    present: frozenset[str] = frozenset()
    unused: frozenset[str] = frozenset()


def decode_line(raw: bytes) -> str:
    """A raw line as text; a line that is not UTF-8 is a RowError (``bad_encoding``) naming the byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RowError("bad_encoding",
                       f"line is not UTF-8: byte {exc.start} is 0x{raw[exc.start]:02x} ({exc.reason})") from None


def parse_labels(click_text: str, conversion_text: str, config: Config) -> tuple[int, int]:
    """(click, conversion), each 0 or 1; a conversion without a click is a RowError when the config rejects it."""
    click, conversion = _parse_label(click_text, "click"), _parse_label(conversion_text, "conversion")
    if conversion and not click and config.input.conversion_without_click == "reject":
        raise RowError("conversion_without_click",
                       "conversion=1 with click=0 (input.conversion_without_click is 'reject')")
    return click, conversion


def _parse_label(text: str, name: str) -> int:
    text = text.strip()
    if text not in ("0", "1"):
        raise RowError(f"bad_{name}", f"{name} must be 0 or 1, got {text!r}")
    return int(text)


def parse_order_key(text: str, column: str) -> float:
    return parse_float(text, f"ordering column {column!r}", code="bad_order_key")


def parse_float(text: str, what: str, *, code: str = "bad_value") -> float:
    """A finite float, or a RowError with ``code`` naming ``what``."""
    try:
        value = float(text)
    except ValueError:
        raise RowError(code, f"{what}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise RowError(code, f"{what}: {text!r} is not finite")
    return value


def feature_value(feature: Feature, pairs: list[tuple[str, float]]) -> FeatureValue:
    """Converts (id, value) pairs read for a feature into its tf.Example value.

    id: the one id (bytes or int64); weighted_ids: (ids, weights); dense: the value.
    A feature with no pairs gets its default. Extra values for a single-valued feature
    are an error, never silently truncated.
    """
    if feature.kind == "weighted_ids":
        return [_id(feature, fid) for fid, _ in pairs], [w for _, w in pairs]
    if not pairs:
        return default_value(feature)
    if len(pairs) > 1:
        raise RowError("multiple_values", f"feature {feature.name} takes one value but got {len(pairs)}")
    fid, value = pairs[0]
    return value if feature.kind == "dense" else _id(feature, fid)


def _id(feature: Feature, text: str) -> bytes | int:
    if feature.dtype == "int64":
        try:
            return int(text)
        except ValueError:
            raise RowError("bad_id", f"feature {feature.name} is int64 but got id {text!r}") from None
    return text.encode()
