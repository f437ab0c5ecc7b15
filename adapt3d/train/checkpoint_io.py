"""Lightning resume checkpoints read with an explicit safe loader, whatever the torch version.

Lightning's own loader leaves ``weights_only`` to torch's default (``False`` before torch 2.6:
a ``last.ckpt`` could run code when a run is resumed). :class:`SafeCheckpointIO` always loads with
``torch.load(weights_only=True)`` and allows only the types Lightning puts in its checkpoints
besides tensors and plain containers; anything else is refused with a :class:`CheckpointError`
naming the file, before it is unpickled.
"""

from __future__ import annotations

import pathlib
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.data import AttributeDict

from adapt3d.cores.checkpoint import SAFE_GLOBALS, safe_torch_load

#: Besides tensors, dicts, lists and numbers: saved hyper-parameters (AttributeDict), paths that
#: callbacks record (ModelCheckpoint), and the core checkpoints' own allow-list (argparse.Namespace,
#: the Counter of a MultiStepLR state).
LIGHTNING_SAFE_GLOBALS: list[Any] = [AttributeDict, pathlib.PurePosixPath, pathlib.PosixPath, pathlib.PureWindowsPath,
                                     pathlib.WindowsPath, *SAFE_GLOBALS]


class SafeCheckpointIO(TorchCheckpointIO):
    """Saves as Lightning does; loads only with the explicit allow-list above (``weights_only`` forced)."""

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        """The checkpoint at ``path`` on the CPU (Lightning moves the states where they belong)."""
        return safe_torch_load(path, LIGHTNING_SAFE_GLOBALS, what="resume checkpoint")
