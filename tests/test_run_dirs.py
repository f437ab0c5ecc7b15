"""Run directories: only a finished run has its final name; Ctrl-C says how to resume; a finished
run says it is finished; the retention guard's decision is printed."""

from __future__ import annotations

import json

import lightning as L
import yaml
from conftest import SAMPLE_DATA
from tiny import TINY_SAM, randomise

from adapt3d.cli import main
from adapt3d.cores import load_core, save_core

MR = SAMPLE_DATA / "Dataset002_TotalSegExampleMR"
CT = SAMPLE_DATA / "Dataset001_TotalSegExampleCT"


def _experiment(tmp_path) -> str:
    core = save_core(randomise(load_core("sam-med3d", **TINY_SAM), seed=3), tmp_path / "tiny.pth")
    cfg = {
        "name": "r", "output_dir": str(tmp_path / "runs"),
        "core": {"checkpoint": str(core), "description": "random tiny core (tests only)"},
        "adapter": {"method": "lora", "rank": 2},
        "data": {"target": {"path": str(MR), "classes": ["liver", "spleen"], "test": {"classes": ["spleen"]}},
                 "reference": {"path": str(CT), "classes": ["spleen"]}},
        "train": {"epochs": 2, "samples_per_item": 1, "batch_size": 1, "click_rounds": 1, "accelerator": "cpu", "warmup_steps": 0},
        "eval": {"clicks": [1], "val_clicks": [1], "save_predictions": False},
        "retention": {"threshold": 5.0},  # unreachable: the guard must trigger and say so
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


class CtrlC(L.Callback):
    """Presses Ctrl-C in the second epoch (Lightning catches it and calls sys.exit(1) itself)."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise KeyboardInterrupt


def test_interrupt_resume_and_finished_run(tmp_path, capsys, monkeypatch):
    exp = _experiment(tmp_path)
    runs = tmp_path / "runs"
    import adapt3d.train.run as run_module

    real = run_module._trainer
    monkeypatch.setattr(run_module, "_trainer", lambda *a, callbacks, **k: real(*a, callbacks=[*callbacks, CtrlC()], **k))
    assert main(["adapt", "--config", exp]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" in err and str(runs / "r.partial") in err
    assert (runs / "r.partial" / "checkpoints" / "last.ckpt").exists() and not (runs / "r").exists()

    assert main(["adapt", "--config", exp]) == 2  # neither silently starting over nor mixing runs
    assert "--resume" in capsys.readouterr().err
    assert main(["adapt", "--config", exp, "train.epochs=3", "--resume"]) == 2  # other settings: refused
    assert "same settings" in capsys.readouterr().err

    monkeypatch.setattr(run_module, "_trainer", real)
    assert main(["adapt", "--config", exp, "--resume"]) == 0
    out = capsys.readouterr().out
    assert "retention guard: TRIGGERED" in out
    assert (runs / "r" / "metrics.json").exists() and not (runs / "r.partial").exists()
    metrics = json.loads((runs / "r" / "metrics.json").read_text())
    assert metrics["retention"]["guard"]["triggered"] is True
    assert metrics["training"]["steps"] == 2  # one item, one crop, batch 1: one step per epoch, two epochs

    before = (runs / "r" / "metrics.json").stat().st_mtime_ns
    assert main(["adapt", "--config", exp, "--resume"]) == 0  # finished: says so, changes nothing
    assert "finished" in capsys.readouterr().out
    assert (runs / "r" / "metrics.json").stat().st_mtime_ns == before
    assert (runs / "r" / "logs" / "metrics.csv").exists()
    assert main(["adapt", "--config", exp]) == 2  # a finished run is not replaced without --overwrite
    assert "--overwrite" in capsys.readouterr().err
