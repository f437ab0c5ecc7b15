"""SegVol's default CLIP tokenizer (``adapt3d.cores.segvol.default_tokenizer``), with no user folder.

Two references, neither of them the code under test:
* SegVol's own way: ``AutoTokenizer`` on a ``config/clip``-style folder (the BPE files plus the
  ``tokenizer_config.json`` / ``special_tokens_map.json`` values of ``openai/clip-vit-base-patch32``,
  written here), the batch padded as SegVol pads it;
* OpenAI's original pure-Python BPE (``clip/simple_tokenizer.py`` of the installed ``openai-clip``,
  loaded by file path: the ``clip`` package itself needs torchvision), on the vocabulary file it ships.
No network: the vocabulary is the installed package's file; caches go to a temporary folder.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import json
import shutil
import unicodedata
from importlib import metadata
from pathlib import Path

import pytest
import torch
from tiny import randomise

from adapt3d.cores import load_core
from adapt3d.cores.segvol import PROMPT_TEMPLATES, default_tokenizer, load_tokenizer, prompt_sentence
from adapt3d.cores.segvol import tokenizer as tokenizer_module
from adapt3d.cores.segvol.tokenizer import read_merges, vocabulary_source
from adapt3d.errors import ConfigError, InputError

TINY = {
    "image_size": (8, 32, 32), "patch_size": (2, 8, 8), "embed_dim": 64, "depth": 2, "num_heads": 1,
    "mlp_dim": 128, "decoder_depth": 1, "decoder_mlp_dim": 64, "iou_head_hidden_dim": 32,
    "text_hidden_size": 32, "text_layers": 1, "text_heads": 1, "text_intermediate_size": 64, "text_max_positions": 24,
}
LONG = " ".join(["left kidney upper pole"] * 30)  # far over 77 tokens
ODD = [
    "", "   ", "liver\tand\nspleen", "LiVeR", "SPLEEN", "Kidney_Right", "__init__", "vertebrae_C1", "rib 12",
    "3.14159", "1234567890", "!!!...,,,???", "a.b,c;d:e", "(L) lung-lobe/upper", "don't 's 't 're 've 'm 'll 'd",
    "#$%&*+<=>@[]^`{|}~", "Ünïcödé naïve café", "Leber – größer", "ΑΒΓ δέλτα", "肝臓と脾臓", "🫀 heart ❤",
    "e\u0301cho", "A &amp; B", "the patient’s liver", LONG, "x" * 200,
]
#: openai/clip-vit-base-patch32's tokenizer settings, as in SegVol's config/clip.
SEGVOL_CONFIG = {"do_lower_case": True, "model_max_length": 77, "tokenizer_class": "CLIPTokenizer",
                 "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                 "pad_token": "<|endoftext|>", "errors": "replace", "add_prefix_space": False}
SEGVOL_SPECIAL = {k: SEGVOL_CONFIG[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):
    """``$XDG_CACHE_HOME`` in a temporary folder, and the in-memory cache emptied around the module."""
    root = tmp_path_factory.mktemp("xdg_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(root))
        tokenizer_module._default_tokenizer.cache_clear()
        yield root
    tokenizer_module._default_tokenizer.cache_clear()


@pytest.fixture(scope="module")
def default(cache: Path):
    return default_tokenizer()


@pytest.fixture(scope="module")
def segvol_reference(default, cache: Path, tmp_path_factory: pytest.TempPathFactory):
    """SegVol's loading: AutoTokenizer on a config/clip folder with the same BPE files."""
    from transformers import AutoTokenizer

    (built,) = (cache / "adapt3d" / "clip-tokenizer").glob("*/vocab.json")
    folder = tmp_path_factory.mktemp("config_clip")
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(built.parent / name, folder / name)
    (folder / "tokenizer_config.json").write_text(json.dumps(SEGVOL_CONFIG))
    (folder / "special_tokens_map.json").write_text(json.dumps(SEGVOL_SPECIAL))
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


