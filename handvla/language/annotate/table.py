"""Annotations of a store, kept beside it: ``DIR/meta/annotations/<backend>.jsonl`` (one clip per line).

The episode store has no API to rewrite an episode's row, and annotation runs are long, parallel and may be
killed, so each backend's annotations live in their own append-only table next to the store's metadata:

    meta/annotations/<backend>.jsonl            one ClipAnnotation per line (ClipAnnotation.to_dict)
    meta/annotations/<backend>.failures.jsonl   clips the backend gave up on (error, attempts), skipped
    meta/annotations/.<backend>.lock            held (flock) by the one writer of that backend

Commit protocol (the same as the store's journal): a record is one newline-terminated line, appended and
fsync'd (in small batches: a crash loses at most the last second of work, which a rerun redoes); a reader
ignores a torn last line, and a writer cuts it off before appending. A clip is identified by its
``clip_id`` = episode key + frame range, so a rerun skips clips already in the table whatever the episode
order, and a record written with a different segmentation does not count as done. ``compact()`` rewrites
the table sorted and without superseded duplicates, atomically (temporary file + ``os.replace``).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from handvla.atomic import atomic_write_text
from handvla.errors import ConfigError, InputError
from handvla.language.annotate.base import ClipAnnotation

ANNOTATIONS_DIR = "meta/annotations"
_BACKEND_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def check_backend_name(name: str) -> str:
    if not isinstance(name, str) or not _BACKEND_RE.match(name):
        raise ConfigError(
            f"annotation backend name: expected lowercase letters, digits, '_', '.', '-', got {name!r}"
        )
    return name


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of every complete line; a torn last line (no newline) is ignored, any other
    unreadable line is an error naming the file and line."""
    if not path.is_file():
        return
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    # the piece after the last newline is either empty or a torn write
    for i, raw in enumerate(lines[:-1], start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{path}:{i}", None, "one JSON record per line", f"unreadable ({e})") from None
        if not isinstance(rec, dict):
            raise InputError(f"{path}:{i}", None, "a JSON object", type(rec).__name__)
        yield i, rec


class AnnotationTable:
    """The annotations of one backend for one store (see the module doc for the layout)."""

    def __init__(self, store_root: str | Path, backend: str):
        self.root = Path(store_root)
        self.backend = check_backend_name(backend)
        self.dir = self.root / ANNOTATIONS_DIR
        self.path = self.dir / f"{backend}.jsonl"
        self.failures_path = self.dir / f"{backend}.failures.jsonl"
        self.lock_path = self.dir / f".{backend}.lock"

    def exists(self) -> bool:
        return self.path.is_file()

    def records(self) -> dict[str, dict[str, Any]]:
        """{clip_id: record} (the last record of a clip wins)."""
        out: dict[str, dict[str, Any]] = {}
        for i, rec in read_jsonl(self.path):
            cid = rec.get("clip_id")
            if not isinstance(cid, str):
                raise InputError(f"{self.path}:{i}", "clip_id", "a string", repr(cid))
            out[cid] = rec
        return out

    def load(self, segmentation: str | None = None) -> dict[str, ClipAnnotation]:
        """{clip_id: ClipAnnotation}, only those cut with ``segmentation`` when given."""
        out = {}
        for cid, rec in self.records().items():
            if segmentation is not None and rec.get("segmentation") != segmentation:
                continue
            out[cid] = ClipAnnotation.from_dict(rec, where=f"{self.path} ({cid})")
        return out

    def done(self, segmentation: str | None = None) -> set[str]:
        """clip_ids already annotated (with ``segmentation`` when given), without parsing the text."""
        return {
            cid
            for cid, rec in self.records().items()
            if segmentation is None or rec.get("segmentation") == segmentation
        }

    def failures(self) -> dict[str, dict[str, Any]]:
        """{clip_id: the last failure record} for clips that have no annotation."""
        done = self.done()
        out: dict[str, dict[str, Any]] = {}
        for _, rec in read_jsonl(self.failures_path):
            cid = rec.get("clip_id")
            if isinstance(cid, str) and cid not in done:
                out[cid] = rec
        return out

    def writer(self, sync_every_s: float = 1.0) -> TableWriter:
        return TableWriter(self, sync_every_s)

    def compact(self) -> int:
        """Rewrite the table sorted by (episode, start frame) without superseded records; returns the
        number of records. Takes the writer lock (fails if a run is writing)."""
        with self.writer() as _:
            return self._compact_locked()

    def _compact_locked(self) -> int:
        recs = sorted(
            self.records().values(),
            key=lambda r: (r.get("episode_index", 0), r.get("start_frame", 0), r["clip_id"]),
        )
        if self.path.exists() or recs:
            atomic_write_text(
                self.path, "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in recs)
            )
        fails = self.failures()
        if self.failures_path.exists():
            atomic_write_text(
                self.failures_path,
                "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in fails.values()),
            )
        return len(recs)


class TableWriter:
    """Appends records to an ``AnnotationTable`` under an exclusive lock (use as a context manager)."""

    def __init__(self, table: AnnotationTable, sync_every_s: float = 1.0):
        self.table = table
        self.sync_every_s = float(sync_every_s)
        self._lock_fd: int | None = None
        self._files: dict[Path, Any] = {}
        self._last_sync = time.monotonic()

    def __enter__(self) -> TableWriter:
        self.table.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.table.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"{self.table.lock_path}: another annotation run of backend '{self.table.backend}' is writing "
                "to this store; wait for it to finish"
            ) from None
        self._lock_fd = fd
        for p in (self.table.path, self.table.failures_path):
            _repair_tail(p)
        return self

    def _file(self, path: Path):
        f = self._files.get(path)
        if f is None:
            f = open(path, "ab")
            self._files[path] = f
        return f

    def _append(self, path: Path, rec: dict[str, Any]) -> None:
        if self._lock_fd is None:
            raise RuntimeError("TableWriter used outside its 'with' block")
        line = json.dumps(rec, sort_keys=True, ensure_ascii=False).encode() + b"\n"
        f = self._file(path)
        f.write(line)
        f.flush()
        if time.monotonic() - self._last_sync >= self.sync_every_s:
            self.sync()

    def append(self, ann: ClipAnnotation) -> None:
        self._append(self.table.path, ann.to_dict())

    def append_failure(self, rec: dict[str, Any]) -> None:
        self._append(self.table.failures_path, rec)

    def sync(self) -> None:
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())
        self._last_sync = time.monotonic()

    def compact(self) -> int:
        self.close_files()
        return self.table._compact_locked()

    def close_files(self) -> None:
        self.sync()
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.close_files()
        finally:
            if self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
                self._lock_fd = None


