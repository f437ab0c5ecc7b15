"""Packaged configuration presets (``configs/<kind>/<name>.yaml``) and YAML reading with line numbers.

A section of an experiment may name a preset (``core: sam-med3d-turbo``, ``adapter: lora-r32``)
or a YAML file (``adapter: my_adapter.yaml``, relative to the file that names it, or to the
working directory on the command line).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from adapt3d.errors import ConfigError

#: The presets shipped with adapt3d (the repository's top-level ``configs/``).
CONFIGS = Path(__file__).resolve().parents[1] / "configs"

#: Preset kinds: the experiment sections that may name a preset, and whole experiments.
KINDS = ("core", "adapter", "experiment")


def preset_names(kind: str) -> list[str]:
    """The names of the packaged presets of ``kind`` (file names without ``.yaml``)."""
    folder = CONFIGS / kind
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def is_yaml_path(text: str) -> bool:
    """Whether ``text`` names a YAML file (rather than a preset)."""
    return text.endswith((".yaml", ".yml"))


def find_preset(kind: str, name_or_path: str, base: Path, where: str) -> Path:
    """The file a section value names: a ``.yaml`` path (relative to ``base``) or a preset name."""
    if is_yaml_path(name_or_path):
        path = Path(name_or_path).expanduser()
        path = (path if path.is_absolute() else (base / path)).resolve()
        if not path.is_file():
            raise ConfigError(f"{where}: {path} not found")
        return path
    path = CONFIGS / kind / f"{name_or_path}.yaml"
    if not path.is_file():
        import difflib

        names = preset_names(kind)
        close = difflib.get_close_matches(name_or_path, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: no {kind} preset {name_or_path!r}{hint}; presets: {', '.join(names)} (or give a .yaml file)")
    return path


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping with OmegaConf interpolations resolved; errors name the file and line."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text()
    try:
        yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{at}: invalid YAML ({exc.problem or exc.context})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    try:
        values = OmegaConf.to_container(OmegaConf.create(text), resolve=True)
    except Exception as exc:
        raise ConfigError(f"{path}: {str(exc).splitlines()[0]}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(values).__name__}")
    return values
