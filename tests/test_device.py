"""Device and dtype correctness on CPU, standing in for a GPU: a dtype change (float64, bf16) or the
``meta`` device moves every tensor as ``.to("cuda")`` would, so a tensor left behind shows here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import TINY_SAM, randomise

from adapt3d import load_core
from adapt3d.hostsync import HostSyncCounter
from adapt3d.train.config import TrainSection
from adapt3d.train.module import AdaptModule
from adapt3d.tuners import AdaptedModel, AdapterConfig, load_adapter, save_adapter

METHODS = [("lora", "qv"), ("dora", "qv"), ("lora", "qkv"), ("adapter", "qkv"), ("full", "qkv")]


def _model(method: str, slices: str, seed: int = 0) -> AdaptedModel:
    torch.manual_seed(seed)
    model = AdaptedModel(randomise(load_core("sam-med3d", **TINY_SAM), seed=seed))
    model.add(AdapterConfig(method=method, rank=3, qkv_slices=slices))
    with torch.no_grad():  # non-zero LoRA B / up-projections: every path carries gradient
        for p in model.parameters():
            if p.requires_grad and p.dim() == 2:
                p.add_(0.05 * torch.randn_like(p))
    return model


def _batch(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    image = torch.randn(2, 1, 32, 32, 32, generator=g).to(dtype)
    target = torch.zeros(2, 1, 32, 32, 32, dtype=dtype)
    target[0, 0, 8:20, 10:22, 9:18] = 1
    target[1, 0, 14:26, 4:12, 16:28] = 1
    known = torch.ones_like(target)
    known[1, 0, :, :, 30:] = 0
    return image, target, known


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def _step(model: AdaptedModel, dtype=torch.float32, autocast: bool = False, rounds: int = 2) -> torch.Tensor:
    module = AdaptModule(model, TrainSection(click_rounds=rounds), seed=0)
    image, target, known = _batch(dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = module.segmentation_loss(model.encode(image), {"label": target, "known": known}, np.random.default_rng(0))
    loss.backward()
    return loss


def _qkv_lora_b(model: AdaptedModel) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if "attn.qkv.lora_B" in n]


@pytest.mark.parametrize("method,slices", METHODS)
def test_every_tensor_follows_to(method, slices):
    model = _model(method, slices)
    model.to(torch.float64)
    assert {n for n, t in _tensors(model).items() if t.is_floating_point() and t.dtype != torch.float64} == set()
    model.to("meta")
    assert {n for n, t in _tensors(model).items() if t.device.type != "meta"} == set()


@pytest.mark.parametrize("method,slices", [("lora", "qv"), ("dora", "qv"), ("adapter", "qkv")])
def test_training_step_after_dtype_change(method, slices):
    model = _model(method, slices).to(torch.float64)
    loss = _step(model, torch.float64)
    assert loss.dtype == torch.float32  # the loss runs on float logits
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and p.grad.dtype == torch.float64 for p in trainable)


@pytest.mark.parametrize("method,slices", [("lora", "qv"), ("dora", "qv"), ("adapter", "qkv")])
def test_bf16_autocast_training_step(method, slices):
    model = _model(method, slices)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    loss = _step(model, autocast=True)
    assert torch.isfinite(loss)
    optimizer = torch.optim.AdamW(model.param_groups(0.01), lr=1e-2)
    optimizer.step()
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert len(changed) == len(before)


def test_pure_bf16_model_trains():
    model = _model("lora", "qv").to(torch.bfloat16)
    loss = _step(model, torch.bfloat16)
    assert torch.isfinite(loss)
    assert all(p.grad.dtype == torch.bfloat16 for p in model.parameters() if p.requires_grad)


def _assert_qv_only(model: AdaptedModel, rank: int = 3) -> None:
    grads = _qkv_lora_b(model)
    assert grads
    for p in grads:
        g, dim = p.grad, p.shape[0] // 3
        assert g[dim : 2 * dim].abs().max() == 0, "k rows must stay frozen"
        assert g[:dim, rank:].abs().max() == 0 and g[2 * dim :, :rank].abs().max() == 0
        assert g[:dim, :rank].abs().max() > 0 and g[2 * dim :, rank:].abs().max() > 0


def test_qv_slice_gradient_after_dtype_change():
    model = _model("lora", "qv").to(torch.float64)
    _step(model, torch.float64)
    _assert_qv_only(model)


def test_qv_slice_gradient_when_conversion_swaps_tensors():
    """``.to()`` with swapped tensors (a torch future default) drops tensor hooks: they come back."""
    model = _model("dora", "qv")
    previous = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        model.to(torch.float64)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(previous)
    _step(model, torch.float64)
    _assert_qv_only(model)
    for n, p in model.named_parameters():
        if "attn.qkv.lora_magnitude_vector" in n:
            dim = p.shape[0] // 3
            assert p.grad[dim : 2 * dim].abs().max() == 0 and p.grad[:dim].abs().max() > 0


def test_loaded_adapter_follows_the_model(tmp_path):
    saved = _model("dora", "qv")
    save_adapter(saved, tmp_path / "a")
    model = AdaptedModel(randomise(load_core("sam-med3d", **TINY_SAM), seed=0)).to(torch.float64)
    model = load_adapter(model, tmp_path / "a", trainable=True)
    assert {t.dtype for t in _tensors(model).values() if t.is_floating_point()} == {torch.float64}
    _step(model, torch.float64)
    _assert_qv_only(model)
    model.to("meta")
    assert {t.device.type for t in _tensors(model).values()} == {"meta"}


def test_training_clicks_make_no_host_round_trip(monkeypatch):
    """On an accelerator the training click loop reads nothing back to the host from adapt3d code
    (a GPU would wait). The CPU stands in by not being a host device type here; the numpy path
    (``center``, and every simulator on a CPU by default) does read, which shows the counter sees it."""
    from adapt3d.prompts import device_clicks

    model = _model("lora", "qv")
    image, target, known = _batch()

    def reads(simulator: str) -> int:
        module = AdaptModule(model, TrainSection(click_rounds=3, click_simulator=simulator), seed=0)
        with HostSyncCounter() as counter:
            loss = module.segmentation_loss(model.encode(image), {"label": target, "known": known}, np.random.default_rng(0))
            loss.backward()
        return counter.from_files("adapt3d/")

    assert reads("random") >= 3  # CPU default: the numpy simulators
    monkeypatch.setattr(device_clicks, "HOST_DEVICE_TYPES", set())
    assert reads("random") == 0
    assert reads("center") >= 3  # no batched version: numpy wherever it runs


@pytest.mark.parametrize("backend", ["closed-form", "padded"])
def test_attention_backends_match_the_official_encoder(backend):
    from medim.models import sam_med3d as official

    from adapt3d.cores.sam_med3d.attention import set_attention_backend
    from adapt3d.cores.sam_med3d.image_encoder import ImageEncoderViT3D

    kw = dict(img_size=28, patch_size=4, embed_dim=24, depth=2, num_heads=2, out_chans=12, window_size=3)
    ref = official.ImageEncoderViT3D(
        **kw, use_rel_pos=True, global_attn_indexes=(1,), norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6)
    )
    ours = ImageEncoderViT3D(**kw, global_attn_indexes=(1,))
    randomise(ref, seed=4, scale=0.3)
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert set_attention_backend(ours, backend) == 2
    x = torch.randn(1, 1, 28, 28, 28, generator=torch.Generator().manual_seed(5))
    out, out_ref = ours(x), ref(x)
    assert (out - out_ref).abs().max().item() <= 1e-5
    out.square().sum().backward()
    out_ref.square().sum().backward()
    grads = dict(ours.named_parameters())
    for name, p in ref.named_parameters():
        assert torch.allclose(p.grad, grads[name].grad, atol=1e-4, rtol=1e-4), name


def test_attention_backend_choice():
    from adapt3d.cores.sam_med3d.attention import resolve_backend, set_attention_backend, window_attention
    from adapt3d.errors import ConfigError

    assert resolve_backend("auto", torch.device("cpu")) is window_attention

    with pytest.raises(ConfigError, match="attention backend 'fast'"):
        set_attention_backend(load_core("sam-med3d", **TINY_SAM), "fast")
