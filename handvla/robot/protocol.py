"""The wire format between a robot and a policy server: msgpack maps, numpy arrays as typed byte blobs.

No pickle anywhere: a message can only ever decode to maps, lists, strings, numbers and numeric arrays.
Arrays travel as ``{"__nd__": True, "dtype": "<f4", "shape": [..], "data": bytes}`` with a whitelist of
plain numeric dtypes; anything else is rejected with ``ProtocolError``.

Messages (all maps with a ``type``):
- server -> client on connect: ``{"type": "metadata", "protocol": 1, "policy": {...}}``
- ``{"type": "infer", "id": k, "observation": {key: array}}`` -> ``{"type": "action", "id": k,
  "actions": (chunk, action_dim) float32, "server_ms": float}``. The observation may also carry ``task``
  (a string) and, for real-time chunking, ``prev_actions`` ((n, action_dim): the previous chunk from the
  observation's time step on) with ``inference_delay`` (int d): the answer's first d actions are
  ``prev_actions[:d]`` and the rest continue from them.
- ``{"type": "ping"}`` -> ``{"type": "pong"}``
- any failure -> ``{"type": "error", "id": k or None, "code": str, "message": str}``; the connection stays up.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
_ALLOWED_KINDS = {"b", "i", "u", "f"}  # bool, signed, unsigned, float
_MAX_ARRAY_BYTES = 64 * 1024 * 1024


class ProtocolError(ValueError):
    """A message that does not decode or does not follow the protocol. ``code`` says which kind."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def _encode_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _ALLOWED_KINDS:
            raise ProtocolError("bad_dtype", f"arrays of dtype {obj.dtype} cannot be sent; use numeric arrays")
        arr = np.ascontiguousarray(obj)
        return {"__nd__": True, "dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _decode_hook(obj: dict) -> Any:
    if obj.get("__nd__") is not True:
        return obj
    try:
        dtype = np.dtype(obj["dtype"])
        shape = tuple(int(s) for s in obj["shape"])
        data = obj["data"]
    except (KeyError, TypeError, ValueError) as e:
        raise ProtocolError("bad_array", f"malformed array record: {e}") from None
    if dtype.kind not in _ALLOWED_KINDS or dtype.hasobject:
        raise ProtocolError("bad_dtype", f"array dtype {dtype} is not allowed (numeric dtypes only)")
    if any(s < 0 for s in shape) or not isinstance(data, (bytes, bytearray)):
        raise ProtocolError("bad_array", "array shape must be non-negative and data must be bytes")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if expected != len(data) or expected > _MAX_ARRAY_BYTES:
        raise ProtocolError("bad_array", f"array of shape {shape} and dtype {dtype} needs {expected} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def pack(message: dict[str, Any]) -> bytes:
    return msgpack.packb(message, default=_encode_default, use_bin_type=True)


def unpack(data: bytes | str) -> dict[str, Any]:
    if isinstance(data, str):
        raise ProtocolError("bad_message", "text frames are not part of the protocol; send binary msgpack")
    try:
        msg = msgpack.unpackb(data, object_hook=_decode_hook, raw=False, strict_map_key=True)
    except ProtocolError:
        raise
    except Exception as e:  # msgpack raises several types for garbage
        raise ProtocolError("bad_message", f"not a msgpack message ({type(e).__name__})") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("bad_message", "a message must be a map with a string 'type'")
    return msg


def error_message(code: str, message: str, request_id: Any = None) -> dict[str, Any]:
    return {"type": "error", "id": request_id, "code": code, "message": message}
