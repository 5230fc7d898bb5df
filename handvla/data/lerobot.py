"""LeRobot v3.0 on disk: the layout, metadata and statistics every dataset of ours shares.

Two kinds of dataset use LeRobot's v3.0 layout: the human-hand episode store (``handvla.data.store``, one
episode per data/video file, journaled appends) and robot datasets (``handvla.robot.lerobot_format``, many
episodes per file, real LeRobot datasets read too). What they have in common lives here, once (facts
checked against LeRobot's ``datasets/utils.py``, ``dataset_metadata.py`` and ``dataset_writer.py``)::

    meta/info.json                  codebase_version "v3.0", robot_type, totals, chunks_size, file sizes,
                                    fps, splits, data_path / video_path templates, features
                                    {name: {dtype, shape, names[, info]}}
                                    (``new_info``, ``read_info``, ``write_info``, ``set_totals``)
    meta/stats.json                 {feature: {min, max, mean, std, count[, q01, q10, q50, q90, q99]}}
                                    (``read_stats``, ``write_stats``)
    meta/tasks.parquet              task string (the pandas index) -> task_index
                                    (``write_tasks``, ``read_tasks``)
    meta/episodes/chunk-CCC/file-FFF.parquet   one row per episode: episode_index, tasks, length,
                                    data/{chunk_index, file_index}, dataset_from_index, dataset_to_index,
                                    videos/<key>/{chunk_index, file_index, from_timestamp, to_timestamp},
                                    meta/episodes/{chunk_index, file_index}, stats/<feature>/<stat>
    data/chunk-CCC/file-FFF.parquet            per-frame rows: the features, then LeRobot's bookkeeping
                                    columns ``INDEX_FEATURES`` (timestamp, frame_index, episode_index, index,
                                    task_index)
    videos/<key>/chunk-CCC/file-FFF.mp4        the frames of a video feature (``video_key``)
    meta/handvla_writer.lock        held (flock) by the one writer (``WriterLock``)

Chunk folders hold ``DEFAULT_CHUNK_SIZE`` (1000) files: running file number ``n`` is chunk ``n // 1000``,
file ``n % 1000`` (``chunk_file``).

Statistics (``FeatureStats``, one implementation for both kinds of dataset): per element of a feature (the
values after the frame axis, flattened) min, max, mean, std (population) and count (frames), float64
(``compute_feature_stats``). Per-episode statistics are stored in the episode rows and merge exactly
across episodes (``merge_stats``: pooled mean and pooled second moment); the store's stats.json is the
merge of its episodes'. Robot datasets' stats.json add the quantiles ``q01 q10 q50 q90 q99``, computed
once over every frame: exact (``numpy.quantile``, linear interpolation between order statistics; LeRobot
approximates them with 5000-bin histograms, robot datasets are small enough to sort and exact values make
the stats reproducible). Only with ``max_frames`` (a feature with more frames) are the quantiles taken over
an evenly strided subset of ``max_frames`` frames (deterministic); the other statistics always use all.
Quantiles do not merge: merged statistics have none.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from handvla.atomic import atomic_write_json, atomic_write_parquet, is_tmp_name, read_json
from handvla.errors import ConfigError, InputError, MissingResourceError

#: LeRobot dataset layout (``meta/info.json`` ``codebase_version``).
CODEBASE_VERSION = "v3.0"
# LeRobot v3 defaults (src/lerobot/datasets/utils.py).
DEFAULT_CHUNK_SIZE = 1000  # files per chunk folder
DEFAULT_DATA_FILE_SIZE_IN_MB = 100
DEFAULT_VIDEO_FILE_SIZE_IN_MB = 500
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_DIR = "meta/episodes"
EPISODES_PATH = EPISODES_DIR + "/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
LOCK_PATH = "meta/handvla_writer.lock"

#: LeRobot's per-frame bookkeeping columns, in LeRobot's order (every dataset has them)
INDEX_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")
#: the per-element statistics of every stats.json entry, in LeRobot's order; with ``count`` they are the
#: per-episode statistics (``stats/<feature>/<stat>`` episode columns), which merge exactly
BASE_STATS = ("min", "max", "mean", "std")
EPISODE_STATS = (*BASE_STATS, "count")
#: the quantiles of a robot dataset's stats.json (exact, over every frame): name -> probability
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}


def chunk_file(index: int, per_file: int = 1) -> tuple[int, int]:
    """Episode (or file) number -> (chunk_index, file_index), ``per_file`` episodes per file and
    ``DEFAULT_CHUNK_SIZE`` files per chunk folder."""
    f = index // per_file
    return f // DEFAULT_CHUNK_SIZE, f % DEFAULT_CHUNK_SIZE


# ---------------------------------------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------------------------------------


def video_key(camera: str) -> str:
    """LeRobot video feature name of a camera, e.g. ``observation.images.main``."""
    return f"observation.images.{camera}"


def index_features() -> dict[str, dict[str, Any]]:
    """The ``features`` entries of LeRobot's bookkeeping columns (timestamp: float32 seconds; the rest
    int64)."""
    return {
        name: {"dtype": "float32" if name == "timestamp" else "int64", "shape": [1], "names": None}
        for name in INDEX_FEATURES
    }


def video_feature(height: int | None, width: int | None, fps: float) -> dict[str, Any]:
    """A ``video`` feature entry (H.264 yuv420p, as our writers encode it); the size may be None (unknown)."""
    h = None if height is None else int(height)
    w = None if width is None else int(width)
    return {
        "dtype": "video",
        "shape": [h, w, 3],
        "names": ["height", "width", "channels"],
        "info": {
            "video.height": h,
            "video.width": w,
            "video.codec": "h264",
            "video.pix_fmt": "yuv420p",
            "video.is_depth_map": False,
            "video.fps": fps,
            "video.channels": 3,
            "has_audio": False,
        },
    }


def vector_feature(dim: int, names: Sequence[str] | None = None, dtype: str = "float32") -> dict[str, Any]:
    """A ``dim``-vector feature entry (e.g. ``observation.state``), ``names`` one per value."""
    if names is not None and len(names) != dim:
        raise ConfigError(f"a feature of {dim} values needs {dim} names, got {len(names)}")
    return {"dtype": dtype, "shape": [int(dim)], "names": list(names) if names is not None else None}


def index_values(
    length: int, episode_index: int, first_index: int, task_index: int, fps: float
) -> dict[str, np.ndarray]:
    """The bookkeeping values of one episode's ``length`` frames, in ``INDEX_FEATURES`` order: time in
    seconds (float64; stored as float32), frame_index, episode_index, global index (from ``first_index``)
    and task_index."""
    idx = np.arange(length, dtype=np.int64)
    return {
        "timestamp": idx / fps,
        "frame_index": idx,
        "episode_index": np.full(length, episode_index, np.int64),
        "index": idx + first_index,
        "task_index": np.full(length, task_index, np.int64),
    }


def index_columns(values: Mapping[str, np.ndarray]) -> dict[str, pa.Array]:
    """``index_values`` as parquet columns of their feature dtypes."""
    feats = index_features()
    return {name: pa.array(np.asarray(v, feats[name]["dtype"])) for name, v in values.items()}


# ---------------------------------------------------------------------------------------------------------
# statistics (meta/stats.json and the per-episode stats/<feature>/<stat> columns)
# ---------------------------------------------------------------------------------------------------------


@dataclass
class FeatureStats:
    """Statistics of one feature, per element (float64 arrays of one shape): ``min``, ``max``, ``mean``,
    ``std`` (population) over ``count`` frames, and the quantiles ``q01 .. q99`` (``QUANTILES``) where they
    were computed (None otherwise: per-episode and merged stats have none)."""

    min: np.ndarray
    max: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    count: int
    q01: np.ndarray | None = None
    q10: np.ndarray | None = None
    q50: np.ndarray | None = None
    q90: np.ndarray | None = None
    q99: np.ndarray | None = None

    def __post_init__(self) -> None:
        shape = None
        for name in (*BASE_STATS, *QUANTILES):
            a = getattr(self, name)
            if a is None:
                if name in BASE_STATS:
                    raise InputError("FeatureStats", name, "an array of values", "None")
                continue
            a = np.asarray(a, np.float64)
            if a.ndim == 0:
                a = a.reshape(1)
            if shape is None:
                shape = a.shape
            if a.shape != shape:
                raise InputError("FeatureStats", name, f"shape {shape} like 'min'", str(a.shape))
            setattr(self, name, a)
        self.count = int(self.count)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.mean.shape

    def arrays(self) -> dict[str, np.ndarray]:
        """{statistic: array} of every statistic it has, ``count`` aside."""
        return {k: getattr(self, k) for k in (*BASE_STATS, *QUANTILES) if getattr(self, k) is not None}

    def to_dict(self) -> dict[str, list]:
        """JSON-ready, LeRobot's stats.json entry: each statistic a list, ``count`` a one-element list, in
        LeRobot's order (min, max, mean, std, count, then the quantiles it has)."""
        d: dict[str, list] = {k: a.tolist() for k, a in self.arrays().items()}
        d["count"] = [self.count]
        return {k: d[k] for k in (*EPISODE_STATS, *QUANTILES) if k in d}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "stats") -> FeatureStats:
        """A stats.json entry (or an episode row's stats): the statistics flattened (image stats have shape
        (3, 1, 1)); quantiles absent (older LeRobot) stay None."""
        missing = [k for k in ("mean", "std", "min", "max") if k not in d]
        if missing:
            raise InputError(where, missing[0], "mean, std, min and max of the feature", "missing")
        vals = {
            k: np.asarray(d[k], np.float64).reshape(-1)
            for k in (*BASE_STATS, *QUANTILES)
            if d.get(k) is not None
        }
        count = d.get("count", [0])
        count = int(np.asarray(count).reshape(-1)[0]) if np.size(count) else 0
        return cls(**vals, count=count)


