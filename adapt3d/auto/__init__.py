"""Automatic segmentation with learned class prompts, trained with the adapter (docs/auto.md)."""

from adapt3d.auto.prompts import (
    PROMPTS_FILE,
    ClassPrompts,
    load_class_prompts,
    save_class_prompts,
)

__all__ = ["PROMPTS_FILE", "ClassPrompts", "load_class_prompts", "save_class_prompts"]
