"""A content-addressed cache of endpoint replies: the same request never costs twice.

Key = SHA-256 of the canonical JSON of (endpoint URL, request body) — the body holds the model name, the
prompt and the base64 images, so any change to the clip, the frames, the prompt or the model is a new key;
the API key is not part of it. Each entry is one small JSON file ``<dir>/<key[:2]>/<key>.json`` written
atomically (temporary file + ``os.replace``), so concurrent workers and killed runs never leave a torn
entry, and a rerun after a crash finds every reply received before it. Only replies that passed
validation are stored (garbage is retried, not remembered).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any


def request_key(url: str, body: dict[str, Any]) -> str:
    """The cache key of a request: hex SHA-256 of its canonical JSON."""
    canon = json.dumps({"url": url, "body": body}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


class ResponseCache:
    """Reply store under ``root``; thread-safe (each entry is its own file, written atomically)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"cache key must be a hex SHA-256, got {key!r}")
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored entry, or None (a missing or unreadable entry is a miss: it is simply redone)."""
        p = self._path(key)
        try:
            with open(p, encoding="utf-8") as f:
                entry = json.load(f)
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            entry = None
        with self._lock:
            if isinstance(entry, dict):
                self.hits += 1
                return entry
            self.misses += 1
        return None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        p = self._path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.parent / f".{p.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(entry, f, ensure_ascii=False, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("??/*.json")) if self.root.is_dir() else 0
