"""Numerical parity of the SAM-Med3D core with the official architecture (PyPI ``medim``)."""

from __future__ import annotations

import medim
import pytest
import torch
from medim.models import sam_med3d as official
from tiny import TINY_SAM, randomise

from adapt3d import load_core
from adapt3d.cores.sam_med3d.image_encoder import ImageEncoderViT3D


@pytest.fixture(scope="module")
def full_pair():
    torch.manual_seed(0)
    ref = medim.create_model("SAM-Med3D", pretrained=False).eval()
    randomise(ref, seed=1, scale=0.05)
    ours = load_core("sam-med3d")
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def test_default_core_has_official_keys_and_size(full_pair):
    ref, ours = full_pair
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert len(our_sd) == 324
    assert {k: tuple(v.shape) for k, v in our_sd.items()} == {k: tuple(v.shape) for k, v in ref_sd.items()}
    assert sum(v.numel() for v in our_sd.values()) == 100_509_616
    assert not any(p.requires_grad for p in ours.parameters()), "cores are frozen by default"


@pytest.mark.slow
def test_full_size_outputs_match_official(full_pair):
    ref, ours = full_pair
    x = torch.randn(1, 1, 128, 128, 128, generator=torch.Generator().manual_seed(2))
    points = torch.tensor([[[64.0, 60.0, 70.0], [20.0, 100.0, 33.0]]])
    labels = torch.tensor([[1, 0]])
    masks = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        emb_ref, emb = ref.image_encoder(x), ours.image_encoder(x)
        assert (emb_ref - emb).abs().max().item() <= 1e-4
        sp_ref, de_ref = ref.prompt_encoder(points=(points, labels), boxes=None, masks=masks)
        sp, de = ours.prompt_encoder(points=(points, labels), boxes=None, masks=masks)
        assert (sp_ref - sp).abs().max().item() <= 1e-4 and (de_ref - de).abs().max().item() <= 1e-4
        pe_ref, pe = ref.prompt_encoder.get_dense_pe(), ours.prompt_encoder.get_dense_pe()
        assert (pe_ref - pe).abs().max().item() <= 1e-6
        m_ref, iou_ref = ref.mask_decoder(emb_ref, pe_ref, sp_ref, de_ref, multimask_output=False)
        m, iou = ours.mask_decoder(emb, pe, sp, de, multimask_output=False)
    assert m.shape == (1, 1, 32, 32, 32)
    assert (m_ref - m).abs().max().item() <= 1e-4
    assert (iou_ref - iou).abs().max().item() <= 1e-4


@pytest.mark.parametrize("grid,window", [(8, 3), (7, 3), (5, 14), (6, 3)])
def test_windowed_attention_matches_official_padding(grid, window):
    """General case: several windows per axis, partial last windows, one padded window, exact tiling."""
    kw = dict(img_size=grid * 4, patch_size=4, embed_dim=24, depth=3, num_heads=2, out_chans=12, window_size=window)
    ref = official.ImageEncoderViT3D(
        **kw, use_rel_pos=True, global_attn_indexes=(1,), norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6)
    )
    ours = ImageEncoderViT3D(**kw, global_attn_indexes=(1,))
    randomise(ref, seed=grid + window, scale=0.3)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 1, grid * 4, grid * 4, grid * 4, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        diff = (ref(x) - ours(x)).abs().max().item()
    assert diff <= 1e-5


def test_gradients_match_official():
    """Training through the fast attention gives the official gradients (adapters rely on this)."""
    kw = dict(img_size=28, patch_size=4, embed_dim=24, depth=2, num_heads=2, out_chans=12, window_size=3)
    ref = official.ImageEncoderViT3D(
        **kw, use_rel_pos=True, global_attn_indexes=(1,), norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6)
    )
    ours = ImageEncoderViT3D(**kw, global_attn_indexes=(1,))
    randomise(ref, seed=9, scale=0.3)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 1, 28, 28, 28, generator=torch.Generator().manual_seed(6))
    ref(x).square().sum().backward()
    ours(x).square().sum().backward()
    grads = dict(ours.named_parameters())
    for name, p in ref.named_parameters():
        assert torch.allclose(p.grad, grads[name].grad, atol=1e-4, rtol=1e-4), name


def test_tiny_core_end_to_end_matches_official():
    """Whole model at a tiny size through the official builder's components."""
    ours = randomise(load_core("sam-med3d", **TINY_SAM), seed=4)
    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        emb = ours.encode(x)
        logits, iou = ours.decode(emb, torch.tensor([[[10.0, 12.0, 9.0]]]), torch.tensor([[1]]))
        again, _ = ours.decode(emb, torch.tensor([[[10.0, 12.0, 9.0]]]), torch.tensor([[1]]))
    assert logits.shape == (1, 1, 16, 16, 16) and iou.shape == (1, 1)
    assert torch.equal(logits, again)
