"""The run record (``metrics.json`` of a run directory): its schema version, the fields of its top
level and blocks, their builders (used by ``adapt3d adapt`` and ``adapt3d evaluate``) and the
structural validation the report applies when reading a run.

Top level (in this order; ``protocol`` is written by evaluate runs, ``preprocessing`` by adapt runs):
``schema kind name core adapter protocol clicks nsd_tolerance_mm preprocessing domains retention
training caveats``. ``domains.<name>``: the domain record (adapt3d.data.domains.Domain.record) plus
``before``/``after`` EVAL records. ``retention.history[i]``: ``step epoch retention target_dice
ct_dice`` (``ct_dice`` = retention × frozen CT Dice; runs written before it was recorded lack it,
and the report's old fixtures named it ``dice``: :func:`history_ct_dice` reads all three).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from adapt3d.errors import InputError

#: The run-directory schema version adapt3d writes and reads.
SCHEMA = 1
KINDS = ("adapt", "evaluate")
STAGES = ("before", "after")
ROLES = ("target", "reference")
METRICS = ("dice", "nsd")
#: The top-level fields of a run record, in the order they are written.
TOP_LEVEL = ("schema", "kind", "name", "core", "adapter", "protocol", "clicks", "nsd_tolerance_mm", "preprocessing",
             "domains", "retention", "training", "caveats")


def run_record(kind: str, **fields: Any) -> dict:
    """A run record of ``kind`` (``TOP_LEVEL`` order); an unknown or missing field is a programming error."""
    unknown = set(fields) - set(TOP_LEVEL)
    if unknown or kind not in KINDS:
        raise ValueError(f"run record: unknown field(s) {sorted(unknown)} or kind {kind!r}")
    values = {"schema": SCHEMA, "kind": kind, **fields}
    return {key: values[key] for key in TOP_LEVEL if key in values}


def history_entry(entry: dict, frozen: float | None) -> dict:
    """A validation of the retention history with its CT Dice (``retention`` × ``frozen``; NaN when unknown)."""
    retention = entry["retention"]
    ct = retention * frozen if frozen and retention == retention else float("nan")
    return {**entry, "ct_dice": ct}


def history_ct_dice(entry: dict, frozen: float | None) -> float | None:
    """The CT Dice of a retention-history entry: ``ct_dice``, the old name ``dice``, else retention × frozen."""
    for key in ("ct_dice", "dice"):
        if entry.get(key) is not None:
            return entry[key]
    if entry.get("retention") is None or frozen is None:
        return None
    return entry["retention"] * frozen


class _Check:
    """Structural checks that raise one-line errors naming the file and the key path."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, problem: str) -> None:
        raise InputError(f"{self.path}: {where}: {problem}" if where else f"{self.path}: {problem}")

    def key(self, obj: dict, key: str, types: type | tuple, where: str, *, null: bool = False) -> Any:
        here = f"{where}.{key}" if where else key
        if key not in obj:
            self.fail(here, "missing")
        value = obj[key]
        if value is None and null:
            return None
        if not isinstance(value, types) or isinstance(value, bool) and bool not in _as_tuple(types):
            self.fail(here, f"expected {_type_names(types)}{' or null' if null else ''}, got {type(value).__name__}")
        return value

    def number(self, obj: dict, key: str, where: str, *, null: bool = True, required: bool = True) -> None:
        if not required and key not in obj:
            return
        value = self.key(obj, key, (int, float), where, null=null)
        if value is not None and not math.isfinite(value):
            self.fail(f"{where}.{key}", "not a finite number")

    def obj(self, value: Any, where: str) -> dict:
        if not isinstance(value, dict):
            self.fail(where, f"expected an object, got {type(value).__name__}")
        return value


def _as_tuple(types: type | tuple) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def _type_names(types: type | tuple) -> str:
    names = {"str": "a string", "int": "an integer", "float": "a number", "dict": "an object", "list": "a list", "bool": "true/false"}
    return " or ".join(dict.fromkeys(names.get(t.__name__, t.__name__) for t in _as_tuple(types)))


