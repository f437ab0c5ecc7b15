"""``adapt3d report``: two tiny run directories (schema 1, real NIfTI files) → HTML, Markdown, JSON."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from adapt3d.cli import main
from adapt3d.errors import InputError
from adapt3d.report import REPORT_SCHEMA, write_report
from adapt3d.report.overlays import load_case
from adapt3d.report.runs import Run, load_run, load_runs

SHAPE = (24, 20, 16)
SPACING = (1.0, 1.25, 2.0)
AFFINE = np.diag([*SPACING, 1.0])
CLICKS = [1, 3, 5, 10]
CLASSES = {"liver": 1, "spleen": 2}
CASES = ("c0", "c1", "c2")
#: name → (dataset, role, simulated, silver_standard)
DOMAINS = {
    "mri": ("Dataset901_TinyMR", "target", False, True),
    "us": ("Dataset902_TinySimUS", "target", True, False),
    "ct": ("Dataset900_TinyCT", "reference", False, False),
}
CORE_DESCRIPTION = "tiny SAM-Med3D-architecture core trained here on Dataset900_TinyCT (3 cases)"


def _save(path: Path, array: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, AFFINE), str(path))
    return str(path)


def _ball(centre: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    grid = np.indices(SHAPE).astype(float)
    d2 = sum(((grid[a] - centre[a]) * SPACING[a]) ** 2 for a in range(3))
    return d2 <= radius_mm**2


def make_data(root: Path) -> dict:
    """Images and labels: a liver ball and a spleen ball per case, on a 24x20x16 grid."""
    rng = np.random.default_rng(0)
    files = {}
    for domain in DOMAINS:
        for c, case in enumerate(CASES):
            liver, spleen = _ball((8 + c, 9, 7), 5.0), _ball((17, 11 - c, 9), 4.0)
            label = np.where(liver, 1, 0) + np.where(spleen & ~liver, 2, 0)
            image = 100 * label + rng.normal(0, 20, SHAPE)
            files[domain, case] = (
                _save(root / domain / f"{case}_0000.nii.gz", image.astype(np.float32)),
                _save(root / domain / f"{case}.nii.gz", label.astype(np.uint8)),
            )
    return files


def case_dice(run: str, domain: str, stage: str, c: int, cls: str, k: int) -> float:
    """Hand-made Dice: before is shared by the runs (same frozen core); "lora" gains more than "adapter"."""
    base = 0.30 if stage == "before" else (0.60 if run == "lora" else 0.50)
    base += 0.1 * c + (0.05 if cls == "spleen" else 0.0) - (0.02 if domain == "us" else 0.0)
    return round(base + 0.02 * CLICKS.index(k), 4)


def _stat(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "sd": float(np.std(values)), "n": len(values)}


def _evaluation(run: str, run_dir: Path, domain: str, stage: str, data: dict) -> dict:
    per_case = []
    for c, case in enumerate(CASES):
        for cls, label_id in CLASSES.items():
            pred_rel = f"predictions/{domain}/{stage}/{case}__{cls}__{CLICKS[-1]}.nii.gz"
            gt = nib.load(data[domain, case][1]).get_fdata() == label_id
            shift = 2 - c if stage == "after" else 3
            _save(run_dir / pred_rel, np.roll(gt, shift, axis=0).astype(np.uint8))
            dice = {str(k): case_dice(run, domain, stage, c, cls, k) for k in CLICKS}
            nsd = {str(k): round(min(1.0, v + 0.1), 4) for k, v in dice.items()}
            per_case.append({"case": case, "class": cls, "image": data[domain, case][0], "label": data[domain, case][1],
                             "label_id": label_id, "dice": dice, "nsd": nsd, "prediction": pred_rel})
    summary = {str(k): {m: _stat([e[m][str(k)] for e in per_case]) for m in ("dice", "nsd")} for k in CLICKS}
    per_class = {cls: {str(k): {m: _stat([e[m][str(k)] for e in per_case if e["class"] == cls]) for m in ("dice", "nsd")}
                       for k in CLICKS} for cls in CLASSES}
    return {"clicks": CLICKS, "summary": summary, "per_class": per_class, "per_case": per_case}


def make_run(root: Path, name: str, method: str, data: dict, *, retention: list[float]) -> Path:
    """A run directory following notes/run_schema.md exactly."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    domains = {}
    for domain, (dataset, role, simulated, silver) in DOMAINS.items():
        domains[domain] = {
            "dataset": dataset, "modality": "US" if simulated else domain.upper(), "role": role,
            "simulated": simulated, "silver_standard": silver,
            "split": {"train": [], "val": [], "test": list(CASES)}, "classes": list(CLASSES),
            "before": _evaluation(name, run_dir, domain, "before", data),
            "after": _evaluation(name, run_dir, domain, "after", data),
        }
    history = [{"step": 10 * (i + 1), "epoch": i, "dice": round(0.7 * r, 4), "retention": r} for i, r in enumerate(retention)]
    metrics = {
        "schema": 1, "kind": "adapt", "name": name,
        "core": {"name": "sam-med3d", "checkpoint": None, "fingerprint": "f00dcafe", "description": CORE_DESCRIPTION},
        "adapter": {"method": method, "rank": 8, "alpha": 16.0, "targets": ["encoder.qkv", "decoder.attn"],
                    "qkv_slices": "qv", "trainable_parameters": 12345 if method == "lora" else 23456,
                    "trainable_percent": 1.234, "size_bytes": 52000, "dir": "adapter"},
        "clicks": CLICKS, "nsd_tolerance_mm": 2.0, "domains": domains,
        "retention": {"reference_domain": "ct", "metric": "dice", "clicks": 1, "frozen": 0.7, "history": history,
                      "final": retention[-1], "best_checkpoint_step": 20,
                      "guard": {"threshold": 0.9, "action": "keep-best", "triggered": min(retention) < 0.9}},
        "training": {"steps": 50, "epochs": 5, "wall_seconds": 12.5, "loss_history": [{"step": 1, "loss": 0.9}],
                     "context_head": False, "pseudolabels": method == "lora"},
        "caveats": ["The core is a tiny test core, not the published SAM-Med3D.",
                    "Dataset901_TinyMR labels are silver-standard (model predictions).",
                    "US domain is SIMULATED ultrasound rendered from MRI."],
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    config = f"adapter:\n  method: {method}\n  rank: 8\nseed: 0\n"
    (run_dir / "config.yaml").write_text(config)
    env = {"adapt3d_version": "0.1.0", "python": "3.11.7", "platform": "linux", "packages": {"torch": "2.13.0", "peft": "0.13"},
           "git_hash": "abc1234", "git_dirty": False, "seed": 0,
           "config_hash": hashlib.sha256(config.encode()).hexdigest()[:16], "data_hashes": {"Dataset901_TinyMR": "0123456789abcdef"},
           "core_fingerprint": "f00dcafe", "device": "cpu", "started": "2026-01-01T00:00:00", "finished": "2026-01-01T00:01:00",
           "wall_seconds": 60.0, "command": f"adapt3d adapt --config {name}.yaml"}
    (run_dir / "env.json").write_text(json.dumps(env))
    return run_dir


def make_runs(root: Path) -> tuple[Path, Path]:
    data = make_data(root / "data")
    return (make_run(root / "runs", "lora", "lora", data, retention=[0.99, 0.985, 0.97, 0.975, 0.96]),
            make_run(root / "runs", "adapter", "adapter", data, retention=[0.97, 0.93, 0.91, 0.88, 0.86]))


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("report")
    runs = make_runs(root)
    out = root / "out"
    assert main(["report", *map(str, runs), "--out", str(out)]) == 0
    return {
        "runs": runs, "out": out,
        "metrics": {p.name: json.loads((p / "metrics.json").read_text()) for p in runs},
        "html": (out / "report.html").read_text(), "md": (out / "report.md").read_text(),
        "json": json.loads((out / "report.json").read_text()),
    }


SECTION_TITLES = ("Overview and caveats", "Domains × clicks: before and after adaptation", "Runs side by side",
                  "Retention on the reference (CT) domain", "Dice vs clicks and per-class results",
                  "Slice overlays (best, median, worst case)", "Trainable parameters and adapter size", "Run provenance")


def test_all_sections_and_figures_present(report):
    html, md = report["html"], report["md"]
    for title in SECTION_TITLES:
        assert f"<h2>{title}</h2>" in html and f"## {title}\n" in md
    # retention + curves + per-class + one overlay per run × target domain (2 × 2)
    assert html.count("data:image/png;base64,") == 7
    linked = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", md)
    assert len(linked) == 7 and len(set(linked)) == 7
    for rel in linked:
        assert (report["out"] / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<script" not in html and "src=\"http" not in html  # self-contained
    assert "config.yaml of lora" in html and "<details>" in html and "method: lora" in md
    assert "abc1234" in html and "0123456789abcdef" in md  # git hash and data hash


def test_caveats_and_domain_markers_shown(report):
    html, md = report["html"], report["md"]
    for text in (html, md):
        assert CORE_DESCRIPTION in text
        assert "NOT RECORDED" not in text
        assert "us (simulated)" in text and "ct (reference)" in text
        assert "Silver-standard labels (model predictions, not expert annotations): mri (Dataset901_TinyMR)" in text
        assert "SIMULATED domains" in text
    assert "US domain is SIMULATED ultrasound rendered from MRI." in html
    # no bare domain name in a table's domain column
    rows = [r for t in _md_tables(md) if t[0][:2] == ["domain", "clicks"] for r in t[1]]
    assert {r[0] for r in rows} == {"mri", "us (simulated)", "ct (reference)"}
    assert re.search(r"Generated \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", md)


def _md_tables(md: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every pipe table of the Markdown as (header cells, body rows), Markdown escapes removed."""
    def cells(line: str) -> list[str]:
        return [c.strip().replace("\\", "") for c in re.split(r"(?<!\\)\|", line)[1:-1]]

    tables, lines = [], md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|-"):
            body = []
            for row in lines[i + 2:]:
                if not row.startswith("| "):
                    break
                body.append(cells(row))
            tables.append((cells(line), body))
    return tables


def _pm(cell: str) -> tuple[float, float]:
    mean, sd = cell.split(" ± ")
    return float(mean), float(sd)


def _close(shown: float, value: float) -> bool:
    """A one-decimal ×100 display of ``value``."""
    return abs(shown - 100 * value) <= 0.05 + 1e-9


def test_markdown_numbers_equal_metrics(report):
    metrics, tables = report["metrics"], _md_tables(report["md"])
    results = [t for t in tables if t[0][:4] == ["domain", "clicks", "Dice before", "Dice after"]]
    assert len(results) == 2
    for (_, rows), name in zip(results, ("lora", "adapter")):
        assert len(rows) == len(DOMAINS) * len(CLICKS)
        for row in rows:
            dom = metrics[name]["domains"][row[0].split(" ")[0]]
            s = {stage: dom[stage]["summary"][row[1]] for stage in ("before", "after")}
            for cell, (stage, metric) in zip(row[2:], [("before", "dice"), ("after", "dice"), (None, None),
                                                       ("before", "nsd"), ("after", "nsd")]):
                if stage is None:
                    assert float(cell) == pytest.approx(100 * (s["after"]["dice"]["mean"] - s["before"]["dice"]["mean"]), abs=0.05)
                    continue
                mean, sd = _pm(cell)
                assert _close(mean, s[stage][metric]["mean"]) and _close(sd, s[stage][metric]["sd"])
            assert row[-1] == "6"
    # hand-computed spot check: lora, mri, 10 clicks, after = mean of 0.66+{0,.1,.2}+{0,.05} = 0.785
    row = next(r for r in results[0][1] if r[:2] == ["mri", "10"])
    assert _pm(row[3])[0] == 78.5
    header, rows = next(t for t in tables if t[0][0] == "domain" and "Dice after: lora" in t[0])
    assert header == ["domain", "clicks", "Dice before (frozen core)", "Dice after: lora", "Dice after: adapter", "best after"]
    for row in rows:
        dom = row[0].split(" ")[0]
        for cell, source in zip(row[2:5], [("lora", "before"), ("lora", "after"), ("adapter", "after")]):
            assert _close(_pm(cell)[0], metrics[source[0]]["domains"][dom][source[1]]["summary"][row[1]]["dice"]["mean"])
        assert row[5] == "lora"


def test_json_numbers_equal_metrics_and_schema_is_stable(report):
    summary, metrics = report["json"], report["metrics"]
    assert summary["report_schema"] == REPORT_SCHEMA == 1
    assert set(summary) == {"report_schema", "generated", "adapt3d_version", "runs", "comparison", "overlays"}
    assert [r["label"] for r in summary["runs"]] == ["lora", "adapter"]
    for run in summary["runs"]:
        m = metrics[run["name"]]
        assert set(run) == {"label", "name", "dir", "kind", "run_schema", "core", "adapter", "clicks", "nsd_tolerance_mm",
                            "domains", "retention", "training", "caveats", "provenance", "notes"}
        assert set(run["core"]) == {"name", "checkpoint", "fingerprint", "description"}
        assert set(run["retention"]) == {"reference_domain", "clicks", "frozen", "final", "best", "best_step",
                                         "best_checkpoint_step", "guard", "history"}
        assert set(run["provenance"]) == {"adapt3d_version", "python", "packages", "git_hash", "git_dirty", "seed",
                                          "config_hash", "data_hashes", "started", "finished", "command"}
        assert run["adapter"] == m["adapter"] and run["caveats"] == m["caveats"] and run["notes"] == []
        for name, dom in run["domains"].items():
            assert set(dom) == {"label", "dataset", "modality", "role", "simulated", "silver_standard", "classes", "before", "after"}
            for stage in ("before", "after"):
                assert set(dom[stage]) == {"clicks", "summary", "per_class", "n_cases"}
                assert dom[stage]["summary"] == m["domains"][name][stage]["summary"]
                assert dom[stage]["per_class"] == m["domains"][name][stage]["per_class"]
                assert dom[stage]["n_cases"] == 3
        assert run["retention"]["final"] == m["retention"]["final"]
    lora, adapter = summary["runs"]
    assert (lora["retention"]["best"], lora["retention"]["best_step"]) == (0.99, 10)
    assert adapter["retention"]["guard"]["triggered"] is True
    assert len(summary["comparison"]) == len(DOMAINS) * len(CLICKS)
    for row in summary["comparison"]:
        assert set(row) == {"domain", "clicks", "before", "after"}
        for label in ("lora", "adapter"):
            for stage in ("before", "after"):
                assert row[stage][label] == metrics[label]["domains"][row["domain"]][stage]["summary"][str(row["clicks"])]["dice"]
    for o in summary["overlays"]:
        assert set(o) == {"run", "domain", "rank", "case", "class", "stage", "clicks", "dice", "shown", "note", "figure"}


def test_retention_and_parameter_tables(report):
    tables = _md_tables(report["md"])
    _, rows = next(t for t in tables if t[0][:3] == ["run", "reference set", "frozen CT Dice"])
    assert rows[0] == ["lora", "ct (reference), 1 click(s)", "70.0", "67.2", "96.0%", "99.0% (step 10)",
                       "step 20: 98.5%", "5", "≥ 90.0%, keep-best, not triggered"]
    assert rows[1][8] == "≥ 90.0%, keep-best, TRIGGERED" and rows[1][4] == "86.0%"
    _, rows = next(t for t in tables if t[0][:2] == ["run", "method"])
    assert rows[0][4] == "12,345" and rows[1][4] == "23,456" and rows[0][6] == "52.0 kB"
    assert "qkv_slices" not in report["html"] and "fused qkv: qv" in report["html"]


def test_overlays_pick_best_median_worst_by_dice_at_largest_click_count(report):
    records = [o for o in report["json"]["overlays"] if o["run"] == "lora" and o["domain"] == "mri"]
    # 6 case × class pairs; Dice at 10 clicks = 0.66 + 0.1 c + 0.05 (spleen): c2/spleen best, c0/liver worst,
    # median (index 3 of the descending list c2s, c2l, c1s, c1l, c0s, c0l) = c1/liver
    assert [(o["rank"], o["case"], o["class"]) for o in records] == [
        ("best", "c2", "spleen"), ("median", "c1", "liver"), ("worst", "c0", "liver")]
    assert [o["dice"] for o in records] == [0.91, 0.76, 0.66]
    assert all(o["shown"] and o["note"] is None and o["figure"] == "overlay_lora_mri" for o in records)
    assert not any(o["domain"] == "ct" for o in report["json"]["overlays"])  # reference domain: no overlays


def test_overlay_volumes_reoriented_with_spacing(tmp_path):
    """A volume stored as (k→x, i→y, j→z) comes back in RAS order with the spacing permuted along."""
    affine = np.array([[0, 0, 1.5, 0], [2.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 0, 1]])
    image = np.zeros((4, 5, 6), np.float32)
    image[1, 2, 3] = 1.0
    label = (image > 0).astype(np.uint8)
    paths = {}
    for key, arr in (("image", image), ("label", label), ("prediction", label)):
        paths[key] = str(tmp_path / f"{key}.nii.gz")
        nib.save(nib.Nifti1Image(arr, affine), paths[key])
    data, note = load_case(Run(path=tmp_path, label="x", metrics={}), {**paths, "label_id": 1}, "after", None)
    assert note is None and data.spacing == (1.5, 2.0, 3.0) and data.image.shape == (6, 4, 5)
    assert np.argwhere(data.masks["label"]).tolist() == [[3, 1, 2]] and data.masks["after"].sum() == 1


def test_missing_files_give_notes_not_crash(tmp_path, capsys):
    lora, adapter = make_runs(tmp_path)
    (lora / "predictions/us/after/c0__liver__10.nii.gz").unlink()  # worst case of lora / us
    (lora / "predictions/mri/before/c2__spleen__10.nii.gz").unlink()  # frozen-core contour of lora / mri best
    (adapter / "env.json").unlink()
    metrics = json.loads((adapter / "metrics.json").read_text())
    del metrics["core"]["description"]
    (adapter / "metrics.json").write_text(json.dumps(metrics))
    out = tmp_path / "out"
    assert main(["report", str(lora), str(adapter), "--out", str(out)]) == 0
    assert "1 overlay(s) skipped" in capsys.readouterr().out
    html, md = (out / "report.html").read_text(), (out / "report.md").read_text()
    missing = lora / "predictions/us/after/c0__liver__10.nii.gz"
    for text in (html, md.replace("\\", "")):
        assert f"Overlay skipped for lora / us (simulated) / worst (case c0, class liver): prediction file {missing} not found" in text
        assert "frozen-core prediction" in text and "c2__spleen__10.nii.gz not found" in text
        assert "adapter: what the core was trained on is NOT RECORDED" in text
        assert "env.json not found" in text
    summary = json.loads((out / "report.json").read_text())
    skipped = [o for o in summary["overlays"] if not o["shown"]]
    assert [(o["run"], o["domain"], o["rank"], o["figure"]) for o in skipped] == [("lora", "us", "worst", None)]
    assert summary["runs"][1]["core"]["description"] is None
    assert html.count("data:image/png;base64,") == 7  # lora / us still drawn with its two other cases


def _break(kind: str, run: Path, out: Path) -> str:
    """Make ``run`` or ``out`` bad in one way; return the text the error line must contain."""
    metrics_path = run / "metrics.json"
    if kind == "no metrics":
        metrics_path.unlink()
        return f"{metrics_path}: not found"
    if kind == "broken json":
        metrics_path.write_text('{"schema": 1, "name": ')
        return f"{metrics_path}: invalid JSON"
    metrics = json.loads(metrics_path.read_text())
    if kind == "schema 2":
        metrics["schema"] = 2
        text = f"{metrics_path}: schema: 2 is not a run schema this adapt3d reads (supported: 1)"
    elif kind == "bad summary":
        del metrics["domains"]["us"]["after"]["summary"]["5"]["nsd"]
        text = f"{metrics_path}: domains.us.after.summary.5.nsd: missing"
    else:
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        return f"{out}: already exists"
    metrics_path.write_text(json.dumps(metrics))
    return text


@pytest.mark.parametrize("kind", ["no metrics", "broken json", "schema 2", "bad summary", "output exists"])
def test_bad_input_one_line_nonzero_exit_nothing_written(kind, tmp_path, capsys):
    data = make_data(tmp_path / "data")
    good = make_run(tmp_path / "runs", "lora", "lora", data, retention=[0.99])
    bad = make_run(tmp_path / "runs", "adapter", "adapter", data, retention=[0.9])
    out = tmp_path / "out"
    expected = _break(kind, bad, out)
    capsys.readouterr()
    rc = main(["report", str(good), str(bad), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    if kind == "output exists":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
        assert main(["report", str(good), str(good.parent / "adapter"), "--out", str(out), "--overwrite"]) == 0
        assert (out / "report.html").is_file() and not (out / "keep.txt").exists()
    else:
        assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_single_run_report_has_no_comparison_and_load_run_validates(tmp_path):
    data = make_data(tmp_path / "data")
    run_dir = make_run(tmp_path / "runs", "lora", "lora", data, retention=[0.99, 0.95])
    run = load_run(run_dir)
    assert run.kmax == 10 and run.notes == [] and run.label == "lora"
    with pytest.raises(InputError, match="given more than once"):
        write_report([run_dir, tmp_path / "runs" / ".." / "runs" / "lora"], tmp_path / "out")
    copy = tmp_path / "other" / "lora_r16"
    shutil.copytree(run_dir, copy)
    assert [r.label for r in load_runs([run_dir, copy])] == ["lora (lora)", "lora (lora_r16)"]
    result = write_report([run_dir], tmp_path / "out")
    html = result["paths"]["html"].read_text()
    assert "Runs side by side" not in html and "<h2>Retention on the reference (CT) domain</h2>" in html
    assert html.count("data:image/png;base64,") == 5
