"""A policy server: websocket + msgpack (see ``protocol``), metadata on connect, a health endpoint.

Many clients may be connected at once; inference runs in a worker thread, so the event loop keeps
answering pings, health checks and bad requests meanwhile. Concurrent requests are batched: while one
forward pass runs, the requests that arrive queue up, and the next pass answers all of them (up to
``max_batch``) through the policy's ``infer_batch`` when it has one (one request at a time through
``infer`` otherwise). A batch that fails is retried request by request, so one bad observation only
fails its own request.
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

from handvla.errors import ConfigError
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

    # optional: ``infer_batch(observations: list) -> list of arrays``, one forward pass for several


def validate_observation(
    obs: Any, spec: dict[str, dict[str, Any]], chunk_size: int | None = None, action_dim: int | None = None
) -> dict[str, Any]:
    """Check an observation against the policy's spec; raise ProtocolError('bad_observation', ...).
    Besides the spec's arrays it may carry ``task`` (a string) and, for real-time chunking, ``prev_actions``
    ((n, action_dim) floats: the previous chunk from the observation's time step on) with
    ``inference_delay`` (an integer d in 0..min(n, chunk_size): the first d actions of the answer are
    ``prev_actions[:d]``)."""
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
    if "prev_actions" in obs or "inference_delay" in obs:
        out.update(_validate_committed_prefix(obs, chunk_size, action_dim))
    return out


def _validate_committed_prefix(obs: dict, chunk_size: int | None, action_dim: int | None) -> dict[str, Any]:
    prev, delay = obs.get("prev_actions"), obs.get("inference_delay", 0)
    if prev is None:
        raise ProtocolError("bad_observation", "'inference_delay' needs 'prev_actions' (the previous chunk)")
    prev = np.asarray(prev)
    if prev.dtype.kind not in "iuf" or prev.ndim != 2 or (action_dim is not None and prev.shape[1] != action_dim):
        raise ProtocolError(
            "bad_observation", f"'prev_actions' must be a numeric (n, {action_dim}) array, got {prev.dtype} {prev.shape}"
        )
    prev = prev.astype(np.float32)
    if not np.isfinite(prev).all():
        raise ProtocolError("bad_observation", "'prev_actions' contains NaN or inf")
    top = len(prev) if chunk_size is None else min(len(prev), int(chunk_size))
    if isinstance(delay, bool) or not isinstance(delay, (int, np.integer)) or not 0 <= int(delay) <= top:
        raise ProtocolError(
            "bad_observation", f"'inference_delay' must be an integer in 0..{top} (prev_actions rows, chunk size), got {delay!r}"
        )
    return {"prev_actions": prev, "inference_delay": int(delay)}


class PolicyServer:
    def __init__(
        self,
        policy: Policy,
        host: str = "127.0.0.1",
        port: int = 8765,
        max_message_mb: int = 64,
        max_batch: int = 32,
        batch_window_ms: float = 0.0,
    ):
        """``max_batch``: most requests answered by one forward pass (1: no batching);
        ``batch_window_ms``: how long an idle server waits for more requests after the first one arrives
        (0: answer it at once; requests that arrive during a pass are batched anyway)."""
        if max_batch < 1 or batch_window_ms < 0:
            raise ConfigError(
                f"max_batch must be >= 1 and batch_window_ms >= 0, got {max_batch} and {batch_window_ms}"
            )
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(f"port: expected a TCP port from 0 to 65535 (0: any free port), got {port!r}")
        self.policy, self.host, self.port = policy, host, port
        self.max_batch, self.batch_window_s = int(max_batch), batch_window_ms / 1e3
        self._batched = self.max_batch > 1 and callable(getattr(policy, "infer_batch", None))
        self._queue: asyncio.Queue | None = None
        self.batch_sizes: list[int] = []
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
        self._start_error: OSError | None = None  # why the listening socket could not be opened
        self.requests_served = 0

    # -- request handling ---------------------------------------------------------------------------
    def _checked(self, actions: Any) -> np.ndarray:
        actions = np.asarray(actions, dtype=np.float32)
        want = (self._meta["chunk_size"], self._meta["action_dim"])
        if actions.shape != want:
            raise RuntimeError(f"policy returned actions of shape {actions.shape}, expected {want}")
        return actions

    def _infer_sync(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        with self._lock:
            return self._checked(self.policy.infer(obs))

    def _infer_batch_sync(self, batch: list[dict[str, np.ndarray]]) -> list[np.ndarray | Exception]:
        """One forward pass for the batch; if it fails, each request alone (its own error, or its answer)."""
        with self._lock:
            try:
                out = list(self.policy.infer_batch(batch)) if len(batch) > 1 else [self.policy.infer(batch[0])]
                if len(out) != len(batch):
                    raise RuntimeError(f"infer_batch returned {len(out)} chunks for {len(batch)} observations")
                return [self._checked(a) for a in out]
            except Exception:
                if len(batch) == 1:
                    raise
            results: list[np.ndarray | Exception] = []
            for obs in batch:
                try:
                    results.append(self._checked(self.policy.infer(obs)))
                except Exception as e:  # this request's own failure, reported to its client only
                    results.append(e)
            return results

    async def _batcher(self) -> None:
        """Answer queued requests in batches (see the module doc)."""
        assert self._queue is not None
        while True:
            items = [await self._queue.get()]
            if self.batch_window_s > 0:
                deadline = asyncio.get_running_loop().time() + self.batch_window_s
                while len(items) < self.max_batch:
                    remaining = deadline - asyncio.get_running_loop().time()
                    if remaining <= 0:
                        break
                    try:
                        items.append(await asyncio.wait_for(self._queue.get(), remaining))
                    except TimeoutError:
                        break
            while len(items) < self.max_batch and not self._queue.empty():
                items.append(self._queue.get_nowait())
            self.batch_sizes.append(len(items))
            try:
                results = await asyncio.to_thread(self._infer_batch_sync, [obs for obs, _ in items])
            except Exception as e:
                results = [e] * len(items)
            for (_, fut), res in zip(items, results):
                if fut.done():
                    continue
                if isinstance(res, Exception):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)

    async def _infer(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        if not self._batched or self._queue is None:
            return await asyncio.to_thread(self._infer_sync, obs)
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put((obs, fut))
        return await fut

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
            meta = self._meta
            obs = validate_observation(msg.get("observation"), meta["observation"], meta["chunk_size"], meta["action_dim"])
            t = time.perf_counter()
            actions = await self._infer(obs)
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
        batcher = None
        if self._batched:
            self._queue = asyncio.Queue()
            batcher = asyncio.create_task(self._batcher())
        try:
            await self._serve(ready)
        finally:
            if batcher is not None:
                batcher.cancel()

    async def _serve(self, ready: threading.Event | None) -> None:
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
            except OSError as e:  # the bind failed (port in use, address not available): told by the caller
                self._start_error = e
                ready.set()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("policy server did not start")
        if self._start_error is not None:
            self._thread.join(timeout=10)
            e = self._start_error
            raise ConfigError(
                f"port: cannot listen on {self.host}:{self.port} ({e.strerror or e}): choose another port "
                "(0: any free port)"
            )
        return self.port

    def stop(self) -> None:
        if self._server is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        if self._thread is not None:
            self._thread.join(timeout=10)