def compute_feature_stats(
    values: np.ndarray, quantiles: bool = True, max_frames: int | None = None
) -> FeatureStats:
    """Statistics of ``values`` (N, ...) over the frames axis (0), per remaining element (flattened; a
    scalar feature (N,) gives shape (1,) statistics, like LeRobot's scalar features); InputError on NaN/inf.

    ``quantiles``: also the exact quantiles (over every frame, or ``max_frames`` evenly strided ones);
    they need at least one frame. Without them N = 0 gives zeros and count 0 (an episode without frames of
    a feature)."""
    v = np.asarray(values)
    if v.ndim == 0 or (quantiles and v.shape[0] == 0):
        raise InputError("compute_feature_stats", "values", "at least one frame (N >= 1, ...)", str(v.shape))
    n = v.shape[0]
    v = v.reshape(n, int(np.prod(v.shape[1:]))).astype(np.float64, copy=False)
    if n == 0:
        return FeatureStats(**{k: np.zeros(v.shape[1]) for k in BASE_STATS}, count=0)
    if not np.isfinite(v).all():
        row = int(np.argmax(~np.isfinite(v).all(axis=1)))
        raise InputError("compute_feature_stats", "values", "finite values", f"NaN/inf at frame {row}")
    qs = {}
    if quantiles:
        qv = v
        if max_frames is not None and n > max_frames:
            qv = v[np.linspace(0, n - 1, int(max_frames)).round().astype(np.int64)]
        q = np.quantile(qv, list(QUANTILES.values()), axis=0, method="linear")
        qs = {k: q[i] for i, k in enumerate(QUANTILES)}
    return FeatureStats(min=v.min(0), max=v.max(0), mean=v.mean(0), std=v.std(0), count=n, **qs)


