"""Load and validate run directories (the run record: adapt3d.run_record) for the report.

Only ``metrics.json`` is required; a missing or unreadable one, or one whose structure does not
follow the schema, raises :class:`InputError` naming the file and the offending key. ``env.json``
and ``config.yaml`` are provenance: when missing or unreadable the report says so visibly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapt3d.data.card import sha256_file
from adapt3d.errors import InputError
from adapt3d.run_record import SCHEMA, STAGES, validate_metrics  # noqa: F401  (STAGES: the report's modules read it here)

#: The run-directory schema version this report reads.
RUN_SCHEMA = SCHEMA


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
    validate_metrics(metrics, metrics_path)
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
