"""Numerical parity of the SAM-Med3D core with the official architecture (PyPI ``medim``)."""

from __future__ import annotations

import medim
import pytest
import torch
from medim.models import sam_med3d as official
from tiny import randomise

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


def assert_outputs_match(ref, ours, size: int, seed: int) -> None:
    """Encoder, prompt encoder (points + mask) and decoder of ``ours`` equal the official ``ref``'s."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 1, size, size, size, generator=g)
    points = torch.tensor([[[size / 2, size / 2 - 4, size / 2 + 6], [size / 6, size * 0.8, size / 4]]])
    labels = torch.tensor([[1, 0]])
    with torch.no_grad():
        emb_ref, emb = ref.image_encoder(x), ours.image_encoder(x)
        assert (emb_ref - emb).abs().max().item() <= 1e-4
        low = 4 * emb.shape[-1]  # the low-res mask grid: 4 × the token grid
        masks = torch.randn(1, 1, low, low, low, generator=g)
        sp_ref, de_ref = ref.prompt_encoder(points=(points, labels), boxes=None, masks=masks)
        sp, de = ours.prompt_encoder(points=(points, labels), boxes=None, masks=masks)
        assert (sp_ref - sp).abs().max().item() <= 1e-4 and (de_ref - de).abs().max().item() <= 1e-4
        pe_ref, pe = ref.prompt_encoder.get_dense_pe(), ours.prompt_encoder.get_dense_pe()
        assert (pe_ref - pe).abs().max().item() <= 1e-6
        m_ref, iou_ref = ref.mask_decoder(emb_ref, pe_ref, sp_ref, de_ref, multimask_output=False)
        m, iou = ours.mask_decoder(emb, pe, sp, de, multimask_output=False)
    assert m.shape == (1, 1, low, low, low)
    assert m.abs().max().item() > 1e-3, "a degenerate all-zero output would match trivially"
    assert (m_ref - m).abs().max().item() <= 1e-4
    assert (iou_ref - iou).abs().max().item() <= 1e-4


@pytest.mark.slow
def test_full_size_outputs_match_official(full_pair):
    ref, ours = full_pair
    assert_outputs_match(ref, ours, 128, seed=2)


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


def test_small_core_end_to_end_matches_official():
    """A small architecture built by the official builder (medim) loads strict and gives its outputs.

    medim fixes the window (14), the decoder's heads (8), MLP width (2048) and IoU head (256);
    the rest is shrunk so the whole model runs in well under a second.
    """
    arch = dict(image_size=32, vit_patch_size=8, encoder_embed_dim=48, encoder_depth=2, encoder_num_heads=2,
                encoder_global_attn_indexes=[1], prompt_embed_dim=48)
    ref = randomise(medim.create_model("SAM-Med3D", pretrained=False, **arch).eval(), seed=4, scale=0.1)
    ours = load_core(
        "sam-med3d", image_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2, window_size=14,
        global_attn_indexes=(1,), prompt_dim=48, decoder_heads=8, decoder_mlp_dim=2048, iou_head_hidden_dim=256,
    )
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert_outputs_match(ref, ours, 32, seed=7)
