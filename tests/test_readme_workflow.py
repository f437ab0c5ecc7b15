"""The README's lab workflow, run as written (in an empty folder outside the repository), with the
embedded data in place of /data/... and the shipped demo core in place of sam_med3d_turbo.pth.

Only speed settings are appended to the `adapt` lines (one short epoch, one click count); every
command, option and path form is the README's own, so the README cannot drift from the CLI."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from conftest import SAMPLE_DATA

from adapt3d.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
DEMO_CORE = SAMPLE_DATA / "demo_core" / "demo_core.safetensors"
SUBSTITUTES = {
    "/data/Dataset010_MyUS": str(SAMPLE_DATA / "Dataset002_TotalSegExampleMR"),
    "/data/Dataset011_MyCT": str(SAMPLE_DATA / "Dataset001_TotalSegExampleCT"),
    "sam_med3d_turbo.pth": str(DEMO_CORE),
}
FAST = [  # one volume per domain: a declared split by class, and a short run
    "data.target.classes=[liver,spleen,kidney_left]", "data.target.test.classes=[spleen]",
    "data.reference.classes=[spleen]", "train.epochs=1", "train.samples_per_item=1", "train.batch_size=2",
    "train.click_rounds=2", "train.precision=32-true", "train.grad_checkpointing=false", "train.accelerator=cpu",
    "eval.clicks=[1,3]", "eval.val_clicks=[1]", "eval.every_n_epochs=1",
]


def workflow_commands() -> list[list[str]]:
    block = re.search(r"<!-- lab-workflow:start -->\s*```bash\n(.*?)```\s*<!-- lab-workflow:end -->", README.read_text(), re.S)
    assert block, "README: the lab workflow block (between the lab-workflow markers) is missing"
    commands = []
    for line in block.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        for old, new in SUBSTITUTES.items():
            line = line.replace(old, new)
        words = shlex.split(line)
        assert words[0] == "adapt3d", line
        commands.append(words[1:] + (FAST if words[1] == "adapt" else []))
    return commands


def test_the_readme_lab_workflow_runs_as_written(tmp_path, monkeypatch, capsys):
    lab = tmp_path / "lab"
    lab.mkdir()
    monkeypatch.chdir(lab)
    commands = workflow_commands()
    assert [c[0] for c in commands] == ["ingest", "config", "config", "adapt", "adapt", "report", "export"]
    for words in commands:
        rc = main(words)
        assert rc == 0, f"adapt3d {' '.join(words)} → exit {rc}: {capsys.readouterr().err}"
    assert (lab / "cards" / "my_us.yaml").is_file() and (lab / "my_exp.yaml").is_file()
    lora = json.loads((lab / "runs" / "us_lora_r16" / "metrics.json").read_text())
    other = json.loads((lab / "runs" / "us_adapter" / "metrics.json").read_text())
    assert lora["adapter"]["method"] == "lora" and lora["adapter"]["rank"] == 16
    assert other["adapter"]["method"] == "adapter" and other["adapter"]["rank"] == 64  # adapter=PRESET swapped it
    assert lora["core"]["checkpoint"] == str(DEMO_CORE)
    assert lora["preprocessing"]["spacing"] == [3.0, 3.0, 3.0]  # the demo core's own, carried in its file
    assert (lab / "reports" / "us" / "report.html").is_file()
    from adapt3d.cores import load_core

    merged = load_core("sam-med3d", lab / "us_merged.pth")  # loads strict
    assert sum(p.numel() for p in merged.parameters()) == sum(p.numel() for p in load_core("sam-med3d", DEMO_CORE).parameters())


@pytest.mark.parametrize("line", ["adapt3d adapt --config my_exp.yaml adapter=../adapter/adapter-r64.yaml"])
def test_a_relative_section_file_on_the_command_line_is_taken_from_the_working_directory(tmp_path, monkeypatch, capsys, line):
    monkeypatch.chdir(tmp_path)
    assert main(["config", "init", "--out", "my_exp.yaml"]) == 0
    rc = main(shlex.split(line)[1:])
    err = capsys.readouterr().err
    assert rc == 2 and str(tmp_path.parent / "adapter" / "adapter-r64.yaml") in err and "Traceback" not in err
