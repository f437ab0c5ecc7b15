"""Exact windowed attention with SAM-Med3D's relative-position bias, without materialising padding.

The official encoder pads the token grid to whole cubic windows (an 8×8×8 grid becomes one
14×14×14 window: 2744 tokens of which 512 are real) and attends over every padded token. Padded
tokens are zeros after the block's norm, so their query, key and value are the projection of a
zero token (the qkv bias): ``q_pad``, ``k_pad``, ``v_pad``.

The released weights were trained with this relative-position bias (the official broadcast of
the per-axis terms, kept here exactly), for a query at window position (d, h, w) and a key at
(d', h', w')::

    B = q[d,h,w]·Rd[d, w'] + Q[d,h,d']·Rh[h, w'] + Q[d,h,h']·Rw[h', w']

where ``R*[i, j] = rel_pos_*[i - j + S - 1]`` and ``Q[d, h, p]`` is the query at (d, h, p), which
is ``q_pad`` when p lies in the padding. For a fixed w' the sum over d' and h' of exp(B) factorises,
so the total softmax mass of the padded keys — the complement of the real box, written as three
disjoint pieces (w' padded; w' real and d' padded; w', d' real and h' padded) — has a closed form
from per-axis log-sum-exps, with no cancellation. That mass becomes one extra key with value
``v_pad``. Padded queries are never computed (the official code discards their outputs).

Two exact backends compute the same attention (:data:`ATTENTION_BACKENDS`): ``closed-form`` (the
above: the real tokens only, plus one key holding the padding's mass) and ``padded`` (the official
computation — padded windows, the full bias as an explicit SDPA mask — fused by SDPA). At 128³
(8³ tokens, windows of 14) ``padded`` attends over 2744 keys per query instead of 513, so
``closed-form`` is the default on every device (:data:`DEFAULT_BACKENDS`); ``padded`` exists so a
GPU whose fused kernels favour regular shapes can be measured (``benchmarks/gpu_check.py``) and
chosen per device with :func:`set_attention_backend`, with the reason in ``docs/gpu.md``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from adapt3d.registry import Registry

Extents = tuple[int, int, int]


def relative_table(rel_pos: torch.Tensor, n_query: int, size: int) -> torch.Tensor:
    """``rel_pos[i - j + size - 1]`` for ``i < n_query`` and ``j < size``: (n_query, size, C)."""
    if rel_pos.shape[0] != 2 * size - 1:
        raise ValueError(f"relative position table has {rel_pos.shape[0]} rows, expected {2 * size - 1}")
    i = torch.arange(n_query, device=rel_pos.device)[:, None]
    j = torch.arange(size, device=rel_pos.device)[None, :]
    return rel_pos[i - j + size - 1]


def _tiles(n: int, window: int) -> list[tuple[int, int, int]]:
    """Split an axis of ``n`` tokens into runs of windows with equal real extent: (start, stop, extent)."""
    full, rest = divmod(n, window)
    runs = [(0, full * window, window)] if full else []
    if rest:
        runs.append((full * window, n, rest))
    return runs


def _lse(a: torch.Tensor, start: int, stop: int, dim: int) -> torch.Tensor:
    """log-sum-exp over ``start:stop`` of ``dim``.

    An empty range gives a very negative finite value rather than -inf, so that sums of empty
    pieces stay finite and their gradients are 0 instead of NaN (exp of it underflows to 0).
    """
    if stop <= start:
        shape = list(a.shape)
        del shape[dim]
        return a.new_full(shape, torch.finfo(a.dtype).min / 8)
    return torch.logsumexp(a.narrow(dim, start, stop - start), dim=dim)


def _attend(
    qkv: torch.Tensor,
    pad_qkv: torch.Tensor | None,
    rel_pos: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    extents: Extents,
    size: int,
    num_heads: int,
) -> torch.Tensor:
    """Attention inside cubic windows of side ``size`` whose real tokens fill the leading ``extents``."""
    bw, n, c3 = qkv.shape
    hd = c3 // 3 // num_heads
    q, k, v = qkv.view(bw, n, 3, num_heads, hd).permute(2, 0, 3, 1, 4).unbind(0)  # (bw, h, n, hd)
    ed, eh, ew = extents
    padded = tuple(extents) != (size, size, size)
    if padded and pad_qkv is None:
        raise ValueError("padded windows need the projection of a zero token (pad_qkv)")
    qg = q.reshape(bw, num_heads, ed, eh, ew, hd)
    q_line = qg  # queries along the w axis of the window, padded ones included
    if padded:
        q_pad, k_pad, v_pad = pad_qkv.view(3, num_heads, hd).unbind(0)
        fill = q_pad.view(1, num_heads, 1, 1, 1, hd).expand(bw, num_heads, ed, eh, size - ew, hd)
        q_line = torch.cat([qg, fill], dim=4)
    rd = relative_table(rel_pos[0], ed, size)  # [d, w']
    rh = relative_table(rel_pos[1], eh, size)  # [h, w']
    rw = relative_table(rel_pos[2], size, size)  # [h', w']
    a1 = torch.einsum("bndhwc,dkc->bndhwk", qg, rd)  # [d,h,w | w']
    a2 = torch.einsum("bndhpc,hkc->bndhpk", q_line, rh)  # [d,h | d'=p, w']
    a3 = torch.einsum("bndhpc,pkc->bndhpk", q_line, rw)  # [d,h | h'=p, w']
    bias = (
        a1[:, :, :, :, :, None, None, :ew]
        + a2[:, :, :, :, None, :ed, None, :ew]
        + a3[:, :, :, :, None, None, :eh, :ew]
    ).reshape(bw, num_heads, n, n)
    if not padded:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(bw, n, -1)

    s2_real, s2_pad = _lse(a2, 0, ed, 4), _lse(a2, ed, size, 4)  # over d', per w'
    s3_real, s3_pad = _lse(a3, 0, eh, 4), _lse(a3, eh, size, 4)  # over h', per w'
    s2_full, s3_full = torch.logaddexp(s2_real, s2_pad), torch.logaddexp(s3_real, s3_pad)
    w_real = torch.arange(size, device=q.device) < ew
    inner = torch.where(
        w_real, torch.logaddexp(s2_pad + s3_full, s2_real + s3_pad), s2_full + s3_full
    )  # (bw, h, ed, eh, w')
    log_mass = torch.logsumexp(a1 + inner[:, :, :, :, None, :], dim=-1).reshape(bw, num_heads, n)
    pad_logit = torch.einsum("bhnc,hc->bhn", q, k_pad) * hd**-0.5 + log_mass
    mask = torch.cat([bias, pad_logit[..., None]], dim=-1)
    k = torch.cat([k, k.new_zeros(bw, num_heads, 1, hd)], dim=2)  # the extra key's logit is its mask
    v = torch.cat([v, v_pad.view(1, num_heads, 1, hd).expand(bw, num_heads, 1, hd)], dim=2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(bw, n, -1)


def window_attention(
    qkv: torch.Tensor,
    pad_qkv: torch.Tensor | None,
    rel_pos: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    num_heads: int,
    window: int,
) -> torch.Tensor:
    """Attention of a (B, D, H, W, 3C) grid of qkv projections, before the output projection.

    ``window=0`` is global attention over the whole (cubic) grid; otherwise the grid is tiled
    into cubic windows of ``window`` tokens, the last ones padded as the official code pads them.
    ``pad_qkv`` (3C,) is the projection of a zero token: query, key and value of padded tokens.
    """
    b, d, h, w, c3 = qkv.shape
    c = c3 // 3
    if window == 0:
        if not d == h == w:
            raise ValueError(f"global attention needs a cubic token grid, got {(d, h, w)}")
        size = d
    else:
        size = window
    pieces = []
    for (d0, d1, ed), (h0, h1, eh), (w0, w1, ew) in itertools.product(
        _tiles(d, size), _tiles(h, size), _tiles(w, size)
    ):
        nd, nh, nw = (d1 - d0) // ed, (h1 - h0) // eh, (w1 - w0) // ew
        block = qkv[:, d0:d1, h0:h1, w0:w1].reshape(b, nd, ed, nh, eh, nw, ew, c3)
        windows = block.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b * nd * nh * nw, ed * eh * ew, c3)
        out = _attend(windows, pad_qkv, rel_pos, (ed, eh, ew), size, num_heads)
        out = out.view(b, nd, nh, nw, ed, eh, ew, c).permute(0, 1, 4, 2, 5, 3, 6, 7)
        pieces.append(((d0, d1, h0, h1, w0, w1), out.reshape(b, d1 - d0, h1 - h0, w1 - w0, c)))
    if len(pieces) == 1:
        return pieces[0][1]
    result = qkv.new_empty(b, d, h, w, c)
    for (d0, d1, h0, h1, w0, w1), out in pieces:
        result[:, d0:d1, h0:h1, w0:w1] = out
    return result


def padded_window_attention(
    qkv: torch.Tensor,
    pad_qkv: torch.Tensor | None,
    rel_pos: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    num_heads: int,
    window: int,
) -> torch.Tensor:
    """:func:`window_attention` as the official code computes it: the token grid padded with the
    zero token's projection to whole windows, attention over every padded key, padding cropped."""
    b, d, h, w, c3 = qkv.shape
    if window == 0 or pad_qkv is None:
        return window_attention(qkv, pad_qkv, rel_pos, num_heads, window)
    padded = pad_qkv.view(1, 1, 1, 1, c3).expand(b, d + (-d) % window, h + (-h) % window, w + (-w) % window, c3)
    padded = padded.clone()
    padded[:, :d, :h, :w] = qkv
    return window_attention(padded, None, rel_pos, num_heads, window)[:, :d, :h, :w]


AttentionFn = Callable[..., torch.Tensor]
ATTENTION_BACKENDS: Registry[AttentionFn] = Registry("attention backend")
ATTENTION_BACKENDS.register("closed-form", window_attention)
ATTENTION_BACKENDS.register("padded", padded_window_attention)
#: The backend ``auto`` resolves to, per device type (closed-form where a type is not listed).
DEFAULT_BACKENDS: dict[str, str] = {"cpu": "closed-form", "cuda": "closed-form"}


def resolve_backend(name: str, device: torch.device) -> AttentionFn:
    """The attention function for backend ``name`` (``auto``: :data:`DEFAULT_BACKENDS` for ``device``)."""
    if name == "auto":
        name = DEFAULT_BACKENDS.get(device.type, "closed-form")
    return ATTENTION_BACKENDS.get(name)


def set_attention_backend(model: nn.Module, name: str) -> int:
    """Use backend ``name`` (or ``auto``) in every SAM-Med3D attention of ``model``; returns how many."""
    if name != "auto":
        ATTENTION_BACKENDS.get(name)  # unknown names fail here, naming the valid ones
    layers = [m for m in model.modules() if hasattr(m, "attention_backend")]
    for m in layers:
        m.attention_backend = name
    return len(layers)
