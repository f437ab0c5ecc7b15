"""Prompt simulation: clicks (first, corrective, random) and bounding boxes."""

from __future__ import annotations

from adapt3d.prompts.boxes import box_from_mask
from adapt3d.prompts.clicks import (
    CLICK_SIMULATORS,
    Click,
    ClickSimulator,
    clicks_to_tensors,
    first_click,
    next_click,
    random_error_click,
)

__all__ = [
    "CLICK_SIMULATORS",
    "Click",
    "ClickSimulator",
    "box_from_mask",
    "clicks_to_tensors",
    "first_click",
    "next_click",
    "random_error_click",
]
