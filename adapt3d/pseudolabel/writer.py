"""Write pseudo-labels as an nnU-Net v2 raw dataset with an ``ignore`` label, ``qc.json`` and a card.

Layout written into ``root`` (a temporary folder of :func:`adapt3d.atomic.atomic_dir`):
``imagesTr/<case>_0000<ending>`` (byte copies of the source images, so the dataset stands
alone), ``labelsTr/<case><ending>`` (pseudo-labels on the image's grid; ``ignore`` marks unlabelled
or uncertain voxels), ``dataset.json`` (the source's, labels plus ``"ignore"``), ``qc.json`` and
``PSEUDOLABELS.md``.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np

from adapt3d.atomic import atomic_file
from adapt3d.data.imageio import Volume, data_files, save_volume
from adapt3d.data.nnunet import Case, Dataset
from adapt3d.pseudolabel.keyframes import label_dtype


def _clean(value):
    """JSON-safe copy: NaN/inf → None, numpy scalars → Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as indented JSON (NaN as null), atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(_clean(data), indent=1, allow_nan=False) + "\n", encoding="utf-8")


class PseudolabelWriter:
    """Adds cases one by one, then :meth:`finish` writes ``dataset.json``, ``qc.json`` and the card."""

    def __init__(self, root: Path, name: str, source: Dataset, labels: dict[str, int], ignore: int) -> None:
        self.root = root
        self.name = name
        self.source = source
        self.labels = labels  # every label of the source, background included, without "ignore"
        self.ignore = ignore
        self.ending = source.info.get("file_ending", ".nii.gz")
        self.case_ids: list[str] = []
        self.dtype = label_dtype(max([ignore, *labels.values()]))

    def add(self, case: Case, pseudo: np.ndarray, reference: Volume) -> None:
        """Copy the case's image and write its pseudo-label with ``reference``'s geometry and header."""
        images = self.root / "imagesTr"
        images.mkdir(parents=True, exist_ok=True)
        for src in (case.image_path, *data_files(case.image_path)):  # a .mhd/.nhdr header with its data file
            shutil.copyfile(src, images / src.name)
        save_volume(pseudo, reference.affine, self.root / "labelsTr" / f"{case.case_id}{self.ending}", reference=reference, dtype=self.dtype)
        self.case_ids.append(case.case_id)

    def finish(self, settings: dict, qc: dict) -> None:
        """Write ``dataset.json``, ``qc.json`` and ``PSEUDOLABELS.md``."""
        info = {k: v for k, v in self.source.info.items() if k not in ("labels", "numTraining")}
        info["name"] = self.name
        info["labels"] = {**self.labels, "ignore": self.ignore}
        info["numTraining"] = len(self.case_ids)
        info["pseudolabels"] = settings
        write_json(self.root / "dataset.json", info)
        write_json(self.root / "qc.json", {"settings": settings, **qc})
        with atomic_file(self.root / "PSEUDOLABELS.md") as tmp:
            tmp.write_text(card(self.source, self.labels, settings, qc, len(self.case_ids)), encoding="utf-8")


def _mean(stats: dict | None) -> str:
    if not stats or stats.get("mean") is None:
        return "n/a"
    return f"{stats['mean']:.3f} ± {stats['sd']:.3f} (n={stats['n']})"


def card(source: Dataset, labels: dict[str, int], settings: dict, qc: dict, n_cases: int) -> str:
    """The Markdown card stating that the labels are pseudo-labels, how they were made and their QC."""
    spacing = f"every {settings['every']} slices" if settings.get("every") else f"{settings['keyframes']} keyframes per volume"
    low, high = settings["uncertain"]
    lines = [
        f"# Pseudo-labels of {source.name}",
        "",
        "**Every label map in `labelsTr/` is a pseudo-label (silver standard), not a manual annotation**,",
        "except the keyframe slices, which are copied from the source labels unchanged.",
        "",
        f"- source dataset: `{source.root}` ({n_cases} labelled cases)",
        f"- backend: `{settings['backend']}`",
        f"- keyframes: {spacing}, slice axis {settings['axis']}",
        f"- ignore label: {settings['ignore']} (unlabelled or uncertain voxels: probability in ({low}, {high}));",
        "  training excludes these voxels from the loss",
        "- fully labelled source cases were first reduced to their keyframes (the other slices hidden),",
        "  then propagated; cases whose source label already marked unlabelled voxels were propagated as given",
        "",
        "## Quality control (hidden slices of fully labelled cases; `qc.json`)",
        "",
    ]
    summary = qc.get("summary", {})
    if summary.get("classes"):
        lines += [
            "| class | Dice (confident voxels) | Dice (all, no band) | ignored fraction of object |",
            "|---|---|---|---|",
        ]
        for name, stats in summary["classes"].items():
            lines.append(f"| {name} | {_mean(stats['dice'])} | {_mean(stats['dice_all'])} | {_mean(stats['ignored_fraction'])} |")
        lines += ["", f"Ignored fraction of all non-keyframe voxels: {_mean(summary.get('ignored_fraction'))}."]
    else:
        lines.append("No fully labelled case: no quality control was possible.")
    if settings["ignore"] != max(labels.values()) + 1:
        lines += [
            "",
            f"Note: nnU-Net v2 itself wants the ignore label to be the highest id + 1 ({max(labels.values()) + 1} here);",
            "rerun with `--ignore-id next` to train nnU-Net on this dataset.",
        ]
    return "\n".join(lines) + "\n"
