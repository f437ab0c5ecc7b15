"""SegVol core: release layout, checkpoints, text prompts, prompt conventions, zoom-out-zoom-in.

Tiny random-weight SegVol configs throughout (no pretrained weights can be downloaded here),
except the layout test, which builds the full-size default model without weights.
The CLIP tokenizer used for text prompts is a minimal one built here (see ``_write_tokenizer``),
matching the tiny text towers; the default CLIP tokenizer is tested in test_segvol_tokenizer.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import SAMPLE_DATA, TINY_SAM, randomise

from adapt3d.config import build_dataclass
from adapt3d.cores import load_core, save_core
from adapt3d.cores.segvol import SegVol, SegVolConfig, check_class_names, load_tokenizer, prompt_sentence
from adapt3d.cores.segvol.model import infer_config
from adapt3d.cores.segvol.zoom import segment_volume, segvol_normalise, zoom_out_zoom_in
from adapt3d.data.imageio import load_volume
from adapt3d.errors import CheckpointError, ConfigError, InputError

MR_IMAGE = SAMPLE_DATA / "Dataset002_TotalSegExampleMR" / "imagesTr" / "ts_mr_sm_0000.nii.gz"
WORDS = ["a", "an", "of", "computerized", "tomography", "magnetic", "resonance", "image", "ultrasound",
         "liver", "tumour", "."]
TINY = {
    "image_size": (8, 32, 32), "patch_size": (2, 8, 8), "embed_dim": 64, "depth": 2, "num_heads": 1,
    "mlp_dim": 128, "decoder_depth": 1, "decoder_mlp_dim": 64, "iou_head_hidden_dim": 32,
    "text_hidden_size": 32, "text_layers": 1, "text_heads": 1, "text_intermediate_size": 64, "text_max_positions": 24,
}


def _write_tokenizer(directory: Path) -> int:
    """A minimal CLIP BPE tokenizer for ``WORDS``: every character of a word is a token, and each
    word is merged left to right into one token ending in ``</w>``, as CLIP's vocabulary spells
    words. ``<|endoftext|>`` gets the highest id, as in CLIP (SegVol pools at the highest id).
    Returns the vocabulary size."""
    vocab: dict[str, int] = {}
    merges: list[str] = []

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    add("<|startoftext|>")
    for word in WORDS:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        for s in symbols:
            add(s)
        while len(symbols) > 1:
            merges.append(f"{symbols[0]} {symbols[1]}")
            symbols = [symbols[0] + symbols[1]] + symbols[2:]
            add(symbols[0])
    add("<|endoftext|>")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return len(vocab)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    directory = tmp_path_factory.mktemp("clip_tokenizer")
    return directory, _write_tokenizer(directory)


def _tiny(vocab_size: int = 64, seed: int = 0, **overrides) -> SegVol:
    return randomise(load_core("segvol", **{**TINY, "text_vocab_size": vocab_size, **overrides}), seed)


def _run(model: SegVol) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    image = torch.rand(1, 1, *model.config.image_size)
    emb = model.encode(image)
    points = torch.tensor([[[3.0, 10.0, 20.0], [5.0, 4.0, 4.0]]])
    return model.decode(emb, points, torch.tensor([[1, 0]]), boxes=torch.tensor([[1.0, 2, 3, 6, 20, 25]]))


def test_default_config_has_the_release_layout() -> None:
    model = SegVol()
    state = model.state_dict()
    assert len(state) == 475
    assert sum(t.numel() for t in state.values()) == 180_891_293
    per_module = {
        name: sum(t.numel() for k, t in state.items() if k.startswith(name + "."))
        for name in ("image_encoder", "mask_decoder", "prompt_encoder", "text_encoder")
    }
    assert per_module == {
        "image_encoder": 87_388_416, "mask_decoder": 29_923_716, "prompt_encoder": 19_148, "text_encoder": 63_560_013,
    }
    assert tuple(state["image_encoder.patch_embedding.position_embeddings"].shape) == (1, 2048, 768)
    assert tuple(state["image_encoder.patch_embedding.patch_embeddings.1.weight"].shape) == (768, 1024)
    assert tuple(state["image_encoder.blocks.11.attn.qkv.weight"].shape) == (2304, 768)
    assert "image_encoder.blocks.0.attn.qkv.bias" not in state
    assert "image_encoder.blocks.0.mlp.linear1.weight" in state
    assert not [k for k in state if k.startswith("image_encoder") and "cross_attn" in k]
    ids = state["text_encoder.clip_text_model.text_model.embeddings.position_ids"]
    assert ids.dtype == torch.int64 and ids.tolist() == [list(range(77))]
    assert tuple(state["text_encoder.dim_align.weight"].shape) == (768, 512)
    assert tuple(state["mask_decoder.output_upscaling.1.weight"].shape) == (192, 16, 32, 32)
    assert build_dataclass(SegVolConfig, infer_config(state), where="t") == SegVolConfig()


def test_official_format_round_trip_is_bit_identical(tmp_path: Path) -> None:
    model = _tiny()
    path = save_core(model, tmp_path / "segvol.pth")
    raw = torch.load(path, weights_only=True)
    assert isinstance(raw, dict) and len(raw) == len(model.state_dict())
    assert all(k.startswith("model.") and isinstance(v, torch.Tensor) for k, v in raw.items())
    assert "model.text_encoder.clip_text_model.text_model.embeddings.position_ids" in raw
    again = load_core("segvol", path)  # architecture read from the tensor shapes alone
    assert again.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    (masks_a, iou_a), (masks_b, iou_b) = _run(model), _run(again)
    assert masks_a.shape == (1, 1, 16, 16, 16)
    assert torch.equal(masks_a, masks_b) and torch.equal(iou_a, iou_b)


def test_training_bare_and_safetensors_checkpoints_load(tmp_path: Path) -> None:
    model = _tiny(decoder_heads=4)  # not readable from shapes: only safetensors metadata keeps it
    state = model.state_dict()
    training = {"model": {"module." + k: v for k, v in state.items()}, "optimizer": {"state": {}}, "epoch": 9}
    torch.save(training, tmp_path / "train.pth")
    torch.save(state, tmp_path / "bare.pth")
    for name in ("train.pth", "bare.pth"):
        loaded = load_core("segvol", tmp_path / name, decoder_heads=4)
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    assert load_core("segvol", tmp_path / "bare.pth").config.decoder_heads == 8  # the documented default
    st = load_core("segvol", save_core(model, tmp_path / "w.safetensors", fmt="safetensors"))
    assert st.config == model.config
    assert torch.equal(_run(st)[0], _run(model)[0])


def test_checkpoint_of_the_other_core_is_refused(tmp_path: Path) -> None:
    sam_path = save_core(load_core("sam-med3d", **TINY_SAM), tmp_path / "sam.pth")
    segvol_path = save_core(_tiny(), tmp_path / "segvol.pth")
    with pytest.raises(CheckpointError) as exc:
        load_core("segvol", sam_path)
    assert str(exc.value) == f"{sam_path}: this is a sam-med3d checkpoint, not segvol (use core 'sam-med3d')"
    with pytest.raises(CheckpointError) as exc:
        load_core("sam-med3d", segvol_path)
    assert str(exc.value) == f"{segvol_path}: this is a segvol checkpoint, not sam-med3d (use core 'segvol')"


def test_prompt_encoder_keeps_the_release_coordinate_conventions() -> None:
    pe = _tiny().prompt_encoder
    gauss = pe.pe_layer.positional_encoding_gaussian_matrix.double().numpy()
    sparse, dense = pe(points=(torch.tensor([[[3.0, 10.0, 20.0]]]), torch.tensor([[1]])), boxes=None, masks=None,
                       text_embedding=None)
    assert sparse.shape == (1, 2, 64) and dense.shape == (1, 64, 4, 4, 4)  # the point + one padding point
    # (d, h, w) of an (8, 32, 32) input: d is divided by H, h by D (the release's crossed sizes)
    proj = 2 * math.pi * ((2 * np.array([3.5 / 32, 10.5 / 8, 20.5 / 32]) - 1) @ gauss)
    expected = np.concatenate([np.sin(proj), np.cos(proj)]) + pe.point_embeddings[1].weight[0].double().numpy()
    np.testing.assert_allclose(sparse[0, 0].double().numpy(), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(sparse[0, 1], pe.not_a_point_embed.weight[0])
    cell = (2 * np.array([(2 + 0.5) / 4, (1 + 0.5) / 4, (3 + 0.5) / 4]) - 1) @ gauss * 2 * math.pi  # cell (1, 2, 3)
    dense_pe = pe.get_dense_pe()[0, :, 1, 2, 3].double().numpy()
    np.testing.assert_allclose(dense_pe, np.concatenate([np.sin(cell), np.cos(cell)]), rtol=1e-5, atol=1e-5)
    sparse, _ = pe(points=(torch.zeros(1, 2, 3), torch.tensor([[1, 0]])), boxes=torch.zeros(1, 1, 6), masks=None,
                   text_embedding=torch.zeros(1, 64))
    assert sparse.shape == (1, 2 + 2 + 1, 64)  # no padding point with a box; 2 corners; 1 text token
    with pytest.raises(ValueError, match="no mask prompt"):
        pe(points=None, boxes=None, masks=torch.zeros(1, 1, 32, 128, 128), text_embedding=None)


def test_text_prompts(tokenizer_dir: tuple[Path, int]) -> None:
    directory, vocab_size = tokenizer_dir
    model = _tiny(vocab_size)
    model.set_tokenizer(directory)
    tokens = model.text_encoder.tokenize([prompt_sentence("liver")])
    words = model.text_encoder.tokenizer.convert_ids_to_tokens(tokens["input_ids"][0])
    assert words == ["<|startoftext|>", "a</w>", "computerized</w>", "tomography</w>", "of</w>", "a</w>",
                     "liver</w>", ".</w>", "<|endoftext|>"]
    # by hand: CLIP features at the end-of-text token, then dim_align
    hidden = model.text_encoder.clip_text_model.text_model(**tokens).last_hidden_state[0, 8]
    emb = model.encode_text(["liver"])
    torch.testing.assert_close(emb[0], model.text_encoder.dim_align(hidden), rtol=0, atol=1e-6)
    assert prompt_sentence("liver", "MR") == "A magnetic resonance image of a liver."
    assert not torch.allclose(model.encode_text(["liver"], modality="MR"), emb)
    custom = model.encode_text(["liver"], template="An ultrasound image of a {}.")
    assert torch.equal(custom, model.encode_text(["liver"], modality="US"))
    with pytest.raises(ConfigError, match="known: CT, MR, US"):
        model.encode_text(["liver"], modality="PET")
    embeddings = model.encode(torch.rand(2, 1, 8, 32, 32))
    by_name, _ = model.decode(embeddings, text=["liver", "tumour"])
    by_tensor, _ = model.decode(embeddings, text=model.encode_text(["liver", "tumour"]))
    assert by_name.shape == (2, 1, 16, 16, 16) and torch.equal(by_name, by_tensor)
    assert not torch.allclose(by_name[0], by_name[1])
    # the decoder's text term: masks + (txt_align(text) · upscaled embedding), same prompts otherwise
    decoder, seen = model.mask_decoder, []
    decoder.output_upscaling.register_forward_hook(lambda module, args, out: seen.append(out))
    sparse, dense = model.prompt_encoder(None, torch.tensor([[[1.0, 2, 3, 6, 20, 25]]] * 2), None, None)
    text, image_pe = torch.randn(2, 64), model.prompt_encoder.get_dense_pe()
    with_text, _ = decoder(embeddings, text, image_pe, sparse, dense)
    without, _ = decoder(embeddings, None, image_pe, sparse, dense)
    assert torch.equal(seen[0], seen[1])
    term = decoder.txt_align_upscaled_embedding(text)[:, None, :] @ seen[0].flatten(2)
    torch.testing.assert_close(with_text - without, term.reshape(without.shape), rtol=1e-4, atol=1e-5)


def test_class_names_and_tokenizer_errors(tmp_path: Path) -> None:
    labels = json.loads((SAMPLE_DATA / "Dataset004_BrainTumourMR" / "dataset.json").read_text())["labels"]
    assert check_class_names(["tumour"], labels) == ["tumour"]
    with pytest.raises(ConfigError) as exc:
        check_class_names(["tumor"], labels)
    assert str(exc.value) == "unknown class name 'tumor' (did you mean 'tumour'?); known classes: tumour"
    with pytest.raises(InputError, match="tokenizer directory not found"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "vocab.json").write_text("{not json")
    with pytest.raises(InputError, match="not a readable CLIP tokenizer"):
        load_tokenizer(tmp_path / "bad")


def _windows(length: int, window: int, overlap: float = 0.5) -> int:
    """Sliding-window positions along one axis (MONAI: step int(window * (1 - overlap)), last flush)."""
    if length <= window:
        return 1
    step = int(window * (1 - overlap))
    return math.ceil((length - window) / step) + 1


def test_zoom_out_zoom_in_on_a_real_non_cubic_volume(tokenizer_dir: tuple[Path, int]) -> None:
    directory, vocab_size = tokenizer_dir
    model = _tiny(vocab_size)
    model.set_tokenizer(directory)
    volume = load_volume(MR_IMAGE)  # 117 x 91 x 20, LPS
    box = [(10, 15, 3), (100, 80, 16)]
    logits, result = segment_volume(model, volume, text="liver", box_ijk=box, modality="MR", progress=False)
    assert logits.shape == volume.shape == (117, 91, 20)
    assert result.logits.shape == (20, 91, 117)  # RAS, then (z, y, x)
    sizes = [s.stop - s.start for s in result.roi]
    assert result.num_windows == math.prod(_windows(n, w) for n, w in zip(sizes, (8, 32, 32))) > 1
    # the box (LPS → RAS flips i and j) lies in the ROI: z 3..16, y 91-1-80..91-1-15, x 117-1-100..117-1-10
    for s, (lo, hi) in zip(result.roi, [(3, 16), (10, 75), (16, 106)]):
        assert s.start <= lo and hi < s.stop
    outside = torch.ones_like(result.logits, dtype=torch.bool)
    outside[result.roi] = False
    assert torch.equal(result.logits[outside], result.coarse_logits[outside])
    assert not torch.equal(result.logits[result.roi], result.coarse_logits[result.roi])
    np.testing.assert_array_equal(logits, result.logits.numpy().transpose(2, 1, 0)[::-1, ::-1, :])
    again, _ = segment_volume(model, volume, text="liver", box_ijk=box, modality="MR", progress=False)
    assert np.array_equal(logits, again)


def test_zoom_single_window_and_bad_prompts() -> None:
    model = _tiny()
    image = torch.rand(6, 20, 40)  # smaller than the model input along two axes
    result = zoom_out_zoom_in(model, image, points=torch.tensor([[2.0, 5, 30]]), labels=torch.tensor([1]),
                              progress=False)
    assert result.logits.shape == (6, 20, 40) and result.roi[0] == slice(0, 6) and result.roi[1] == slice(0, 20)
    assert result.num_windows == _windows(result.roi[2].stop - result.roi[2].start, 32)
    with pytest.raises(ConfigError, match="needs a prompt"):
        zoom_out_zoom_in(model, image)
    with pytest.raises(ConfigError, match="point outside the volume"):
        zoom_out_zoom_in(model, image, points=torch.tensor([[6.0, 0, 0]]), labels=torch.tensor([1]))
    with pytest.raises(ValueError, match="no mask prompt"):
        model.decode(model.encode(torch.rand(1, 1, 8, 32, 32)), mask_logits=torch.zeros(1, 1, 16, 16, 16))


def test_segvol_normalisation_by_hand() -> None:
    a = np.arange(8, dtype=np.float32).reshape(2, 2, 2)  # mean 3.5: voxels 4..7 are the foreground
    fg = np.arange(4, 8, dtype=np.float64)
    lo, hi = np.percentile(fg, [0.05, 99.95])
    z = (np.clip(a, lo, hi) - fg.mean()) / fg.std()
    np.testing.assert_allclose(segvol_normalise(a), (z - z.min()) / (z.max() - z.min()), rtol=1e-6)


@pytest.mark.parametrize("qkv_slices", ["qkv", "qv"])
def test_lora_on_segvol_attention_merges_exactly(tmp_path: Path, qkv_slices: str) -> None:
    """The same adapter API on SegVol: LoRA in encoder qkv + decoder attention, merged export = core+adapter."""
    from adapt3d.tuners import AdapterConfig, add_adapters, export_merged

    model = add_adapters(_tiny(seed=3), AdapterConfig(method="lora", rank=4, qkv_slices=qkv_slices), verbose=False)
    names = model.modules_of["default"]
    assert any(n.startswith("image_encoder.blocks.") and n.endswith("attn.qkv") for n in names)
    assert any(n.startswith("mask_decoder.transformer.") for n in names)
    assert not any(n.startswith("text_encoder") for n in names), "CLIP's own q/v projections are not targets"
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    model.set_trainable(None)
    expected = _run(model)[0]
    result = export_merged(model, tmp_path / "merged.bin")
    assert result.merged
    merged = load_core("segvol", result.path, **{k: v for k, v in TINY.items() if k in ("num_heads",)})
    assert (_run(merged)[0] - expected).abs().max().item() <= 1e-4


def test_segvol_n_click_protocol_with_text_prompts(tokenizer_dir: tuple[Path, int]) -> None:
    """The same EVAL record as the SAM-Med3D protocol; click count 0 is the class name alone."""
    from adapt3d.data.items import list_items
    from adapt3d.data.nnunet import read_dataset
    from adapt3d.evaluate.nclick import Protocol
    from adapt3d.evaluate.segvol_protocol import evaluate_items_segvol

    directory, vocab = tokenizer_dir
    model = _tiny(vocab_size=vocab, seed=5)
    model.set_tokenizer(directory)
    ds = read_dataset(SAMPLE_DATA / "Dataset004_BrainTumourMR")
    items, _ = list_items(ds, min_voxels=100)
    protocol = Protocol(clicks=(1, 2))
    record = evaluate_items_segvol(model, items, "MR", protocol, text=True)
    assert record["clicks"] == [0, 1, 2]
    case = record["per_case"][0]
    assert set(case["dice"]) == {"0", "1", "2"} and case["class"] == "tumour"
    assert record["summary"]["2"]["dice"]["mean"] == pytest.approx(case["dice"]["2"])
    again = evaluate_items_segvol(model, items, "MR", protocol, text=True)
    assert again["per_case"][0]["dice"] == case["dice"]
