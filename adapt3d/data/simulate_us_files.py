"""Write simulated-ultrasound cases as an nnU-Net v2 raw dataset, with a SIMULATED.md provenance note."""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from adapt3d.atomic import atomic_dir
from adapt3d.data import nnunet
from adapt3d.data.imageio import ending_of, save_volume, strip_ending
from adapt3d.data.simulate_us import UltrasoundParams, check_label_grid, label_cut_fractions, simulate_ultrasound
from adapt3d.data.simulate_us_probe import resolve_probe
from adapt3d.errors import InputError

_log = logging.getLogger(__name__)

def _source_json(image_path: Path) -> tuple[Path | None, dict]:
    """The nnU-Net dataset folder holding ``image_path`` (its dataset.json) if there is one."""
    folders = [image_path.parent] + ([image_path.parent.parent] if image_path.parent.name.startswith("images") else [])
    for folder in folders:
        path = folder / "dataset.json"
        if path.is_file():
            try:
                info = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise InputError(f"{path}: not valid JSON ({exc})") from exc
            return folder, info if isinstance(info, dict) else {}
    return None, {}


def _licence(folder: Path | None, info: dict) -> str:
    """Licence from dataset.json, else the row naming the dataset in a README/ATTRIBUTION table beside it."""
    for key in ("licence", "license"):
        if info.get(key):
            return str(info[key])
    if folder is not None:
        for readme in (folder / "README.md", folder.parent / "README.md", folder.parent / "ATTRIBUTION.md"):
            lines = readme.read_text(encoding="utf-8", errors="replace").splitlines() if readme.is_file() else []
            for line in lines:
                cells = [c.strip() for c in line.strip().strip("|").split("|")]
                if line.lstrip().startswith("|") and folder.name in cells[0]:
                    return f"{cells[-1]} (from {readme})"
    return "unknown (not stated beside the source)"


def _case_id(image_path: Path) -> str:
    return re.sub(r"_\d{4}$", "", strip_ending(image_path))


def _write(jobs: list[tuple[nnunet.Case, int]], out_dir: Path, params: UltrasoundParams, source: Path, overwrite: bool) -> dict:
    """Render every (case, seed) into a temporary dataset folder, then move it onto ``out_dir``.

    Files are written in the source's format (its file ending) with the source's geometry.
    """
    folder, info = _source_json(jobs[0][0].image_path)
    ending = ending_of(jobs[0][0].image_path)
    params, probe = resolve_probe(params, info)
    labels = info.get("labels") if isinstance(info.get("labels"), dict) else None
    modality = str((info.get("channel_names") or {}).get("0", "unknown"))
    found: set[int] = set()
    results = []
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for case, seed in tqdm(jobs, desc="simulating ultrasound", unit="case", disable=None, leave=False):
            image, label = nnunet.load_case(case)
            us, cut_label = simulate_ultrasound(image, label, seed=seed, params=params)
            images_dir, labels_dir = nnunet.SPLITS[case.split]
            save_volume(us.array, us.affine, tmp / images_dir / f"{case.case_id}_0000{ending}", reference=image)
            cut = None
            if label is not None and cut_label is not None:
                save_volume(cut_label.array, cut_label.affine, tmp / labels_dir / f"{case.case_id}{ending}", reference=label)
                cut = label_cut_fractions(label.array, cut_label.array)
                found.update(cut)
                _log.debug("%s: label voxels outside the simulated fan (set to 0): %s", case.case_id, cut or "none")
            results.append({"case": case.case_id, "source": str(case.image_path), "seed": seed, "label_cut": cut})
        if labels is None:
            ids = sorted(found)
            labels = {"background": 0, **({"foreground": ids[0]} if len(ids) == 1 else {f"class_{i}": i for i in ids})}
        names = {v: k for k, v in labels.items() if isinstance(v, int) and not isinstance(v, bool)}
        for result in results:
            if result["label_cut"] is not None:
                result["label_cut"] = {names.get(i, str(i)): f for i, f in result["label_cut"].items()}
        licence = _licence(folder, info)
        dataset = {
            "name": out_dir.name,
            "description": f"SIMULATED ultrasound rendered by adapt3d from {source} ({modality}); NOT real ultrasound.",
            "channel_names": {"0": "US"},
            "labels": labels,
            "numTraining": sum(case.split == "train" for case, _ in jobs),
            "file_ending": ending,
            "licence": f"as the source: {licence}",
        }
        (tmp / "dataset.json").write_text(json.dumps(dataset, indent=1) + "\n", encoding="utf-8")
        (tmp / "SIMULATED.md").write_text(_provenance(source, modality, licence, params, probe, results), encoding="utf-8")
    return {"out_dir": str(out_dir), "cases": results, "labels": labels, "probe": probe}