@pytest.fixture(scope="module")
def openai_bpe():
    """OpenAI's SimpleTokenizer from the openai-clip distribution, on the file that it ships."""
    dist = metadata.distribution("openai-clip")
    code = Path(str(dist.locate_file("clip/simple_tokenizer.py")))
    spec = importlib.util.spec_from_file_location("openai_clip_simple_tokenizer", code)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SimpleTokenizer(str(Path(str(dist.locate_file("clip/bpe_simple_vocab_16e6.txt.gz")))))


def _class_names(sample_data: Path) -> list[str]:
    names = []
    for path in sorted(sample_data.glob("*/dataset.json")):
        names += [str(k) for k in json.loads(path.read_text())["labels"] if str(k) != "background"]
    return sorted(set(names))


def _sentences(sample_data: Path) -> list[str]:
    return [prompt_sentence(n, m) for m in PROMPT_TEMPLATES for n in _class_names(sample_data)]


def _openai_ids(bpe, text: str) -> list[int]:
    """CLIP's own tokenize(): start, BPE tokens, end; truncated to 77 with the end token kept."""
    start, end = bpe.encoder["<|startoftext|>"], bpe.encoder["<|endoftext|>"]
    return [start, *bpe.encode(text)[:75], end]


def _left_alone_by_openai_cleaning(text: str) -> bool:
    """OpenAI's tokenizer first runs ftfy and html.unescape, which SegVol's HF tokenizer does not."""
    import ftfy

    return ftfy.fix_text(text) == text and html.unescape(text) == text and unicodedata.is_normalized("NFC", text)


def test_vocabulary_comes_from_the_openai_clip_distribution(default) -> None:
    source = vocabulary_source()
    assert source == Path(str(metadata.distribution("openai-clip").locate_file("clip/bpe_simple_vocab_16e6.txt.gz")))
    assert type(default).__name__ in ("CLIPTokenizer", "CLIPTokenizerFast")
    assert len(default) == 49408
    assert default.convert_ids_to_tokens([49406, 49407]) == ["<|startoftext|>", "<|endoftext|>"]
    assert (default.pad_token, default.unk_token, default.model_max_length) == ("<|endoftext|>", "<|endoftext|>", 77)


def test_same_ids_as_openai_bpe(default, openai_bpe, sample_data: Path) -> None:
    texts = _sentences(sample_data) + [t for t in ODD if _left_alone_by_openai_cleaning(t)]
    assert len(texts) > 3 * 100 and LONG in texts and "肝臓と脾臓" in texts
    for text in texts:
        got = default(text, truncation=True, max_length=77)
        assert got["input_ids"] == _openai_ids(openai_bpe, text), text
        assert got["attention_mask"] == [1] * len(got["input_ids"])
    assert len(default(LONG, truncation=True, max_length=77)["input_ids"]) == 77


@pytest.mark.parametrize("modality", sorted(PROMPT_TEMPLATES))
def test_same_batches_as_segvols_tokenizer(default, segvol_reference, sample_data: Path, modality: str) -> None:
    sentences = [prompt_sentence(n, modality) for n in _class_names(sample_data)]
    for batch in (sentences, ODD, sentences[:3] + ODD[-3:]):
        options = {"padding": True, "truncation": True, "max_length": 77, "return_tensors": "pt"}
        got, ref = default(batch, **options), segvol_reference(batch, **options)
        assert torch.equal(got["input_ids"], ref["input_ids"]) and torch.equal(got["attention_mask"], ref["attention_mask"])
    one = default(ODD[:3], padding=True)  # SegVol's own call: padding only
    assert one == segvol_reference(ODD[:3], padding=True)
    width = len(one["input_ids"][2])  # the longest of the three
    assert width > 4 and one["input_ids"][0] == [49406] + [49407] * (width - 1)  # padded with <|endoftext|>
    assert one["attention_mask"][0] == [1, 1] + [0] * (width - 2)


