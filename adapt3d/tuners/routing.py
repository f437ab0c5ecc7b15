"""Route each input to the adapter of its modality; CT (no adapter) goes through the frozen core."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from adapt3d.errors import ConfigError
from adapt3d.tuners.model import AdaptedModel


class ModalityRouter:
    """A core with several named adapters, chosen by the input's modality.

    ``routes`` maps modality (``MR``, ``US`` …) to adapter name; any other modality — CT, the
    core's own — runs the plain frozen core, so its Dice retention is 1.000 by construction.
    """

    def __init__(self, model: AdaptedModel, routes: dict[str, str]) -> None:
        unknown = sorted(set(routes.values()) - set(model.configs))
        if unknown:
            raise ConfigError(f"routes name adapters that are not loaded: {', '.join(unknown)}")
        self.model = model
        self.routes = {k.upper(): v for k, v in routes.items()}

    def adapter_for(self, modality: str) -> str | None:
        """The adapter used for ``modality`` (None: the frozen core)."""
        return self.routes.get(modality.upper())

    @contextlib.contextmanager
    def route(self, modality: str) -> Iterator[AdaptedModel]:
        """The model, set up for inputs of ``modality``, for the duration of the block."""
        with self.model.using(self.adapter_for(modality)) as model:
            yield model
