"""Evaluation: segmentation metrics (more evaluation modules live beside this one)."""

from __future__ import annotations

from adapt3d.evaluate.metrics import dice, nsd, summarise

__all__ = ["dice", "nsd", "summarise"]
