"""Robot datasets in LeRobot's v3.0 layout: read real LeRobot datasets, write our own (tests, simulator).

The layout, metadata IO, statistics and writer lock are ``handvla.data.lerobot`` (shared with the
human-hand episode store); what is particular to robot datasets (``DIR`` = the dataset; facts checked
against LeRobot's ``dataset_reader.py`` and ``dataset_writer.py``)::

    meta/stats.json         {feature: {min, max, mean, std, count, q01, q10, q50, q90, q99}}
    data/chunk-CCC/file-FFF.parquet            per-frame rows of MANY episodes (observation.state, action,
                            ..., then timestamp, frame_index, episode_index, index, task_index)
    videos/<key>/chunk-CCC/file-FFF.mp4        MANY episodes one after the other; an episode starts at its
                            ``from_timestamp`` (seconds) inside the file

Facts the reader relies on: ``index`` is the frame's global index and an episode's frames are the rows
with ``dataset_from_index <= index < dataset_to_index``; ``timestamp`` restarts at 0 for every episode;
the video frame of a row is at time ``from_timestamp + timestamp`` in its episode's video file; a
feature of shape [1] is a scalar column, a vector a (fixed-size) list column; ``image`` features are
stored in the parquet as {bytes, path} structs (PNG). Chunk folders hold ``chunks_size`` (1000) files.

Writing (``RobotDatasetWriter``) packs ``episodes_per_file`` episodes into each data file and each video
file, as LeRobot does (it packs by file size). The unit of commit is a file: the data parquet and the
mp4s are renamed into place, then the episode rows of that file (``meta/episodes``), tasks, stats and
finally info.json are rewritten atomically. A writer killed mid-file loses only the episodes of the
file it was filling; the ones already committed stay readable. Re-opening a dataset appends new files
(and removes the temporary files a killed writer left). One writer per dataset (a lock file in meta/).
Videos are H.264 with a key frame every ``gop`` frames (default 2, like LeRobot's encoder) so that random
access to one frame decodes at most ``gop`` frames.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from handvla import video as V
from handvla.atomic import atomic_write_parquet
from handvla.data.lerobot import (
    DATA_PATH,
    DEFAULT_CHUNK_SIZE,
    EPISODES_DIR,
    INDEX_FEATURES,
    INFO_PATH,
    VIDEO_PATH,
    FeatureStats,
    WriterLock,
    check_not_foreign,
    checked_fps,
    chunk_file,
    compute_feature_stats,
    episode_files,
    index_columns,
    index_features,
    index_values,
    new_info,
    read_info,
    read_parquet,
    read_stats,
    read_tasks,
    remove_leftovers,
    set_totals,
    stats_row,
    write_episodes,
    write_info,
    write_stats,
    write_tasks,
)
from handvla.errors import ConfigError, InputError, MissingResourceError

STATE_KEY = "observation.state"
ACTION_KEY = "action"
DEFAULT_EPISODES_PER_FILE = 50
_NUMERIC = {
    "float32": pa.float32(),
    "float64": pa.float64(),
    "int64": pa.int64(),
    "int32": pa.int32(),
    "bool": pa.bool_(),
}


def _feature_width(spec: Mapping[str, Any]) -> int:
    return int(np.prod(spec.get("shape") or [1]))


# ---------------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------------


def _column_to_numpy(col: pa.ChunkedArray, width: int, where: str, name: str) -> np.ndarray:
    """A scalar, list or fixed-size-list parquet column -> (N,) or (N, width) numpy array."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    t = col.type
    n = len(col)
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
        if col.null_count:
            raise InputError(where, name, "no missing values", f"{col.null_count} null rows")
        flat = col.flatten().to_numpy(zero_copy_only=False)
        if flat.size != n * width:
            raise InputError(where, name, f"{width} values per row", f"{flat.size / max(n, 1):g} on average")
        return flat.reshape(n, width)
    if width != 1:
        raise InputError(where, name, f"a list column of {width} values", str(t))
    return col.to_numpy(zero_copy_only=False)


@dataclass(frozen=True)
class EpisodeInfo:
    """One row of ``meta/episodes`` (the parts a reader needs)."""

    index: int
    length: int
    tasks: tuple[str, ...]
    data_chunk: int
    data_file: int
    from_index: int  # global frame index of the first frame (dataset_from_index)
    to_index: int  # one past the last (dataset_to_index)
    videos: dict[str, tuple[int, int, float, float]]  # key -> (chunk, file, from_timestamp, to_timestamp)


