"""SegVol text encoder: class names → prompt sentence → CLIP text tower → ``dim_align`` embedding.

The release was saved with transformers 4.x, whose ``CLIPTextModel`` holds the transformer under
``text_model`` and stores ``position_ids`` in its state dict. Both are kept here whatever the
installed transformers version, so the released weights load strict and our saves match them.
``transformers`` is imported lazily (it is slow to import and only needed once a model is built).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapt3d.cores.segvol.tokenizer import default_tokenizer
from adapt3d.errors import ConfigError, InputError

#: Sentence each class name is put into, per modality. SegVol was trained with the CT one only.
PROMPT_TEMPLATES: dict[str, str] = {
    "CT": "A computerized tomography of a {}.",
    "MR": "A magnetic resonance image of a {}.",
    "US": "An ultrasound image of a {}.",
}


def prompt_sentence(name: str, modality: str = "CT", template: str | None = None) -> str:
    """The text prompt for class ``name``: ``template`` if given, else the modality's template."""
    if template is None:
        if modality not in PROMPT_TEMPLATES:
            raise ConfigError(
                f"no text-prompt template for modality {modality!r}; known: {', '.join(PROMPT_TEMPLATES)} "
                "(or pass template='... {} ...')"
            )
        template = PROMPT_TEMPLATES[modality]
    if "{}" not in template:
        raise ConfigError(f"text-prompt template {template!r} has no '{{}}' placeholder for the class name")
    return template.format(name)


def check_class_names(names: Sequence[str], known: Mapping[str, Any] | Sequence[str]) -> list[str]:
    """Return ``names`` if every one is a class of the dataset (``dataset.json`` ``labels``), else
    raise :class:`ConfigError` listing the known classes (``background`` is not a class)."""
    valid = [str(k) for k in known if str(k) != "background"]
    for name in names:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown class name {name!r}{hint}; known classes: {', '.join(valid)}")
    return list(names)


def load_tokenizer(path: str | os.PathLike | None = None) -> Any:
    """A CLIP tokenizer from a local directory (``tokenizer.json``, or ``vocab.json`` + ``merges.txt``),
    e.g. ``config/clip`` of the SegVol repository; with no directory, :func:`default_tokenizer`
    (the same tokenizer, built from the ``openai-clip`` package's vocabulary). Nothing is downloaded."""
    if path is None:
        return default_tokenizer()
    path = Path(path)
    if not path.is_dir():
        raise InputError(
            f"{path}: CLIP tokenizer directory not found (expected tokenizer.json or vocab.json + merges.txt)"
        )
    import transformers

    try:
        return transformers.CLIPTokenizerFast.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: not a readable CLIP tokenizer ({first})") from None


class CLIPTextTower(nn.Module):
    """The CLIP text transformer under ``text_model`` with a persistent ``position_ids`` buffer."""

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        intermediate_size: int,
        max_positions: int,
    ) -> None:
        super().__init__()
        from transformers import CLIPTextConfig, CLIPTextModel

        config = CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            max_position_embeddings=max_positions,
            hidden_act="quick_gelu",
            # The release's config (transformers 4.18 defaults): eos_token_id=2 selects the
            # original pooling at the highest token id, i.e. CLIP's end-of-text token.
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        )
        model = CLIPTextModel(config)
        self.text_model = getattr(model, "text_model", model)  # transformers 4.x nests it, 5.x does not
        emb = self.text_model.embeddings
        emb.register_buffer("position_ids", emb.position_ids, persistent=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled (end-of-text) features, (B, hidden_size)."""
        return self.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output


class TextEncoder(nn.Module):
    """``clip_text_model`` + ``dim_align`` (hidden_size → embed_dim), as in the SegVol release.

    ``forward(text)`` takes class names (official behaviour). Their tokenizer is CLIP's
    (:func:`default_tokenizer`, loaded at the first prompt) unless :meth:`set_tokenizer` gives another
    (a directory such as SegVol's ``config/clip``, or a tokenizer object).
    """

    def __init__(
        self,
        embed_dim: int = 768,
        vocab_size: int = 49408,
        hidden_size: int = 512,
        num_layers: int = 12,
        num_heads: int = 8,
        intermediate_size: int = 2048,
        max_positions: int = 77,
    ) -> None:
        super().__init__()
        self.clip_text_model = CLIPTextTower(
            vocab_size, hidden_size, num_layers, num_heads, intermediate_size, max_positions
        )
        self.dim_align = nn.Linear(hidden_size, embed_dim)
        self.max_positions = max_positions
        self.tokenizer: Any = None

    def set_tokenizer(self, tokenizer: Any = None) -> None:
        """Use ``tokenizer`` (a transformers tokenizer, or a directory path) for class-name prompts;
        ``None``: the default CLIP tokenizer."""
        self.tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer

    def tokenize(self, sentences: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask of ``sentences``, padded to the longest, on the model's device."""
        if self.tokenizer is None:
            self.tokenizer = default_tokenizer()
        tokens = self.tokenizer(
            list(sentences), padding=True, truncation=True, max_length=self.max_positions, return_tensors="pt"
        )
        vocab = self.clip_text_model.text_model.embeddings.token_embedding.num_embeddings
        if tokens["input_ids"].numel() and int(tokens["input_ids"].max()) >= vocab:
            raise ConfigError(
                f"SegVol text prompts: the CLIP tokenizer gives token id {int(tokens['input_ids'].max())} but the "
                f"text tower has {vocab} tokens (text_vocab_size); set_tokenizer(<folder>) with its vocabulary"
            )
        device = self.dim_align.weight.device
        return {"input_ids": tokens["input_ids"].to(device), "attention_mask": tokens["attention_mask"].to(device)}

    def forward(
        self, text: str | Sequence[str] | None, modality: str = "CT", template: str | None = None
    ) -> torch.Tensor | None:
        """Class name(s) → (B, embed_dim) prompt embeddings; ``None`` passes through."""
        if text is None:
            return None
        names = [text] if isinstance(text, str) else list(text)
        tokens = self.tokenize([prompt_sentence(n, modality, template) for n in names])
        return self.dim_align(self.clip_text_model(**tokens))
