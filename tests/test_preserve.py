"""CT preservation while adapting: frozen targets from the same module (adapter off, no core copy),
CT outputs held close at a large weight while the target loss falls, merged retention recorded."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from tiny import SAMPLE_DATA, TINY_SAM, randomise
from torch.utils.data import DataLoader

from adapt3d import load_core
from adapt3d.cores import save_core
from adapt3d.data.domain_config import DomainSection
from adapt3d.data.domains import load_domain
from adapt3d.errors import ConfigError
from adapt3d.train.config import RetentionSection, TrainSection, load_experiment
from adapt3d.train.data import CropDataset
from adapt3d.train.module import AdaptModule
from adapt3d.train.preserve import Preservation, preservation_source
from adapt3d.train.run import run_adaptation
from adapt3d.tuners import AdapterConfig, add_adapters

CT = SAMPLE_DATA / "Dataset001_TotalSegExampleCT"
MR = SAMPLE_DATA / "Dataset002_TotalSegExampleMR"
SPACING = (3.0, 3.0, 3.0)


def tiny_core():
    return randomise(load_core("sam-med3d", **TINY_SAM), seed=3)


def ct_source(section: RetentionSection):
    reference = load_domain(DomainSection(path=str(CT), classes=("spleen",)), "reference", seed=0, all_test=True)
    return preservation_source(section, reference)


def preservation(model, **settings) -> Preservation:
    section = RetentionSection(preserve=True, **{"preserve_pool": 3, "preserve_clicks": 2, **settings})
    return Preservation(model, ct_source(section), section, normalization="sam-med3d", spacing=SPACING,
                        simulator="center", seed=0)


@torch.no_grad()
def first_round(model, pres: Preservation) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings and first-click mask probabilities of ``model`` on the pool crops."""
    emb = model.encode(pres.images)
    low = model.low_res_size
    logits, _ = model.decode(emb, pres.points[:, :1], pres.labels[:, :1], mask_logits=torch.zeros(len(emb), 1, low, low, low))
    return emb, torch.sigmoid(logits)


@pytest.mark.parametrize("method", ["lora", "dora", "adapter", "full"])
def test_frozen_targets_come_from_the_same_module_with_the_adapter_off(method):
    plain = tiny_core()  # test-only reference copy of the core's weights
    model = add_adapters(tiny_core(), AdapterConfig(method=method, rank=4), verbose=False)
    if method != "full":
        with torch.no_grad():  # an adapter that changes the outputs, so "off" and "on" differ
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.3 * torch.randn_like(p))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    n_params = sum(p.numel() for p in model.parameters())
    pres = preservation(model)
    # no second copy of the core: the module's parameters are the model's, the preserver holds only
    # its cache (crops, clicks, frozen embeddings and logits), whose size is known
    module = AdaptModule(model, TrainSection(), seed=0, preserve=pres)
    assert sum(p.numel() for p in module.parameters()) == n_params
    assert not any(isinstance(v, torch.nn.Module) for v in vars(pres).values())
    pool, size, low, rounds = 3, model.image_size, model.low_res_size, 2
    emb_numel = pres.embeddings[0].numel()
    assert pres.cache_bytes() == 4 * pool * (size**3 + emb_numel + rounds * low**3 + rounds * 3) + 8 * pool * rounds
    assert pres.cache_bytes() < 0.5 * n_params * 4 + 4 * pool * size**3
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable, "building must not change what trains"
    # the cached targets are the frozen core's outputs, not the adapted model's
    emb_plain, prob_plain = first_round(plain, pres)
    torch.testing.assert_close(pres.embeddings, emb_plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.sigmoid(pres.logits[:, 0]), prob_plain, rtol=1e-5, atol=1e-5)
    if method != "full":
        emb_adapted, prob_adapted = first_round(model, pres)
        assert not torch.allclose(emb_adapted, emb_plain, atol=1e-3) or not torch.allclose(prob_adapted, prob_plain, atol=1e-3)
    assert pres.labels[:, 0].eq(1).all(), "the first click is positive, inside the pseudo-object"


def target_loss(module: AdaptModule, batch: dict) -> float:
    """Dice+CE of the click rounds on a fixed batch with fixed clicks (dropout off)."""
    module.model.eval()
    with torch.no_grad():
        emb = module.model.encode(batch["image"])
        loss = module.segmentation_loss(emb, batch, np.random.default_rng(0))
    module.model.train()
    return float(loss)


def train(weight: float) -> tuple:
    L.seed_everything(0, verbose=False)
    model = add_adapters(tiny_core(), AdapterConfig(method="lora", rank=4, targets=("encoder.qkv", "decoder.attn")), verbose=False)
    pres = preservation(model, preserve_weight=weight, preserve_crops=2)
    target = load_domain(DomainSection(path=str(MR), classes=("liver", "spleen"), test=dict_split()), "target", seed=0)
    data = CropDataset(target.split.train, target.modality, size=32, target_spacing=SPACING, normalization="sam-med3d",
                       seed=0, samples_per_item=8, augment=False)
    module = AdaptModule(model, TrainSection(lr=2e-2, warmup_steps=1, click_rounds=2, batch_size=2), seed=0, preserve=pres)
    batch = next(iter(DataLoader(data, batch_size=4)))
    before = target_loss(module, batch)
    trainer = L.Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=False)
    module.train()
    trainer.fit(module, DataLoader(data, batch_size=2, shuffle=False))
    return model, pres, (before, target_loss(module, batch))


