"""Adapters on a frozen core: training touches only adapter weights, save/load/merge/export are exact."""

from __future__ import annotations

import json

import medim
import pytest
import torch
from peft import PeftModel
from tiny import TINY_SAM, randomise

from adapt3d import load_core
from adapt3d.cli import main
from adapt3d.cores import save_core
from adapt3d.errors import CheckpointError, ConfigError
from adapt3d.tuners import (
    AdapterConfig,
    add_adapters,
    export_merged,
    load_adapter,
    load_adapter_config,
    load_exported,
    save_adapter,
    save_adapter_config,
)

METHODS = ["lora", "dora", "adapter", "adaptformer", "full"]
X = torch.randn(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
PTS = torch.tensor([[[10.0, 12.0, 9.0], [20.0, 5.0, 7.0]], [[3.0, 4.0, 5.0], [30.0, 30.0, 30.0]]])
LAB = torch.tensor([[1, 0], [1, 1]])


def tiny_core(**kw):
    return randomise(load_core("sam-med3d", **{**TINY_SAM, **kw}), seed=1)


def outputs(model):
    with torch.no_grad():
        emb = model.encode(X)
        return model.decode(emb, PTS, LAB)[0]


def train_step(model, steps=1):
    opt = torch.optim.AdamW(model.param_groups(weight_decay=0.1), lr=1e-2)
    for _ in range(steps):
        emb = model.encode(X)
        logits, _ = model.decode(emb, PTS, LAB)
        loss = (logits - 1.0).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def core_weights(model):
    return {k.replace(".base_layer.", "."): v.clone() for k, v in model.core.state_dict().items()
            if ".lora_" not in k and "adapt3d_branches" not in k}


@pytest.mark.parametrize("method", METHODS)
def test_one_step_changes_only_the_adapter(method):
    model = add_adapters(tiny_core(), AdapterConfig(method=method, rank=4), verbose=False)
    before_core = core_weights(model)
    before_all = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    train_step(model)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before_all[n])}
    assert changed and changed <= trainable, changed - trainable
    after_core = core_weights(model)
    if method == "full":
        assert any(not torch.equal(after_core[k], before_core[k]) for k in before_core)
    else:
        assert all(torch.equal(after_core[k], before_core[k]) for k in before_core), "core weights must stay bit-identical"


@pytest.mark.parametrize("method", ["lora", "dora", "adapter", "adaptformer"])
def test_adapter_off_is_bit_identical_to_the_frozen_core(method):
    reference = outputs(tiny_core())
    model = add_adapters(tiny_core(), AdapterConfig(method=method, rank=4), verbose=False)
    assert torch.equal(outputs(model), reference), "a fresh adapter is the identity"
    train_step(model, steps=2)
    assert not torch.allclose(outputs(model), reference)
    with model.using(None):
        assert torch.equal(outputs(model), reference)
    assert not torch.allclose(outputs(model), reference), "the adapter is back on after the block"


