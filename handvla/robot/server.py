"""A policy server: websocket + msgpack (see ``protocol``), metadata on connect, a health endpoint.

Many clients may be connected at once; inference runs in a worker thread, one request at a time per
policy (a lock), so the event loop keeps answering pings, health checks and bad requests meanwhile.
Every malformed request gets an error reply and the connection stays open; nothing a client sends is
ever unpickled or executed.
"""

from __future__ import annotations

import asyncio
import http
import threading
import time
from typing import Any, Protocol

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from handvla.robot.protocol import PROTOCOL_VERSION, ProtocolError, error_message, pack, unpack

#: what every policy's ``metadata()`` must hold (see `Policy`)
REQUIRED_METADATA = ("chunk_size", "action_dim", "observation")


class Policy(Protocol):
    """What the server needs from a policy.

    ``metadata()`` must contain ``chunk_size``, ``action_dim`` and ``observation``: a map from key to
    ``{"shape": [...], "dtype": "float32"}`` (-1 in a shape means any size). ``infer`` gets validated
    arrays of exactly those keys and returns a (chunk_size, action_dim) array.
    """

    def metadata(self) -> dict[str, Any]: ...

    def infer(self, observation: dict[str, np.ndarray]) -> np.ndarray: ...


def validate_observation(obs: Any, spec: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Check an observation against the policy's spec; raise ProtocolError('bad_observation', ...)."""
    if not isinstance(obs, dict):
        raise ProtocolError("bad_observation", "'observation' must be a map from key to array")
    missing = sorted(set(spec) - set(obs))
    if missing:
        raise ProtocolError("bad_observation", f"missing observation key(s) {missing}; expected {sorted(spec)}")
    out = {}
    for key, s in spec.items():
        arr = obs[key]
        if not isinstance(arr, np.ndarray):
            arr = np.asarray(arr)
            if arr.dtype.kind not in "biuf":
                raise ProtocolError("bad_observation", f"observation '{key}' must be a numeric array")
        want = tuple(s["shape"])
        if len(want) != arr.ndim or any(w not in (-1, g) for w, g in zip(want, arr.shape)):
            raise ProtocolError("bad_observation", f"observation '{key}' has shape {tuple(arr.shape)}, expected {want}")
        dtype = np.dtype(s.get("dtype", "float32"))
        if dtype.kind == "f":
            arr = arr.astype(dtype, copy=False)
            if not np.isfinite(arr).all():
                raise ProtocolError("bad_observation", f"observation '{key}' contains NaN or inf")
        elif arr.dtype != dtype:
            if not np.can_cast(arr.dtype, dtype, casting="same_kind"):
                raise ProtocolError("bad_observation", f"observation '{key}' has dtype {arr.dtype}, expected {dtype}")
            arr = arr.astype(dtype)
        out[key] = arr
    task = obs.get("task")  # the language instruction travels as a plain string, outside the array spec
    if task is not None:
        if not isinstance(task, str) or len(task) > 2000:
            raise ProtocolError("bad_observation", "'task' must be a string of at most 2000 characters")
        out["task"] = task
    return out


class PolicyServer:
    def __init__(self, policy: Policy, host: str = "127.0.0.1", port: int = 8765, max_message_mb: int = 64):
        self.policy, self.host, self.port = policy, host, port
        self.max_size = max_message_mb * 1024 * 1024
        meta = policy.metadata()
        for key in REQUIRED_METADATA:
            if key not in meta:
                raise ValueError(f"policy metadata lacks '{key}'")
        self._meta = meta
        self._lock = threading.Lock()
        self._server = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.requests_served = 0

    # -- request handling ---------------------------------------------------------------------------
    def _infer_sync(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        with self._lock:
            actions = np.asarray(self.policy.infer(obs), dtype=np.float32)
        want = (self._meta["chunk_size"], self._meta["action_dim"])
        if actions.shape != want:
            raise RuntimeError(f"policy returned actions of shape {actions.shape}, expected {want}")
        return actions

    async def _answer(self, raw: bytes | str) -> dict[str, Any]:
        request_id = None
        try:
            msg = unpack(raw)
            request_id = msg.get("id")
            if msg["type"] == "ping":
                return {"type": "pong", "id": request_id}
            if msg["type"] == "metadata":
                return {"type": "metadata", "protocol": PROTOCOL_VERSION, "policy": self._meta}
            if msg["type"] != "infer":
                raise ProtocolError("bad_type", f"unknown message type {msg['type']!r}; expected infer, ping or metadata")
            obs = validate_observation(msg.get("observation"), self._meta["observation"])
            t = time.perf_counter()
            actions = await asyncio.to_thread(self._infer_sync, obs)
            self.requests_served += 1
            return {"type": "action", "id": request_id, "actions": actions, "server_ms": (time.perf_counter() - t) * 1e3}
        except ProtocolError as e:
            return error_message(e.code, str(e), request_id)
        except Exception as e:  # a policy failure must not take the server down
            return error_message("policy_error", f"{type(e).__name__}: {e}", request_id)

    async def _handler(self, ws: ServerConnection) -> None:
        await ws.send(pack({"type": "metadata", "protocol": PROTOCOL_VERSION, "policy": self._meta}))
        try:
            async for raw in ws:
                await ws.send(pack(await self._answer(raw)))
        except ConnectionClosed:
            pass

    @staticmethod
    def _process_request(connection: ServerConnection, request) -> Any:
        if request.path in ("/healthz", "/health"):
            return connection.respond(http.HTTPStatus.OK, "ok\n")
        return None

    # -- running ------------------------------------------------------------------------------------
    async def _run(self, ready: threading.Event | None = None) -> None:
        async with serve(
            self._handler, self.host, self.port, process_request=self._process_request,
            max_size=self.max_size, compression=None,
        ) as server:
            self._server = server
            self.port = server.sockets[0].getsockname()[1]
            if ready is not None:
                ready.set()
            await server.serve_forever()

    def serve_forever(self) -> None:
        asyncio.run(self._run())

    def start_in_thread(self) -> int:
        """Start serving in a background thread (port 0 picks a free port); returns the port."""
        ready = threading.Event()

        def run():
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(self._run(ready))
            except asyncio.CancelledError:
                pass

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("policy server did not start")
        return self.port

    def stop(self) -> None:
        if self._server is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        if self._thread is not None:
            self._thread.join(timeout=10)
