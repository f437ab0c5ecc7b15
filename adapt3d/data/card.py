"""Dataset cards: a YAML record of an ingested nnU-Net dataset (classes, geometry, licence, hashes).

``silver_standard`` (null until the user says whether labels are model predictions), ``caveats``
and a hand-set ``licence`` are kept when a card is regenerated over an existing one.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import yaml

from adapt3d.atomic import atomic_file
from adapt3d.data.imageio import data_files
from adapt3d.data.nnunet import CaseInfo, Dataset, check_dataset
from adapt3d.errors import InputError

CARD_VERSION = 1
UNKNOWN_LICENCE = "unknown — set it"
LICENCE_KEYS = ("licence", "license", "reference")  # dataset.json fields, first found wins
REQUIRED_CARD_KEYS = ("name", "root", "modality", "licence", "counts", "classes", "cases", "files")


class _CardDumper(yaml.SafeDumper):
    """Block style, except lists of scalars (shape, spacing) on one line."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flat = all(not isinstance(v, (list, dict)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


_CardDumper.add_representer(list, _represent_list)


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _licence_from_json(info: dict) -> str | None:
    for key in LICENCE_KEYS:
        value = info.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _class_entries(ds: Dataset, infos: list[CaseInfo]) -> dict[str, dict]:
    entries = {}
    for name, class_id in sorted(ds.classes.items(), key=lambda item: item[1]):
        per_case = {i.case.case_id: i.label_counts[class_id] for i in infos if i.label_counts and class_id in i.label_counts}
        entries[name] = {"id": class_id, "voxels": sum(per_case.values()), "n_cases": len(per_case), "per_case": per_case}
    return entries


def _spacing_summary(infos: list[CaseInfo]) -> dict[str, list[float]]:
    if not infos:
        return {}
    spacing = np.array([i.spacing for i in infos])
    return {stat: [round(float(v), 6) for v in fn(spacing, axis=0)] for stat, fn in (("min", np.min), ("median", np.median), ("max", np.max))}


def build_card(ds: Dataset, infos: list[CaseInfo], *, licence: str | None = None) -> dict:
    """The card of a validated dataset; ``infos`` must carry label counts (``check_voxels=True``)."""
    files = [ds.root / "dataset.json"] + [q for c in ds.cases for p in (c.image_path, c.label_path) if p is not None for q in (p, *data_files(p))]
    return {
        "card_version": CARD_VERSION,
        "name": ds.name,
        "root": str(ds.root),
        "description": ds.info.get("description"),
        "modality": ds.modality,
        "channel_name": ds.info.get("channel_names", {}).get("0"),
        "licence": licence or _licence_from_json(ds.info) or UNKNOWN_LICENCE,
        "silver_standard": None,
        "caveats": [],
        "counts": {
            "labelled": len(ds.labelled),
            "unlabelled": len(ds.unlabelled),
            "test": len(ds.test),
            "test_labelled": sum(c.label_path is not None for c in ds.test),
        },
        "classes": _class_entries(ds, infos),
        "spacing": _spacing_summary(infos),
        "cases": [
            {
                "id": i.case.case_id,
                "split": i.case.split,
                "image": i.case.image_path.relative_to(ds.root).as_posix(),
                "label": i.case.label_path.relative_to(ds.root).as_posix() if i.case.label_path else None,
                "shape": list(i.shape),
                "spacing": [round(s, 6) for s in i.spacing],
                "orientation": i.orientation,
            }
            for i in infos
        ],
        "files": {p.relative_to(ds.root).as_posix(): sha256_file(p) for p in files},
    }


def card_summary(card: dict) -> str:
    """A few lines for humans: modality, case counts, classes present, spacing, licence."""
    counts = card["counts"]
    present = [(name, c) for name, c in card["classes"].items() if c["n_cases"]]
    shown = ", ".join(f"{name} ({c['voxels']} voxels in {c['n_cases']} case{'s' * (c['n_cases'] != 1)})" for name, c in present[:8])
    more = f", +{len(present) - 8} more" if len(present) > 8 else ""
    lines = [
        f"{card['name']}: {card['modality']}, {counts['labelled']} labelled training cases, "
        f"{counts['unlabelled']} unlabelled (self-supervised pool), {counts['test']} test ({counts['test_labelled']} with labels)",
        f"classes: {len(present)} of {len(card['classes'])} present" + (f": {shown}{more}" if present else ""),
    ]
    if card["spacing"]:
        axes = zip(card["spacing"]["min"], card["spacing"]["median"], card["spacing"]["max"])
        lines.append("spacing mm per axis (min/median/max): " + " x ".join(f"{a:g}/{b:g}/{c:g}" for a, b, c in axes))
    lines.append(f"licence: {card['licence']}")
    return "\n".join(lines)


def read_card(path: str | os.PathLike) -> dict:
    """Load a dataset card; a missing, unparseable or incomplete card raises :class:`InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: dataset card not found")
    try:
        card = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a text file ({exc.reason})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise InputError(f"{path}: not valid YAML ({where}{getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(card, dict):
        raise InputError(f"{path}: not a dataset card (expected a YAML mapping, got {type(card).__name__})")
    missing = [key for key in REQUIRED_CARD_KEYS if key not in card]
    if missing:
        raise InputError(f"{path}: not a dataset card (missing keys: {', '.join(missing)})")
    return card


def _keep_user_fields(card: dict, previous: dict) -> None:
    """Carry the fields a user edits by hand over from the card being replaced."""
    if previous.get("name") != card["name"]:
        return
    card["silver_standard"] = previous.get("silver_standard")
    card["caveats"] = previous.get("caveats") or []
    if card["licence"] == UNKNOWN_LICENCE and previous.get("licence"):
        card["licence"] = previous["licence"]


def ingest(root: str | os.PathLike, *, out: str | os.PathLike | None = None, licence: str | None = None) -> tuple[Path, dict]:
    """Validate an nnU-Net v2 raw dataset and write its card atomically; return (card path, card).

    ``out`` defaults to ``datasets/<DatasetName>.yaml`` under the current directory; an existing
    directory (or a path ending in ``/``) gets ``<DatasetName>.yaml`` inside it. Every problem is raised at once, nothing written.
    """
    name = Path(root).resolve().name  # the dataset's name, as check_dataset gives it
    path = Path(out) if out is not None else Path("datasets") / f"{name}.yaml"
    if path.is_dir() or str(out).endswith(("/", os.sep)):
        path = path / f"{name}.yaml"
    previous = read_card(path) if path.is_file() else None
    with atomic_file(path) as tmp:  # checks the output folder before the slow part
        ds, infos = check_dataset(root, check_voxels=True)
        card = build_card(ds, infos, licence=licence)
        if previous is not None:
            _keep_user_fields(card, previous)
        text = yaml.dump(card, Dumper=_CardDumper, sort_keys=False, allow_unicode=True, width=120)
        tmp.write_text(text, encoding="utf-8")
    return path, card
