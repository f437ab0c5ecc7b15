"""The model a server hosts: a core, its adapters, which adapter a session gets, and what the
capabilities endpoint says about it.

Adapters are given as ``[MODALITY=]DIR``. A session's image is routed by its modality
(``image_properties["modality"]`` when the client sends it, else the server's ``--modality``,
else guessed: CT when the image holds values below -500 HU, otherwise MR): the adapter named for
that modality, else the one adapter given without a modality, else the frozen core. A client may
name an adapter (or ``none``) itself in ``image_properties["adapter"]``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from adapt3d import __version__
from adapt3d.cores import core_spec
from adapt3d.data.imageio import Volume
from adapt3d.errors import ConfigError
from adapt3d.infer.session import guess_modality, load_model
from adapt3d.infer.whole_volume import WholeVolumeConfig, WholeVolumePredictor
from adapt3d.serve import auto
from adapt3d.tuners import AdaptedModel, load_adapter

#: What each protocol interaction becomes for a SAM-Med3D-format core (said in /capabilities).
INTERACTIONS = {
    "points": True,
    "bbox2d": False,
    "bbox3d": False,
    "scribble": True,
    "lasso": True,
}
PROMPT_NOTES = {
    "points": "clicks, applied in order with the previous mask fed back (first positive click first)",
    "bbox2d": "unsupported: the whole-volume predictor takes no box prompts (SAM-Med3D has no box embeddings)",
    "bbox3d": "unsupported: as bbox2d",
    "scribble": "one click at the scribble voxel deepest inside the drawn region (positive or negative as drawn)",
    "lasso": "one click at the voxel deepest inside the lasso's filled region (positive or negative as drawn)",
    "initial_label": (
        "not a prompt (supports_initial_label is false): accepted as the current mask, e.g. when napari "
        "resumes after a reconnect; the next click predicts from clicks only; with run_prediction it is "
        "refined from one click at its deepest voxel"
    ),
    "automatic": auto.NOTE,
}
_LICENCE_LINE = re.compile(r"^\W*licen[cs]e\W*[:|]\s*(.+?)\s*\|?\s*$", re.IGNORECASE)


@dataclass
class AdapterSpec:
    """One ``--adapter [MODALITY=]DIR``."""

    directory: Path
    modality: str | None = None

    @classmethod
    def parse(cls, text: str) -> AdapterSpec:
        """``MR=runs/mri/adapter`` or ``runs/mri/adapter``."""
        modality, sep, path = text.partition("=")
        if not sep:
            return cls(Path(text))
        if not re.fullmatch(r"[A-Za-z]{2,8}", modality):
            raise ConfigError(f"--adapter {text!r}: write MODALITY=DIR with a modality such as MR or US")
        return cls(Path(path), modality.upper())

    @property
    def name(self) -> str:
        return self.directory.resolve().name


@dataclass
class ServedModel:
    """A loaded core (with adapters) and the predictor that every session of the server uses."""

    model: nn.Module
    predictor: WholeVolumePredictor
    routes: dict[str, str]  # modality → adapter name
    default_adapter: str | None
    modality: str  # auto | CT | MR | US ...
    info: dict = field(default_factory=dict)
    class_prompts: dict = field(default_factory=dict)  # adapter name (None: no adapter) → ClassPrompts

    @classmethod
    def load(
        cls,
        core: str | Path,
        adapters: Sequence[AdapterSpec] = (),
        *,
        core_type: str = "sam-med3d",
        device: str = "cpu",
        config: WholeVolumeConfig | None = None,
        spacing: float | None = None,
        whole_volume: dict | None = None,
        modality: str = "auto",
        licence: str | None = None,
        class_prompts: str | Path | None = None,
    ) -> ServedModel:
        """Load ``core`` and ``adapters`` onto ``device`` (bad paths and names raise one-line errors).

        Without ``config``, the whole-volume pass (``whole_volume``: its other settings) runs at the
        core's own preprocessing: its stored spacing (``spacing`` overrides) and normalisation.
        Adapters with class prompts (and the core, given ``class_prompts``, a prompts file) offer
        automatic segmentation (:mod:`adapt3d.serve.auto`)."""
        names = [a.name for a in adapters]
        if len(set(names)) != len(names):
            raise ConfigError(f"--adapter: two adapter directories have the same name ({', '.join(names)})")
        unrouted = [a.name for a in adapters if a.modality is None]
        if len(unrouted) > 1:
            raise ConfigError(f"--adapter: several adapters without a modality ({', '.join(unrouted)}); write MODALITY=DIR")
        model = load_model(core, core_type=core_type, device=device)
        inference = core_spec(model).contract.inference
        if inference != "windows":
            raise ConfigError(f"core {core_type!r}: adapt3d serve runs the windows inference (SAM-Med3D-format cores); "
                              f"this core's contract predicts by {inference or 'no whole-volume inference'}")
        if adapters:
            adapted = AdaptedModel(model)
            for spec in adapters:
                load_adapter(adapted, spec.directory, name=spec.name)
            model = adapted.to(device)
        prompts = auto.served_prompts(model, [(a.name, a.directory) for a in adapters], class_prompts)
        routes = {a.modality: a.name for a in adapters if a.modality}
        info = {
            "name": Path(core).stem + "".join(f" + {n}" for n in names),
            "core": core_type,
            "checkpoint": str(core),
            "adapters": {a.name: a.modality or "default" for a in adapters},
            "license": licence or _card_licence(Path(core)) or "!!MISSING!!",
        }
        if config is None:
            prep = model.preprocessing
            work = spacing if spacing is not None else prep.isotropic_spacing(f"{core} (core)")
            config = WholeVolumeConfig(**(whole_volume or {}), spacing=work, normalization=prep.normalization)
        predictor = WholeVolumePredictor(model, config)
        return cls(model, predictor, routes, unrouted[0] if unrouted else None, modality.upper(), info,
                   {name: p.to(device) for name, p in prompts.items()})

    @property
    def adapters(self) -> list[str]:
        return list(self.model.configs) if isinstance(self.model, AdaptedModel) else []

    def modality_of(self, image: Volume, requested: object = None) -> str:
        """The modality a session's image is routed by."""
        if requested is not None:
            return str(requested).upper()
        return guess_modality(image) if self.modality == "AUTO" else self.modality

    def adapter_for(self, modality: str, requested: object = None) -> str | None:
        """Adapter name for a session (None: the frozen core); ``requested`` names one or ``none``."""
        if requested is not None:
            if str(requested).lower() == "none":
                return None
            if requested not in self.adapters:
                raise ConfigError(f"adapter {requested!r} is not loaded; loaded: {', '.join(self.adapters) or 'none'}")
            return str(requested)
        return self.routes.get(modality.upper(), self.default_adapter)

    @contextlib.contextmanager
    def using(self, adapter: str | None) -> Iterator[nn.Module]:
        """The model routed through ``adapter`` for the duration of the block (worker thread only)."""
        if isinstance(self.model, AdaptedModel):
            with self.model.using(adapter) as model:
                yield model
        else:
            yield self.model

    def capabilities(self) -> dict:
        """The ``/capabilities`` body: what the client reads, plus how each prompt is used."""
        cfg = self.predictor.config
        return {
            "supported_interactions": dict(INTERACTIONS),
            "channel_mapping": {},
            "num_interaction_channels": 0,
            "supports_initial_label": False,
            "supports_zero_shot_label_refinement": False,
            "preferred_scribble_thickness": [2, 2, 2],
            "interaction_decay": None,
            "patch_size": [self.predictor.core.image_size] * 3,
            "do_autozoom": False,
            "inference_session_version": f"adapt3d-{__version__}",
            "license": self.info["license"],
            "supports_undo": True,
            "model": {**self.info, "routes": dict(self.routes), "default_adapter": self.default_adapter},
            "prompts": dict(PROMPT_NOTES),
            "whole_volume": {"resample": cfg.resample, "spacing": cfg.spacing, "max_windows": cfg.max_windows},
            "automatic": auto.capabilities(self.class_prompts),
        }


def _card_licence(checkpoint: Path) -> str | None:
    """A ``licence: ...`` line of a Markdown card next to the checkpoint, if any."""
    for card in sorted(checkpoint.parent.glob("*.md")):
        for line in card.read_text(errors="replace").splitlines():
            match = _LICENCE_LINE.match(line)
            if match:
                return match.group(1)
    return None
