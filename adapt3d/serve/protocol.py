"""Wire-format glue for the nnInteractive remote protocol.

The protocol constants (paths, ``X-Meta`` / ``X-Lease-Token`` headers) and the packed-array codec
come from the ``nninteractive-client`` package itself, so the server speaks exactly what the
client sends. Untrusted bodies are checked here before anything is decompressed: the packed
header's dtype must be a plain numeric one (never ``object``) and its declared size within the
limit, so a malicious header cannot make the server allocate or interpret arbitrary memory.
Every problem is a :class:`ProtocolError` carrying the HTTP status and a one-line message.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence

import numpy as np
from nnInteractive.inference.remote import _protocol as wire
from nnInteractive.inference.remote.serialization import MAGIC, VERSION, pack_array, unpack_array
from starlette.responses import Response

#: dtypes an array body may declare (the packed header names them with numpy's ``dtype.name``).
NUMERIC_DTYPES = frozenset(
    "bool uint8 int8 uint16 int16 uint32 int32 uint64 int64 float16 float32 float64".split()
)
#: dtypes a target buffer may have (the mask is written as 0/1 into it).
TARGET_DTYPES = frozenset("bool uint8 int8 uint16 int16 uint32 int32 float32".split())

Box = list[list[int]]  # [[lo, hi], ...] per axis, half-open, as the protocol writes bboxes


class ProtocolError(Exception):
    """A request the server refuses: HTTP ``status`` and a one-line ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def packed_header(body: bytes, what: str) -> tuple[str, tuple[int, ...]]:
    """(dtype name, shape) declared by a packed array, checked without decompressing anything."""
    if len(body) < 8:
        raise ProtocolError(400, f"{what}: not a packed array ({len(body)} bytes)")
    magic, version, _codec, ndim, name_len = struct.unpack_from("<4sBBBB", body, 0)
    if magic != MAGIC or version != VERSION:
        raise ProtocolError(400, f"{what}: not a packed array of wire version {VERSION} (bad magic or version)")
    end = 8 + name_len + 8 * ndim
    if len(body) < end:
        raise ProtocolError(400, f"{what}: packed array header is truncated")
    try:
        name = body[8 : 8 + name_len].decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(400, f"{what}: packed array dtype is not ASCII") from None
    if name not in NUMERIC_DTYPES:
        raise ProtocolError(400, f"{what}: dtype {name!r} is not accepted (numeric dtypes only)")
    shape = struct.unpack_from(f"<{ndim}q", body, 8 + name_len)
    if any(s <= 0 for s in shape):
        raise ProtocolError(400, f"{what}: shape {shape} has an empty or negative axis")
    return name, tuple(int(s) for s in shape)


def read_array(body: bytes, what: str, *, ndim: int, max_bytes: int) -> np.ndarray:
    """Unpack an array body (client serialization) after checking its header: ``ndim`` axes, a
    numeric dtype and at most ``max_bytes`` once decompressed (413 beyond)."""
    name, shape = packed_header(body, what)
    if len(shape) != ndim:
        raise ProtocolError(400, f"{what}: expected {ndim} axes, got shape {list(shape)}")
    nbytes = math.prod(shape) * np.dtype(name).itemsize
    if nbytes > max_bytes:
        raise ProtocolError(413, f"{what}: {nbytes} bytes decompressed exceed the server's limit of {max_bytes}")
    try:
        return unpack_array(body)
    except Exception as exc:  # blosc2 and struct raise several types on corrupt payloads
        raise ProtocolError(400, f"{what}: corrupt packed array ({type(exc).__name__}: {exc})") from None


def read_json(raw: bytes | str | None, what: str) -> dict:
    """A JSON object from a body or the ``X-Meta`` header; empty → {}."""
    if raw is None or len(raw) == 0:
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(400, f"{what}: malformed JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ProtocolError(400, f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def flag(payload: dict, key: str, default: bool | None = None) -> bool:
    """A boolean field (required when ``default`` is None)."""
    if key not in payload:
        if default is None:
            raise ProtocolError(400, f"missing required field {key!r}")
        return default
    value = payload[key]
    if not isinstance(value, bool):
        raise ProtocolError(400, f"field {key!r} must be true or false, got {value!r}")
    return value


def numbers(value: object, key: str, length: int) -> list[float]:
    """``length`` finite numbers (not booleans)."""
    if (
        not isinstance(value, (list, tuple))
        or len(value) != length
        or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in value)
    ):
        raise ProtocolError(400, f"field {key!r} must be {length} finite numbers, got {value!r}")
    return [float(v) for v in value]


def box_field(value: object, key: str, shape: Sequence[int]) -> Box:
    """A half-open integer box ``[[lo, hi]] * len(shape)`` lying inside ``shape``."""
    if not isinstance(value, (list, tuple)) or len(value) != len(shape):
        raise ProtocolError(400, f"field {key!r} must be {len(shape)} [lo, hi] pairs, got {value!r}")
    out = []
    for pair, n in zip(value, shape):
        lo, hi = numbers(pair, key, 2)
        if lo != int(lo) or hi != int(hi) or not 0 <= lo < hi <= n:
            raise ProtocolError(400, f"field {key!r}: {value!r} is not an integer box inside {list(shape)}")
        out.append([int(lo), int(hi)])
    return out


def json_response(value: dict, status: int = 200, headers: dict | None = None) -> Response:
    """A JSON response (``detail`` for errors, as the client reads them)."""
    return Response(json.dumps(value), status_code=status, media_type="application/json", headers=headers)


def prediction_response(ran: bool, box: Box | None = None, values: np.ndarray | None = None) -> Response:
    """What the client pastes into its target buffer: ``X-Meta`` {ran_prediction, bbox} and the
    packed contents of that box (empty body when nothing changed)."""
    meta: dict = {"ran_prediction": bool(ran), "bbox": None}
    content = b""
    if ran and box is not None and values is not None:
        meta.update(bbox=box, dtype=str(values.dtype), shape=list(values.shape))
        content = pack_array(values)
    headers = {wire.META_HEADER: json.dumps(meta, separators=(",", ":"))}
    return Response(content, media_type=wire.CONTENT_TYPE_OCTET_STREAM, headers=headers)
