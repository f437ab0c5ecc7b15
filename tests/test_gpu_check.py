"""``benchmarks/gpu_check.py --device cpu --quick`` keeps the GPU check's code paths working on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
CHECKS = ["encoder_parity_latency", "train_step", "host_round_trips", "adapt_run", "whole_volume_predict",
          "segvol_zoom", "segvol_lora_step", "ddp_smoke"]


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu_check") / "quick.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.is_file(), done.stderr[-2000:]
    report = json.loads(out.read_text())
    report["returncode"] = done.returncode
    return report


def test_every_check_runs_and_is_ok(quick_report):
    assert quick_report["quick"] is True and quick_report["device"].startswith("cpu")
    assert [c["name"] for c in quick_report["checks"]] == CHECKS
    failed = {c["name"]: c.get("error") for c in quick_report["checks"] if not c["ok"]}
    assert failed == {}
    assert quick_report["returncode"] == 0
    assert all(isinstance(c["seconds"], float) for c in quick_report["checks"])


def test_figures_are_there_and_right(quick_report):
    checks = {c["name"]: c for c in quick_report["checks"]}
    enc = checks["encoder_parity_latency"]["rows"]
    assert {(r["batch"], r["precision"]) for r in enc} == {(1, "fp32"), (1, "bf16"), (2, "fp32"), (2, "bf16")}
    for r in enc:
        assert r["official_ms"] > 0 and r["adapt3d_closed-form_ms"] > 0 and r["adapt3d_padded_ms"] > 0
        if r["precision"] == "fp32":  # both exact backends agree with the official architecture
            assert r["closed-form_max_abs_diff_vs_official_fp32"] < 1e-4
            assert r["padded_max_abs_diff_vs_official_fp32"] < 1e-4
    steps = checks["train_step"]["rows"]
    assert {r["method"] for r in steps if r["impl"] == "adapt3d"} == {"lora", "lora-qv", "dora", "adapter", "full"}
    assert {r["impl"] for r in steps} == {"adapt3d", "official", "official+peft"}
    assert any(r["grad_checkpointing"] and r["precision"] == "bf16" for r in steps)
    trainable = {r["method"]: r["trainable"] for r in steps if r["impl"] == "adapt3d"}
    assert trainable["adapter"] < trainable["lora"] < trainable["full"]
    sync = checks["host_round_trips"]
    assert sync["random_on_device"]["host_reads_adapt3d"] == 0 and sync["center"]["host_reads_adapt3d"] > 0
    assert sync["random_default"]["host_reads_adapt3d"] > 0  # a CPU keeps the numpy simulators
    assert checks["adapt_run"]["steps"] > 0 and checks["adapt_run"]["volumes_per_s"] > 0
    assert checks["whole_volume_predict"]["windows"] >= 1
    assert checks["ddp_smoke"]["k_slice_max_abs"] == 0.0 and checks["ddp_smoke"]["backend"] == "gloo"


def test_a_failing_check_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))

    def boom(ctx):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(gpu_check, "CHECKS", [("boom", boom), ("fine", lambda ctx: {"ok": True, "figure": 1})])
    report = gpu_check.run_checks("cpu", True, tmp_path / "r.json")
    on_disk = json.loads((tmp_path / "r.json").read_text())
    assert on_disk["checks"] == json.loads(json.dumps(report["checks"]))
    boom_entry, fine = on_disk["checks"]
    assert boom_entry["ok"] is False and boom_entry["error"] == "RuntimeError: out of memory (simulated)"
    assert fine == {"name": "fine", "ok": True, "figure": 1, "seconds": fine["seconds"]}
