"""Adaptation runs on the real embedded sample datasets with a tiny core: run dir, resume, guard, routing, DDP."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from tiny import SAMPLE_DATA, TINY_SAM, randomise

from adapt3d import load_core
from adapt3d.cli import main
from adapt3d.cores import save_core
from adapt3d.data.domains import load_domain
from adapt3d.evaluate.nclick import Protocol, evaluate_items
from adapt3d.errors import ConfigError
from adapt3d.train.checkpoint_io import SafeCheckpointIO
from adapt3d.train.config import load_experiment
from adapt3d.train.run import run_adaptation
from adapt3d.tuners import AdapterConfig, ModalityRouter, add_adapters, load_adapter, save_adapter

MR = SAMPLE_DATA / "Dataset002_TotalSegExampleMR"
CT = SAMPLE_DATA / "Dataset001_TotalSegExampleCT"


@pytest.fixture(scope="module")
def core_path(tmp_path_factory):
    return save_core(randomise(load_core("sam-med3d", **TINY_SAM), seed=21), tmp_path_factory.mktemp("core") / "tiny.pth")


def experiment(tmp_path, core_path, **overrides) -> dict:
    cfg = {
        "name": "ct2mr",
        "seed": 0,
        "output_dir": str(tmp_path / "runs"),
        "core": {"checkpoint": str(core_path), "description": "random tiny core (tests only)"},
        "adapter": {"method": "lora", "rank": 4},
        "data": {
            "target": {"path": str(MR), "classes": ["liver", "spleen"], "test": {"classes": ["spleen"]}, "silver_standard": True},
            "reference": {"path": str(CT), "classes": ["spleen"], "silver_standard": True},
        },
        "train": {"epochs": 2, "samples_per_item": 2, "batch_size": 2, "click_rounds": 2, "accelerator": "cpu", "warmup_steps": 1},
        "eval": {"clicks": [1, 3], "val_clicks": [1]},
    }
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def adapter_tensors(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def test_ct_to_mr_adaptation_writes_a_complete_run(tmp_path, core_path, capsys):
    path = experiment(tmp_path, core_path)
    assert main(["adapt", "--config", str(path), "adapter.rank=2"]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "ct2mr"
    assert "CT Dice retention" in out and str(run) in out
    for name in ("config.yaml", "env.json", "metrics.json", "retention.csv", "adapter/ADAPTER.md", "logs/metrics.csv", "checkpoints/last.ckpt"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["schema"] == 1 and metrics["kind"] == "adapt" and metrics["adapter"]["rank"] == 2
    mr, ct = metrics["domains"]["TotalSegExampleMR"], metrics["domains"]["TotalSegExampleCT"]
    assert mr["split"] == {"train": ["ts_mr_sm/liver"], "val": [], "test": ["ts_mr_sm/spleen"]}
    assert ct["role"] == "reference" and ct["split"]["test"] == ["ts_ct/spleen"]
    for stage in ("before", "after"):
        record = mr[stage]["per_case"][0]
        assert set(record["dice"]) == {"1", "3"} and 0.0 <= record["dice"]["3"] <= 1.0
        assert (run / record["prediction"]).exists()
    ret = metrics["retention"]
    assert len(ret["history"]) == 2 and [h["epoch"] for h in ret["history"]] == [0, 1]
    expected = ct["after"]["summary"]["1"]["dice"]["mean"] / ct["before"]["summary"]["1"]["dice"]["mean"]
    assert ret["final"] == pytest.approx(expected) and ret["frozen"] == ct["before"]["summary"]["1"]["dice"]["mean"]
    rows = (run / "retention.csv").read_text().splitlines()
    assert rows[0] == "step,epoch,ct_dice,retention,target_val_dice" and len(rows) == 3
    env = json.loads((run / "env.json").read_text())
    assert env["seed"] == 0 and set(env["data_hashes"]) == {MR.name, CT.name} and env["packages"]["torch"]
    assert any("silver-standard" in c for c in metrics["caveats"])
    assert load_experiment(run / "config.yaml").adapter.rank == 2  # the resolved config reloads
    model = load_adapter(load_core("sam-med3d", core_path), run / "adapter")
    assert model.configs["default"].rank == 2


def test_same_seed_and_config_give_the_same_numbers(tmp_path, core_path):
    path = experiment(tmp_path, core_path, **{"train.epochs": 1, "data.reference": None})
    runs = [run_adaptation(load_experiment(path, [f"name=r{i}"])) for i in range(2)]
    a, b = (json.loads((r / "metrics.json").read_text()) for r in runs)
    assert a["domains"] == b["domains"]
    ta, tb = adapter_tensors(runs[0]), adapter_tensors(runs[1])
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


class _Interrupt(L.Callback):
    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_resume_gives_the_same_adapter_as_an_uninterrupted_run(tmp_path, core_path):
    path = experiment(tmp_path, core_path, **{"data.reference": None})
    whole = run_adaptation(load_experiment(path, ["name=whole"]))
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_adaptation(load_experiment(path, ["name=resumed"]), callbacks=(_Interrupt(),))
    resumed_dir = tmp_path / "runs" / "resumed.partial"  # an unfinished run never has the final name
    assert (resumed_dir / "checkpoints" / "last.ckpt").exists() and not (resumed_dir / "metrics.json").exists()
    assert not (tmp_path / "runs" / "resumed").exists()
    with pytest.raises(ConfigError, match="--resume"):  # re-running without --resume does not silently start over
        run_adaptation(load_experiment(path, ["name=resumed"]))
    resumed = run_adaptation(load_experiment(path, ["name=resumed"]), resume=True)
    ta, tb = adapter_tensors(whole), adapter_tensors(resumed)
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (whole, resumed))
    assert ma["training"]["loss_history"] == mb["training"]["loss_history"]


class _Sabotage(L.Callback):
    """Forces a CT drop at the end of epoch 1: adapter weights become NaN, so predictions are empty."""

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            with torch.no_grad():
                for p in pl_module.parameters():
                    if p.requires_grad:
                        p.fill_(float("nan"))


@contextlib.contextmanager
def _sabotaged_at_epoch_1():
    """Every run inside: the adapter breaks at the end of epoch 1, just before the monitor measures."""
    from adapt3d.train import run as run_module

    original = run_module.RetentionMonitor.on_train_epoch_end

    def sabotaged(self, trainer, pl_module):
        _Sabotage().on_train_epoch_end(trainer, pl_module)
        original(self, trainer, pl_module)

    run_module.RetentionMonitor.on_train_epoch_end = sabotaged
    try:
        yield
    finally:
        run_module.RetentionMonitor.on_train_epoch_end = original


@pytest.mark.parametrize("action", ["stop", "keep-best"])
def test_retention_guard_triggers_on_a_forced_drop(tmp_path, core_path, action):
    path = experiment(tmp_path, core_path, **{"train.epochs": 3, "retention.threshold": 0.05, "retention.action": action})
    cfg = load_experiment(path, [f"name={action}"])
    with _sabotaged_at_epoch_1():
        run = run_adaptation(cfg)
    metrics = json.loads((run / "metrics.json").read_text())
    ret = metrics["retention"]
    assert ret["history"][0]["retention"] >= 0.05 and ret["history"][1]["retention"] == 0.0
    assert ret["guard"]["triggered"] is True
    assert ret["best_checkpoint_step"] == ret["history"][0]["step"], "the last admissible state is kept"
    assert all(torch.isfinite(t).all() for t in adapter_tensors(run).values())
    epochs_run = len(ret["history"])
    assert epochs_run == (2 if action == "stop" else 3)
    assert ret["final"] >= 0.05


def test_guard_best_state_survives_a_resume(tmp_path, core_path):
    """Guard stores the epoch-0 state, the adapter breaks at epoch 1, the run dies at epoch 2 and is
    resumed: the final adapter is the stored best, as in the uninterrupted run."""
    path = experiment(tmp_path, core_path, **{"train.epochs": 3, "retention.threshold": 0.05, "retention.action": "keep-best"})
    with _sabotaged_at_epoch_1():
        whole = run_adaptation(load_experiment(path, ["name=whole"]))
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_adaptation(load_experiment(path, ["name=resumed"]), callbacks=(_Interrupt(epoch=2),))
    resumed_dir = tmp_path / "runs" / "resumed.partial"  # unfinished: not yet under its final name
    saved = SafeCheckpointIO().load_checkpoint(resumed_dir / "checkpoints" / "last.ckpt")["callbacks"]["RetentionMonitor"]
    assert saved["triggered"] is True and saved["best"]["step"] == saved["history"][0]["step"]
    resumed = run_adaptation(load_experiment(path, ["name=resumed"]), resume=True)  # epoch 2 only: no sabotage left
    ta, tb = adapter_tensors(whole), adapter_tensors(resumed)
    assert all(torch.isfinite(t).all() for t in tb.values()), "without the stored best the NaN adapter would be kept"
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    ra, rb = (json.loads((r / "metrics.json").read_text())["retention"] for r in (whole, resumed))
    assert ra["history"] == rb["history"] and rb["guard"]["triggered"] is True
    assert rb["best_checkpoint_step"] == ra["best_checkpoint_step"] == ra["history"][0]["step"]


def test_resume_refuses_a_checkpoint_that_would_run_code(tmp_path):
    """The resume loader is weights-only with an explicit allow-list, whatever torch's default."""
    from adapt3d.errors import CheckpointError

    witness = tmp_path / "ran"
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "hook": _RunsCode(str(witness))}, ckpt)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(ckpt))}: refused to load: .* outside the allow-list \((io|builtins)\.open\)"):
        SafeCheckpointIO().load_checkpoint(ckpt)
    assert not witness.exists()


