"""The episode store: standardised human-hand episodes as a LeRobot v3-style dataset (parquet + mp4 + meta).

Layout (``DIR`` = the store; the LeRobot v3 part, its path templates, metadata IO, statistics and writer
lock are ``handvla.data.lerobot``)::

    meta/info.json                          codebase_version v3.0, fps, features, path templates, totals,
                                            plus a "handvla" block (format version, hand convention, ...)
    meta/tasks.parquet                      task (index) -> task_index, pandas-readable like LeRobot's
    meta/episodes/chunk-CCC/file-FFF.parquet  one row per episode (1000 episodes per file): LeRobot's
                                            columns + source, licence, rig, camera/*, annotations (JSON),
                                            ground_truth (JSON), hands, key, per-episode stats/*
    meta/stats.json                         per-feature mean/std/min/max/count
    data/chunk-CCC/file-FFF.parquet         per-frame rows of ONE episode (see schema.build_features)
    videos/observation.images.<cam>/chunk-CCC/file-FFF.mp4   the video of ONE episode
    meta/handvla_journal.jsonl              committed episodes not yet compacted into meta/episodes
    meta/handvla_stats.json                 the stats of stats.json with the number of episodes they cover
    meta/handvla_writer.lock                held (flock) by the one writer

One episode per data file and per video file. LeRobot v3 packs many episodes per file by default, but its
format allows any packing (each episode row names its data/video chunk and file and its time range in the
video); one per file is what makes an atomic, resumable append simple: episode ``k`` lives in chunk
``k // 1000``, file ``k % 1000`` (LeRobot's ``chunks_size`` = 1000 files per chunk folder).

Commit protocol of ``EpisodeWriter.add_episode``: the data parquet and the mp4 are written to temporary
names and renamed into place (fsync'd); the episode becomes visible only when its metadata row is appended
as one newline-terminated line to the journal and fsync'd. A reader merges the compacted episode files with
the journal; a torn last journal line (a writer killed mid-append) is ignored. ``close()`` (or every
``compact_every`` episodes) compacts the journal into ``meta/episodes``, ``tasks.parquet``, ``stats.json``
and ``info.json`` and empties the journal. A new writer on an existing store appends after the committed
episodes, skips episodes whose ``key`` is already committed, and removes stale temporary files and
uncommitted data/video files left by a killed writer.

Per-frame ``task_index`` is the index of the episode's first task (the primary instruction); an episode
without tasks points to the empty task "". Stats of hand fields are over the frames where that hand is
valid (values elsewhere are meaningless); ``valid`` and the bookkeeping columns are over all frames. Video
is not included in the stats.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from handvla import video as V
from handvla.atomic import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_parquet,
    fsync_dir,
    fsync_file,
    read_json,
    tmp_path,
)
from handvla.camera import Camera
from handvla.data.lerobot import (
    DATA_PATH,
    DEFAULT_CHUNK_SIZE,
    EPISODES_DIR,
    EPISODES_PATH,
    INDEX_FEATURES,
    INFO_PATH,
    TASKS_PATH,
    VIDEO_PATH,
    FeatureStats,
    WriterLock,
    check_not_foreign,
    checked_fps,
    chunk_file,
    compute_feature_stats,
    episode_files,
    index_columns,
    index_values,
    merge_stats,
    new_info,
    read_info,
    read_parquet,
    remove_leftovers,
    row_stats,
    set_totals,
    stats_fields,
    stats_from_json,
    stats_row,
    video_key,
    write_episodes,
    write_info,
    write_stats,
    write_tasks,
)
from handvla.data.schema import (
    DEFAULT_CAMERA,
    FORMAT_VERSION,
    HAND_CONVENTION,
    HAND_CONVENTION_TEXT,
    HAND_FIELDS,
    JOINTS_WIDTH,
    SUPPORTED_FORMAT_VERSIONS,
    Episode,
    build_features,
    camera_from_row,
    camera_to_row,
    hand_column,
    to_json,
)
from handvla.errors import ConfigError, InputError
from handvla.hand.motion import HAND_MODELS, HandMotion
from handvla.hand.topology import NUM_BETAS, NUM_JOINTS, SIDES

JOURNAL_PATH = "meta/handvla_journal.jsonl"
#: aggregated stats with the number of episodes they cover, written in one file so the pair stays consistent
STATS_STATE_PATH = "meta/handvla_stats.json"
EPISODES_PER_META_FILE = 1000
ROW_GROUP_FRAMES = 256  # parquet row group size: window reads only read the groups they need
#: EpisodeWriter option default: the value of the existing store (or the default for a new one)
AS_STORED = object()


def _fixed_list(a: np.ndarray, width: int) -> pa.Array:
    """(T, width) float32 -> parquet fixed_size_list<float32>[width] (HF datasets' Sequence(length=width))."""
    flat = pa.array(np.ascontiguousarray(a, np.float32).reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, width)


# ---------------------------------------------------------------------------------------------------------
# schema of the episode table
# ---------------------------------------------------------------------------------------------------------


def _stat_features(with_joints: bool) -> list[str]:
    names = list(INDEX_FEATURES)
    for side in SIDES:
        names += [hand_column(side, "valid")] + [hand_column(side, f) for f in HAND_FIELDS]
        if with_joints:
            names.append(hand_column(side, "joints"))
    return names


def _episode_schema(camera: str | None, with_joints: bool) -> pa.Schema:
    fields = [
        ("episode_index", pa.int64()),
        ("key", pa.string()),
        ("tasks", pa.list_(pa.string())),
        ("length", pa.int64()),
        ("data/chunk_index", pa.int64()),
        ("data/file_index", pa.int64()),
        ("dataset_from_index", pa.int64()),
        ("dataset_to_index", pa.int64()),
    ]
    if camera is not None:
        vk = video_key(camera)
        fields += [
            (f"videos/{vk}/chunk_index", pa.int64()),
            (f"videos/{vk}/file_index", pa.int64()),
            (f"videos/{vk}/from_timestamp", pa.float64()),
            (f"videos/{vk}/to_timestamp", pa.float64()),
        ]
    fields += [
        ("meta/episodes/chunk_index", pa.int64()),
        ("meta/episodes/file_index", pa.int64()),
        ("source", pa.string()),
        ("licence", pa.string()),
        ("rig", pa.string()),
        ("camera/fx", pa.float64()),
        ("camera/fy", pa.float64()),
        ("camera/cx", pa.float64()),
        ("camera/cy", pa.float64()),
        ("camera/width", pa.int64()),
        ("camera/height", pa.int64()),
        ("camera/extrinsics", pa.list_(pa.float64())),
        ("annotations", pa.string()),
        ("ground_truth", pa.string()),
        ("hands", pa.list_(pa.string())),
    ]
    fields += stats_fields(_stat_features(with_joints))
    return pa.schema(fields)


# ---------------------------------------------------------------------------------------------------------
# reading the metadata (shared by the writer and the reader)
# ---------------------------------------------------------------------------------------------------------


def _read_info(root: Path) -> dict[str, Any]:
    info = read_info(
        root,
        InputError(root, INFO_PATH, "an episode store (LeRobot v3 layout with meta/info.json)", "missing"),
    )
    path = root / INFO_PATH
    hv = info.get("handvla")
    if not isinstance(hv, dict):
        raise InputError(
            path, "handvla", "the handvla block of a hand episode store (a plain LeRobot dataset?)", repr(hv)
        )
    if hv.get("format_version") not in SUPPORTED_FORMAT_VERSIONS:
        raise InputError(
            path,
            "handvla.format_version",
            f"one of {SUPPORTED_FORMAT_VERSIONS} (this handvla reads these)",
            repr(hv.get("format_version")),
        )
    if hv.get("hand_convention") != HAND_CONVENTION:
        raise InputError(
            path, "handvla.hand_convention", repr(HAND_CONVENTION), repr(hv.get("hand_convention"))
        )
    if hv.get("hand_model") not in HAND_MODELS:
        raise InputError(path, "handvla.hand_model", f"one of {HAND_MODELS}", repr(hv.get("hand_model")))
    return info


def _read_journal(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Committed rows of the journal and the byte length of its committed part (a torn tail is not)."""
    if not path.is_file():
        return [], 0
    data = path.read_bytes()
    rows, good = [], 0
    lines = data.split(b"\n")
    for i, line in enumerate(
        lines[:-1]
    ):  # the last element is the text after the last newline: not committed
        try:
            rows.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(
                path, f"line {i + 1}", "one JSON episode row per line", f"unparsable ({e})"
            ) from None
        good += len(line) + 1
    return rows, good


def _load_episode_rows(
    root: Path, schema: pa.Schema, columns: list[str] | None = None
) -> tuple[pa.Table, int]:
    """All committed episode rows (compacted files + journal) as one table, and how many were compacted."""
    wanted = schema if columns is None else pa.schema([schema.field(c) for c in columns])
    tables = []
    for f in episode_files(root):
        t = read_parquet(f)
        missing = [c for c in wanted.names if c not in t.column_names]
        if missing:
            raise InputError(f, missing[0], "an episode-table column of this store format", "missing")
        try:
            tables.append(t.select(wanted.names).cast(wanted))
        except (pa.ArrowException, ValueError) as e:
            raise InputError(f, None, f"episode columns of types {wanted}", str(e)) from None
    table = pa.concat_tables(tables) if tables else wanted.empty_table()
    n_compacted = table.num_rows
    idx = table.column("episode_index").to_numpy() if n_compacted else np.zeros(0, np.int64)
    if not np.array_equal(idx, np.arange(n_compacted)):
        raise InputError(
            root / EPISODES_DIR,
            "episode_index",
            "0, 1, 2, ... across the episode files",
            str(idx[:10].tolist()),
        )
    jrows, _ = _read_journal(root / JOURNAL_PATH)
    jrows = [
        r for r in jrows if r.get("episode_index", -1) >= n_compacted
    ]  # compacted before the journal was emptied
    if jrows:
        try:
            jt = pa.Table.from_pylist([{c: r.get(c) for c in wanted.names} for r in jrows], schema=wanted)
        except (pa.ArrowException, ValueError, TypeError) as e:
            raise InputError(root / JOURNAL_PATH, None, "episode rows of this store format", str(e)) from None
        jidx = jt.column("episode_index").to_numpy()
        if not np.array_equal(jidx, np.arange(n_compacted, n_compacted + len(jidx))):
            raise InputError(
                root / JOURNAL_PATH,
                "episode_index",
                f"{n_compacted}, {n_compacted + 1}, ...",
                str(jidx[:10].tolist()),
            )
        table = pa.concat_tables([table, jt])
    return table, n_compacted


def _task_order(tasks_per_episode: list[list[str]]) -> dict[str, int]:
    """Task -> task_index in order of first appearance over the episodes ("" for an episode without tasks)."""
    order: dict[str, int] = {}
    for tasks in tasks_per_episode:
        for t in tasks or [""]:
            if t not in order:
                order[t] = len(order)
    return order


def _read_stats_state(root: Path) -> tuple[int, dict[str, FeatureStats]]:
    """(episodes covered, aggregated stats); (0, {}) when absent or unreadable (then rebuilt from episodes)."""
    try:
        state = read_json(root / STATS_STATE_PATH)
        return int(state["episodes"]), stats_from_json(state["stats"], str(root / STATS_STATE_PATH))
    except (KeyError, TypeError, ValueError):  # InputError is a ValueError
        return 0, {}


def _store_config(info: dict[str, Any]) -> tuple[str | None, bool]:
    hv = info["handvla"]
    return hv.get("camera"), bool(hv.get("joints", False))


# ---------------------------------------------------------------------------------------------------------
# writer
# ---------------------------------------------------------------------------------------------------------


class EpisodeWriter:
    """Appends episodes to a store atomically; resumes a store left by an earlier (or killed) writer.

    ``fps``: the store's frame rate (every episode must have it); ``hand_model``: 'builtin' or 'mano'
    (what the betas mean); ``joints``: store the 21 OpenPose joints per hand; ``camera``: the camera name of
    the video feature (``observation.images.<camera>``, default 'main'), or None for a store without video.
    On an existing store, options left out mean "as stored", and a different value is an error.
    ``durable``: fsync each episode's files and journal line before it counts as committed (survives power
    loss and OS crashes); False is about 2x faster and still exact under a killed process (the page cache
    survives it). Compaction is always fsync'd. ``compact_every``: compact the journal every N episodes.
    """

    def __init__(
        self,
        root: str | Path,
        fps: float | None = None,
        *,
        hand_model: str | None = None,
        joints: bool | None = None,
        camera: str | None | object = AS_STORED,
        crf: int = 20,
        preset: str = "veryfast",
        encoder_threads: int = 0,
        compact_every: int = 1000,
        durable: bool = True,
        robot_type: str | None = None,
    ):
        self.root = Path(root)
        self.durable = bool(durable)
        self.crf, self.preset, self.compact_every = int(crf), preset, int(compact_every)
        self.encoder_threads = encoder_threads  # libx264 threads for frames given as arrays (video.VideoWriter)
        self._lock = WriterLock(self.root, "EpisodeWriter", "store")
        self._closed = False
        try:
            self._open(fps, hand_model, joints, camera, robot_type)
        except BaseException:
            self._release()
            raise

    # -- opening / resuming --------------------------------------------------------------------------------
    def _open(self, fps, hand_model, joints, camera, robot_type) -> None:
        info_path = self.root / INFO_PATH
        if info_path.is_file():
            info = _read_info(self.root)
            hv = info["handvla"]
            stored_camera, stored_joints = _store_config(info)
            checks = [
                ("fps", fps, info["fps"]),
                ("hand_model", hand_model, hv["hand_model"]),
                ("joints", joints, stored_joints),
            ]
            for name, given, stored in checks:
                if given is not None and given != stored:
                    raise ConfigError(f"{info_path}: store has {name}={stored!r}, writer asked for {given!r}")
            if camera is not AS_STORED and camera != stored_camera:
                raise ConfigError(
                    f"{info_path}: store has camera={stored_camera!r}, writer asked for {camera!r}"
                )
            self.info = info
        else:
            if fps is None:
                raise ConfigError(f"{self.root}: a new store needs fps")
            check_not_foreign(self.root, "an episode store")
            fps = checked_fps(self.root, fps)
            hand_model = hand_model or "builtin"
            if hand_model not in HAND_MODELS:
                raise ConfigError(f"{self.root}: hand_model must be one of {HAND_MODELS}, got {hand_model!r}")
            camera = DEFAULT_CAMERA if camera is AS_STORED else camera
            if camera is not None and (not isinstance(camera, str) or not camera or "/" in camera):
                raise ConfigError(
                    f"{self.root}: camera must be a name without '/' (or None for no video), got {camera!r}"
                )
            features = build_features(bool(joints), camera, None, fps)
            self.info = new_info(fps, features, robot_type, camera is not None) | {
                "handvla": {
                    "format_version": FORMAT_VERSION,
                    "hand_convention": HAND_CONVENTION,
                    "hand_convention_text": HAND_CONVENTION_TEXT,
                    "hand_model": hand_model,
                    "joints": bool(joints),
                    "camera": camera,
                    "episodes_per_data_file": 1,
                    "episodes_per_meta_file": EPISODES_PER_META_FILE,
                    "video_sizes": [],
                },
            }
            write_info(self.root, self.info)
        hv = self.info["handvla"]
        self.fps = float(self.info["fps"])
        self.hand_model = hv["hand_model"]
        self.camera, self.with_joints = _store_config(self.info)
        self.schema = _episode_schema(self.camera, self.with_joints)
        self._video_sizes = {tuple(s) for s in hv.get("video_sizes", [])}

        # Committed episodes: light columns of all, full rows of those not yet compacted or not in stats.json.
        light = ["episode_index", "key", "tasks", "length"]
        table, self._n_compacted = _load_episode_rows(self.root, self.schema, light)
        self._keys = {k: i for i, k in enumerate(table.column("key").to_pylist())}
        tasks = table.column("tasks").to_pylist()
        self._tasks = _task_order(tasks)
        lengths = table.column("length").to_numpy() if table.num_rows else np.zeros(0, np.int64)
        self._n = table.num_rows
        self._frames = int(lengths.sum())
        self._stats_n, self._stats = _read_stats_state(self.root)
        if self._stats_n > self._n:  # cannot happen unless edited by hand: rebuild from the per-episode stats
            self._stats_n, self._stats = 0, {}
        first_needed = min(self._stats_n, self._n_compacted)
        self._pending: list[dict[str, Any]] = []  # full rows of episodes >= first_needed
        if first_needed < self._n:
            full, _ = _load_episode_rows(self.root, self.schema)
            self._pending = full.slice(first_needed).to_pylist()
        self._pending_from = first_needed
        self._cleanup()
        # A torn journal tail would corrupt the next append: cut it off.
        jpath = self.root / JOURNAL_PATH
        _, good = _read_journal(jpath)
        if jpath.is_file() and jpath.stat().st_size != good:
            with open(jpath, "r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())
        self._journal = open(jpath, "ab")

    def _cleanup(self) -> None:
        """Remove temporary files and data/video files of episodes that were never committed."""

        def uncommitted(p: Path) -> bool:
            if p.relative_to(self.root).parts[0] == "meta" or not p.name.startswith("file-"):
                return False
            k = self._episode_of_file(p)
            return k is not None and k >= self._n

        remove_leftovers(self.root, uncommitted)

    def _episode_of_file(self, p: Path) -> int | None:
        try:
            chunk = int(p.parent.name.removeprefix("chunk-"))
            file = int(p.name.removeprefix("file-").split(".")[0])
        except ValueError:
            return None
        return chunk * DEFAULT_CHUNK_SIZE + file

    # -- public ----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    def has(self, key: str) -> bool:
        """True if an episode with this key is committed (a build can skip its work)."""
        return key in self._keys

    def index_of(self, key: str) -> int:
        if key not in self._keys:
            raise InputError(self.root, "key", "the key of a committed episode", repr(key))
        return self._keys[key]

    def add_episode(self, ep: Episode) -> int:
        """Write one episode atomically; returns its episode index. An episode whose ``key`` (or explicit
        ``episode_index``) is already committed is skipped and its existing index returned."""
        if self._closed:
            raise ConfigError(f"{self.root}: add_episode on a closed EpisodeWriter")
        if not isinstance(ep, Episode):
            raise InputError(self.root, "episode", "an Episode", type(ep).__name__)
        if ep.key and ep.key in self._keys:
            return self._keys[ep.key]
        if ep.episode_index is not None:
            if ep.episode_index < self._n:
                return int(ep.episode_index)
            if ep.episode_index != self._n:
                raise InputError(
                    f"episode '{ep.key}'",
                    "episode_index",
                    f"{self._n} (the next index; indices are contiguous)",
                    str(ep.episode_index),
                )
        k = self._n
        key = ep.key or f"episode_{k:06d}"
        where = f"episode '{key}'"
        if "\n" in key:
            raise InputError(where, "key", "a key without newlines", repr(key))
        T, columns, row_stats, hands_present = self._frame_columns(ep, k, where)
        annotations = to_json(ep.annotations, where, "annotations")  # before any file is written
        ground_truth = None if ep.ground_truth is None else to_json(ep.ground_truth, where, "ground_truth")
        chunk, file = chunk_file(k)
        row: dict[str, Any] = {
            "episode_index": k,
            "key": key,
            "tasks": list(ep.tasks),
            "length": T,
            "data/chunk_index": chunk,
            "data/file_index": file,
            "dataset_from_index": self._frames,
            "dataset_to_index": self._frames + T,
        }
        # data first, then video, then the journal line: the line is the commit
        atomic_write_parquet(
            self.root / DATA_PATH.format(chunk_index=chunk, file_index=file),
            pa.table(columns),
            ROW_GROUP_FRAMES,
            self.durable,
        )
        if self.camera is not None:
            vk = video_key(self.camera)
            self._write_video(
                ep, T, self.root / VIDEO_PATH.format(video_key=vk, chunk_index=chunk, file_index=file), where
            )
            row |= {
                f"videos/{vk}/chunk_index": chunk,
                f"videos/{vk}/file_index": file,
                f"videos/{vk}/from_timestamp": 0.0,
                f"videos/{vk}/to_timestamp": T / self.fps,
            }
        mchunk, mfile = chunk_file(k, EPISODES_PER_META_FILE)
        row |= {"meta/episodes/chunk_index": mchunk, "meta/episodes/file_index": mfile}
        row |= {"source": str(ep.source), "licence": str(ep.licence), "rig": str(ep.rig)}
        row |= camera_to_row(ep.camera)
        row |= {"annotations": annotations, "ground_truth": ground_truth, "hands": hands_present}
        row |= row_stats
        line = (json.dumps(row, allow_nan=False) + "\n").encode()
        pos = self._journal.tell()
        try:
            self._journal.write(line)
            self._journal.flush()
            if self.durable:
                os.fsync(self._journal.fileno())
        except BaseException:  # e.g. disk full: leave no torn line for the next append to follow
            self._journal.truncate(pos)
            raise
        # committed
        self._n += 1
        self._frames += T
        self._keys[key] = k
        for t in ep.tasks or [""]:
            self._tasks.setdefault(t, len(self._tasks))
        self._pending.append(row)
        if self._n - self._n_compacted >= self.compact_every:
            self.flush()
        return k

    # -- building one episode ------------------------------------------------------------------------------
    def _frame_columns(self, ep: Episode, k: int, where: str):
        if abs(float(ep.fps) - self.fps) > 1e-9 * self.fps:
            raise InputError(where, "fps", f"{self.fps} (the store's frame rate)", str(ep.fps))
        if not isinstance(ep.camera, Camera):
            raise InputError(where, "camera", "a handvla.camera.Camera", type(ep.camera).__name__)
        if not isinstance(ep.tasks, (list, tuple)) or not all(isinstance(t, str) for t in ep.tasks):
            raise InputError(where, "tasks", "a list of str", repr(ep.tasks)[:80])
        if not isinstance(ep.annotations, dict):
            raise InputError(where, "annotations", "a dict", type(ep.annotations).__name__)
        for name in ("hands", "joints"):
            bad = [s for s in getattr(ep, name) if s not in SIDES]
            if bad:
                raise InputError(where, name, f"keys in {SIDES}", repr(bad[0]))
        T = ep.num_frames
        if T < 1:
            raise InputError(where, "hands", "at least one frame", "0 frames")
        for side, m in ep.hands.items():
            if not isinstance(m, HandMotion):
                raise InputError(where, f"hands[{side!r}]", "a HandMotion", type(m).__name__)
            if m.side != side:
                raise InputError(where, f"hands[{side!r}].side", repr(side), repr(m.side))
            if len(m) != T:
                raise InputError(
                    where, f"hands[{side!r}]", f"{T} frames like the other fields", f"{len(m)} frames"
                )
            if abs(float(m.fps) - self.fps) > 1e-9 * self.fps:
                raise InputError(
                    where, f"hands[{side!r}].fps", f"{self.fps} (the store's frame rate)", str(m.fps)
                )
            if m.hand_model != self.hand_model:
                raise InputError(
                    where, f"hands[{side!r}].hand_model", repr(self.hand_model), repr(m.hand_model)
                )
        if ep.joints and not self.with_joints:
            raise InputError(
                where,
                "joints",
                "no joints (this store was created with joints=False)",
                f"joints for {sorted(ep.joints)}",
            )

        task_index = self._tasks.get(ep.tasks[0] if ep.tasks else "", len(self._tasks))
        index = index_values(T, k, self._frames, task_index, self.fps)
        stats = {name: compute_feature_stats(v, quantiles=False) for name, v in index.items()}
        cols: dict[str, pa.Array] = {}  # the hand columns, then the bookkeeping columns (info.json order)
        present = []
        for side in SIDES:
            m = ep.hands.get(side)
            if m is None:
                valid = np.zeros(T, bool)
                arrays = {f: np.zeros((T, w), np.float32) for f, w in HAND_FIELDS.items()}
            else:
                valid = m.valid
                arrays = {
                    "global_orient": m.global_orient,
                    "wrist_pos": m.wrist_pos,
                    "hand_pose": m.hand_pose.reshape(T, 45),
                    "betas": np.broadcast_to(m.betas, (T, NUM_BETAS)),
                }
            if self.with_joints:
                j = ep.joints.get(side)
                if j is None:
                    if m is not None and valid.any():
                        raise InputError(
                            where,
                            f"joints[{side!r}]",
                            "joints for every hand with valid frames (joints store)",
                            "missing",
                        )
                    j = np.zeros((T, JOINTS_WIDTH), np.float32)
                else:
                    j = np.asarray(j)
                    if m is None:
                        raise InputError(
                            where,
                            f"joints[{side!r}]",
                            "joints only for hands given in hands",
                            "joints without hand parameters",
                        )
                    if j.shape not in ((T, NUM_JOINTS, 3), (T, JOINTS_WIDTH)):
                        raise InputError(where, f"joints[{side!r}]", f"shape ({T}, 21, 3)", str(j.shape))
                arrays["joints"] = j.reshape(T, JOINTS_WIDTH)
            if valid.any():
                present.append(side)
            for f, a in arrays.items():
                bad = ~np.isfinite(a[valid]).all(axis=1)
                if bad.any():
                    frame = int(np.flatnonzero(valid)[np.argmax(bad)])
                    raise InputError(
                        where,
                        hand_column(side, f),
                        "finite values on frames where the hand is valid",
                        f"NaN/inf at frame {frame}",
                    )
            cols[hand_column(side, "valid")] = pa.array(valid, pa.bool_())
            stats[hand_column(side, "valid")] = compute_feature_stats(valid, quantiles=False)
            for f, a in arrays.items():
                width = a.shape[1]
                cols[hand_column(side, f)] = _fixed_list(a, width)
                stats[hand_column(side, f)] = compute_feature_stats(a[valid], quantiles=False)
        cols |= index_columns(index)
        return T, cols, stats_row(stats), present

    def _write_video(self, ep: Episode, T: int, path: Path, where: str) -> None:
        cam = ep.camera
        path.parent.mkdir(parents=True, exist_ok=True)
        if ep.video is None:
            raise InputError(
                where, "video", f"frames or an mp4 (this store has video '{video_key(self.camera)}')", "None"
            )
        if isinstance(ep.video, (str, Path)):
            src = Path(ep.video)
            if not src.is_file():
                raise InputError(where, "video", "an existing mp4 file", f"missing {src}")
            vi = V.video_info(src)
            if vi.num_frames != T:
                raise InputError(
                    f"{where}: {src}",
                    "video",
                    f"{T} frames (one per motion frame)",
                    f"{vi.num_frames} frames",
                )
            if (vi.width, vi.height) != (cam.width, cam.height):
                raise InputError(
                    f"{where}: {src}",
                    "video",
                    f"{cam.width}x{cam.height} (camera width x height)",
                    f"{vi.width}x{vi.height}",
                )
            if abs(vi.fps - self.fps) > 1e-3 * self.fps:
                raise InputError(
                    f"{where}: {src}",
                    "video",
                    f"{self.fps} frames/s (the store's rate)",
                    f"{vi.fps:g} frames/s",
                )
            tmp = tmp_path(path)
            try:
                shutil.copyfile(src, tmp)
                if self.durable:
                    fsync_file(tmp)
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        else:
            frames = np.asarray(ep.video)
            if frames.dtype != np.uint8 or frames.shape != (T, cam.height, cam.width, 3):
                raise InputError(
                    where,
                    "video",
                    f"uint8 frames of shape ({T}, {cam.height}, {cam.width}, 3) (T, camera height, width, RGB)",
                    f"{frames.dtype} {frames.shape}",
                )
            V.write_video(
                path, frames, fps=self.fps, crf=self.crf, preset=self.preset, threads=self.encoder_threads
            )
            if self.durable:
                fsync_file(path)
        if self.durable:
            fsync_dir(path.parent)
        self._video_sizes.add((cam.height, cam.width))

    # -- compaction ------------------------------------------------------------------------------------------
    def flush(self) -> None:
        """Compact committed journal rows into meta/episodes, tasks.parquet, stats.json and info.json."""
        if self._closed:
            return
        n, start = self._n, self._pending_from
        rows = self._pending  # episodes [start, n)
        # 1. episode files from the one holding the first uncompacted episode on
        first_file = self._n_compacted // EPISODES_PER_META_FILE
        for f in range(first_file, (n - 1) // EPISODES_PER_META_FILE + 1 if n else 0):
            lo, hi = f * EPISODES_PER_META_FILE, min((f + 1) * EPISODES_PER_META_FILE, n)
            if lo >= start:
                file_rows = rows[lo - start : hi - start]
                table = pa.Table.from_pylist(file_rows, schema=self.schema)
            else:  # the file starts before the pending rows: keep its existing rows
                chunk, fi = chunk_file(f)
                old = read_parquet(
                    self.root / EPISODES_PATH.format(chunk_index=chunk, file_index=fi), "episode file"
                )
                old = old.select(self.schema.names).cast(self.schema).slice(0, start - lo)
                table = pa.concat_tables([old, pa.Table.from_pylist(rows[: hi - start], schema=self.schema)])
            write_episodes(self.root, *chunk_file(f), table)
        # 2. tasks, 3. stats (old aggregate merged with the new episodes), 4. info
        write_tasks(self.root, list(self._tasks))
        new_rows = rows[self._stats_n - start :]
        stats = {}
        for name in _stat_features(self.with_joints):
            parts = [row_stats(r, name) for r in new_rows]
            if name in self._stats:
                parts.append(self._stats[name])
            merged = merge_stats(parts)
            if merged is not None:
                stats[name] = merged
        atomic_write_json(
            self.root / STATS_STATE_PATH, {"episodes": n, "stats": {k: v.to_dict() for k, v in stats.items()}}
        )
        write_stats(self.root, stats)
        self._stats, self._stats_n = stats, n
        sizes = sorted(self._video_sizes)
        set_totals(self.info, n, self._frames, len(self._tasks))
        shape = sizes[0] if len(sizes) == 1 else None
        self.info["features"] = build_features(self.with_joints, self.camera, shape, self.info["fps"])
        self.info["handvla"]["video_sizes"] = [list(s) for s in sizes]
        write_info(self.root, self.info)
        # 5. empty the journal: everything in it is now in meta/episodes
        self._journal.close()
        atomic_write_bytes(self.root / JOURNAL_PATH, b"")
        self._journal = open(self.root / JOURNAL_PATH, "ab")
        self._n_compacted = n
        # keep the rows of the last, partly filled episode file? No: they are re-read from disk when needed.
        self._pending, self._pending_from = [], n

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._journal.close()
            self._release()

    def abort(self) -> None:
        """Stop without compacting (committed episodes stay committed, in the journal)."""
        if not self._closed:
            self._journal.close()
            self._release()

    def _release(self) -> None:
        self._closed = True
        self._lock.release()

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Committed episodes are complete whatever happened; compact them either way.
        self.close()


# ---------------------------------------------------------------------------------------------------------
# reader
# ---------------------------------------------------------------------------------------------------------


class EpisodeStore:
    """Reads a store: episode table, random access by episode and time window, stats, validation.

    A store whose writer is still running or was killed reads as exactly its committed episodes.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(self.root, None, "an episode store folder", "missing")
        self.info = _read_info(self.root)
        hv = self.info["handvla"]
        self.fps = float(self.info["fps"])
        self.hand_model: str = hv["hand_model"]
        self.camera, self.with_joints = _store_config(self.info)
        self.schema = _episode_schema(self.camera, self.with_joints)
        self._meta_columns = [n for n in self.schema.names if not n.startswith("stats/")]
        table, self._n_compacted = _load_episode_rows(self.root, self.schema, self._meta_columns)
        self.episodes: pa.Table = table  # one row per episode, without the per-episode stats
        self._rows = table.to_pylist()
        self._keys = {r["key"]: i for i, r in enumerate(self._rows)}
        self.tasks: list[str] = list(_task_order([r["tasks"] for r in self._rows]))
        # clean = everything committed is compacted (the writer closed normally)
        self.clean = self._n_compacted == len(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def video_key(self) -> str | None:
        return None if self.camera is None else video_key(self.camera)

    @property
    def total_frames(self) -> int:
        return int(sum(r["length"] for r in self._rows))

    def meta(self, k: int) -> dict[str, Any]:
        """The metadata row of episode ``k`` (annotations and ground_truth still JSON strings)."""
        self._check_index(k)
        return dict(self._rows[k])

    def index_of(self, key: str) -> int:
        if key not in self._keys:
            raise InputError(self.root, "key", "the key of a committed episode", repr(key))
        return self._keys[key]

    def _check_index(self, k: int) -> None:
        if not isinstance(k, (int, np.integer)) or not 0 <= k < len(self._rows):
            raise InputError(self.root, "episode", f"an episode index in [0, {len(self._rows)})", repr(k))

    def data_path(self, k: int) -> Path:
        r = self.meta(k)
        return self.root / self.info["data_path"].format(
            chunk_index=r["data/chunk_index"], file_index=r["data/file_index"]
        )

    def video_path(self, k: int) -> Path | None:
        if self.camera is None:
            return None
        r, vk = self.meta(k), self.video_key
        return self.root / self.info["video_path"].format(
            video_key=vk, chunk_index=r[f"videos/{vk}/chunk_index"], file_index=r[f"videos/{vk}/file_index"]
        )

    def frame_window(
        self, k: int, start_s: float | None = None, end_s: float | None = None
    ) -> tuple[int, int]:
        """Frames [a, b) of episode ``k`` whose time i / fps lies in [start_s, end_s)."""
        T = self.meta(k)["length"]
        a = 0 if start_s is None else math.ceil(float(start_s) * self.fps - 1e-6)
        b = T if end_s is None else math.ceil(float(end_s) * self.fps - 1e-6)
        a, b = max(0, min(a, T)), max(0, min(b, T))
        if b < a:
            raise InputError(f"episode {k}", "end_s", f">= start_s ({start_s})", str(end_s))
        return a, b

    # -- loading ---------------------------------------------------------------------------------------------
    def load_episode(
        self, k: int, start_s: float | None = None, end_s: float | None = None, with_video: bool = True
    ) -> Episode:
        """Episode ``k``, or its frames with time in [start_s, end_s) (seconds from the episode start).

        Reads only the parquet row groups and decodes only the video frames of the window (the mp4 is
        seeked to the key frame before it). Both hands are always present (a missing hand is all-invalid).
        """
        row = self.meta(k)
        a, b = self.frame_window(k, start_s, end_s)
        n = b - a
        path = self.data_path(k)
        where = f"{path} (episode {k})"
        # an empty window still reads one row: the hands' betas (constant per episode) come from it
        a0 = min(a, row["length"] - 1) if n == 0 else a
        table = self._read_rows(path, where, row["length"], a0, max(b, a0 + 1))
        cols = self._check_columns(table, where, k, a0, table.num_rows)
        hands, joints = {}, {}
        for side in SIDES:
            valid = cols[hand_column(side, "valid")]
            betas = cols[hand_column(side, "betas")]
            vi = np.flatnonzero(valid)
            hands[side] = HandMotion(
                global_orient=cols[hand_column(side, "global_orient")][:n],
                hand_pose=cols[hand_column(side, "hand_pose")][:n].reshape(n, 15, 3),
                wrist_pos=cols[hand_column(side, "wrist_pos")][:n],
                betas=betas[vi[0]] if len(vi) else betas[0],
                side=side,
                fps=self.fps,
                valid=valid[:n],
                hand_model=self.hand_model,
            )
            if self.with_joints:
                joints[side] = cols[hand_column(side, "joints")][:n].reshape(n, NUM_JOINTS, 3)
        video = None
        if with_video and self.camera is not None:
            video = self._read_video(k, row, a, b)
        gt = row["ground_truth"]
        return Episode(
            hands=hands,
            camera=camera_from_row(row),
            fps=self.fps,
            key=row["key"],
            video=video,
            joints=joints,
            tasks=list(row["tasks"]),
            source=row["source"],
            licence=row["licence"],
            rig=row["rig"],
            annotations=json.loads(row["annotations"]),
            ground_truth=None if gt is None else json.loads(gt),
            episode_index=k,
            frame_offset=a,
        )

    def _read_rows(self, path: Path, where: str, length: int, a: int, b: int) -> pa.Table:
        if not path.is_file():
            raise InputError(where, "data", "the episode's data parquet file", "missing")
        try:
            pf = pq.ParquetFile(path)
            md = pf.metadata
            if md.num_rows != length:
                raise InputError(
                    where, "length", f"{length} rows (meta/episodes length)", f"{md.num_rows} rows"
                )
            groups, g0, pos = [], None, 0
            for g in range(md.num_row_groups):
                m = md.row_group(g).num_rows
                if pos < b and pos + m > a:
                    groups.append(g)
                    g0 = pos if g0 is None else g0
                pos += m
            if not groups:
                return pf.schema_arrow.empty_table()
            return pf.read_row_groups(groups).slice(a - g0, b - a)
        except InputError:
            raise
        except (pa.ArrowException, OSError) as e:
            raise InputError(where, None, "a complete, readable parquet file", f"unreadable ({e})") from None

    def _check_columns(self, table: pa.Table, where: str, k: int, a: int, n: int) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        names = table.column_names
        for c in ("episode_index", "frame_index"):
            if c not in names:
                raise InputError(where, c, "an int64 column", "missing")
        ep_idx = table.column("episode_index").to_numpy()
        if n and not (ep_idx == k).all():
            raise InputError(where, "episode_index", f"{k} on every row", str(np.unique(ep_idx)[:5].tolist()))
        fi = table.column("frame_index").to_numpy()
        if not np.array_equal(fi, np.arange(a, a + n)):
            raise InputError(
                where, "frame_index", f"{a}, {a + 1}, ... (consecutive frames)", str(fi[:5].tolist())
            )
        widths = dict(HAND_FIELDS)
        if self.with_joints:
            widths["joints"] = JOINTS_WIDTH
        for side in SIDES:
            vc = hand_column(side, "valid")
            if vc not in names:
                raise InputError(where, vc, "a bool column", "missing")
            if table.schema.field(vc).type != pa.bool_():
                raise InputError(where, vc, "bool", str(table.schema.field(vc).type))
            valid = table.column(vc).to_numpy(zero_copy_only=False).astype(bool)
            out[vc] = valid
            for f, w in widths.items():
                c = hand_column(side, f)
                if c not in names:
                    raise InputError(where, c, f"a float32[{w}] column", "missing")
                t = table.schema.field(c).type
                if not (pa.types.is_fixed_size_list(t) and t.list_size == w and t.value_type == pa.float32()):
                    raise InputError(where, c, f"fixed_size_list<float32>[{w}]", str(t))
                col = table.column(c).combine_chunks()
                arr = (
                    col.flatten().to_numpy(zero_copy_only=False).reshape(n, w)
                    if n
                    else np.zeros((0, w), np.float32)
                )
                bad = ~np.isfinite(arr[valid]).all(axis=1)
                if bad.any():
                    frame = a + int(np.flatnonzero(valid)[np.argmax(bad)])
                    raise InputError(
                        where,
                        c,
                        "finite values on frames where the hand is valid",
                        f"NaN/inf at frame {frame}",
                    )
                out[c] = arr
        return out

    def _read_video(self, k: int, row: dict[str, Any], a: int, b: int) -> np.ndarray:
        path = self.video_path(k)
        vk = self.video_key
        where = f"{path} (episode {k})"
        if not path.is_file():
            raise InputError(where, vk, "the episode's mp4 file", "missing")
        try:
            vi = V.video_info(path)
        except InputError as e:
            raise InputError(where, vk, "a readable mp4", e.got) from None
        T = row["length"]
        if vi.num_frames != T:
            raise InputError(where, vk, f"{T} frames (meta/episodes length)", f"{vi.num_frames} frames")
        h, w = row["camera/height"], row["camera/width"]
        # seek by timestamp: the episode starts at from_timestamp inside its video file
        t0 = float(row[f"videos/{vk}/from_timestamp"])
        f0 = round(t0 * self.fps)
        try:
            frames = (
                V.read_video(path, f0 + a, f0 + b)
                if b > a
                else np.zeros((0, vi.height, vi.width, 3), np.uint8)
            )
        except InputError as e:
            raise InputError(where, vk, "a decodable mp4", e.got) from None
        if frames.shape[0] != b - a:
            raise InputError(
                where, vk, f"frames {a}..{b - 1} decodable", f"{frames.shape[0]} of {b - a} frames"
            )
        if frames.shape[1] < h or frames.shape[2] < w:
            raise InputError(
                where,
                vk,
                f"frames of {w}x{h} (camera width x height)",
                f"{frames.shape[2]}x{frames.shape[1]}",
            )
        return frames[:, :h, :w]  # the encoder pads odd sizes to even ones

    def iter_episodes(self, with_video: bool = True, progress: bool = False) -> Iterator[Episode]:
        it = range(len(self))
        if progress:

            it = tqdm(it, desc="episodes", unit="ep")
        for k in it:
            yield self.load_episode(k, with_video=with_video)

    # -- stats, summary, validation -------------------------------------------------------------------------
    def stats(self) -> dict[str, FeatureStats]:
        """Per-feature min, max, mean, std and count over the committed episodes (hand fields: valid frames)."""
        n_stats, raw = _read_stats_state(self.root)
        if n_stats != len(self):  # a writer is running or was killed: merge the committed per-episode stats
            table, _ = _load_episode_rows(self.root, self.schema)
            rows = table.to_pylist()
            raw = {}
            for name in _stat_features(self.with_joints):
                merged = merge_stats([row_stats(r, name) for r in rows])
                if merged is not None:
                    raw[name] = merged
        return raw

    def summary(self) -> dict[str, Any]:
        """Counts for ``handvla data stats``: episodes, frames, hours, per source/rig, hands, size on disk."""
        hours = 1 / (self.fps * 3600)
        by_source: dict[str, dict[str, float]] = {}
        by_rig: dict[str, dict[str, float]] = {}
        hands = {"left": 0, "right": 0, "both": 0, "none": 0}
        for r in self._rows:
            for table, name in ((by_source, r["source"] or "(none)"), (by_rig, r["rig"] or "(none)")):
                d = table.setdefault(name, {"episodes": 0, "frames": 0, "hours": 0.0})
                d["episodes"] += 1
                d["frames"] += r["length"]
                d["hours"] += r["length"] * hours
            hs = set(r["hands"])
            for s in SIDES:
                hands[s] += s in hs
            hands["both"] += hs == set(SIDES)
            hands["none"] += not hs
        size = 0
        for dirpath, _, files in os.walk(self.root):
            for f in files:
                size += (Path(dirpath) / f).stat().st_size
        frames = self.total_frames
        return {
            "dir": str(self.root),
            "episodes": len(self),
            "frames": frames,
            "hours": frames * hours,
            "fps": self.info["fps"],
            "tasks": len(self.tasks),
            "hand_model": self.hand_model,
            "joints": self.with_joints,
            "video": self.video_key,
            "hands": hands,
            "sources": dict(sorted(by_source.items())),
            "rigs": dict(sorted(by_rig.items())),
            "size_bytes": size,
            "compacted": self.clean,
        }

    def validate(self, deep: bool = False, progress: bool = False) -> list[str]:
        """Problems found (empty = fine). Cheap checks: files present, row counts, video frame counts and
        sizes, info totals. ``deep``: also read every episode (shapes, NaN on valid frames, decodability)."""
        problems: list[str] = []
        it = range(len(self))
        if progress:

            it = tqdm(it, desc="validate", unit="ep")
        for k in it:
            try:
                row = self._rows[k]
                path = self.data_path(k)
                where = f"{path} (episode {k})"
                if not path.is_file():
                    raise InputError(where, "data", "the episode's data parquet file", "missing")
                try:
                    nrows = pq.read_metadata(path).num_rows
                except (pa.ArrowException, OSError) as e:
                    raise InputError(
                        where, None, "a complete, readable parquet file", f"unreadable ({e})"
                    ) from None
                if nrows != row["length"]:
                    raise InputError(
                        where, "length", f"{row['length']} rows (meta/episodes length)", f"{nrows} rows"
                    )
                if self.camera is not None:
                    vp = self.video_path(k)
                    vw = f"{vp} (episode {k})"
                    if not vp.is_file():
                        raise InputError(vw, self.video_key, "the episode's mp4 file", "missing")
                    vi = V.video_info(vp)
                    if vi.num_frames != row["length"]:
                        raise InputError(
                            vw,
                            self.video_key,
                            f"{row['length']} frames (meta/episodes length)",
                            f"{vi.num_frames} frames",
                        )
                    if vi.width < row["camera/width"] or vi.height < row["camera/height"]:
                        raise InputError(
                            vw,
                            self.video_key,
                            f"{row['camera/width']}x{row['camera/height']}",
                            f"{vi.width}x{vi.height}",
                        )
                if deep:
                    self.load_episode(k, with_video=self.camera is not None)
            except InputError as e:
                problems.append(str(e))
            except Exception as e:  # a decoder failure on a damaged file: report it, keep checking the rest
                problems.append(f"episode {k}: {type(e).__name__}: {e}")
        if self.clean:
            info_path = self.root / INFO_PATH
            for name, want in (
                ("total_episodes", len(self)),
                ("total_frames", self.total_frames),
                ("total_tasks", len(self.tasks)),
            ):
                if self.info.get(name) != want:
                    problems.append(
                        str(
                            InputError(
                                info_path, name, f"{want} (from meta/episodes)", repr(self.info.get(name))
                            )
                        )
                    )
            tp = self.root / TASKS_PATH
            try:
                t = pq.read_table(tp, columns=["task", "task_index"])
                if t.column("task").to_pylist() != self.tasks or t.column("task_index").to_pylist() != list(
                    range(len(self.tasks))
                ):
                    problems.append(
                        str(
                            InputError(
                                tp,
                                "task",
                                "the tasks of meta/episodes in order of first use",
                                "a different list",
                            )
                        )
                    )
            except (pa.ArrowException, OSError) as e:
                problems.append(str(InputError(tp, None, "a readable tasks parquet", str(e))))
        return problems
