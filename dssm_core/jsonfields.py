"""Dataclass fields from JSON, type-checked: the one place a JSON object becomes arguments.

``TrainConfig.from_dict`` (``--config-json``, stored runs) and ``ColumnMapping.from_dict``
(``--mapping``, the app's form) both take what a person typed. A number where a column name
belongs, or text where a number belongs, is refused here with the key, what was expected and
what was found, instead of failing later inside the training or the parser.
"""
from __future__ import annotations

import json
import math
from dataclasses import fields
from typing import Any

from .dataset import shorten

_EXPECTED = {
    "str": "text",
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "tuple[int, ...]": "a list of whole numbers",
    "tuple[str, ...]": "a list of column names (text)",
    "tuple[float, float]": "a list of two numbers [min, max]",
}


def _found(value: Any) -> str:
    if value is None:
        return "null"
    kind = {bool: "true/false", int: "the number", float: "the number", str: "the text",
            list: "the list", dict: "the object"}.get(type(value), type(value).__name__)
    try:
        shown = json.dumps(value)
    except (TypeError, ValueError):
        shown = repr(value)
    return f"{kind} {shorten(shown, 60)}"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _convert(kind: str, value: Any) -> tuple[bool, Any]:
    """(ok, the value converted to the field's type)."""
    if kind == "str":
        return isinstance(value, str), value
    if kind == "int":
        return _is_int(value), value
    if kind == "float":
        return _is_number(value), float(value) if _is_number(value) else value
    if kind == "bool":
        return isinstance(value, bool), value
    if not isinstance(value, (list, tuple)):
        return False, value
    if kind == "tuple[int, ...]":
        return all(_is_int(v) for v in value), tuple(value)
    if kind == "tuple[str, ...]":
        return all(isinstance(v, str) for v in value), tuple(value)
    if kind == "tuple[float, float]":
        ok = len(value) == 2 and all(_is_number(v) for v in value)
        return ok, tuple(float(v) for v in value) if ok else value
    raise TypeError(f"no JSON check for a field of type {kind}")  # pragma: no cover


def checked_kwargs(cls: type, d: Any, what: str) -> dict[str, Any]:
    """``d`` (a JSON object) as keyword arguments of dataclass ``cls``, every value checked
    against its field's annotation; ``ValueError`` naming ``what`` and the key otherwise.

    ``None`` is taken for an optional field (``X | None``) only.
    """
    if not isinstance(d, dict):
        raise ValueError(f"{what} must be a JSON object, found {_found(d)}")
    types = {f.name: str(f.type) for f in fields(cls)}
    unknown = sorted(set(d) - set(types))
    if unknown:
        raise ValueError(f"unknown {what} keys: {', '.join(shorten(k, 40) for k in unknown)}")
    out: dict[str, Any] = {}
    for key, value in d.items():
        kind = types[key]
        optional = kind.endswith(" | None")
        kind = kind.removesuffix(" | None")
        if value is None and optional:
            out[key] = None
            continue
        ok, converted = _convert(kind, value)
        if not ok:
            raise ValueError(f"{what} key '{key}': expected {_EXPECTED[kind]}"
                             f"{' or null' if optional else ''}, found {_found(value)}")
        out[key] = converted
    return out