class RobotDataset:
    """A LeRobot v3.0 dataset on disk: metadata, per-frame columns in memory, frames decoded on demand.

    Numeric per-frame columns are read once (all data files, in global ``index`` order) into numpy; a
    robot dataset of a million 60-float frames takes ~240 MB. Video frames are decoded with PyAV when asked.
    Construction fails with MissingResourceError naming the file when a data or video file of an episode is
    missing; ``stats`` fails the same way when meta/stats.json is missing.
    """

    def __init__(self, root: str | Path, columns: Sequence[str] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise MissingResourceError(f"{self.root}: robot dataset folder not found")
        self.info = self._read_info()
        self.fps = float(self.info["fps"])
        self.features: dict[str, dict[str, Any]] = self.info["features"]
        self.video_keys = [k for k, f in self.features.items() if f.get("dtype") == "video"]
        self.image_keys = [k for k, f in self.features.items() if f.get("dtype") == "image"]
        self.tasks = read_tasks(self.root)
        self.episodes = self._read_episodes()
        self._check_files()
        numeric = [k for k, f in self.features.items() if f.get("dtype") not in ("video", "image", "string")]
        wanted = list(numeric) if columns is None else list(dict.fromkeys([*INDEX_FEATURES, *columns]))
        self._columns = self._read_data(wanted)
        self._stats: dict[str, FeatureStats] | None = None

    # -- metadata ------------------------------------------------------------------------------------------
    def _read_info(self) -> dict[str, Any]:
        path = self.root / INFO_PATH
        info = read_info(
            self.root,
            MissingResourceError(f"{path}: not found (a LeRobot v3.0 dataset has meta/info.json)"),
            " (older datasets: convert with LeRobot's convert_dataset_v21_to_v30)",
        )
        feats = info.get("features")
        if not isinstance(feats, dict) or not feats:
            raise InputError(path, "features", "an object {name: {dtype, shape, names}}", repr(feats)[:80])
        for name, f in feats.items():
            if not isinstance(f, dict) or "dtype" not in f or "shape" not in f:
                raise InputError(path, f"features.{name}", "an object with dtype and shape", repr(f)[:80])
        if "data_path" not in info:
            raise InputError(path, "data_path", "the data file template", "missing")
        if any(f["dtype"] == "video" for f in feats.values()) and not info.get("video_path"):
            raise InputError(
                path, "video_path", "the video file template (the dataset has videos)", "missing"
            )
        return info

    def _read_episodes(self) -> list[EpisodeInfo]:
        files = episode_files(self.root)
        if not files and self.info.get("total_episodes", 0):
            raise MissingResourceError(
                f"{self.root / EPISODES_DIR}: no episode files (chunk-*/file-*.parquet) but "
                f"info.json counts {self.info['total_episodes']} episodes"
            )
        rows: list[dict[str, Any]] = []
        need = [
            "episode_index",
            "length",
            "data/chunk_index",
            "data/file_index",
            "dataset_from_index",
            "dataset_to_index",
        ]
        for f in files:
            schema = pq.read_schema(f)
            cols = [c for c in schema.names if not c.startswith("stats/")]  # stats are heavy and unused here
            for c in need:
                if c not in cols:
                    raise InputError(f, c, "an episode column of LeRobot v3.0", "missing")
            for k in self.video_keys:
                for part in ("chunk_index", "file_index", "from_timestamp"):
                    if f"videos/{k}/{part}" not in cols:
                        raise InputError(
                            f, f"videos/{k}/{part}", "a video column of every video feature", "missing"
                        )
            rows += read_parquet(f, columns=cols).to_pylist()
        rows.sort(key=lambda r: r["episode_index"])
        idx = [r["episode_index"] for r in rows]
        if idx != list(range(len(rows))):
            raise InputError(
                self.root / EPISODES_DIR, "episode_index", "0, 1, 2, ... without gaps", str(idx[:10])
            )
        eps = []
        for r in rows:
            videos = {
                k: (
                    int(r[f"videos/{k}/chunk_index"]),
                    int(r[f"videos/{k}/file_index"]),
                    float(r[f"videos/{k}/from_timestamp"]),
                    float(r.get(f"videos/{k}/to_timestamp") or math.nan),
                )
                for k in self.video_keys
            }
            eps.append(
                EpisodeInfo(
                    index=int(r["episode_index"]),
                    length=int(r["length"]),
                    tasks=tuple(r.get("tasks") or ()),
                    data_chunk=int(r["data/chunk_index"]),
                    data_file=int(r["data/file_index"]),
                    from_index=int(r["dataset_from_index"]),
                    to_index=int(r["dataset_to_index"]),
                    videos=videos,
                )
            )
        return eps

    def data_path(self, k: int) -> Path:
        e = self.episodes[k]
        return self.root / self.info["data_path"].format(chunk_index=e.data_chunk, file_index=e.data_file)

    def video_path(self, key: str, k: int) -> Path:
        chunk, file, _, _ = self.episodes[k].videos[key]
        return self.root / self.info["video_path"].format(video_key=key, chunk_index=chunk, file_index=file)

    def _check_files(self) -> None:
        seen: set[Path] = set()
        for e in self.episodes:
            paths = [("data", self.data_path(e.index))] + [
                (k, self.video_path(k, e.index)) for k in self.video_keys
            ]
            for what, p in paths:
                if p in seen:
                    continue
                seen.add(p)
                if not p.is_file():
                    kind = "data parquet" if what == "data" else f"video of '{what}'"
                    raise MissingResourceError(f"{p}: {kind} file of episode {e.index} not found")

    def _read_data(self, columns: list[str]) -> dict[str, np.ndarray]:
        unknown = [c for c in columns if c not in self.features]
        if unknown:
            raise InputError(
                self.root / INFO_PATH, "features", f"the requested column(s) {unknown}", "not declared"
            )
        files = sorted({(e.data_chunk, e.data_file) for e in self.episodes})
        parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
        for chunk, file in files:
            p = self.root / self.info["data_path"].format(chunk_index=chunk, file_index=file)
            t = read_parquet(p)
            for c in columns:
                if c not in t.column_names:
                    raise InputError(p, c, "a column declared in meta/info.json features", "missing")
                parts[c].append(_column_to_numpy(t.column(c), _feature_width(self.features[c]), str(p), c))
        cols = {
            c: np.concatenate(v)
            if v
            else np.zeros(
                (0,) if _feature_width(self.features[c]) == 1 else (0, _feature_width(self.features[c]))
            )
            for c, v in parts.items()
        }
        order = np.argsort(cols["index"], kind="stable")
        cols = {c: v[order] for c, v in cols.items()}
        gidx = cols["index"]
        self._first_index = int(gidx[0]) if len(gidx) else 0
        if not np.array_equal(gidx, np.arange(self._first_index, self._first_index + len(gidx))):
            raise InputError(
                self.root / "data", "index", "consecutive global frame indices", "gaps or repeats"
            )
        for e in self.episodes:
            a, b = e.from_index - self._first_index, e.to_index - self._first_index
            if a < 0 or b > len(gidx) or b - a != e.length:
                raise InputError(
                    self.data_path(e.index),
                    "index",
                    f"the {e.length} frames [{e.from_index}, {e.to_index}) of episode {e.index}",
                    "not present",
                )
            if not (cols["episode_index"][a:b] == e.index).all():
                raise InputError(
                    self.data_path(e.index),
                    "episode_index",
                    f"{e.index} on frames [{e.from_index}, {e.to_index})",
                    "other values",
                )
        return cols

    # -- access --------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(next(iter(self._columns.values())))

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def num_frames(self) -> int:
        return len(self)

    def column(self, name: str) -> np.ndarray:
        """The whole per-frame column (N,) or (N, D), in global index order."""
        if name not in self._columns:
            raise InputError(
                self.root, name, f"a loaded per-frame column {sorted(self._columns)}", "not loaded"
            )
        return self._columns[name]

    def episode_slice(self, k: int) -> slice:
        """Rows of episode ``k`` in the loaded columns."""
        if not 0 <= k < len(self.episodes):
            raise InputError(self.root, "episode", f"0 <= k < {len(self.episodes)}", str(k))
        e = self.episodes[k]
        return slice(e.from_index - self._first_index, e.to_index - self._first_index)

    def episode(self, k: int, columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        s = self.episode_slice(k)
        return {c: self._columns[c][s] for c in (columns or self._columns)}

    def task(self, row: int) -> str:
        return self.tasks[int(self._columns["task_index"][row])]

    def episode_of(self, row: int) -> int:
        return int(self._columns["episode_index"][row])

    @property
    def stats(self) -> dict[str, FeatureStats]:
        """meta/stats.json (MissingResourceError naming the file if the dataset has none)."""
        if self._stats is None:
            self._stats = read_stats(self.root)
        return self._stats

    def feature_names(self, name: str) -> list[str] | None:
        n = self.features[name].get("names")
        if isinstance(n, dict):  # older LeRobot: {"motors": [...]}
            n = next(iter(n.values()), None)
        return list(n) if isinstance(n, list) else None

    # -- frames ----------------------------------------------------------------------------------------
    def frames(self, key: str, k: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames ``start <= i < stop`` of episode ``k`` of a video or image feature: (n, H, W, 3) uint8."""
        e = self.episodes[k]
        stop = e.length if stop is None else stop
        if not 0 <= start <= stop <= e.length:
            raise InputError(
                f"episode {k}", "frames", f"0 <= start <= stop <= {e.length}", f"{start}..{stop}"
            )
        if key in self.image_keys:
            return self._image_frames(key, k, start, stop)
        if key not in self.video_keys:
            raise InputError(
                self.root, key, f"a video or image feature {self.video_keys + self.image_keys}", "unknown"
            )
        path = self.video_path(key, k)
        _, _, t0, _ = e.videos[key]
        shape = list(self.features[key]["shape"] or [])
        if self.features[key].get("names") == ["channels", "height", "width"]:  # older channel-first entries
            shape = shape[1:] + shape[:1]
        h, w = (shape[0], shape[1]) if len(shape) >= 2 and shape[0] and shape[1] else (None, None)
        ts = self._columns["timestamp"][self.episode_slice(k)]
        # why: a frame's time is from_timestamp + its own timestamp (LeRobot's query), rounded to the
        # file's frame grid; consecutive frames read as one window
        f0 = round((t0 + float(ts[start])) * self.fps) if stop > start else 0
        try:
            out = V.read_video(path, f0, f0 + (stop - start)) if stop > start else None
        except (InputError, MissingResourceError) as e:
            raise InputError(path, key, f"decodable frames of episode {k}", str(e)) from None
        if out is None:
            vi = V.video_info(path)
            return np.zeros((0, h or vi.height, w or vi.width, 3), np.uint8)
        if out.shape[0] != stop - start:
            raise InputError(
                path, key, f"frames {f0}..{f0 + stop - start - 1} (episode {k})", f"{out.shape[0]} decodable"
            )
        return out[:, :h, :w] if h else out

    def frame(self, key: str, row: int) -> np.ndarray:
        """The (H, W, 3) uint8 frame of a video / image feature at a global row."""
        k = self.episode_of(row)
        i = row - self.episode_slice(k).start
        return self.frames(key, k, i, i + 1)[0]

    def _image_frames(self, key: str, k: int, start: int, stop: int) -> np.ndarray:
        from PIL import Image  # only image-file (not video) features need it

        path = self.data_path(k)
        t = read_parquet(path, columns=[key, "index"])
        gidx = t.column("index").to_numpy()
        e = self.episodes[k]
        want = np.arange(e.from_index + start, e.from_index + stop)
        pos = {int(g): i for i, g in enumerate(gidx)}
        col = t.column(key)
        out = []
        for g in want:
            cell = col[pos[int(g)]].as_py()
            data = cell.get("bytes") if isinstance(cell, dict) else cell
            if data is None:
                raise InputError(
                    path, key, "embedded image bytes", "none (external image files are not supported)"
                )
            out.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
        if not out:
            h, w = self.features[key]["shape"][:2]
            return np.zeros((0, h, w, 3), np.uint8)
        return np.stack(out)


# ---------------------------------------------------------------------------------------------------------
# torch dataset: (state, images, task) -> action chunk
# ---------------------------------------------------------------------------------------------------------


def chunk_indices(row: int, ep_start: int, ep_stop: int, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the action chunk starting at ``row`` and its mask: ``row, row+1, ...`` clamped to the
    episode's last row (the last action repeated), mask True where the row is real (LeRobot's
    ``action_is_pad`` negated)."""
    want = row + np.arange(chunk_size)
    return np.minimum(want, ep_stop - 1), want < ep_stop


class ActionChunkDataset:
    """A torch ``Dataset`` over the frames of a ``RobotDataset``.

    Item ``i`` (a frame): ``state`` float32 (state_dim,), ``actions`` float32 (chunk_size, action_dim): the
    actions of frames i .. i+chunk_size-1 of the same episode, padded past its end by repeating the last
    action, ``action_mask`` bool (chunk_size,) (False = padding), ``images`` {video key: uint8 (H, W, 3)}
    when ``image_keys`` (default: all video features; [] for none), ``task`` str, ``episode_index`` and
    ``frame_index``. With a ``normalizer`` (``handvla.policy.processing.Normalizer``), state and actions
    come normalised with the statistics of ``state_key`` / ``action_key``.

    ``frame_cache_mb``: when all decoded frames of the selected episodes fit in this many MB, each
    episode's video is decoded once, whole, on first use and kept in memory (random access into a video
    costs a seek and a decode from the previous keyframe per frame, which dominates a small policy's
    training step); larger datasets decode per item as before. 0 turns the cache off.
    """

    def __init__(
        self,
        dataset: RobotDataset | str | Path,
        chunk_size: int,
        image_keys: Sequence[str] | None = None,
        state_key: str = STATE_KEY,
        action_key: str = ACTION_KEY,
        normalizer=None,
        episodes: Sequence[int] | None = None,
        frame_cache_mb: float = 1024.0,
    ):
        self.ds = dataset if isinstance(dataset, RobotDataset) else RobotDataset(dataset)
        if int(chunk_size) < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = int(chunk_size)
        for key in (state_key, action_key):
            if key not in self.ds.features:
                raise InputError(self.ds.root / INFO_PATH, key, "a feature of the dataset", "missing")
        self.state_key, self.action_key = state_key, action_key
        self.image_keys = (
            list(self.ds.video_keys + self.ds.image_keys) if image_keys is None else list(image_keys)
        )
        for key in self.image_keys:
            if key not in self.ds.video_keys + self.ds.image_keys:
                raise InputError(self.ds.root / INFO_PATH, key, "a video or image feature", "missing")
        self.normalizer = normalizer
        state = self.ds.column(state_key).astype(np.float32).reshape(len(self.ds), -1)
        actions = self.ds.column(action_key).astype(np.float32).reshape(len(self.ds), -1)
        if normalizer is not None:
            state = np.asarray(normalizer.normalize(state_key, state), np.float32)
            actions = np.asarray(normalizer.normalize(action_key, actions), np.float32)
        self._state, self._actions = state, actions
        eps = range(self.ds.num_episodes) if episodes is None else episodes
        rows, starts, stops = [], [], []
        for k in eps:
            s = self.ds.episode_slice(k)
            rows.append(np.arange(s.start, s.stop))
            starts.append(np.full(s.stop - s.start, s.start))
            stops.append(np.full(s.stop - s.start, s.stop))
        self._rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        self._start = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        self._stop = np.concatenate(stops) if stops else np.zeros(0, np.int64)
        self._frame_cache: dict[tuple[str, int], np.ndarray] | None = None
        if self.image_keys and frame_cache_mb > 0:
            h_w = [self._frame_shape(k) for k in self.image_keys]
            if all(hw is not None for hw in h_w):
                need = sum(h * w * 3 for h, w in h_w) * len(self._rows) / 2**20
                if need <= frame_cache_mb:
                    self._frame_cache = {}

    def _frame_shape(self, key: str) -> tuple[int, int] | None:
        shape = list(self.ds.features[key].get("shape") or [])
        if self.ds.features[key].get("names") == ["channels", "height", "width"]:
            shape = shape[1:] + shape[:1]
        if len(shape) >= 2 and shape[0] and shape[1]:
            return int(shape[0]), int(shape[1])
        return None

    def _frame(self, key: str, row: int) -> np.ndarray:
        if self._frame_cache is None:
            return self.ds.frame(key, row)
        k = self.ds.episode_of(row)
        frames = self._frame_cache.get((key, k))
        if frames is None:
            frames = self._frame_cache[(key, k)] = self.ds.frames(key, k)
        return frames[row - self.ds.episode_slice(k).start]

    @property
    def state_dim(self) -> int:
        return self._state.shape[1]

    @property
    def action_dim(self) -> int:
        return self._actions.shape[1]

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch  # only the torch Dataset view needs it: reading and writing robot data does not

        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} frames")
        row = int(self._rows[i])
        rows, mask = chunk_indices(row, int(self._start[i]), int(self._stop[i]), self.chunk_size)
        item: dict[str, Any] = {
            "state": torch.from_numpy(self._state[row].copy()),
            "actions": torch.from_numpy(self._actions[rows]),
            "action_mask": torch.from_numpy(mask),
            "task": self.ds.task(row),
            "episode_index": int(self.ds.column("episode_index")[row]),
            "frame_index": int(self.ds.column("frame_index")[row]),
        }
        if self.image_keys:
            item["images"] = {
                k: torch.from_numpy(np.ascontiguousarray(self._frame(k, row))) for k in self.image_keys
            }
        return item


# ---------------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------------


class _GopVideoWriter(V.VideoWriter):
    """``VideoWriter`` with a fixed key-frame interval (random access decodes at most ``gop`` frames)."""

    def __init__(self, path: str | Path, fps: float, crf: int, preset: str, gop: int):
        self.gop = int(gop)
        super().__init__(path, fps=fps, crf=crf, preset=preset)

    def _open_h264(self, h: int, w: int) -> None:
        super()._open_h264(h, w)
        self._stream.codec_context.gop_size = self.gop
        # no B-frames: a frame never waits on a later one, so a seek decodes forward from its key frame
        self._stream.options = {**self._stream.options, "bf": "0"}


def _pa_column(values: np.ndarray, spec: Mapping[str, Any], where: str, name: str) -> pa.Array:
    dtype = spec["dtype"]
    if dtype not in _NUMERIC:
        raise ConfigError(
            f"{where}: feature '{name}' has dtype {dtype!r}; the writer stores {sorted(_NUMERIC)} or video"
        )
    width = _feature_width(spec)
    a = np.asarray(values)
    T = a.shape[0] if a.ndim else 0
    if a.size != T * width:
        raise InputError(where, name, f"({T}, {width}) values (shape {spec['shape']})", str(a.shape))
    if dtype != "bool" and a.dtype.kind not in "biuf":
        raise InputError(where, name, f"numbers ({dtype})", str(a.dtype))
    np_dtype = np.bool_ if dtype == "bool" else np.dtype(dtype)
    a = a.astype(np_dtype).reshape(T, width)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise InputError(
            where, name, "finite values", f"NaN/inf at frame {int(np.argmax(~np.isfinite(a).all(1)))}"
        )
    if spec.get("shape") in ([1], (1,)):
        return pa.array(a[:, 0], _NUMERIC[dtype])
    return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1), _NUMERIC[dtype]), width)


