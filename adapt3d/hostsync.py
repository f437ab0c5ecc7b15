"""Count host↔device round trips of a block of torch code, on any device (CPU included).

A GPU waits whenever the host reads a tensor's value: ``.item()``, ``float()``/``bool()`` of a
tensor (``if t.any():``), ``.tolist()``, ``.numpy()``, ``.cpu()``. On a CPU these are free, so
they go unnoticed there; :class:`HostSyncCounter` counts them wherever the code runs, which lets
a CPU test guard a GPU hot loop. Scalar reads are counted at the dispatcher
(``aten::_local_scalar_dense``, what every scalar conversion ends in); whole-tensor reads by
wrapping the three Tensor methods for the duration of the block. Each read is attributed to
the first calling frame outside torch (``file:line``), so reads in adapt3d's own code can be told
from a library's reads of host-side helper tensors (e.g. MONAI's ``arange(...).tolist()``).
"""

from __future__ import annotations

import collections
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_METHODS = ("cpu", "numpy", "tolist")
_TORCH_DIR = torch.__file__.rsplit("/", 1)[0] + "/"


class HostSyncCounter(TorchDispatchMode):
    """``with HostSyncCounter() as c: ...`` then ``c.counts`` (kind → calls) and ``c.total``."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()  # kind → reads
        self.sites: collections.Counter[str] = collections.Counter()  # "file:line" → reads
        self._saved: dict[str, object] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self._record("scalar read (item/float/bool)")
        return func(*args, **(kwargs or {}))

    def _record(self, kind: str) -> None:
        frame = sys._getframe(1)
        while frame is not None and (_TORCH_DIR in frame.f_code.co_filename or frame.f_code.co_filename == __file__):
            frame = frame.f_back
        where = "?" if frame is None else f"{frame.f_code.co_filename}:{frame.f_lineno}"
        self.counts[kind] += 1
        self.sites[where] += 1

    def from_files(self, fragment: str) -> int:
        """Reads made by code whose file path contains ``fragment`` (e.g. ``"adapt3d/"``)."""
        return sum(n for where, n in self.sites.items() if fragment in where)

    def __enter__(self) -> HostSyncCounter:
        for name in _METHODS:
            original = getattr(torch.Tensor, name)
            self._saved[name] = original
            setattr(torch.Tensor, name, self._counting(name, original))
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        self._saved.clear()

    def _counting(self, name: str, original):
        def wrapper(tensor, *args, **kwargs):
            self._record(f".{name}()")
            return original(tensor, *args, **kwargs)

        return wrapper

    @property
    def total(self) -> int:
        """All host reads counted so far."""
        return sum(self.counts.values())
