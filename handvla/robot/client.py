"""A light policy client for the robot side: numpy + msgpack + websockets, no torch.

    with PolicyClient("ws://127.0.0.1:8765") as client:
        print(client.metadata)
        chunk = client.infer({"state": state, "image": rgb})   # (chunk, action_dim)

``ActionChunkBroker`` turns chunks into one action per control step, asking for a new chunk every
``replan_every`` steps (open-loop execution of the first part of each chunk).
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np
from websockets.sync.client import connect

from handvla.robot.protocol import PROTOCOL_VERSION, ProtocolError, pack, unpack


class PolicyError(RuntimeError):
    """The server answered a request with an error (``code`` and message from the server)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


class PolicyClient:
    def __init__(self, url: str = "ws://127.0.0.1:8765", timeout_s: float = 30.0, max_size: int = 64 * 1024 * 1024):
        self.url, self.timeout_s = url, timeout_s
        self._connect = connect(url, open_timeout=timeout_s, max_size=max_size, compression=None, proxy=None)
        self._ws = self._connect.__enter__()
        hello = unpack(self._ws.recv(timeout=timeout_s))
        if hello.get("type") != "metadata":
            raise ProtocolError("bad_handshake", f"expected metadata from {url}, got {hello.get('type')!r}")
        if hello.get("protocol") != PROTOCOL_VERSION:
            raise ProtocolError("bad_version", f"server speaks protocol {hello.get('protocol')}, client {PROTOCOL_VERSION}")
        self.metadata: dict[str, Any] = hello.get("policy", {})
        self._ids = itertools.count()

    def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        self._ws.send(pack(message))
        reply = unpack(self._ws.recv(timeout=self.timeout_s))
        if reply["type"] == "error":
            raise PolicyError(reply.get("code", "error"), reply.get("message", ""))
        return reply

    def infer(
        self,
        observation: dict[str, np.ndarray],
        prev_actions: np.ndarray | None = None,
        inference_delay: int = 0,
    ) -> np.ndarray:
        """One chunk (chunk_size, action_dim). Real-time chunking: ``prev_actions`` (n, action_dim), the
        previous chunk from this observation's time step on, and ``inference_delay`` d, the control steps
        that will run before the answer arrives; the answer's first d actions are ``prev_actions[:d]``."""
        if prev_actions is not None:
            observation = {
                **observation,
                "prev_actions": np.asarray(prev_actions, np.float32),
                "inference_delay": int(inference_delay),
            }
        reply = self._request({"type": "infer", "id": next(self._ids), "observation": observation})
        return reply["actions"]

    def ping(self) -> float:
        """Round trip in milliseconds."""
        t = time.perf_counter()
        self._request({"type": "ping"})
        return (time.perf_counter() - t) * 1e3

    def send_raw(self, data: bytes) -> dict[str, Any]:
        """Send bytes as they are (for robustness tests) and return the decoded reply."""
        self._ws.send(data)
        return unpack(self._ws.recv(timeout=self.timeout_s))

    def close(self) -> None:
        self._connect.__exit__(None, None, None)

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ActionChunkBroker:
    """Serve one action per call from the latest chunk; re-plan every ``replan_every`` actions.

    ``commit`` d > 0 (real-time chunking, for servers whose metadata says ``real_time_chunking``): each
    re-plan sends the rest of the current chunk as ``prev_actions`` with ``inference_delay`` d, so the new
    chunk starts with the d actions already planned and continues from them (no jump at the seam); on a
    robot the d steps cover the time the request takes. ``replan_every + commit`` must fit in a chunk."""

    def __init__(self, client: PolicyClient, replan_every: int | None = None, commit: int = 0):
        self.client = client
        chunk = int(client.metadata.get("chunk_size", 1))
        self.replan_every = replan_every or chunk
        self.commit = int(commit)
        if not 1 <= self.replan_every <= chunk:
            raise ValueError(f"replan_every must be in 1..{chunk} (the server's chunk size), got {self.replan_every}")
        if self.commit and not client.metadata.get("real_time_chunking"):
            raise ValueError("commit > 0 needs a server with real-time chunking (metadata 'real_time_chunking')")
        if not 0 <= self.commit <= chunk - self.replan_every:
            raise ValueError(
                f"commit must be in 0..{chunk - self.replan_every} (chunk size - replan_every), got {self.commit}"
            )
        self._chunk: np.ndarray | None = None
        self._i = 0

    def reset(self) -> None:
        self._chunk, self._i = None, 0

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        if self._chunk is None:
            self._chunk, self._i = self.client.infer(observation), 0
        elif self._i >= self.replan_every:
            if self.commit:
                rest = self._chunk[self._i :]
                self._chunk = self.client.infer(observation, prev_actions=rest, inference_delay=self.commit)
            else:
                self._chunk = self.client.infer(observation)
            self._i = 0
        action = self._chunk[self._i]
        self._i += 1
        return action
