"""SegVol's CLIP tokenizer with no user folder: CLIP's BPE vocabulary, as shipped by ``openai-clip``.

SegVol tokenizes with ``AutoTokenizer`` on its ``config/clip`` folder, the tokenizer of
``openai/clip-vit-base-patch32``: byte-level BPE, 49,408 tokens, lowercased, ``<|startoftext|>`` /
``<|endoftext|>`` around the text, ``<|endoftext|>`` also as padding and unknown token, 77 tokens at most.
The same vocabulary is OpenAI's ``bpe_simple_vocab_16e6.txt.gz``, which the ``openai-clip`` package
ships (it is found through the distribution's file list; the package itself is never imported, as
it needs torchvision). :func:`default_tokenizer` turns it into ``vocab.json`` + ``merges.txt``
(cached in ``$XDG_CACHE_HOME/adapt3d``, else ``~/.cache/adapt3d``, written atomically) and loads
them as a ``transformers`` CLIP tokenizer.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from adapt3d.errors import ConfigError, InputError

VOCAB_DISTRIBUTION = "openai-clip"
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"  # also padding and unknown token, as in CLIP's tokenizer_config.json
VOCAB_SIZE = 49408
MAX_LENGTH = 77
N_MERGES = VOCAB_SIZE - 2 * 256 - 2  # the byte symbols, the same with </w>, the two special tokens
_FORMAT = 1  # bump when the files written below change, so old caches are not reused


def vocabulary_source() -> Path:
    """The installed ``bpe_simple_vocab_16e6.txt.gz`` of the ``openai-clip`` distribution."""
    try:
        dist = metadata.distribution(VOCAB_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise ConfigError(
            f"SegVol's default CLIP tokenizer needs the {VOCAB_DISTRIBUTION} package (pip install "
            f"{VOCAB_DISTRIBUTION}), or give a tokenizer folder (SegVol's config/clip)"
        ) from None
    for file in dist.files or ():
        if file.name == VOCAB_FILE:
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    raise ConfigError(
        f"the installed {VOCAB_DISTRIBUTION} {dist.version} has no {VOCAB_FILE}; reinstall it, "
        "or give a tokenizer folder (SegVol's config/clip)"
    )


def byte_symbols() -> list[str]:
    """The 256 byte-level symbols in CLIP's order: printable Latin-1 bytes as themselves first,
    then every other byte, in byte order, as the characters from U+0100 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    kept = set(printable)
    others = [b for b in range(256) if b not in kept]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def read_merges(source: Path) -> list[str]:
    """The first :data:`N_MERGES` merge rules (``"a b"``) of a CLIP BPE file, after its header line."""
    try:
        lines = gzip.decompress(source.read_bytes()).decode("utf-8").rstrip("\n").split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise InputError(f"{source}: not a readable gzip BPE vocabulary ({exc})") from None
    merges = lines[1 : 1 + N_MERGES]
    bad = next((m for m in merges if len(m.split(" ")) != 2), None)
    if len(merges) != N_MERGES or bad is not None:
        problem = f"{len(merges)} merge rules" if len(merges) != N_MERGES else f"bad merge rule {bad!r}"
        raise InputError(f"{source}: {problem}, expected {N_MERGES} rules 'a b' after the header")
    return merges


def build_vocabulary(merges: list[str]) -> dict[str, int]:
    """CLIP's token → id map: byte symbols, the same ending a word (``</w>``), one token per
    merge rule, then ``<|startoftext|>`` and ``<|endoftext|>`` (ids 49406 and 49407)."""
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + [m.replace(" ", "") for m in merges]
    vocab = {token: i for i, token in enumerate([*tokens, BOS_TOKEN, EOS_TOKEN])}
    if len(vocab) != VOCAB_SIZE:
        raise InputError(f"CLIP BPE vocabulary has {len(vocab)} distinct tokens, expected {VOCAB_SIZE}")
    return vocab


def write_tokenizer_files(directory: Path, merges: list[str]) -> None:
    """``vocab.json``, ``merges.txt``, ``tokenizer_config.json`` and ``special_tokens_map.json`` of
    CLIP's tokenizer into ``directory`` (which must exist)."""
    vocab = build_vocabulary(merges)
    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": EOS_TOKEN}
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH, "do_lower_case": True,
              "errors": "replace", "add_prefix_space": False, **special}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=1), encoding="utf-8")


def cache_dir() -> Path:
    """Where built tokenizers are kept: ``$XDG_CACHE_HOME/adapt3d/clip-tokenizer`` (else ``~/.cache``)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "adapt3d" / "clip-tokenizer"


def _load(directory: Path) -> Any:
    import transformers

    tokenizer = transformers.CLIPTokenizerFast.from_pretrained(str(directory), local_files_only=True)
    if len(tokenizer) != VOCAB_SIZE:
        raise InputError(f"{directory}: cached CLIP tokenizer has {len(tokenizer)} tokens, expected "
                         f"{VOCAB_SIZE}; delete the folder and it is built again")
    return tokenizer


def _build_cached(source: Path, folder: Path) -> Any:
    """Build into a temporary sibling, then rename it into place (another process may win the race)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=folder.parent))
    try:
        write_tokenizer_files(staging, read_merges(source))
        try:
            staging.rename(folder)
        except OSError:
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _load(folder)


@functools.lru_cache(maxsize=None)
def _default_tokenizer(folder: Path | None) -> Any:
    source = vocabulary_source()
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    target = (folder or cache_dir()) / f"clip-vit-b-32-{digest}-v{_FORMAT}"
    if target.is_dir():
        return _load(target)
    try:
        return _build_cached(source, target)
    except OSError:  # cache not writable: build in a temporary folder, keep the tokenizer in memory
        with tempfile.TemporaryDirectory(prefix="adapt3d-clip-") as tmp:
            write_tokenizer_files(Path(tmp), read_merges(source))
            return _load(Path(tmp))


def default_tokenizer(folder: str | os.PathLike | None = None) -> Any:
    """SegVol's CLIP tokenizer (``openai/clip-vit-base-patch32``'s), built from the BPE vocabulary of
    the ``openai-clip`` package; cached under ``folder`` (default :func:`cache_dir`) and in memory,
    so every call with the same ``folder`` returns the same tokenizer object."""
    return _default_tokenizer(None if folder is None else Path(folder))
