"""Typed configuration helpers: dataclass schemas with declared rules, checked with OmegaConf.

A schema is a tree of dataclasses. A field declares its rules in its metadata with :func:`setting`
(``ge``/``gt``/``le``/``lt`` bounds, ``choices``, ``each_ge``/``each_gt`` for sequences, ``path``
for values that are file-system paths). :func:`check_values` reports every problem at once — unknown
keys (with the nearest valid one), values of the wrong type (OmegaConf's structured-config
conversion, the library's own rules) and broken rules — one line per problem naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from adapt3d.errors import ConfigError

T = TypeVar("T")


def setting(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, help: str = "", **rules: Any) -> Any:
    """A dataclass field with help text and checked rules (see the module docstring)."""
    kwargs: dict[str, Any] = {"metadata": {"help": help, **rules}}
    if factory is not dataclasses.MISSING:
        kwargs["default_factory"] = factory
    else:
        kwargs["default"] = default
    return dataclasses.field(**kwargs)


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


def _fields(cls: type) -> tuple[dict[str, dataclasses.Field], dict[str, Any]]:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    return fields, typing.get_type_hints(cls)


def build_dataclass(cls: type[T], values: Mapping[str, Any], where: str) -> T:
    """Instantiate dataclass ``cls`` from ``values``; unknown keys raise :class:`ConfigError`.

    Nested dataclass fields are built recursively from nested mappings (their errors name the
    dotted path); lists become tuples where the field default is a tuple, so YAML lists work.
    """
    fields, hints = _fields(cls)
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


def _rule_problems(key: str, value: Any, rules: Mapping[str, Any]) -> list[str]:
    """The rules of one field that ``value`` breaks, one line each."""
    out = []
    bounds = {"ge": (lambda v, b: v >= b, "≥"), "gt": (lambda v, b: v > b, ">"),
              "le": (lambda v, b: v <= b, "≤"), "lt": (lambda v, b: v < b, "<")}
    numbers = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []
    for name, (ok, sign) in bounds.items():
        if name in rules and numbers and not ok(value, rules[name]):
            out.append(f"{key}: must be {sign} {rules[name]}, got {value!r}")
        each = f"each_{name}"
        if each in rules and isinstance(value, (list, tuple)):
            bad = [v for v in value if isinstance(v, (int, float)) and not ok(v, rules[each])]
            if bad:
                out.append(f"{key}: every value must be {sign} {rules[each]}, got {list(value)!r}")
    if "choices" in rules and value is not None and value not in rules["choices"]:
        close = difflib.get_close_matches(str(value), [str(c) for c in rules["choices"]], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        out.append(f"{key}: {value!r} is not valid{hint}; valid: {', '.join(map(str, rules['choices']))}")
    if rules.get("non_empty") and isinstance(value, (list, tuple, str)) and not value:
        out.append(f"{key}: must not be empty")
    return out


def check_values(cls: type, values: Mapping[str, Any], where: str = "") -> list[str]:
    """Every problem of ``values`` against schema ``cls``: unknown keys, types, rules (one line each)."""
    problems, known = _unknown_keys(cls, values, where)
    schema = OmegaConf.structured(cls)
    typed: dict = {}
    for key, value in _leaves(cls, known, ""):
        try:
            OmegaConf.merge(schema, _nest(key, value))
        except OmegaConfBaseException as exc:
            message = str(exc).splitlines()[0].replace("$VALUE_TYPE", type(value).__name__).replace("$VALUE", repr(value))
            problems.append(f"{where}{key}: {message}")
            continue
        typed = deep_merge(typed, _nest(key, value))
    checked = OmegaConf.to_container(OmegaConf.merge(schema, typed))
    return problems + _rule_walk(cls, checked, where)


def deep_merge(into: Mapping[str, Any], layer: Mapping[str, Any]) -> dict:
    """``into`` updated by ``layer``: mappings merge key by key, anything else (lists too) replaces."""
    out = dict(into)
    for key, value in layer.items():
        both = isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
        out[key] = deep_merge(out[key], value) if both else value
    return out


def typed_values(cls: type, values: Mapping[str, Any]) -> dict:
    """The keys of ``values`` only, each converted by the schema's type (``"3"`` → 3 for an int)."""
    typed = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(cls), dict(values)))
    return _prune(typed, values)  # type: ignore[arg-type]


def _prune(typed: Mapping[str, Any], given: Mapping[str, Any]) -> dict:
    out = {}
    for key, value in given.items():
        t = typed[key]
        out[key] = _prune(t, value) if isinstance(value, Mapping) and isinstance(t, Mapping) else t
    return out


def _unknown_keys(cls: type, values: Mapping[str, Any], where: str) -> tuple[list[str], dict]:
    """Problems for keys the schema lacks, and ``values`` without them."""
    fields, hints = _fields(cls)
    out, known = [], {}
    for key, value in values.items():
        if key not in fields:
            out.append(nearest_key_message(str(key), list(fields), where.rstrip(".") or "config"))
            continue
        nested = _dataclass_type(hints.get(key))
        if nested is not None and isinstance(value, Mapping):
            more, value = _unknown_keys(nested, value, f"{where}{key}.")
            out += more
        known[key] = value
    return out, known


def _leaves(cls: type, values: Mapping[str, Any], prefix: str) -> list[tuple[str, Any]]:
    """(dotted key, value) of every setting, stopping at free-form mappings (``dict`` fields)."""
    fields, hints = _fields(cls)
    out = []
    for key, value in values.items():
        nested = _dataclass_type(hints.get(key)) if key in fields else None
        if nested is not None and isinstance(value, Mapping):
            out += _leaves(nested, value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _nest(dotted: str, value: Any) -> dict:
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def _rule_walk(cls: type, values: Mapping[str, Any], where: str) -> list[str]:
    fields, hints = _fields(cls)
    out = []
    for key, f in fields.items():
        value = values.get(key)
        nested = _dataclass_type(hints.get(key))
        if nested is not None and isinstance(value, Mapping):
            out += _rule_walk(nested, value, f"{where}{key}.")
        else:
            out += _rule_problems(f"{where}{key}", value, f.metadata)
    return out


def resolve_paths(cls: type, values: Mapping[str, Any], base: Path) -> dict:
    """A copy of ``values`` whose ``path`` settings (``setting(path=True)``) are absolute: relative
    ones are taken against ``base`` (a config file's folder, or the working directory for the
    command line); ``~`` is expanded."""
    fields, hints = _fields(cls)
    out = dict(values)
    for key, value in values.items():
        if key not in fields:
            continue
        nested = _dataclass_type(hints.get(key))
        if nested is not None and isinstance(value, Mapping):
            out[key] = resolve_paths(nested, value, base)
        elif fields[key].metadata.get("path") and isinstance(value, str) and value:
            p = Path(os.path.expanduser(value))
            out[key] = str(p if p.is_absolute() else (base / p).resolve())
    return out


def to_plain(obj: Any) -> Any:
    """Dataclasses → dicts and tuples → lists, recursively (for YAML/JSON)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj
