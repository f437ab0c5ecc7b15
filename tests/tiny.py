"""Tiny core configurations and helpers shared by the tests (CPU, milliseconds per forward)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from conftest import SAMPLE_DATA  # noqa: F401  (one definition, in conftest)

#: A SAM-Med3D-architecture core small enough for unit tests: 32³ input, 4³ token grid,
#: windows of 3 tokens (so one full and one padded window per axis) and one global block.
TINY_SAM = dict(
    image_size=32,
    patch_size=8,
    embed_dim=48,
    depth=2,
    num_heads=2,
    window_size=3,
    global_attn_indexes=(1,),
    prompt_dim=24,
    decoder_heads=2,
    decoder_mlp_dim=32,
    iou_head_hidden_dim=16,
)


def randomise(module: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Fill every parameter and buffer with seeded noise (zero-initialised tables included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if t.is_floating_point():
                noise = torch.randn(t.shape, generator=g) * scale
                if t.dim() == 1 and name.endswith("weight"):  # norm scales around 1
                    noise = 1.0 + noise
                t.copy_(noise)
    return module


def nudge_trainable(module: torch.nn.Module, scale: float, seed: int = 0) -> torch.nn.Module:
    """Add seeded noise to the trainable parameters (adapters start as no-ops: this makes them act)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g))
    return module


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port for the block; yields its URL."""
    import socket
    import threading
    import time

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert uv.started, "server did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        uv.should_exit = True
        thread.join(timeout=10)


def changed_by_fit(module, data, steps: int) -> set[str]:
    """Names of ``module``'s state entries that ``steps`` real Lightning steps on ``data`` (batch 2) change."""
    import lightning as L

    before = {n: t.detach().clone() for n, t in module.state_dict().items()}
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=2))
    after = module.state_dict()
    return {n for n in before if not torch.equal(before[n], after[n])}