class _RunsCode:
    """Unpickling this would create a file: proof that nothing from a refused pickle runs."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_routed_model_keeps_ct_retention_exactly_one(tmp_path, core_path):
    core = load_core("sam-med3d", core_path)
    for name, modality_seed in (("mr", 1), ("us", 2)):
        m = add_adapters(load_core("sam-med3d", core_path), AdapterConfig(rank=4, name=name), verbose=False)
        with torch.no_grad():
            for p in m.parameters():
                if p.requires_grad:
                    p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(modality_seed)))
        save_adapter(m, tmp_path / name)
    model = load_adapter(load_core("sam-med3d", core_path), tmp_path / "mr")
    load_adapter(model, tmp_path / "us")
    router = ModalityRouter(model, {"MR": "mr", "US": "us"})
    ct = load_domain(experiment_section(CT, ["spleen", "liver"]), "reference", seed=0, all_test=True)
    protocol = Protocol(clicks=(1, 3))
    frozen = evaluate_items(core, ct.split.test, "CT", protocol)
    with router.route("CT") as routed:
        routed_ct = evaluate_items(routed, ct.split.test, "CT", protocol)
    with router.route("MR") as routed:
        adapted_ct = evaluate_items(routed, ct.split.test, "CT", protocol)
    for k in ("1", "3"):
        assert routed_ct["summary"][k]["dice"]["mean"] / frozen["summary"][k]["dice"]["mean"] == 1.0
    assert adapted_ct["per_case"] != frozen["per_case"], "an MR adapter applied to CT does change CT"


def experiment_section(path, classes):
    from adapt3d.data.domain_config import DomainSection

    return DomainSection(path=str(path), classes=tuple(classes))


def test_ddp_with_two_cpu_processes(tmp_path, core_path):
    path = experiment(tmp_path, core_path, **{"train.epochs": 1, "data.reference": None, "train.samples_per_item": 4})
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}  # 2 ranks × 1 thread on 2 cores
    cmd = [sys.executable, "-m", "adapt3d", "adapt", "--config", str(path), "train.devices=2", "train.strategy=ddp"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "runs" / "ct2mr" / "metrics.json").read_text())
    # 4 crops of 1 training item, split over 2 ranks, batch 2: one optimizer step per epoch
    assert metrics["training"]["steps"] == 1
    assert "world_size" not in done.stderr.lower() or "2" in done.stderr


@pytest.mark.parametrize(
    "override,match",
    [
        ("adapter.rnak=4", "did you mean 'rank'"),
        ("train.epcohs=4", "did you mean 'epochs'"),
        ("data.target.path=/nonexistent", "dataset folder not found"),
        ("adapter.method=loha", "valid: lora, dora"),
        ("output_dir=/proc/forbidden", "cannot create run directory"),
        ("data.target.classes=[kidney]", "unknown class 'kidney'"),
    ],
)
def test_bad_experiments_fail_with_one_line_and_write_nothing(tmp_path, core_path, capsys, override, match):
    path = experiment(tmp_path, core_path)
    rc = main(["adapt", "--config", str(path), override])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and err.startswith("error: ") and match in err, err
    assert "\n" not in err.split("error: ", 1)[1].split("\n  ")[0]
    assert not (tmp_path / "runs").exists()


def test_evaluate_cli_on_any_dataset(tmp_path, core_path, capsys):
    out = tmp_path / "eval"
    rc = main(["evaluate", "--core", str(core_path), "--data", str(SAMPLE_DATA / "Dataset003_SpinalCordMR"), "--clicks", "1,3", "--out", str(out)])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    dom = metrics["domains"]["SpinalCordMR"]
    assert dom["after"] is None and len(dom["before"]["per_case"]) == 2
    dices = [r["dice"]["3"] for r in dom["before"]["per_case"]]
    assert dom["before"]["summary"]["3"]["dice"]["mean"] == pytest.approx(float(np.mean(dices)))
    printed = capsys.readouterr().out.splitlines()
    row = next(line for line in printed if line.startswith("SpinalCordMR"))
    assert row.split()[1] == "before" and f"{100 * dom['before']['summary']['3']['dice']['mean']:.1f}" in row.split()
    assert printed[-1] == f"run directory: {out}"
    assert main(["evaluate", "--core", str(core_path), "--data", str(SAMPLE_DATA / "Dataset003_SpinalCordMR"), "--out", str(out)]) != 0
    assert "already there" in capsys.readouterr().err


def test_training_on_keyframe_pseudolabels_masks_the_ignore_label(tmp_path, core_path):
    """pseudolabel.mode=replace: the adapters learn only from propagated labels; unknown voxels are masked."""
    from adapt3d.data.nnunet import read_dataset
    from adapt3d.train.data import CropDataset

    pseudo = tmp_path / "pseudo"
    assert main(["pseudolabel", "--data", str(MR), "--every", "4", "--backend", "nearest", "--out", str(pseudo)]) == 0
    ds = read_dataset(pseudo)
    assert ds.ignore_label == 255 and "ignore" not in ds.classes
    path = experiment(tmp_path, core_path, **{
        "train.epochs": 1, "data.reference": None, "pseudolabel.enabled": True, "pseudolabel.path": str(pseudo),
        "pseudolabel.mode": "replace",
    })
    run = run_adaptation(load_experiment(path))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["training"]["pseudolabels"] is True
    assert metrics["domains"]["TotalSegExampleMR"]["split"]["test"] == ["ts_mr_sm/spleen"]
    from adapt3d.data.items import list_items

    items, _ = list_items(ds, ["liver"], min_voxels=100)
    sample = CropDataset(items, "MR", size=32, target_spacing=(1.5, 1.5, 1.5), normalization="sam-med3d", seed=0, augment=False)[0]
    known = sample["known"]
    assert 0 < known.mean() < 1, "the pseudo-label's ignore voxels are marked unknown in the training crop"