def _repair_tail(path: Path) -> None:
    """Cut a torn last line (a writer killed mid-append) so the next append starts on a fresh line."""
    if not path.is_file():
        return
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # find the last newline (read backwards in blocks)
        pos, block = size, 65536
        keep = 0
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            k = chunk.rfind(b"\n")
            if k >= 0:
                keep = start + k + 1
                break
            pos = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())


def load_annotations(
    store_root: str | Path, backends: list[str] | None = None, segmentation: str | None = None
) -> dict[str, ClipAnnotation]:
    """{clip_id: annotation} merged over backends: for each clip the first backend in ``backends`` that
    has it (default: every table present, 'openai' before 'rules' before the others alphabetically)."""
    root = Path(store_root)
    d = root / ANNOTATIONS_DIR
    if backends is None:
        names = sorted(
            p.name[: -len(".jsonl")] for p in d.glob("*.jsonl") if not p.name.endswith(".failures.jsonl")
        )
        pref = {"openai": 0, "rules": 1}
        backends = sorted(names, key=lambda n: (pref.get(n, 2), n))
    out: dict[str, ClipAnnotation] = {}
    for b in backends:
        table = AnnotationTable(root, b)
        if not table.exists():
            raise InputError(
                table.path,
                None,
                f"an annotation table of backend '{b}' (run `handvla data annotate`)",
                "missing",
            )
        for cid, ann in table.load(segmentation).items():
            out.setdefault(cid, ann)
    return out