def compute_stats(arrays: Mapping[str, np.ndarray], max_frames: int | None = None) -> dict[str, FeatureStats]:
    """{feature: (N, ...) values} -> {feature: FeatureStats} with quantiles (errors name the feature)."""
    out = {}
    for name, a in arrays.items():
        try:
            out[name] = compute_feature_stats(a, max_frames=max_frames)
        except InputError as e:
            raise InputError(f"feature '{name}'", e.field, e.expected, e.got) from None
    return out


def merge_stats(parts: Sequence[FeatureStats]) -> FeatureStats | None:
    """Combine statistics of disjoint frames exactly: pooled mean and pooled second moment (quantiles do
    not merge and are dropped); None when no part has frames."""
    parts = [p for p in parts if p.count > 0]
    if not parts:
        return None
    n = np.array([p.count for p in parts], np.float64)[:, None]
    mean = np.array([p.mean for p in parts])
    std = np.array([p.std for p in parts])
    N = n.sum()
    m = (n * mean).sum(0) / N
    var = (n * (std**2 + (mean - m) ** 2)).sum(0) / N
    return FeatureStats(
        min=np.min([p.min for p in parts], axis=0),
        max=np.max([p.max for p in parts], axis=0),
        mean=m,
        std=np.sqrt(np.maximum(var, 0.0)),
        count=int(N),
    )


def stats_row(stats: Mapping[str, FeatureStats]) -> dict[str, list]:
    """{feature: per-episode stats} -> the episode-row columns ``stats/<feature>/<stat>``."""
    return {f"stats/{name}/{s}": v for name, st in stats.items() for s, v in st.to_dict().items()}


def row_stats(row: Mapping[str, Any], name: str) -> FeatureStats:
    """The per-episode stats of feature ``name`` in an episode row."""
    return FeatureStats.from_dict({s: row[f"stats/{name}/{s}"] for s in EPISODE_STATS}, f"stats/{name}")


def stats_fields(names: Sequence[str]) -> list[tuple[str, pa.DataType]]:
    """Episode-table columns of the per-episode stats of ``names`` (count int64, the others float64)."""
    return [
        (f"stats/{name}/{s}", pa.list_(pa.int64() if s == "count" else pa.float64()))
        for name in names
        for s in EPISODE_STATS
    ]


def stats_from_json(obj: Any, where: str = "stats.json") -> dict[str, FeatureStats]:
    """LeRobot's stats.json layout ({feature: {stat: list}}) -> {feature: FeatureStats}."""
    if not isinstance(obj, Mapping):
        raise InputError(where, None, "a JSON object {feature: {stat: values}}", type(obj).__name__)
    out = {}
    for name, d in obj.items():
        if not isinstance(d, Mapping):
            raise InputError(where, name, "an object of statistics", type(d).__name__)
        out[name] = FeatureStats.from_dict(d, f"{where}: feature '{name}'")
    return out


def read_stats(root: Path) -> dict[str, FeatureStats]:
    """``root``'s meta/stats.json (MissingResourceError naming the file if absent, InputError if it is not
    a stats.json)."""
    path = root / STATS_PATH
    if not path.is_file():
        raise MissingResourceError(f"{path}: dataset statistics not found (meta/stats.json)")
    return stats_from_json(read_json(path, expect=None), str(path))


def write_stats(root: Path, stats: Mapping[str, FeatureStats]) -> None:
    """meta/stats.json (atomically)."""
    atomic_write_json(root / STATS_PATH, {name: s.to_dict() for name, s in stats.items()})


# ---------------------------------------------------------------------------------------------------------
# metadata IO
# ---------------------------------------------------------------------------------------------------------


def new_info(
    fps: int | float, features: dict[str, Any], robot_type: str | None, has_video: bool
) -> dict[str, Any]:
    """``meta/info.json`` of an empty dataset (totals 0; ``set_totals`` keeps them current)."""
    return {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": 0,
        "total_frames": 0,
        "total_tasks": 0,
        "chunks_size": DEFAULT_CHUNK_SIZE,
        "data_files_size_in_mb": DEFAULT_DATA_FILE_SIZE_IN_MB,
        "video_files_size_in_mb": DEFAULT_VIDEO_FILE_SIZE_IN_MB,
        "fps": fps,
        "splits": {},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if has_video else None,
        "features": features,
    }


def set_totals(info: dict[str, Any], episodes: int, frames: int, tasks: int) -> None:
    """Update the totals and the (one, "train") split of ``info`` in place."""
    info["total_episodes"] = episodes
    info["total_frames"] = frames
    info["total_tasks"] = tasks
    info["splits"] = {"train": f"0:{episodes}"} if episodes else {}


def read_info(root: Path, missing: Exception, version_note: str = "") -> dict[str, Any]:
    """``root``'s meta/info.json: a JSON object with codebase_version "v3.0" and a positive fps, else an
    InputError naming the file and field. ``missing``: what to raise when there is no info.json (each
    kind of dataset names itself); ``version_note`` follows the expected version in its error."""
    path = root / INFO_PATH
    if not path.is_file():
        raise missing
    info = read_json(path)
    if info.get("codebase_version") != CODEBASE_VERSION:
        raise InputError(
            path,
            "codebase_version",
            f"{CODEBASE_VERSION!r}{version_note}",
            repr(info.get("codebase_version")),
        )
    fps = info.get("fps")
    if not isinstance(fps, (int, float)) or isinstance(fps, bool) or not math.isfinite(fps) or fps <= 0:
        raise InputError(path, "fps", "a positive number", repr(fps))
    return info


def write_info(root: Path, info: dict[str, Any]) -> None:
    """meta/info.json (atomically; written last in a commit: it makes the new totals visible)."""
    atomic_write_json(root / INFO_PATH, info)


