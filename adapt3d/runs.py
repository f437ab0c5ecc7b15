"""Run directories: provenance (env.json), writing metrics.json (its schema: adapt3d.run_record), the caveats every report states."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from adapt3d import __version__
from adapt3d.atomic import atomic_file, writable_dir
from adapt3d.errors import ConfigError

PACKAGES = ("torch", "peft", "lightning", "monai", "numpy", "nibabel", "SimpleITK", "omegaconf", "transformers")


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _git(*args: str) -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def env_record(**extra) -> dict:
    """Versions, platform, git state of the adapt3d source, and the run's own facts (``extra``)."""
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    status = _git("status", "--porcelain")
    return {
        "adapt3d_version": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": packages,
        "git_hash": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "command": " ".join(sys.argv) if sys.argv else "",
        **extra,
    }


def write_json(path: Path, obj: dict) -> Path:
    """Write ``obj`` as indented JSON, atomically (NaN written as null)."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(_finite(obj), indent=2))
    return path


def _finite(obj):
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


PARTIAL_SUFFIX = ".partial"


class RunFinished(Exception):
    """``--resume`` on a run that has already finished: nothing to do."""


def partial_dir(run_dir: Path) -> Path:
    """Where an unfinished run works: ``<name>.partial`` beside its final folder."""
    return run_dir.with_name(run_dir.name + PARTIAL_SUFFIX)


def claim_run_dir(run_dir: Path, *, overwrite: bool, resume: bool) -> Path:
    """The partial folder to work in; refuses to mix runs, before any work is done.

    A finished run has the final name and ``metrics.json``; an unfinished one lives in
    ``<name>.partial`` until :func:`finish_run_dir`. ``resume`` continues the partial folder;
    ``overwrite`` starts over (a finished run is replaced only when the new one finishes).
    """
    partial = partial_dir(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: exists and is not a directory")
    if resume:
        if partial.is_dir():
            return partial
        if (run_dir / "metrics.json").is_file():
            raise RunFinished(f"{run_dir}: this run is finished (metrics.json is there): nothing to resume; --overwrite runs it again")
        raise ConfigError(f"{partial}: no interrupted run to resume (run without --resume to start it)")
    if partial.exists():
        if not overwrite:
            raise ConfigError(f"{partial}: an interrupted run is there: continue it with --resume, or start over with --overwrite")
        shutil.rmtree(partial)
    if run_dir.exists() and not overwrite:
        raise ConfigError(f"{run_dir}: a finished run is already there (choose another name, or --overwrite)")
    return writable_dir(partial, "run directory")


def finish_run_dir(partial: Path, run_dir: Path) -> Path:
    """Give the finished run its final name (replacing an older run there only now)."""
    if run_dir.exists():
        old = run_dir.with_name(run_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(run_dir, old)
        os.replace(partial, run_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(partial, run_dir)
    return run_dir


@contextlib.contextmanager
def one_shot_run_dir(run_dir: Path, *, overwrite: bool) -> Iterator[Path]:
    """A run that cannot resume (e.g. an evaluation): work in the partial folder, give it the final
    name on success, remove it on failure or interrupt."""
    work = claim_run_dir(run_dir, overwrite=overwrite, resume=False)
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finish_run_dir(work, run_dir)


def caveats(core_description: str, domains: dict[str, dict]) -> list[str]:
    """What a reader must know: the core's training data, simulated domains, silver-standard labels."""
    out = [
        f"Core: {core_description}" if core_description else "Core: what the core was trained on was NOT stated in the config."
    ]
    for name, d in domains.items():
        if d.get("simulated"):
            out.append(f"Domain '{name}' is SIMULATED (rendered by adapt3d from {d.get('dataset')}); it is not real data of that modality.")
        if d.get("silver_standard"):
            out.append(f"Domain '{name}' labels are silver-standard (model predictions), not manual tracings.")
        n = len(d.get("split", {}).get("test", []))
        if n and n < 5:
            out.append(f"Domain '{name}' is evaluated on {n} item(s) only: treat its figures as a smoke test, not a result.")
    return out
