"""Typed configuration helpers: dataclasses built from mappings with clear errors for typos."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from adapt3d.errors import ConfigError

T = TypeVar("T")


def nearest_key_message(key: str, valid: list[str], where: str) -> str:
    """One line naming an unknown key, the nearest valid one and the valid set."""
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{where}: unknown key {key!r}{hint}; valid keys: {', '.join(sorted(valid))}"


def _dataclass_type(hint: Any) -> type | None:
    """The dataclass in a field's type hint (``X`` or ``X | None``), if any."""
    candidates = typing.get_args(hint) or (hint,)
    for c in candidates:
        if dataclasses.is_dataclass(c):
            return c
    return None


def build_dataclass(cls: type[T], values: Mapping[str, Any], where: str) -> T:
    """Instantiate dataclass ``cls`` from ``values``; unknown keys raise :class:`ConfigError`.

    Nested dataclass fields are built recursively from nested mappings (their errors name the
    dotted path); lists become tuples where the field default is a tuple, so YAML lists work.
    """
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(nearest_key_message(str(key), list(fields), where))
        nested = _dataclass_type(hints.get(key))
        if nested is not None and isinstance(value, Mapping):
            value = build_dataclass(nested, value, f"{where}.{key}")
        default = fields[key].default
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def to_plain(obj: Any) -> Any:
    """Dataclasses → dicts and tuples → lists, recursively (for YAML/JSON)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj
