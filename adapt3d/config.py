"""Typed configuration helpers: dataclasses built from mappings with clear errors for typos."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any, TypeVar

from adapt3d.errors import ConfigError

T = TypeVar("T")


def nearest_key_message(key: str, valid: list[str], where: str) -> str:
    """One line naming an unknown key, the nearest valid one and the valid set."""
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{where}: unknown key {key!r}{hint}; valid keys: {', '.join(sorted(valid))}"


def build_dataclass(cls: type[T], values: Mapping[str, Any], where: str) -> T:
    """Instantiate dataclass ``cls`` from ``values``; unknown keys raise :class:`ConfigError`.

    Lists become tuples where the field default is a tuple, so YAML lists work for tuple fields.
    """
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(nearest_key_message(str(key), list(fields), where))
        default = fields[key].default
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