@pytest.mark.parametrize("method", ["lora", "dora", "adapter", "adaptformer"])
def test_adapter_off_block_keeps_which_parameters_train(method):
    model = add_adapters(tiny_core(), AdapterConfig(method=method, rank=4), verbose=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with model.using(None):
        outputs(model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_step(model)  # the adapter still learns after the block
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in trainable)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_qv_slices_train_only_q_and_v_rows(method):
    model = add_adapters(tiny_core(), AdapterConfig(method=method, rank=4, targets=("encoder.qkv",), qkv_slices="qv"), verbose=False)
    layer = model.core.image_encoder.blocks[0].attn.qkv
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert a.shape == (8, 48) and b.shape == (144, 8)  # two rank-4 LoRAs (q, v) in one peft layer
    emb = model.encode(X)
    model.decode(emb, PTS, LAB)[0].square().mean().backward()
    dim = 48
    assert b.grad[dim : 2 * dim].abs().sum() == 0, "no gradient reaches the k rows"
    assert b.grad[:dim, 4:].abs().sum() == 0 and b.grad[2 * dim :, :4].abs().sum() == 0
    assert b.grad[:dim, :4].abs().sum() > 0 and b.grad[2 * dim :, 4:].abs().sum() > 0
    if method == "dora":
        mag = layer.lora_magnitude_vector["default"].weight
        assert mag.grad[dim : 2 * dim].abs().sum() == 0 and mag.grad[:dim].abs().sum() > 0
    model.zero_grad()
    train_step(model, steps=3)
    merged = model_merged_qkv(model)
    base = tiny_core().image_encoder.blocks[0].attn.qkv.weight
    # LoRA: exactly the core's k rows; DoRA re-normalises rows (W+0)·m/‖W+0‖ with m = ‖W‖: rounding only
    tol = 0 if method == "lora" else 1e-6
    assert (merged[dim : 2 * dim] - base[dim : 2 * dim]).abs().max() <= tol, "k rows of the merged weight are the core's"
    assert not torch.allclose(merged[:dim], base[:dim]) and not torch.allclose(merged[2 * dim :], base[2 * dim :])


def model_merged_qkv(model):
    from adapt3d.tuners import merged_state

    return merged_state(model, "default")["image_encoder.blocks.0.attn.qkv.weight"]


@pytest.mark.parametrize("method", METHODS)
def test_save_and_reload_in_a_fresh_core_gives_the_same_outputs(method, tmp_path):
    model = add_adapters(tiny_core(), AdapterConfig(method=method, rank=4, qkv_slices="qv" if method == "lora" else "qkv"), verbose=False)
    train_step(model, steps=2)
    # compare frozen with frozen: torch picks matmul kernels by requires_grad, which moves the last bit
    model.set_trainable(None)
    expected = outputs(model)
    save_adapter(model, tmp_path / "adapter", info={"data": "tiny synthetic volumes"})
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapt3d_adapter.json", "adapter_model.safetensors", "ADAPTER.md"} <= files
    card = (tmp_path / "adapter" / "ADAPTER.md").read_text()
    assert method in card and "tiny synthetic volumes" in card and model.fingerprint in card
    reloaded = load_adapter(tiny_core(), tmp_path / "adapter")
    assert torch.equal(outputs(reloaded), expected)
    assert not any(p.requires_grad for p in reloaded.parameters())
    if method in ("lora", "dora"):
        assert "adapter_config.json" in files
        plain = PeftModel.from_pretrained(tiny_core(), str(tmp_path / "adapter"))
        assert torch.equal(outputs(plain.get_base_model()), expected), "plain peft loads the same adapter"


def test_adapters_side_by_side_selected_per_call(tmp_path):
    results = {}
    for name, seed in (("mr", 0), ("us", 1)):
        torch.manual_seed(seed)
        m = add_adapters(tiny_core(), AdapterConfig(method="lora", rank=4, name=name), verbose=False)
        train_step(m, steps=1 + seed)
        m.set_trainable(None)
        results[name] = outputs(m)
        save_adapter(m, tmp_path / name)
    both = load_adapter(tiny_core(), tmp_path / "mr")
    load_adapter(both, tmp_path / "us")
    assert set(both.configs) == {"mr", "us"}
    with both.using("mr"):
        assert torch.equal(outputs(both), results["mr"])
    with both.using("us"):
        assert torch.equal(outputs(both), results["us"])
    with both.using(None):
        assert torch.equal(outputs(both), outputs(tiny_core()))
    with pytest.raises(ConfigError, match="no adapter called 'ct'"):
        both.set_active("ct")


MEDIM_SIZE = dict(image_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2, global_attn_indexes=(1,), prompt_dim=48)


@pytest.mark.parametrize("method", ["lora", "dora", "full"])
def test_merged_export_loads_strict_into_medim_and_matches(method, tmp_path):
    core = randomise(load_core("sam-med3d", **MEDIM_SIZE), seed=2, scale=0.05)
    model = add_adapters(core, AdapterConfig(method=method, rank=4, qkv_slices="qv" if method == "dora" else "qkv"), verbose=False)
    train_step(model, steps=2)
    expected = outputs(model)
    result = export_merged(model, tmp_path / "merged.pth")
    assert result.merged
    ref = medim.create_model(
        "SAM-Med3D", pretrained=False, encoder_embed_dim=48, encoder_depth=2, encoder_num_heads=2,
        encoder_global_attn_indexes=[1], prompt_embed_dim=48, image_size=32, vit_patch_size=8,
    ).eval()
    ref.load_state_dict(torch.load(result.path, weights_only=False)["model_state_dict"], strict=True)
    with torch.no_grad():
        emb = ref.image_encoder(X)
        sparse, dense = ref.prompt_encoder(points=(PTS, LAB), boxes=None, masks=None)
        got, _ = ref.mask_decoder(emb, ref.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=False)
    assert (got - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("method", ["adapter", "adaptformer"])
def test_unmergeable_methods_export_core_plus_adapter(method, tmp_path):
    model = add_adapters(tiny_core(), AdapterConfig(method=method, rank=4), verbose=False)
    train_step(model, steps=2)
    result = export_merged(model, tmp_path / "merged.pth")
    assert not result.merged and "cannot be folded" in result.message
    assert not (tmp_path / "merged.pth").exists()
    assert torch.equal(outputs(load_exported(result.path)), outputs(model))


@pytest.mark.slow
def test_lora_r32_on_full_size_core_is_small_on_disk(tmp_path):
    model = add_adapters(load_core("sam-med3d"), AdapterConfig(method="lora", rank=32), verbose=False)
    report = model.trainable_report()
    save_adapter(model, tmp_path / "a")
    size = (tmp_path / "a" / "adapter_model.safetensors").stat().st_size
    meta = json.loads((tmp_path / "a" / "adapt3d_adapter.json").read_text())
    assert meta["adapter_parameters"] == report["trainable_parameters"]
    assert size <= 8_000_000, size
    assert 0.5 < report["trainable_percent"] < 2.0


def test_config_yaml_round_trip_and_errors(tmp_path):
    cfg = AdapterConfig(method="dora", rank=8, targets=("encoder.qkv", "decoder.qv"), qkv_slices="qv")
    path = save_adapter_config(cfg, tmp_path / "a.yaml")
    assert load_adapter_config(path) == cfg
    assert AdapterConfig(method="adaptformer").targets == ("encoder.mlp", "decoder.mlp")
    with pytest.raises(ConfigError, match="unknown; valid: lora, dora, adapter, adaptformer, full, none"):
        AdapterConfig(method="loha")
    with pytest.raises(ConfigError, match="rank must be a positive integer"):
        AdapterConfig(rank=0)
    (tmp_path / "typo.yaml").write_text("method: lora\nrnak: 4\n")
    with pytest.raises(ConfigError, match="did you mean 'rank'"):
        load_adapter_config(tmp_path / "typo.yaml")
    with pytest.raises(ConfigError, match="did you mean 'encoder.qkv'.*valid keys: decoder.attn"):
        add_adapters(tiny_core(), AdapterConfig(targets=("encoder.qkvv",)), verbose=False)
    with pytest.raises(ConfigError, match="matches no module"):
        add_adapters(tiny_core(), AdapterConfig(targets=("image_encoder.nothing.*",)), verbose=False)


def test_load_adapter_refuses_bad_directories_and_other_cores(tmp_path):
    model = add_adapters(tiny_core(), AdapterConfig(rank=4), verbose=False)
    save_adapter(model, tmp_path / "a")
    with pytest.raises(CheckpointError, match="trained on core"):
        load_adapter(randomise(load_core("sam-med3d", **TINY_SAM), seed=99), tmp_path / "a")
    other = load_adapter(randomise(load_core("sam-med3d", **TINY_SAM), seed=99), tmp_path / "a", allow_other_core=True)
    assert "default" in other.configs
    with pytest.raises(CheckpointError, match="do not fit this core"):
        load_adapter(load_core("sam-med3d", **{**TINY_SAM, "embed_dim": 96}), tmp_path / "a", allow_other_core=True)
    (tmp_path / "a" / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="corrupt safetensors"):
        load_adapter(tiny_core(), tmp_path / "a")
    (tmp_path / "a" / "adapter_config.json").unlink()
    with pytest.raises(CheckpointError, match="missing adapter_config.json"):
        load_adapter(tiny_core(), tmp_path / "a")
    with pytest.raises(CheckpointError, match="adapter directory not found"):
        load_adapter(tiny_core(), tmp_path / "nope")


def test_export_cli(tmp_path, capsys):
    core = tiny_core()
    core_path = save_core(core, tmp_path / "core.pth")
    model = add_adapters(load_core("sam-med3d", core_path), AdapterConfig(rank=4), verbose=False)
    train_step(model)
    save_adapter(model, tmp_path / "adapter")
    out = tmp_path / "merged.safetensors"
    assert main(["export", "--core", str(core_path), "--adapter", str(tmp_path / "adapter"), "--out", str(out), "--format", "safetensors"]) == 0
    assert torch.allclose(outputs(load_core("sam-med3d", out)), outputs(model), atol=1e-5)
    capsys.readouterr()
    bad_out = tmp_path / "bad.pth"
    assert main(["export", "--core", str(core_path), "--adapter", str(tmp_path / "missing"), "--out", str(bad_out)]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "adapter directory not found" in err and "\n" not in err
    assert not bad_out.exists()
    assert main(["export", "--core", str(core_path), "--adapter", str(tmp_path / "adapter"), "--out", str(bad_out), "--format", "onnx"]) == 2
    assert not bad_out.exists()