class RobotDatasetWriter:
    """Writes episodes into a LeRobot v3.0 dataset (many episodes per data / video file).

    ``features``: the per-frame features besides LeRobot's bookkeeping columns, e.g.
    ``{"observation.state": vector_feature(39), "action": vector_feature(30),
    "observation.images.main": video_feature(128, 128, fps)}``. ``add_episode(frames, task)`` takes
    ``{feature: (T, ...)}`` arrays (video features: (T, H, W, 3) uint8). Use as a context manager or call
    ``close()``: the last, partly filled file is committed then.
    """

    def __init__(
        self,
        root: str | Path,
        fps: float | None = None,
        features: Mapping[str, Mapping[str, Any]] | None = None,
        robot_type: str | None = None,
        episodes_per_file: int = DEFAULT_EPISODES_PER_FILE,
        crf: int = 20,
        preset: str = "veryfast",
        gop: int = 2,
    ):
        self.root = Path(root)
        if int(episodes_per_file) < 1:
            raise ConfigError(f"episodes_per_file must be >= 1, got {episodes_per_file}")
        self.episodes_per_file = int(episodes_per_file)
        self.crf, self.preset, self.gop = int(crf), preset, int(gop)
        self._lock = WriterLock(self.root)
        try:
            if (self.root / INFO_PATH).is_file():
                self._open_existing(fps, features)
            else:
                self._create(fps, features, robot_type)
        except BaseException:
            self._release()
            raise
        self.fps = float(self.info["fps"])
        self.features = self.info["features"]
        self.video_keys = [k for k, f in self.features.items() if f["dtype"] == "video"]
        self.frame_keys = [k for k in self.features if k not in INDEX_FEATURES and k not in self.video_keys]
        self._buffer: list[dict[str, Any]] = []  # episodes of the file being filled
        self._videos: dict[str, _GopVideoWriter] = {}
        self._video_frames = 0  # frames already in the open video files
        self._closed = False

    def _create(self, fps, features, robot_type) -> None:
        if fps is None or features is None:
            raise ConfigError(f"{self.root}: a new dataset needs fps and features")
        fps = checked_fps(self.root, fps)
        check_not_foreign(self.root, "a dataset")
        feats: dict[str, Any] = {}
        for name, spec in features.items():
            if name in INDEX_FEATURES:
                raise ConfigError(f"feature '{name}' is a bookkeeping column the writer adds itself")
            if spec.get("dtype") not in (*_NUMERIC, "video"):
                raise ConfigError(
                    f"feature '{name}': dtype must be one of {sorted(_NUMERIC)} or 'video', got {spec.get('dtype')!r}"
                )
            feats[name] = dict(spec)
        feats |= index_features()
        self.info = new_info(fps, feats, robot_type, any(f["dtype"] == "video" for f in feats.values()))
        self._episode_rows: list[dict[str, Any]] = []
        self._tasks: dict[str, int] = {}
        self._n_frames = 0
        self._next_file = 0
        self.root.mkdir(parents=True, exist_ok=True)
        # an empty dataset is a dataset: a second writer appends to it, a reader sees 0 episodes
        write_tasks(self.root, [])
        write_info(self.root, self.info)

    def _open_existing(self, fps, features) -> None:
        ds = RobotDataset(self.root, columns=[])  # metadata and the bookkeeping columns only
        self.info = ds.info
        if fps is not None and float(fps) != float(self.info["fps"]):
            raise ConfigError(
                f"{self.root / INFO_PATH}: dataset has fps={self.info['fps']}, writer asked for {fps}"
            )
        if features is not None:
            have = {
                k: (v["dtype"], list(v["shape"]))
                for k, v in self.info["features"].items()
                if k not in INDEX_FEATURES
            }
            want = {k: (v["dtype"], list(v["shape"])) for k, v in features.items()}
            if have != want:
                raise ConfigError(
                    f"{self.root / INFO_PATH}: dataset features {have} differ from the writer's {want}"
                )
        rows = []
        for f in episode_files(self.root):
            rows += read_parquet(f).to_pylist()
        self._episode_rows = sorted(rows, key=lambda r: r["episode_index"])
        self._tasks = {t: i for i, t in enumerate(ds.tasks)}
        self._n_frames = ds.episodes[-1].to_index if ds.episodes else 0  # the next global frame index
        used = [r["data/chunk_index"] * DEFAULT_CHUNK_SIZE + r["data/file_index"] for r in self._episode_rows]
        for k in ds.video_keys:
            used += [
                r[f"videos/{k}/chunk_index"] * DEFAULT_CHUNK_SIZE + r[f"videos/{k}/file_index"]
                for r in self._episode_rows
            ]
        self._next_file = max(used, default=-1) + 1  # never touch a committed file: append new ones
        remove_leftovers(self.root)  # temporary files of a writer killed mid-file (we hold the lock)

    # -- public --------------------------------------------------------------------------------------------
    @property
    def num_episodes(self) -> int:
        return len(self._episode_rows) + len(self._buffer)

    def add_episode(self, frames: Mapping[str, np.ndarray], task: str | Sequence[str]) -> int:
        """Buffer one episode (committed when its file is full or on close); returns its episode index."""
        if self._closed:
            raise ConfigError(f"{self.root}: add_episode on a closed writer")
        k = self.num_episodes
        where = f"{self.root} (episode {k})"
        tasks = [task] if isinstance(task, str) else list(task)
        if not tasks or not all(isinstance(t, str) for t in tasks):
            raise InputError(where, "task", "a task string (or a list of them)", repr(task)[:80])
        missing = [k_ for k_ in self.frame_keys + self.video_keys if k_ not in frames]
        if missing:
            raise InputError(where, missing[0], "per-frame values of every declared feature", "missing")
        extra = [k_ for k_ in frames if k_ not in self.features or k_ in INDEX_FEATURES]
        if extra:
            raise InputError(
                where, extra[0], f"only the declared features {self.frame_keys + self.video_keys}", "unknown"
            )
        T = int(np.shape(frames[(self.frame_keys + self.video_keys)[0]])[0])
        if T < 1:
            raise InputError(where, "frames", "at least one frame", "0")
        cols: dict[str, pa.Array] = {}
        ep_stats: dict[str, Any] = {}
        for name in self.frame_keys:
            a = np.asarray(frames[name])
            if a.shape[0] != T:
                raise InputError(where, name, f"{T} frames like the other features", f"{a.shape[0]}")
            cols[name] = _pa_column(a, self.features[name], where, name)
            ep_stats[name] = a.reshape(T, -1)
        for name in self.video_keys:
            v = np.asarray(frames[name])
            h, w = self.features[name]["shape"][:2]
            if v.dtype != np.uint8 or v.shape != (T, h, w, 3):
                raise InputError(
                    where, name, f"uint8 frames of shape ({T}, {h}, {w}, 3)", f"{v.dtype} {v.shape}"
                )
        for t in tasks:
            self._tasks.setdefault(t, len(self._tasks))
        start = self._n_frames
        index = index_values(T, k, start, self._tasks[tasks[0]], self.fps)
        cols |= index_columns(index)
        ep_stats |= index
        # video frames go straight into the open files (nothing is visible before the file is committed)
        chunk, file = chunk_file(self._next_file)
        row: dict[str, Any] = {
            "episode_index": k,
            "tasks": tasks,
            "length": T,
            "data/chunk_index": chunk,
            "data/file_index": file,
            "dataset_from_index": start,
            "dataset_to_index": start + T,
        }
        for name in self.video_keys:
            if name not in self._videos:
                path = self.root / VIDEO_PATH.format(video_key=name, chunk_index=chunk, file_index=file)
                path.parent.mkdir(parents=True, exist_ok=True)
                self._videos[name] = _GopVideoWriter(path, self.fps, self.crf, self.preset, self.gop)
            self._videos[name].write_all(np.asarray(frames[name]))
            row |= {
                f"videos/{name}/chunk_index": chunk,
                f"videos/{name}/file_index": file,
                f"videos/{name}/from_timestamp": self._video_frames / self.fps,
                f"videos/{name}/to_timestamp": (self._video_frames + T) / self.fps,
            }
        row |= {"meta/episodes/chunk_index": chunk, "meta/episodes/file_index": file}
        row |= stats_row({name: compute_feature_stats(a, quantiles=False) for name, a in ep_stats.items()})
        self._video_frames += T
        self._n_frames += T
        self._buffer.append({"row": row, "table": pa.table(cols)})
        if len(self._buffer) >= self.episodes_per_file:
            self.flush()
        return k

    def flush(self) -> None:
        """Commit the episodes of the file being filled (data, videos, then metadata; info.json last)."""
        if not self._buffer:
            return
        chunk, file = chunk_file(self._next_file)
        data = pa.concat_tables([b["table"] for b in self._buffer])
        atomic_write_parquet(self.root / DATA_PATH.format(chunk_index=chunk, file_index=file), data)
        for w in self._videos.values():
            w.close()
        self._videos, self._video_frames = {}, 0
        rows = [b["row"] for b in self._buffer]
        self._episode_rows += rows
        self._buffer = []
        self._next_file += 1
        # the meta/episodes file of this data file (LeRobot packs by size; any packing reads the same)
        write_episodes(self.root, chunk, file, pa.Table.from_pylist(rows))
        write_tasks(self.root, list(self._tasks))
        self._write_stats()
        set_totals(self.info, len(self._episode_rows), self._n_frames, len(self._tasks))
        write_info(self.root, self.info)

    def _write_stats(self) -> None:
        """Exact stats over every committed frame, re-read from the committed data files (robot datasets
        are small; a flush happens once per file)."""
        cols: dict[str, list[np.ndarray]] = {}
        committed = sorted({(r["data/chunk_index"], r["data/file_index"]) for r in self._episode_rows})
        for chunk, file in committed:
            f = self.root / self.info["data_path"].format(chunk_index=chunk, file_index=file)
            t = read_parquet(f)
            for name in [*self.frame_keys, *INDEX_FEATURES]:
                cols.setdefault(name, []).append(
                    _column_to_numpy(t.column(name), _feature_width(self.features[name]), str(f), name)
                )
        write_stats(self.root, {name: compute_feature_stats(np.concatenate(v)) for name, v in cols.items()})

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            for w in self._videos.values():
                w.abort()
            self._closed = True
            self._release()

    def abort(self) -> None:
        """Drop the uncommitted episodes (the committed files stay)."""
        for w in self._videos.values():
            w.abort()
        self._videos, self._buffer = {}, []
        if not self._closed:
            self._closed = True
            self._release()

    def _release(self) -> None:
        self._lock.release()

    def __enter__(self) -> RobotDatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
