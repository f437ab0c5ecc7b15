"""The experiment schema: presets by name, copied templates, overrides, and every bad setting
refused at once before any work — one line per problem naming the key, exit code 2, nothing written."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from conftest import SAMPLE_DATA

from adapt3d.cli import main
from adapt3d.errors import ConfigError
from adapt3d.presets import CONFIGS
from adapt3d.train.checks import check_experiment
from adapt3d.train.config import config_hash, load_experiment

MR = SAMPLE_DATA / "Dataset002_TotalSegExampleMR"
CT = SAMPLE_DATA / "Dataset001_TotalSegExampleCT"

#: (override, what the one error line must name) — each alone must be refused with exit code 2.
BAD = [
    ("train.epochs=abc", "train.epochs"),
    ("train.epochs=-2", "train.epochs"),
    ("train.epochs=0", "train.epochs"),
    ("eval.clicks=[0]", "eval.clicks"),
    ("eval.clicks=[]", "eval.clicks"),
    ("train.precision=fp13", "train.precision"),
    ("train.batch_size=1.5", "train.batch_size"),
    ("seed=x", "seed"),
    ("train.lr=0", "train.lr"),
    ("adapter.rank=0", "adapter.rank"),
    ("adapter.method=lorra", "adapter.method"),
    ("adapter.targets=[encoder.qvk]", "adapter.targets"),
    ("adapter.dropout=1.5", "adapter.dropout"),
    ("retention.action=keep_best", "retention.action"),
    ("train.strategy=ddpp", "train.strategy"),
    ("train.epoch=3", "train"),
    ("data.target.path=/no/such/dataset", "data.target.path"),
    ("core.checkpoint=/no/such/core.pth", "core.checkpoint"),
    ("data.target.test.classes=[spleeen]", "data.target.test.classes"),
    ("data.reference.classes=[not_an_organ]", "data.reference.classes"),
    ("data.target.test.cases=[nobody]", "data.target.test.cases"),
    ("data.target_spacing=[1,0,1]", "data.target_spacing"),
    ("train.click_simulator=centre", "train.click_simulator"),
    ("core.name=sam-med4d", "core.name"),
    ("adapter=no-such-preset", "adapter"),
    ("data.target.test_fraction=1.0", "data.target.test_fraction"),
    ("notakey", "key=value"),
]


@pytest.mark.parametrize("override,key", BAD, ids=[b[0] for b in BAD])
def test_each_bad_setting_is_refused_before_any_work(tmp_path, capsys, override, key):
    t0 = time.time()
    rc = main(["adapt", "--config", "demo_mr_lora", f"output_dir={tmp_path / 'runs'}", override])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error: ") and key in err
    assert len(err.splitlines()) == 1  # one problem, one line
    assert not (tmp_path / "runs").exists()  # nothing written
    assert time.time() - t0 < 30  # refused before any model work (the run itself takes minutes)


def test_all_problems_are_reported_at_once(tmp_path, capsys):
    bad = ["train.epochs=abc", "train.lr=0", "eval.clicks=[0]", "adapter.targets=[encoder.qvk]", "seed=x"]
    with pytest.raises(ConfigError) as err:
        load_experiment("demo_mr_lora", bad)
        raise AssertionError("schema problems must raise before the experiment checks")
    lines = str(err.value).splitlines()
    assert "4 problems" in lines[0]  # the target is checked against the core later: see below
    assert {line.split(":")[0].strip() for line in lines[1:]} == {"train.epochs", "train.lr", "eval.clicks", "seed"}
    cfg = load_experiment("demo_mr_lora", ["adapter.targets=[encoder.qvk]", "data.target.test.classes=[spleeen]"])
    problems = check_experiment(cfg)
    assert any(p.startswith("adapter.targets: 'encoder.qvk'") and "encoder.qkv" in p for p in problems)
    assert any(p.startswith("data.target.test.classes") and "did you mean 'spleen'" in p for p in problems)


def test_a_copied_template_keeps_its_presets_and_paths_given_on_the_command_line(tmp_path, monkeypatch):
    lab = tmp_path / "lab"
    lab.mkdir()
    shutil.copy(CONFIGS / "experiment" / "ct_to_mr_sam_med3d.yaml", lab / "my_exp.yaml")
    (lab / "data").mkdir()
    (lab / "data" / "MR").symlink_to(MR)
    (lab / "my_adapter.yaml").write_text("method: dora\nrank: 4\n")
    monkeypatch.chdir(lab)
    cfg = load_experiment("my_exp.yaml", ["data.target.path=data/MR", "adapter=my_adapter.yaml"])
    assert cfg.core.name == "sam-med3d" and "SAM-Med3D turbo" in cfg.core.description  # the preset, by name
    assert cfg.data.target.path == str((lab / "data" / "MR").resolve())  # relative to the working directory
    assert cfg.adapter.method == "dora" and cfg.adapter.rank == 4  # the whole section swapped
    assert cfg.adapter.targets == ("encoder.qkv", "decoder.attn")  # dora's defaults, not lora-r32's leftovers
    swapped = load_experiment("my_exp.yaml", ["adapter=adapter-r64"])
    assert swapped.adapter.method == "adapter" and swapped.adapter.rank == 64


def test_paths_in_a_file_are_relative_to_the_file(tmp_path, monkeypatch):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "e.yaml").write_text("data:\n  target:\n    path: ../MR\n")
    (tmp_path / "MR").symlink_to(MR)
    monkeypatch.chdir(SAMPLE_DATA)  # anywhere else
    cfg = load_experiment(tmp_path / "exp" / "e.yaml")
    assert cfg.data.target.path == str((tmp_path / "MR").resolve())


def test_malformed_yaml_names_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain:\n  epochs: 3\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+:\d+: invalid YAML"):
        load_experiment(bad)


def test_config_init_writes_a_self_contained_template(tmp_path, capsys):
    out = tmp_path / "elsewhere" / "my_exp.yaml"
    assert main(["config", "init", "--config", "demo_mr_lora", "--out", str(out)]) == 0
    assert load_experiment(out).core.checkpoint == load_experiment("demo_mr_lora").core.checkpoint
    assert config_hash(load_experiment(out)) == config_hash(load_experiment("demo_mr_lora"))
    assert main(["config", "init", "--config", "demo_mr_lora", "--out", str(out)]) == 2  # refuses to overwrite
    assert main(["config", "check", "--config", str(out)]) == 0
    assert "no problems found" in capsys.readouterr().out
    assert main(["config", "check", "--config", "ct_to_mr_sam_med3d"]) == 2  # its /path/to placeholders
    assert "data.target.path" in capsys.readouterr().err
    assert main(["config", "show", "--config", "demo_mr_lora", "adapter.rank=3"]) == 0
    assert "rank: 3" in capsys.readouterr().out
    assert main(["config", "list"]) == 0
    listing = capsys.readouterr().out
    assert "lora-r32" in listing and "ct_to_mr_sam_med3d" in listing


def test_the_spelt_out_lightning_choices_are_lightnings_own():
    import typing

    from lightning.fabric.connector import _PRECISION_INPUT_STR
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    from adapt3d.train.config import ACCELERATORS, PRECISIONS, STRATEGIES

    assert set(PRECISIONS) <= set(typing.get_args(_PRECISION_INPUT_STR))
    assert set(STRATEGIES) - {"auto"} <= set(StrategyRegistry.available_strategies())
    assert set(ACCELERATORS) - {"auto", "gpu"} <= set(AcceleratorRegistry.available_accelerators())
