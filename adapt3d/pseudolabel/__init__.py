"""Keyframe pseudo-labelling: sparse labels, propagation backends, confidence → ignore, QC, writer."""

from adapt3d.pseudolabel import core_backend, seggpt  # noqa: F401  (importing a backend registers it)
from adapt3d.pseudolabel.backends import PSEUDOLABEL_BACKENDS, Backend, Resources, backend_options, propagate
from adapt3d.pseudolabel.confidence import DEFAULT_BAND, check_band, fuse, make_pseudolabel
from adapt3d.pseudolabel.dataset import pseudolabel_dataset
from adapt3d.pseudolabel.keyframes import (
    IGNORE,
    SparseLabel,
    auto_axis,
    select_keyframes,
    sparse_from_ignore,
    sparsify,
)
from adapt3d.pseudolabel.qc import leave_keyframes_out, qc_scores, summarise_qc
from adapt3d.pseudolabel.seggpt import SegGpt, load_seggpt

__all__ = [
    "DEFAULT_BAND",
    "IGNORE",
    "PSEUDOLABEL_BACKENDS",
    "Backend",
    "Resources",
    "SegGpt",
    "SparseLabel",
    "auto_axis",
    "backend_options",
    "check_band",
    "fuse",
    "leave_keyframes_out",
    "load_seggpt",
    "make_pseudolabel",
    "propagate",
    "pseudolabel_dataset",
    "qc_scores",
    "select_keyframes",
    "sparse_from_ignore",
    "sparsify",
    "summarise_qc",
]