def _provenance(source: Path, modality: str, licence: str, params: UltrasoundParams, probe: str, results: list[dict]) -> str:
    rows = "\n".join(
        f"| {r['case']} | {r['source']} | {r['seed']} | {json.dumps(r['label_cut']) if r['label_cut'] is not None else 'no label'} |"
        for r in results
    )
    return f"""# SIMULATED ultrasound — not real ultrasound

Every image here is a simulated ultrasound volume rendered by `adapt3d simulate-us` from
`{source}` (source modality: {modality}; licence: {licence}). It stands in for real 3D
ultrasound, which was not available with masks; results on it must be reported as "simulated US".

Probe: {probe}. Rendering: fan-shaped field of view from a probe on one face, speckle, boundary echoes and
acoustic shadows from a pseudo-impedance of the source intensities, depth attenuation with
time-gain compensation, anisotropic blur, log compression. Intensities are in [1, 255] inside
the fan and 0 outside it; label voxels outside the fan were set to 0 (fractions cut below).

| case | source file | seed | fraction of each class cut (outside the fan) |
|---|---|---|---|
{rows}

Parameters (`UltrasoundParams`):

```json
{json.dumps(asdict(params), indent=1)}
```
"""


def simulate_us_files(
    image_path: str | os.PathLike,
    label_path: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    params: UltrasoundParams | None = None,
    overwrite: bool = False,
) -> dict:
    """Write one SIMULATED-ultrasound case as an nnU-Net raw dataset in ``out_dir`` (atomic).

    Returns ``{"out_dir", "cases": [{"case", "source", "seed", "label_cut"}], "labels", "probe"}`` (probe:
    where the probe sat, in words; ``probe_axis="auto"`` is resolved from the source's dataset.json).
    """
    image_path = Path(image_path)
    case = nnunet.Case(_case_id(image_path), image_path, Path(label_path) if label_path is not None else None, "train")
    image, label = nnunet.load_case(case)  # fail before anything is created
    if label is not None:
        check_label_grid(image, label)
    return _write([(case, seed)], Path(out_dir), params or UltrasoundParams(), image_path, overwrite)


def simulate_us_dataset(
    src_dataset_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    seed: int = 0,
    params: UltrasoundParams | None = None,
    cases: list[str] | None = None,
    *,
    overwrite: bool = False,
) -> dict:
    """Convert a whole nnU-Net raw dataset into a SIMULATED-ultrasound one in ``out_dir`` (atomic).

    Case number ``n`` of the sorted source case list (imagesTr then imagesTs) is rendered with
    ``seed + n``, so a subset gets the same images as the full conversion. Splits are kept.
    """
    ds = nnunet.read_dataset(src_dataset_dir)
    known = {case.case_id: (n, case) for n, case in enumerate(ds.cases)}
    unknown = sorted(set(cases or []) - set(known))
    if unknown:
        raise InputError(f"{ds.root}: unknown case(s) {', '.join(unknown)}; available: {', '.join(known)}")
    chosen = [known[c] for c in cases] if cases else list(known.values())
    jobs = [(case, seed + n) for n, case in chosen]
    return _write(jobs, Path(out_dir), params or UltrasoundParams(), ds.root, overwrite)