def checked_fps(root: Path, fps: Any) -> int | float:
    """The frame rate of a new dataset (ConfigError unless positive), as an int when it is whole."""
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ConfigError(f"{root}: fps must be a positive number, got {fps!r}")
    return int(fps) if float(fps).is_integer() else float(fps)


def check_not_foreign(root: Path, what: str) -> None:
    """Refuse to create ``what`` in a folder with data/ or videos/ but no info.json (never clean up, i.e.
    delete, files of something that is not ours)."""
    for sub in ("data", "videos"):
        if (root / sub).is_dir() and any((root / sub).iterdir()):
            raise ConfigError(f"{root}: has {sub}/ but no {INFO_PATH}; not {what}, not writing")


def read_parquet(path: Path, where: str | None = None, columns: list[str] | None = None) -> pa.Table:
    """A parquet file, or an InputError naming ``where`` (default: the path) when missing or unreadable."""
    where = str(path) if where is None else where
    try:
        return pq.read_table(path, columns=columns)
    except FileNotFoundError:
        raise InputError(where, None, "an existing parquet file", "missing") from None
    except (pa.ArrowException, OSError) as e:
        raise InputError(where, None, "a complete, readable parquet file", f"unreadable ({e})") from None


def tasks_table(tasks: list[str]) -> pa.Table:
    """LeRobot's tasks.parquet: pandas DataFrame indexed by the task string with a ``task_index`` column.
    pandas is not a dependency here, so the pandas metadata that makes ``task`` the index is written by
    hand."""
    table = pa.table(
        {"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks, pa.string())}
    )
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": "task",
                "field_name": "task",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


def write_tasks(root: Path, tasks: list[str]) -> None:
    """meta/tasks.parquet (atomically): task ``i`` of ``tasks`` has task_index ``i``."""
    atomic_write_parquet(root / TASKS_PATH, tasks_table(tasks))


def read_tasks(root: Path) -> list[str]:
    """The tasks of meta/tasks.parquet by task_index (pandas writes the index column as ``task`` or
    ``__index_level_0__``); MissingResourceError naming the file when it is absent."""
    path = root / TASKS_PATH
    if not path.is_file():
        raise MissingResourceError(f"{path}: not found (the dataset's task list)")
    t = read_parquet(path)
    name = "task" if "task" in t.column_names else "__index_level_0__"
    if name not in t.column_names or "task_index" not in t.column_names:
        raise InputError(path, "task", "columns task (the index) and task_index", str(t.column_names))
    tasks = t.column(name).to_pylist()
    idx = t.column("task_index").to_pylist()
    out = [""] * (max(idx) + 1 if idx else 0)
    for task, i in zip(tasks, idx):
        out[i] = task
    return out


def episode_files(root: Path) -> list[Path]:
    """The meta/episodes parquet files of ``root``, in (chunk, file) order."""
    return sorted((root / EPISODES_DIR).glob("chunk-*/file-*.parquet"))


def write_episodes(root: Path, chunk: int, file: int, table: pa.Table) -> None:
    """One meta/episodes parquet file (atomically)."""
    atomic_write_parquet(root / EPISODES_PATH.format(chunk_index=chunk, file_index=file), table)


# ---------------------------------------------------------------------------------------------------------
# the one writer
# ---------------------------------------------------------------------------------------------------------


class WriterLock:
    """One writer per dataset: an exclusive ``flock`` on meta/handvla_writer.lock, taken without waiting
    (ConfigError "another ``who`` holds ...; one writer per ``what``" when it is held)."""

    def __init__(self, root: Path, who: str = "writer", what: str = "dataset"):
        (root / "meta").mkdir(parents=True, exist_ok=True)
        self._file = open(root / LOCK_PATH, "a+")
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise ConfigError(f"{root}: another {who} holds {LOCK_PATH}; one writer per {what}") from None

    def release(self) -> None:
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        finally:
            self._file.close()


def remove_leftovers(root: Path, stale: Callable[[Path], bool] | None = None) -> None:
    """Delete what a killed writer left under data/, videos/ and meta/: temporary files and the files
    ``stale`` says were never committed. Call it holding the ``WriterLock``."""
    for sub in ("data", "videos", "meta"):
        for dirpath, _, names in os.walk(root / sub):
            for name in names:
                p = Path(dirpath) / name
                if is_tmp_name(name) or (stale is not None and stale(p)):
                    p.unlink(missing_ok=True)
