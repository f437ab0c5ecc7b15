"""Load and validate run directories (schema 1, see notes/run_schema.md) for the report.

Only ``metrics.json`` is required; a missing or unreadable one, or one whose structure does not
follow the schema, raises :class:`InputError` naming the file and the offending key. ``env.json``
and ``config.yaml`` are provenance: when missing or unreadable the report says so visibly.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapt3d.runs import SCHEMA
from adapt3d.data.card import sha256_file
from adapt3d.errors import InputError

#: The run-directory schema version this report reads.
RUN_SCHEMA = SCHEMA  # the run-directory schema adapt3d writes (adapt3d.runs)
STAGES = ("before", "after")
ROLES = ("target", "reference")
KINDS = ("adapt", "evaluate")
METRICS = ("dice", "nsd")


@dataclass
class Run:
    """One loaded run directory: its metrics, provenance files and notes about what is missing."""

    path: Path
    label: str
    metrics: dict
    env: dict | None = None
    config_text: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.metrics["name"]

    @property
    def domains(self) -> dict[str, dict]:
        return self.metrics["domains"]

    @property
    def clicks(self) -> list[int]:
        return list(self.metrics["clicks"])

    @property
    def kmax(self) -> int:
        """The largest click count of the run (predictions and per-class bars use it)."""
        return max(self.clicks)


def domain_label(name: str, info: dict) -> str:
    """A domain name marked ``(simulated)`` and/or ``(reference)`` as its metadata says."""
    tags = (["simulated"] if info.get("simulated") else []) + (["reference"] if info.get("role") == "reference" else [])
    return name + "".join(f" ({t})" for t in tags)


def stat(evaluation: dict | None, k: int, metric: str) -> dict | None:
    """``{"mean", "sd", "n"}`` of ``metric`` at ``k`` clicks in one EVAL, or None when not evaluated."""
    if evaluation is None:
        return None
    return evaluation["summary"].get(str(k), {}).get(metric)


def class_stat(evaluation: dict | None, cls: str, k: int, metric: str) -> dict | None:
    """Per-class ``{"mean", "sd", "n"}`` of ``metric`` at ``k`` clicks, or None when absent."""
    if evaluation is None:
        return None
    return evaluation.get("per_class", {}).get(cls, {}).get(str(k), {}).get(metric)


def best_retention(retention: dict) -> dict | None:
    """The history entry with the highest retention (None when the history has none)."""
    history = [h for h in retention.get("history", []) if h.get("retention") is not None]
    return max(history, key=lambda h: h["retention"]) if history else None


def load_runs(paths: Sequence[str | os.PathLike]) -> list[Run]:
    """Load every run directory; labels are made unique (``name (dir)``) when names repeat."""
    if not paths:
        raise InputError("report: give at least one RUN_DIR")
    runs = [load_run(p) for p in paths]
    seen: set[Path] = set()
    for run in runs:
        if run.path in seen:
            raise InputError(f"{run.path}: run directory given more than once")
        seen.add(run.path)
    names = [r.name for r in runs]
    for run in runs:
        if names.count(run.name) > 1:
            run.label = f"{run.name} ({run.path.name})"
    labels = [r.label for r in runs]
    for run in runs:
        if labels.count(run.label) > 1:
            run.label = f"{run.name} ({run.path})"
    return runs


def load_run(path: str | os.PathLike) -> Run:
    """Read ``RUN_DIR/metrics.json`` (validated), ``env.json`` and ``config.yaml``."""
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"{root}: run directory not found")
    metrics_path = root / "metrics.json"
    if not metrics_path.is_file():
        raise InputError(f"{metrics_path}: not found (is {root} a run directory written by adapt3d adapt/evaluate?)")
    metrics = _read_json(metrics_path)
    _validate_metrics(metrics, metrics_path)
    run = Run(path=root.resolve(), label=metrics["name"], metrics=metrics)
    env_path = root / "env.json"
    if not env_path.is_file():
        run.notes.append(f"{env_path.name} not found in {root}: provenance not recorded")
    else:
        try:
            env = _read_json(env_path)
        except InputError as exc:
            run.notes.append(str(exc))
        else:
            if isinstance(env, dict):
                run.env = env
            else:
                run.notes.append(f"{env_path}: expected a JSON object")
    config_path = root / "config.yaml"
    if not config_path.is_file():
        run.notes.append(f"{config_path.name} not found in {root}: resolved config not recorded")
    else:
        run.config_text = config_path.read_text(errors="replace")
        recorded = (run.env or {}).get("config_hash")
        actual = sha256_file(config_path)[:16]
        if recorded and recorded != actual:
            run.notes.append(
                f"{config_path}: sha256 {actual} differs from env.json config_hash {recorded} (config edited after the run?)"
            )
    return run


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a text file ({exc.reason})") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from exc


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


def _validate_metrics(m: Any, path: Path) -> None:
    c = _Check(path)
    if not isinstance(m, dict):
        c.fail("", f"expected a JSON object, got {type(m).__name__}")
    schema = m.get("schema")
    if schema != RUN_SCHEMA:
        shown = "missing" if schema is None else repr(schema)
        c.fail("schema", f"{shown} is not a run schema this adapt3d reads (supported: {RUN_SCHEMA})")
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
            c.number(entry, "dice", f"retention.history[{i}]", required=False)
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
