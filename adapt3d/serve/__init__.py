"""``adapt3d serve``: adapted models in 3D Slicer and napari through the nnInteractive remote protocol.

The SlicerNNInteractive extension and napari-nninteractive drive a remote server through the
``nninteractive-client`` package; this package is such a server for adapt3d cores and adapters
(``pip install 'adapt3d[serve]'``). Layout: :mod:`~adapt3d.serve.app` (application, key and body
checks), :mod:`~adapt3d.serve.routes` (endpoints), :mod:`~adapt3d.serve.sessions` (leases,
reaper), :mod:`~adapt3d.serve.protocol` (wire-format glue on the client's own serialization),
:mod:`~adapt3d.serve.interactive` (a session's prompts, results, undo),
:mod:`~adapt3d.serve.worker` (the one inference thread), :mod:`~adapt3d.serve.model` (core,
adapters, routing, capabilities), :mod:`~adapt3d.serve.geometry` (array orientation, results
mapped back a box at a time). See ``docs/serve.md``.
"""

from adapt3d.serve.app import ServeSettings, make_app
from adapt3d.serve.model import AdapterSpec, ServedModel

__all__ = ["AdapterSpec", "ServeSettings", "ServedModel", "make_app"]
