"""Parses JSON text that must hold one object: an artifact (metrics, blessing), a candidate line, shared features.

One parser, so every such input fails the same way: an InputError that names where the text came from.
"""
from __future__ import annotations

import json
from typing import Any

from esmm_model.errors import InputError


def parse_json_object(text: str, where: str) -> dict[str, Any]:
    """The object ``text`` holds; InputError starting with ``where`` (``metrics file 'x'``, ``c.jsonl:3``)
    when it is not valid JSON or holds another JSON value."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InputError(f"{where} must hold a JSON object, not a {type(value).__name__}")
    return value
