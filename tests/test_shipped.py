"""What the repository ships: the demo core and its adapters load, through adapt3d and plain peft."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel

from adapt3d import load_core
from adapt3d.tuners import load_adapter

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "datasets" / "sample" / "demo_core" / "demo_core.safetensors"


@pytest.mark.parametrize("name", ["demo-mri-lora", "demo-us-simulated-lora"])
def test_shipped_adapters_load_on_the_demo_core(name):
    core = load_core("sam-med3d", CORE)
    assert core.config.image_size == 64 and sum(p.numel() for p in core.parameters()) == 743_642
    x = torch.randn(1, 1, 64, 64, 64, generator=torch.Generator().manual_seed(0))
    pts, labels = torch.tensor([[[32.0, 32.0, 32.0]]]), torch.tensor([[1]])

    def run(model):
        with torch.no_grad():
            return model.decode(model.encode(x), pts, labels)[0]

    frozen = run(core)
    ours = load_adapter(load_core("sam-med3d", CORE), REPO / "adapters" / name)
    plain = PeftModel.from_pretrained(load_core("sam-med3d", CORE), str(REPO / "adapters" / name)).get_base_model()
    assert torch.equal(run(ours), run(plain))
    assert not torch.allclose(run(ours), frozen), "the adapter changes the core's output"
