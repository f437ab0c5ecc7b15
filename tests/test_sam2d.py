"""The 2D SAM core (parity with PyPI ``segment-anything``, official checkpoint layout, LoRA export)
and the slice-wise evaluation protocol on real embedded sample volumes."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import types
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from tiny import SAMPLE_DATA, TINY_SAM, randomise
from torch import nn

from adapt3d import load_core
from adapt3d.cli import main
from adapt3d.cores import save_core
from adapt3d.cores.sam2d import Sam2D, infer_config
from adapt3d.cores.sam2d.image_encoder import ImageEncoderViT
from adapt3d.data.domain_config import DomainSection
from adapt3d.data.domains import load_domain
from adapt3d.data.items import prepare_case
from adapt3d.errors import Adapt3dError, CheckpointError
from adapt3d.evaluate.slicewise import (
    SlicewiseProtocol,
    evaluate_slicewise,
    segment_item_slicewise,
)
from adapt3d.report.runs import load_run
from adapt3d.tuners import AdapterConfig, add_adapters, export_merged

#: A SAM-architecture core for tests: 64² input, 8×8 token grid, windows of 3 (one padded per
#: axis), one global block; 8 decoder heads (the default), so the plain official format reloads
#: it without overrides.
TINY_SAM2D = dict(
    image_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, window_size=3, global_attn_indexes=(1,),
    prompt_dim=32, decoder_mlp_dim=32, iou_head_hidden_dim=16,
)
X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
PTS_XY = torch.tensor([[[10.0, 20.0], [40.0, 5.0], [33.0, 60.0]]])  # segment-anything order (x, y)
LABELS = torch.tensor([[1, 0, 1]])
BOX_XY = torch.tensor([[5.0, 6.0, 40.0, 50.0]])
MASK_IN = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(2))
MR = SAMPLE_DATA / "Dataset002_TotalSegExampleMR"
CORD = SAMPLE_DATA / "Dataset003_SpinalCordMR"


def reference_modules() -> types.ModuleType:
    """segment-anything's ``modeling`` and ``build_sam``, loaded without its package ``__init__``
    (which imports torchvision): a synthetic parent package points at the installed files."""
    spec = importlib.util.find_spec("segment_anything")
    if spec is None or spec.origin is None:
        raise ImportError("segment-anything is not installed (pip install -e '.[test]')")
    name = "_segment_anything_reference"
    if name not in sys.modules:
        parent = types.ModuleType(name)
        parent.__path__ = [str(Path(spec.origin).parent)]
        sys.modules[name] = parent
    return importlib.import_module(f"{name}.modeling")


def reference_tiny() -> nn.Module:
    m = reference_modules()
    return m.Sam(
        image_encoder=m.ImageEncoderViT(
            img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4, out_chans=32, qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=3, global_attn_indexes=(1,),
        ),
        prompt_encoder=m.PromptEncoder(embed_dim=32, image_embedding_size=(8, 8), input_image_size=(64, 64), mask_in_chans=16),
        mask_decoder=m.MaskDecoder(
            num_multimask_outputs=3, transformer=m.TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=32, num_heads=8),
            transformer_dim=32, iou_head_depth=3, iou_head_hidden_dim=16,
        ),
    ).eval()


def reference_outputs(ref: nn.Module, boxes=None, masks=None):
    with torch.no_grad():
        emb = ref.image_encoder(X)
        sparse, dense = ref.prompt_encoder(points=(PTS_XY, LABELS), boxes=boxes, masks=masks)
        out = ref.mask_decoder(emb[:1], ref.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=True)
    return emb, sparse, dense, out


def our_masks(model: nn.Module) -> torch.Tensor:
    """Multimask logits of ``model`` (a core or an adapted core) for the reference prompts, array order."""
    with torch.no_grad():
        emb = model.encode(X)
        return model.decode(emb[:1], PTS_XY.flip(-1), LABELS, mask_logits=MASK_IN, multimask_output=True)[0]


def tiny_core(seed: int = 3) -> nn.Module:
    return randomise(load_core("sam2d", **TINY_SAM2D), seed=seed)


def test_default_core_has_the_keys_and_shapes_of_build_sam_vit_b():
    build = importlib.import_module(reference_modules().__name__.rsplit(".", 1)[0] + ".build_sam")
    ref = {k: tuple(v.shape) for k, v in build.build_sam_vit_b().state_dict().items()}
    ours = load_core("sam2d").state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == ref
    assert len(ours) == 314 and sum(v.numel() for v in ours.values()) == 93_735_728
    assert infer_config(ours) == dict(
        embed_dim=768, in_chans=3, patch_size=16, image_size=1024, depth=12, num_heads=12, mlp_ratio=4.0,
        global_attn_indexes=(2, 5, 8, 11), window_size=14, prompt_dim=256, mask_in_chans=16, decoder_depth=2,
        decoder_mlp_dim=2048, num_multimask_outputs=3, iou_head_hidden_dim=256,
    )


@pytest.mark.parametrize("bias_budget", [1 << 26, 2000])  # one block, or global attention in row chunks
@pytest.mark.parametrize("prompts", ["points", "points+box+mask"])
def test_tiny_core_matches_segment_anything(bias_budget, prompts, monkeypatch):
    monkeypatch.setattr("adapt3d.cores.sam2d.image_encoder.BIAS_BUDGET", bias_budget)
    ref = randomise(reference_tiny(), seed=3)
    ours = load_core("sam2d", **TINY_SAM2D)
    ours.load_state_dict(ref.state_dict(), strict=True)
    boxes, masks = (BOX_XY, MASK_IN) if prompts != "points" else (None, None)
    emb_ref, sparse_ref, dense_ref, (m_ref, iou_ref) = reference_outputs(ref, boxes, masks)
    with torch.no_grad():
        emb = ours.encode(X)
        sparse, dense = ours.prompt_encoder(points=(PTS_XY, LABELS), boxes=boxes, masks=masks)
        box_rc = None if boxes is None else boxes.view(1, 2, 2).flip(-1).reshape(1, 4)
        m, iou = ours.decode(emb[:1], PTS_XY.flip(-1), LABELS, mask_logits=masks, multimask_output=True, boxes=box_rc)
    assert emb.shape == (2, 32, 8, 8) and m.shape == (1, 3, 32, 32)
    assert sparse.shape == sparse_ref.shape == (1, 4 if boxes is None else 5, 32)
    for got, want in ((emb, emb_ref), (sparse, sparse_ref), (dense, dense_ref), (m, m_ref), (iou, iou_ref)):
        assert (got - want).abs().max().item() <= 1e-4
    assert m_ref.abs().max() > 0.1 and emb_ref.abs().max() > 0.1, "non-trivial outputs"


def test_encoder_matches_segment_anything_on_the_full_size_token_grid():
    """ViT-B's geometry (1024² input, 64×64 tokens, 14-token windows padded to 70, global blocks)
    with a narrow, shallow encoder so that it runs in about a second."""
    m = reference_modules()
    kw = dict(img_size=1024, patch_size=16, embed_dim=16, depth=3, num_heads=2, out_chans=16, window_size=14,
              global_attn_indexes=(1,))
    ref = m.ImageEncoderViT(**kw, norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True).eval()
    randomise(ref, seed=4)
    ours = ImageEncoderViT(**kw)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want, got = ref(x), ours(x)
    assert got.shape == (1, 16, 64, 64) and (got - want).abs().max().item() <= 1e-4


def test_infer_config_reads_the_tiny_architecture():
    cfg = infer_config(tiny_core().state_dict())
    assert cfg == {**{k: v for k, v in TINY_SAM2D.items()}, "in_chans": 3, "mlp_ratio": 4.0, "mask_in_chans": 16,
                   "decoder_depth": 2, "num_multimask_outputs": 3}


def test_checkpoint_is_a_plain_official_state_dict_and_round_trips(tmp_path):
    core = tiny_core()
    path = save_core(core, tmp_path / "sam_tiny.pth")
    state = torch.load(path, weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    ref = reference_tiny()
    ref.load_state_dict(state, strict=True)  # what build_sam(checkpoint=...) does
    again = load_core("sam2d", path)  # no overrides: everything is read from the shapes
    assert again.config == core.config
    assert torch.equal(our_masks(again), our_masks(core))
    # the other core types refuse it, and sam2d refuses theirs
    with pytest.raises(Adapt3dError):
        load_core("sam-med3d", path)
    med3d = save_core(randomise(load_core("sam-med3d", **TINY_SAM)), tmp_path / "med3d.pth")
    with pytest.raises(CheckpointError, match="sam-med3d checkpoint, not sam2d"):
        load_core("sam2d", med3d)


def test_lora_on_sam2d_attention_exports_merged_official_weights(tmp_path):
    model = add_adapters(
        tiny_core(), AdapterConfig(method="lora", rank=4, targets=("encoder.qkv", "decoder.attn"), qkv_slices="qv"), verbose=False
    )
    names = model.modules_of["default"]
    assert "image_encoder.blocks.0.attn.qkv" in names and any(n.startswith("mask_decoder.transformer.") for n in names)
    frozen = our_masks(tiny_core())
    with torch.no_grad():  # a trained-looking adapter: LoRA B starts at zero
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(7)) * 0.3)
    expected = our_masks(model)
    assert (expected - frozen).abs().max() > 1e-2, "the adapter changes the outputs"
    result = export_merged(model, tmp_path / "merged.pth")
    assert result.merged
    ref = reference_tiny()
    ref.load_state_dict(torch.load(result.path, weights_only=True), strict=True)
    _, _, _, (got, _) = reference_outputs(ref, masks=MASK_IN)
    assert (got - expected).abs().max().item() <= 1e-4


class StandInCore(Sam2D):
    """A 2D core without a network, for checking the protocol's geometry: its low-res logits are
    positive everywhere (``radius=None``) or in a disk of ``radius`` model pixels around each
    positive click. A Sam2D by type (so it has the sam2d contract), none of its layers."""

    image_size = low_res_size = 0  # set per instance (Sam2D reads them from its config)

    def __init__(self, image_size: int = 256, radius: float | None = None) -> None:
        nn.Module.__init__(self)
        self.anchor = nn.Parameter(torch.zeros(1))
        self.image_size, self.low_res_size, self.radius = image_size, image_size // 4, radius

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        assert images.shape == (1, 3, self.image_size, self.image_size)
        return images

    def decode(self, emb, points, labels, mask_logits=None, multimask_output=False):
        n, side = (3 if multimask_output else 1), self.low_res_size
        logits = torch.full((1, 1, side, side), 10.0)
        if self.radius is not None:
            centre = torch.arange(side, dtype=torch.float32) * 4 + 1.5  # low-res pixel centres in model pixels
            near = torch.zeros(side, side, dtype=torch.bool)
            for (r, c), lab in zip(points[0].tolist(), labels[0].tolist()):
                if lab == 1:
                    near |= (centre[:, None] - r) ** 2 + (centre[None, :] - c) ** 2 <= self.radius**2
            logits = torch.where(near, 10.0, -10.0)[None, None]
        return logits.expand(1, n, side, side), torch.zeros(1, n)


def _input_axis(label_path: Path, ras_axis: int) -> int:
    ornt = nib.orientations.io_orientation(nib.load(str(label_path)).affine)
    return int(np.flatnonzero(ornt[:, 0] == ras_axis)[0])


@pytest.mark.parametrize("ras_axis", [0, 1, 2])
def test_slicewise_geometry_on_an_lps_volume(ras_axis):
    """Stand-in cores: full-slice predictions give the hand-computed Dice; click-centred disks
    land inside the object on every prompted slice and nowhere else."""
    dom = load_domain(DomainSection(path=str(MR), classes=("liver",)), "target", seed=0, all_test=True)
    (item,) = dom.split.test
    gt = np.asarray(nib.load(str(item.case.label_path)).dataobj) == 5
    axis = _input_axis(item.case.label_path, ras_axis)
    prompted = gt.any(axis=tuple(a for a in range(3) if a != axis))
    n_slices = int(prompted.sum())
    protocol = SlicewiseProtocol(clicks=(1, 3), slice_axis=ras_axis)
    prepared = prepare_case(item.case, "MR", None)
    full, used = segment_item_slicewise(StandInCore(), prepared, item, "MR", protocol)
    slab = np.zeros_like(gt)
    slab[tuple(prompted if a == axis else slice(None) for a in range(3))] = True
    assert np.array_equal(full[1], slab) and np.array_equal(full[3], slab)
    assert used == {1: n_slices, 3: 3 * n_slices}  # a full-slice prediction always leaves a false positive to click
    disks, _ = segment_item_slicewise(StandInCore(radius=12.0), prepared, item, "MR", protocol)
    hit = (disks[1] & gt).any(axis=tuple(a for a in range(3) if a != axis))
    drawn = disks[1].any(axis=tuple(a for a in range(3) if a != axis))
    assert np.array_equal(hit, prompted) and np.array_equal(drawn, prompted)


def test_slicewise_evaluation_of_a_tiny_core_writes_an_eval_record(tmp_path):
    dom = load_domain(DomainSection(path=str(CORD)), "target", seed=0, all_test=True)
    preds = tmp_path / "run" / "predictions"
    protocol = SlicewiseProtocol(clicks=(1, 2), slice_axis=1)  # coronal: the fewest slices through the cord
    ev = evaluate_slicewise(tiny_core(), dom.split.test, dom.modality, protocol, predictions_dir=preds, run_dir=tmp_path / "run")
    assert ev["clicks"] == [1, 2] and ev["protocol"]["plane"] == "coronal" and len(ev["per_case"]) == 2
    for k in ("1", "2"):
        for metric in ("dice", "nsd"):
            values = [r[metric][k] for r in ev["per_case"]]
            assert all(0.0 <= v <= 1.0 for v in values)
            assert ev["summary"][k][metric]["mean"] == pytest.approx(float(np.mean(values)))
            assert ev["per_class"]["spinal_cord"][k][metric]["mean"] == pytest.approx(float(np.mean(values)))
    for record in ev["per_case"]:
        label = nib.load(record["label"])
        axis = _input_axis(Path(record["label"]), 1)
        n_slices = int((np.asarray(label.dataobj) == 1).any(axis=tuple(a for a in range(3) if a != axis)).sum())
        assert record["clicks_used"]["1"] == n_slices and n_slices < record["clicks_used"]["2"] <= 2 * n_slices
        pred = nib.load(tmp_path / "run" / record["prediction"])
        assert pred.shape == label.shape and np.array_equal(pred.affine, nib.load(record["image"]).affine)
    json.dumps(ev)  # JSON-able as it is


def test_evaluate_cli_with_a_sam2d_core(tmp_path, capsys):
    core = save_core(tiny_core(), tmp_path / "sam_tiny.pth")
    out = tmp_path / "eval2d"
    args = ["evaluate", "--core", str(core), "--core-type", "sam2d", "--data", str(CORD), "--clicks", "1,2"]
    assert main([*args, "--slice-axis", "sagittal", "--out", str(out)]) == 0
    run = load_run(out)  # validates metrics.json against the run schema
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["core"]["name"] == "sam2d"
    before = metrics["domains"]["SpinalCordMR"]["before"]
    assert before["protocol"]["slice_axis"] == 0 and all("clicks_used" in r for r in before["per_case"])
    assert run.domains["SpinalCordMR"]["before"]["summary"]["2"]["dice"]["n"] == 2
    capsys.readouterr()
    bad = tmp_path / "bad"
    rc = main(["evaluate", "--core", str(core), "--data", str(CORD), "--slice-axis", "axial", "--out", str(bad)])
    err = capsys.readouterr().err
    assert rc == 2 and "slice_axis" in err and "sam-med3d" in err and not bad.exists()