def test_cache_in_memory_and_on_disk(default, cache: Path, tmp_path: Path) -> None:
    assert default_tokenizer() is default and load_tokenizer() is default
    (folder,) = (cache / "adapt3d" / "clip-tokenizer").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == [
        "merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 49408 and vocab["<|endoftext|>"] == 49407
    again = default_tokenizer(tmp_path / "elsewhere")
    assert again is not default and again("liver spleen") == default("liver spleen")
    assert [p.name for p in (tmp_path / "elsewhere").iterdir()] == [folder.name]  # no staging folder left
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    in_memory = default_tokenizer(blocker / "cache")  # cannot be written: built in a temporary folder
    assert in_memory("Liver") == default("Liver") and blocker.read_text() == "not a folder"


def test_missing_or_bad_vocabulary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(tokenizer_module, "VOCAB_DISTRIBUTION", "adapt3d-no-such-distribution")
    with pytest.raises(ConfigError, match=r"needs the adapt3d-no-such-distribution package .*config/clip"):
        vocabulary_source()
    short = tmp_path / "short.txt.gz"
    short.write_bytes(gzip.compress("header\na b\nab c\n".encode()))
    with pytest.raises(InputError, match=r"short.txt.gz: 2 merge rules, expected 48894"):
        read_merges(short)
    bad = tmp_path / "bad.txt.gz"
    bad.write_bytes(gzip.compress(("header\n" + "a b\n" * 48893 + "a b c\n").encode()))
    with pytest.raises(InputError, match=r"bad.txt.gz: bad merge rule 'a b c', expected 48894 rules"):
        read_merges(bad)
    (tmp_path / "plain.gz").write_text("not gzip")
    with pytest.raises(InputError, match="plain.gz: not a readable gzip BPE vocabulary"):
        read_merges(tmp_path / "plain.gz")


def _user_folder(directory: Path) -> Path:
    """A user's tokenizer folder with a vocabulary of its own: single characters, no merges."""
    chars = sorted(set("acdefghilmnoprstuvyz."))
    vocab = {"<|startoftext|>": 0, **{c + "</w>": i + 1 for i, c in enumerate(chars)}}
    vocab.update({c: len(vocab) + i for i, c in enumerate(chars)})
    vocab["<|endoftext|>"] = len(vocab)
    directory.mkdir()
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return directory


def test_user_folder_overrides_the_default(default, tmp_path: Path) -> None:
    folder = _user_folder(tmp_path / "mine")
    mine = load_tokenizer(folder)
    assert len(mine) == 44 and mine("a liver")["input_ids"] != default("a liver")["input_ids"]
    model = randomise(load_core("segvol", **TINY, text_vocab_size=44), seed=2)
    model.set_tokenizer(folder)
    tokens = model.text_encoder.tokenize(["a liver."])
    assert tokens["input_ids"][0].tolist() == mine("a liver.")["input_ids"]
    assert model.text_encoder.tokenizer.convert_ids_to_tokens(tokens["input_ids"][0])[:4] == [
        "<|startoftext|>", "a</w>", "l", "i"]
    model.set_tokenizer(None)  # back to the default, whose ids do not fit this tiny text tower
    with pytest.raises(ConfigError, match=r"token id \d+ but the text tower has 44 tokens"):
        model.encode_text(["liver"])


def test_tiny_segvol_text_prompts_with_no_folder(default) -> None:
    model = randomise(load_core("segvol", **TINY, text_vocab_size=49408), seed=3)
    emb = model.encode_text(["liver", "spinal_cord"], modality="MR")
    assert model.text_encoder.tokenizer is default
    # by hand: the default tokenizer's ids, CLIP features at <|endoftext|>, then dim_align
    sentences = [prompt_sentence("liver", "MR"), prompt_sentence("spinal_cord", "MR")]
    ids = default(sentences, padding=True, return_tensors="pt")
    hidden = model.text_encoder.clip_text_model.text_model(**ids).last_hidden_state
    ends = [row.tolist().index(49407) for row in ids["input_ids"]]
    expected = model.text_encoder.dim_align(torch.stack([hidden[i, e] for i, e in enumerate(ends)]))
    torch.testing.assert_close(emb, expected, rtol=0, atol=1e-6)
    masks, _ = model.decode(model.encode(torch.rand(2, 1, 8, 32, 32)), text=["liver", "spinal_cord"], modality="MR")
    assert masks.shape == (2, 1, 16, 16, 16) and not torch.allclose(masks[0], masks[1])
