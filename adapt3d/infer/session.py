"""Loading a model for inference and guessing an image's modality."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from adapt3d.cores import load_core
from adapt3d.data.imageio import Volume


def load_model(
    core: str | os.PathLike | None,
    *,
    core_type: str = "sam-med3d",
    adapter: str | os.PathLike | None = None,
    device: str = "cpu",
    allow_other_core: bool = False,
) -> nn.Module:
    """A frozen core of any registered type from a checkpoint (with ``adapter`` applied when given),
    in eval mode on ``device``; ``allow_other_core`` as in :func:`adapt3d.tuners.load_adapter`."""
    model = load_core(core_type, core)
    if adapter is not None:
        from adapt3d.tuners import load_adapter

        model = load_adapter(model, adapter, allow_other_core=allow_other_core)
    return model.to(torch.device(device)).eval()


def guess_modality(image: Volume) -> str:
    """``CT`` when the image holds Hounsfield-like values (below -500), else ``MR``."""
    return "CT" if float(np.min(image.array)) < -500 else "MR"
