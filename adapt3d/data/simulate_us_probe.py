"""Where the simulated probe sits: an explicit anatomical side, or ``auto`` from the dataset's anatomy.

``auto`` reads the source dataset.json (as a lab's dataset describes itself) and picks the side a
sonographer would scan that anatomy from:

1. the declared classes: when every class name (background and ``ignore`` aside) is anatomy of
   one side below, that side (``spinal_cord`` alone -> posterior);
2. otherwise the dataset's name and description: the side of the anatomy word that comes first
   ("Abdominal MRI ..." -> anterior, "Cervical spinal cord MRI" -> posterior, "brain MRI" -> superior);
3. otherwise anterior (abdomen, pelvis, neck, heart and most organ scans start there).

The chosen side is then located in the volume from its affine (the voxel axis nearest to it,
oblique directions included), as for an explicit side.
"""

from __future__ import annotations

import dataclasses
import re

from adapt3d.data.simulate_us import UltrasoundParams
from adapt3d.errors import ConfigError

#: ``--probe`` names -> the anatomical side letters of :class:`UltrasoundParams` ``probe_axis``.
PROBE_SIDES = {"anterior": "A", "posterior": "P", "left": "L", "right": "R", "superior": "S", "inferior": "I"}
_NAMES = {letter: name for name, letter in PROBE_SIDES.items()}

#: Anatomy (word starts, lower case) -> the side its ultrasound is acquired from.
ANATOMY_SIDES: dict[str, tuple[str, ...]] = {
    "P": ("spine", "spinal", "vertebra", "sacrum", "lumbar", "intervertebral", "autochthon"),
    "S": ("brain", "cerebr", "cranial", "glioma"),
    "A": ("abdom", "liver", "kidney", "pancrea", "gallbladder", "spleen", "pelvi", "bladder", "prostate",
          "uter", "ovar", "fetal", "fetus", "thyroid", "carotid", "heart", "cardiac", "breast"),
}
_BACKGROUND = {"background", "ignore"}


def _side_of_word(word: str) -> str | None:
    for side, starts in ANATOMY_SIDES.items():
        if word.startswith(starts):
            return side
    return None


def auto_probe_side(info: dict) -> tuple[str, str]:
    """The side letter ``auto`` picks for a dataset (its dataset.json as a dict) and why, in words."""
    labels = info.get("labels") if isinstance(info.get("labels"), dict) else {}
    classes = [str(name).lower() for name in labels if str(name).lower() not in _BACKGROUND]
    sides = {_side_of_word(name) for name in classes}
    if classes and len(sides) == 1 and None not in sides:
        side = sides.pop()
        return side, f"auto: every class is {_NAMES[side]} anatomy ({', '.join(classes[:3])}{', ...' if len(classes) > 3 else ''})"
    text = f"{info.get('name', '')} {info.get('description', '')}"
    for word in re.findall(r"[a-z]+", re.sub(r"([a-z])([A-Z])", r"\1 \2", text).lower()):
        side = _side_of_word(word)
        if side is not None:
            return side, f"auto: {word!r} in the dataset name/description"
    return "A", "auto: no anatomy named in dataset.json, anterior"


def probe_axis_for(name: str) -> str:
    """The ``probe_axis`` of a ``--probe`` name (``anterior`` -> ``A``, ``auto`` kept); ConfigError if unknown."""
    key = name.strip().lower()
    if key == "auto" or key in PROBE_SIDES:
        return PROBE_SIDES.get(key, "auto")
    raise ConfigError(f"simulate-us --probe: {name!r} is not one of {', '.join(PROBE_SIDES)}, auto")


def resolve_probe(params: UltrasoundParams, info: dict) -> tuple[UltrasoundParams, str]:
    """``params`` with ``probe_axis="auto"`` replaced by the side for the dataset ``info``, and a note saying where the probe is."""
    if params.probe_axis.strip() != "auto":
        axis = params.probe_axis.strip()
        return params, f"{_NAMES[axis.upper()]} (probe_axis {axis!r})" if len(axis) == 1 else f"beam along {axis} (probe_axis {axis!r})"
    side, why = auto_probe_side(info)
    return dataclasses.replace(params, probe_axis=side), f"{_NAMES[side]} ({why})"