def dict_split():
    from adapt3d.data.domain_config import SplitSection

    return SplitSection(classes=("spleen",))


def test_large_preservation_weight_keeps_ct_outputs_while_the_target_loss_falls():
    plain = tiny_core()
    free, pres, free_losses = train(weight=0.0)
    kept, pres_kept, (loss_before, loss_after) = train(weight=50.0)
    frozen_emb, frozen_prob = first_round(plain, pres)

    def distance(model, p):
        emb, prob = first_round(model, p)
        return float(((emb - frozen_emb) ** 2).mean() / (frozen_emb**2).mean()), float((prob - frozen_prob).abs().mean())

    free_emb, free_prob = distance(free, pres)
    kept_emb, kept_prob = distance(kept, pres_kept)
    values = {"kept_losses": (loss_before, loss_after), "free_losses": free_losses, "kept_emb": kept_emb,
              "kept_prob": kept_prob, "free_emb": free_emb, "free_prob": free_prob}
    assert kept_emb < 0.01 and kept_prob < 0.025, values
    assert kept_emb < 0.1 * free_emb and kept_prob < 0.3 * free_prob, values  # without it CT outputs move much further
    assert len(pres_kept.history) == 16  # one preservation loss per training step
    free_gain = free_losses[0] - free_losses[1]
    assert free_gain > 0.02, values  # four epochs do teach the target without preservation ...
    assert loss_after < loss_before - 0.1 * free_gain, values  # ... and still do, more slowly, under a heavy preservation weight


def experiment(tmp_path, core_path, method: str, **retention) -> list[str]:
    cfg = {
        "name": method, "seed": 0, "output_dir": str(tmp_path / "runs"),
        "core": {"checkpoint": str(core_path), "description": "random tiny core (tests only)"},
        "adapter": {"method": method, "rank": 4},
        "data": {"target_spacing": list(SPACING),
                 "target": {"path": str(MR), "classes": ["liver", "spleen"], "test": {"classes": ["spleen"]}},
                 "reference": {"path": str(CT), "classes": ["spleen"]}},
        "train": {"epochs": 1, "samples_per_item": 2, "batch_size": 2, "click_rounds": 2, "accelerator": "cpu", "warmup_steps": 1},
        "eval": {"clicks": [1, 3], "val_clicks": [1], "save_predictions": False},
        "retention": {"preserve": True, "preserve_pool": 2, "preserve_clicks": 2, **retention},
    }
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("method", ["lora", "adapter", "full"])
def test_run_records_the_preservation_loss_and_the_merged_retention(tmp_path, method):
    core_path = save_core(tiny_core(), tmp_path / "tiny.pth")
    run = run_adaptation(load_experiment(experiment(tmp_path, core_path, method)))
    metrics = json.loads((run / "metrics.json").read_text())
    kept = metrics["training"]["preserve"]
    assert len(kept["loss_history"]) == metrics["training"]["steps"] > 0
    assert kept["weight"] == 1.0 and kept["target"] == "both" and kept["crops_per_step"] == 2
    assert ("adapters off" in kept["frozen_outputs"]) == (method != "full")
    with open(run / "logs" / "metrics.csv") as f:
        assert "train/preserve_loss" in next(csv.reader(f))
    merged = metrics["retention"]["merged"]
    assert merged["mergeable"] == (method != "adapter") and set(merged["per_click"]) == {"1", "3"}
    after = metrics["domains"]["TotalSegExampleCT"]["after"]["summary"]
    for k in ("1", "3"):  # merging is exact: the merged core gives the adapted model's CT Dice
        assert merged["dice"][k] == pytest.approx(after[k]["dice"]["mean"], abs=1e-3)
    assert merged["final"] == pytest.approx(merged["per_click"]["1"])
    if method == "lora":  # the report puts the setting, target gain and merged retention side by side
        from adapt3d.report import write_report

        text = Path(write_report([run], tmp_path / "report")["paths"]["markdown"]).read_text()
        assert "MERGED CT retention @3" in text and "on: weight 1.0, 2 crops/step, both" in text
        assert f"{100 * merged['per_click']['3']:.1f}%" in text


def test_bad_preservation_settings_fail_before_model_work(tmp_path):
    path = experiment(tmp_path, tmp_path / "missing.pth", "lora")
    with pytest.raises(ConfigError, match="retention.preserve_target"):
        load_experiment(path, ["retention.preserve_target=masks"])
    with pytest.raises(ConfigError, match="retention.preserve_crops"):
        load_experiment(path, ["retention.preserve_crops=0"])
    with pytest.raises(ConfigError, match="retention.preserve needs CT images"):
        run_adaptation(load_experiment(path, ["data.reference=null"]))
    with pytest.raises(ConfigError, match="retention.preserve_path: .*nowhere: dataset folder not found"):
        run_adaptation(load_experiment(path, [f"retention.preserve_path={tmp_path / 'nowhere'}"]))
