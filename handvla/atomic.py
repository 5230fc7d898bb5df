"""Atomic file writes and checked JSON reads: the one implementation every module uses.

A file is written under a temporary name in its own folder (``.<name>.tmp-<pid>-<random>``) and renamed
over the target, so a reader sees the old file or the new one, never half of one, and a crash leaves at
most a temporary file that ``is_tmp_name`` recognises (stores delete those when they resume).
``durable=True`` also fsyncs the file and its folder, so the rename survives a power loss.

``read_json`` is the reading side of ``atomic_write_json``: the parsed file, or an error that names the
file and says what was expected (an existing file, valid JSON, a JSON object). ``json_default`` is the one
``json.dumps(..., default=)`` for our values (numpy arrays and scalars, paths).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import IO, Any

import numpy as np

from handvla.errors import CheckpointError, InputError

TMP_MARK = ".tmp"


def tmp_path(path: str | Path) -> Path:
    path = Path(path)
    return path.parent / f".{path.name}{TMP_MARK}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def is_tmp_name(name: str) -> bool:
    """True for names made by ``tmp_path`` (leftovers of an interrupted write)."""
    return name.startswith(".") and TMP_MARK in name


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a folder; the rename is still atomic
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def file_target(path: str | Path) -> Path:
    """``path`` as the target of a file write: InputError naming it when it is an existing folder (the
    rename would fail) or when a part of its parent is an existing file."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, None, "a file path to write", "an existing folder")
    for up in path.parents:
        if up.exists():
            if not up.is_dir():
                raise InputError(path, None, f"a path in a folder ('{up}' is a file)", "a file as folder")
            break
    return path


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb", durable: bool = True) -> Iterator[IO[Any]]:
    """``with atomic_open(p) as f: f.write(...)``: ``p`` appears only if the block finishes."""
    path = file_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """``with atomic_dir(p) as tmp: <write files into tmp>``: the folder ``p`` becomes ``tmp`` only if the
    block finishes; an existing ``p`` is moved aside, replaced, then deleted. On an error ``tmp`` is
    removed and ``p`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    tmp.mkdir()
    old = None
    try:
        yield tmp
        if path.exists():
            old = tmp_path(path)
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_replace_from(src_tmp: str | Path, path: str | Path, durable: bool = True) -> None:
    """Move an already written temporary file (from ``tmp_path``) into place."""
    file_target(path)
    if durable:
        fsync_file(src_tmp)
    os.replace(src_tmp, path)
    if durable:
        fsync_dir(Path(path).parent)


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = True) -> Path:
    with atomic_open(path, "wb", durable) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, durable: bool = True) -> Path:
    with atomic_open(path, "w", durable) as f:
        f.write(text)
    return Path(path)


def json_default(x: Any) -> Any:
    """``json.dumps(obj, default=json_default)``: numpy arrays become lists, numpy scalars Python numbers,
    paths strings; anything else is a TypeError naming its type."""
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, PurePath):
        return str(x)
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


def atomic_write_json(path: str | Path, obj: Any, durable: bool = True, **dumps_kwargs: Any) -> Path:
    dumps_kwargs.setdefault("indent", 2)
    return atomic_write_text(path, json.dumps(obj, **dumps_kwargs) + "\n", durable)


_JSON_TYPES = {dict: "a JSON object", list: "a JSON array"}


def read_json(path: str | Path, expect: type | None = dict, error: type[Exception] = InputError) -> Any:
    """The parsed JSON of ``path``; ``expect``: the type it must have (dict, list, or None for any).

    A missing, unreadable or unparsable file, or one of another type, raises ``error`` naming the file:
    an ``InputError(path, None, expected, got)``, or for another error class (CheckpointError, ...) that
    class with the same message."""
    p = Path(path)

    def fail(expected: str, got: str) -> Exception:
        e = InputError(p, None, expected, got)
        return e if error is InputError else error(str(e))

    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise fail("an existing JSON file", "no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise fail("valid JSON", str(e)) from None
    except OSError as e:
        raise fail("a readable JSON file", f"{type(e).__name__}: {e}") from None
    if expect is not None and not isinstance(obj, expect):
        raise fail(_JSON_TYPES.get(expect, f"JSON of type {expect.__name__}"), type(obj).__name__)
    return obj


def check_safetensors(path: str | Path, error: type[Exception] = CheckpointError) -> list[Path]:
    """The ``*.safetensors`` files of a folder (or the one file ``path``), each checked to open with a
    header that covers the whole file (reads the headers only); a corrupt, truncated or empty one raises
    ``error`` naming it."""
    # why here: safetensors is only needed by the loaders that call this
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    for f in files:
        try:
            with safe_open(str(f), framework="numpy") as st:
                st.keys()
        except (SafetensorError, OSError) as e:
            raise error(f"{f}: not a readable safetensors file ({e})") from None
    return files


def atomic_savez(path: str | Path, arrays: dict[str, Any], durable: bool = True) -> Path:
    """``np.savez`` (uncompressed) written atomically; the path is used as given (no '.npz' is added)."""
    with atomic_open(path, "wb", durable) as f:
        np.savez(f, **arrays)
    return Path(path)


def atomic_write_parquet(
    path: str | Path, table, row_group_size: int | None = None, durable: bool = True
) -> Path:
    # why here: pyarrow takes a while to import, and most users of this module never write parquet
    import pyarrow.parquet as pq

    with atomic_open(path, "wb", durable) as f:
        pq.write_table(table, f, row_group_size=row_group_size)
    return Path(path)