def validate_metrics(m: Any, path: Path) -> None:
    """Raise :class:`InputError` naming ``path`` and the key where ``m`` does not follow the schema."""
    c = _Check(path)
    if not isinstance(m, dict):
        c.fail("", f"expected a JSON object, got {type(m).__name__}")
    schema = m.get("schema")
    if schema != SCHEMA:
        shown = "missing" if schema is None else repr(schema)
        c.fail("schema", f"{shown} is not a run schema this adapt3d reads (supported: {SCHEMA})")
    if c.key(m, "kind", str, "") not in KINDS:
        c.fail("kind", f"{m['kind']!r} is not one of {', '.join(KINDS)}")
    c.key(m, "name", str, "")
    core = c.key(m, "core", dict, "")
    c.key(core, "name", str, "core")
    if "description" in core:
        c.key(core, "description", str, "core", null=True)
    adapter = c.key(m, "adapter", dict, "", null=True)
    if adapter is not None:
        c.key(adapter, "method", str, "adapter")
        for key in ("trainable_parameters", "size_bytes", "trainable_percent", "rank"):
            c.number(adapter, key, "adapter", required=False)
    clicks = c.key(m, "clicks", list, "")
    if not clicks or not all(isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in clicks):
        c.fail("clicks", "expected a non-empty list of positive integers")
    domains = c.key(m, "domains", dict, "")
    if not domains:
        c.fail("domains", "no domains")
    for name, dom in domains.items():
        where = f"domains.{name}"
        c.obj(dom, where)
        if c.key(dom, "role", str, where) not in ROLES:
            c.fail(f"{where}.role", f"{dom['role']!r} is not one of {', '.join(ROLES)}")
        if not all(isinstance(x, str) for x in c.key(dom, "classes", list, where)):
            c.fail(f"{where}.classes", "expected a list of class names")
        for stage in STAGES:
            evaluation = c.key(dom, stage, dict, where, null=True)
            if evaluation is not None:
                _validate_eval(c, evaluation, f"{where}.{stage}")
    retention = c.key(m, "retention", dict, "", null=True) if "retention" in m else None
    if retention is not None:
        for key in ("frozen", "final"):
            c.number(retention, key, "retention")
        guard = c.key(retention, "guard", dict, "retention", null=True) if "guard" in retention else None
        if guard is not None:
            c.number(guard, "threshold", "retention.guard", required=False)
        for i, entry in enumerate(c.key(retention, "history", list, "retention")):
            c.obj(entry, f"retention.history[{i}]")
            c.number(entry, "step", f"retention.history[{i}]", null=False)
            c.number(entry, "retention", f"retention.history[{i}]")
            for key in ("ct_dice", "dice", "target_dice"):  # dice: the old name of ct_dice
                c.number(entry, key, f"retention.history[{i}]", required=False)
    training = c.key(m, "training", dict, "", null=True) if "training" in m else None
    if training is not None:
        c.number(training, "wall_seconds", "training", required=False)
    if "caveats" in m:
        caveats = c.key(m, "caveats", list, "")
        if not all(isinstance(x, str) for x in caveats):
            c.fail("caveats", "expected a list of strings")


def _validate_eval(c: _Check, ev: dict, where: str) -> None:
    clicks = c.key(ev, "clicks", list, where)
    summary = c.key(ev, "summary", dict, where)
    for k in clicks:
        entry = c.key(summary, str(k), dict, f"{where}.summary")
        for metric in METRICS:
            s = c.key(entry, metric, dict, f"{where}.summary.{k}")
            for key in ("mean", "sd", "n"):
                c.number(s, key, f"{where}.summary.{k}.{metric}")
    per_class = c.key(ev, "per_class", dict, where) if "per_class" in ev else {}
    for cls, by_k in per_class.items():
        for k, entry in c.obj(by_k, f"{where}.per_class.{cls}").items():
            c.obj(entry, f"{where}.per_class.{cls}.{k}")
            for metric in METRICS:
                s = c.key(entry, metric, dict, f"{where}.per_class.{cls}.{k}")
                for key in ("mean", "sd", "n"):
                    c.number(s, key, f"{where}.per_class.{cls}.{k}.{metric}", required=key == "mean")
    for i, case in enumerate(c.key(ev, "per_case", list, where) if "per_case" in ev else []):
        here = f"{where}.per_case[{i}]"
        c.obj(case, here)
        c.key(case, "case", str, here)
        c.key(case, "class", str, here)
        dice = c.key(case, "dice", dict, here)
        for k in dice:
            c.number(dice, k, f"{here}.dice")
        for key in ("image", "label", "prediction"):
            if key in case:
                c.key(case, key, str, here, null=True)
