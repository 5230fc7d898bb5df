"""Robot datasets (LeRobot v3.0 layout), normalisation statistics and open-loop evaluation.

The reader is checked on datasets from our writer (many episodes per file, appends) and on one built here
by hand the way LeRobot lays it out (list columns, data and video files packed differently, pandas-style
tasks index), so the reader does not just mirror the writer. Stats are compared with numpy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from handvla import video as V
from handvla.data.lerobot import compute_feature_stats, read_stats, vector_feature, video_feature
from handvla.errors import CheckpointError, ConfigError, InputError, MissingResourceError
from handvla.policy.processing import MODES, Normalizer
from handvla.robot.evaluate import evaluate_open_loop
from handvla.robot.lerobot_format import ActionChunkDataset, RobotDataset, RobotDatasetWriter, chunk_indices

FPS = 10
H, W = 16, 24
CAM = "observation.images.main"
SD, AD = 5, 3


def _frames(T: int, k: int) -> np.ndarray:
    """Flat frames whose colour encodes (episode, frame): red = 8 * frame, green = 30 * episode."""
    v = np.zeros((T, H, W, 3), np.uint8)
    v[..., 0] = (8 * np.arange(T) % 256)[:, None, None]
    v[..., 1] = 30 * k % 256
    v[..., 2] = 100
    return v


def _episode(T: int, k: int, rng) -> dict[str, np.ndarray]:
    return {
        "observation.state": rng.normal(size=(T, SD)).astype(np.float32),
        "action": rng.normal(size=(T, AD)).astype(np.float32),
        "next.reward": rng.normal(size=T).astype(np.float32),
        CAM: _frames(T, k),
    }


FEATURES = {
    "observation.state": vector_feature(SD, [f"s{i}" for i in range(SD)]),
    "action": vector_feature(AD, ["a0", "a1", "a2"]),
    "next.reward": {"dtype": "float32", "shape": [1], "names": None},
    CAM: video_feature(H, W, FPS),
}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """7 episodes, 3 per file (3 data files, 3 video files), then 2 appended by a second writer."""
    root = tmp_path_factory.mktemp("robot") / "ds"
    rng = np.random.default_rng(0)
    lengths = [5, 12, 7, 3, 9, 6, 11, 4, 8]
    eps = [_episode(T, k, rng) for k, T in enumerate(lengths)]
    tasks = [f"task {k % 3}" for k in range(len(eps))]
    with RobotDatasetWriter(root, FPS, FEATURES, robot_type="test", episodes_per_file=3) as w:
        for k in range(7):
            assert w.add_episode(eps[k], tasks[k]) == k
    with RobotDatasetWriter(root, FPS, FEATURES, episodes_per_file=3) as w:  # resume: appends new files
        for k in range(7, 9):
            assert w.add_episode(eps[k], tasks[k]) == k
    return root, eps, tasks


def test_round_trip_many_episodes_per_file(written):
    root, eps, tasks = written
    ds = RobotDataset(root)
    assert ds.num_episodes == 9 and ds.num_frames == sum(len(e["action"]) for e in eps)
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 9
    assert info["total_frames"] == ds.num_frames and info["total_tasks"] == 3
    assert info["features"]["observation.state"]["names"] == [f"s{i}" for i in range(SD)]
    data_files = sorted((root / "data").glob("chunk-*/file-*.parquet"))
    assert len(data_files) == 4  # 3 + 3 + 1 | 2 appended in a new file
    assert pq.read_metadata(data_files[0]).num_rows == sum(len(e["action"]) for e in eps[:3])
    for k, ep in enumerate(eps):
        got = ds.episode(k)
        T = len(ep["action"])
        np.testing.assert_array_equal(got["observation.state"], ep["observation.state"])
        np.testing.assert_array_equal(got["action"], ep["action"])
        np.testing.assert_array_equal(got["next.reward"], ep["next.reward"])
        np.testing.assert_array_equal(got["frame_index"], np.arange(T))
        np.testing.assert_allclose(got["timestamp"], np.arange(T) / FPS, rtol=1e-6)
        assert (got["episode_index"] == k).all()
        assert ds.task(ds.episode_slice(k).start) == tasks[k]
        frames = ds.frames(CAM, k)
        assert frames.shape == (T, H, W, 3)
        # lossy video: each decoded frame is nearest to its own source frame (no off-by-one across episodes)
        err = np.abs(frames.astype(int) - ep[CAM].astype(int)).mean(axis=(1, 2, 3))
        assert err.max() < 3.0, err
    # episodes 1 and 2 sit after others in their video file: their start is not 0
    assert ds.episodes[1].videos[CAM][2] == pytest.approx(5 / FPS)
    assert ds.episodes[2].videos[CAM][2] == pytest.approx(17 / FPS)
    assert ds.episodes[3].videos[CAM][2] == 0.0  # first of the second file
    # random access to one frame in the middle of a packed file
    k, i = 4, 6
    row = ds.episode_slice(k).start + i
    one = ds.frame(CAM, row).astype(int)
    assert np.abs(one - eps[k][CAM][i]).mean() < 3.0


def test_stats_match_numpy(written):
    root, eps, _ = written
    stats = read_stats(root)
    for name in ("observation.state", "action", "next.reward"):
        allv = np.concatenate([e[name].reshape(len(e[name]), -1) for e in eps]).astype(np.float64)
        s = stats[name]
        np.testing.assert_allclose(s.mean, allv.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(s.std, allv.std(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(s.min, allv.min(0))
        np.testing.assert_array_equal(s.max, allv.max(0))
        for q, v in ((0.01, s.q01), (0.5, s.q50), (0.99, s.q99)):
            np.testing.assert_allclose(v, np.quantile(allv, q, axis=0), rtol=1e-12)
        assert s.count == len(allv)
    assert stats["frame_index"].max[0] == max(len(e["action"]) for e in eps) - 1


def test_chunk_padding_and_mask(written):
    root, eps, tasks = written
    ds = RobotDataset(root)
    chunk = 5
    cd = ActionChunkDataset(ds, chunk)
    assert len(cd) == ds.num_frames and cd.state_dim == SD and cd.action_dim == AD
    for k in (0, 3, 8):  # episode 3 (3 frames) is shorter than the chunk
        s = ds.episode_slice(k)
        A = eps[k]["action"]
        T = len(A)
        for i in range(T):
            item = cd[s.start + i]
            want_rows = [min(i + j, T - 1) for j in range(chunk)]
            np.testing.assert_array_equal(item["actions"].numpy(), A[want_rows])
            np.testing.assert_array_equal(item["action_mask"].numpy(), [i + j < T for j in range(chunk)])
            np.testing.assert_array_equal(item["state"].numpy(), eps[k]["observation.state"][i])
            assert item["task"] == tasks[k] and item["frame_index"] == i and item["episode_index"] == k
            assert item["images"][CAM].dtype == torch.uint8 and item["images"][CAM].shape == (H, W, 3)
    # the in-memory frame cache (on by default for small datasets) gives exactly the per-item decode
    uncached = ActionChunkDataset(ds, chunk, frame_cache_mb=0)
    assert cd._frame_cache is not None and uncached._frame_cache is None
    for row in (0, ds.episode_slice(4).start + 6, ds.num_frames - 1):
        torch.testing.assert_close(cd[row]["images"][CAM], uncached[row]["images"][CAM], rtol=0, atol=0)
    assert ActionChunkDataset(ds, chunk, frame_cache_mb=1e-6)._frame_cache is None  # too big: per item
    rows, mask = chunk_indices(10, 8, 12, 4)
    assert rows.tolist() == [10, 11, 11, 11] and mask.tolist() == [True, True, False, False]
    # through a DataLoader (default collation), without images
    loader = torch.utils.data.DataLoader(ActionChunkDataset(ds, chunk, image_keys=[]), batch_size=4)
    batch = next(iter(loader))
    assert batch["actions"].shape == (4, chunk, AD) and len(batch["task"]) == 4


def test_normalised_chunks_use_stats(written):
    root, _, _ = written
    ds = RobotDataset(root)
    norm = Normalizer(ds.stats, {"observation.state": "mean_std", "action": "quantile"})
    cd = ActionChunkDataset(ds, 3, image_keys=[], normalizer=norm)
    raw = ActionChunkDataset(ds, 3, image_keys=[])
    s = ds.stats["observation.state"]
    np.testing.assert_allclose(cd[7]["state"].numpy(), (raw[7]["state"].numpy() - s.mean) / s.std, rtol=1e-5)
    back = norm.unnormalize("action", cd[7]["actions"].numpy())
    np.testing.assert_allclose(back, raw[7]["actions"].numpy(), rtol=1e-5, atol=1e-6)


def test_reader_on_lerobot_style_dataset(tmp_path):
    """Built by hand like LeRobot: list<float> columns, tasks as a pandas index, and data files packed
    differently from the video files (3 + 2 episodes per data file, 2 + 3 per video file)."""
    root = tmp_path / "lr"
    lengths = [4, 6, 5, 3, 7]
    rng = np.random.default_rng(1)
    states = [rng.normal(size=(T, 2)).astype(np.float32) for T in lengths]
    acts = [rng.normal(size=(T, 2)).astype(np.float32) for T in lengths]
    starts = np.concatenate([[0], np.cumsum(lengths)])
    data_file = [0, 0, 0, 1, 1]
    video_file = [0, 0, 1, 1, 1]
    for f in (0, 1):
        ks = [k for k in range(5) if data_file[k] == f]
        tab = pa.table(
            {
                "observation.state": pa.array(
                    [list(map(float, r)) for k in ks for r in states[k]], pa.list_(pa.float32())
                ),
                "action": pa.array(
                    [list(map(float, r)) for k in ks for r in acts[k]], pa.list_(pa.float32())
                ),
                "timestamp": pa.array(
                    np.concatenate([np.arange(lengths[k]) / FPS for k in ks]).astype(np.float32)
                ),
                "frame_index": pa.array(np.concatenate([np.arange(lengths[k]) for k in ks])),
                "episode_index": pa.array(np.concatenate([np.full(lengths[k], k) for k in ks])),
                "index": pa.array(np.concatenate([np.arange(starts[k], starts[k + 1]) for k in ks])),
                "task_index": pa.array(np.concatenate([np.full(lengths[k], k % 2) for k in ks])),
            }
        )
        (root / "data/chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(tab, root / f"data/chunk-000/file-{f:03d}.parquet")
    vdir = root / "videos" / CAM / "chunk-000"
    vdir.mkdir(parents=True)
    from_ts = {}
    for f in (0, 1):
        ks = [k for k in range(5) if video_file[k] == f]
        t = 0.0
        for k in ks:
            from_ts[k] = t
            t += lengths[k] / FPS
        V.write_video(
            vdir / f"file-{f:03d}.mp4", np.concatenate([_frames(lengths[k], k) for k in ks]), fps=FPS
        )
    rows = []
    for k in range(5):
        rows.append(
            {
                "episode_index": k,
                "tasks": [f"do {k % 2}"],
                "length": lengths[k],
                "data/chunk_index": 0,
                "data/file_index": data_file[k],
                "dataset_from_index": int(starts[k]),
                "dataset_to_index": int(starts[k + 1]),
                f"videos/{CAM}/chunk_index": 0,
                f"videos/{CAM}/file_index": video_file[k],
                f"videos/{CAM}/from_timestamp": from_ts[k],
                f"videos/{CAM}/to_timestamp": from_ts[k] + lengths[k] / FPS,
                "meta/episodes/chunk_index": 0,
                "meta/episodes/file_index": 0,
            }
        )
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows[:2]), root / "meta/episodes/chunk-000/file-000.parquet")
    pq.write_table(pa.Table.from_pylist(rows[2:]), root / "meta/episodes/chunk-000/file-001.parquet")
    pq.write_table(
        pa.table({"__index_level_0__": ["do 0", "do 1"], "task_index": [0, 1]}), root / "meta/tasks.parquet"
    )
    info = {
        "codebase_version": "v3.0",
        "fps": FPS,
        "robot_type": "x",
        "total_episodes": 5,
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": {
            "observation.state": {"dtype": "float32", "shape": [2], "names": {"motors": ["x", "y"]}},
            "action": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
            CAM: {"dtype": "video", "shape": [H, W, 3], "names": ["height", "width", "channels"]},
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
            **{
                n: {"dtype": "int64", "shape": [1], "names": None}
                for n in ("frame_index", "episode_index", "index", "task_index")
            },
        },
    }
    (root / "meta/info.json").write_text(json.dumps(info))
    ds = RobotDataset(root)
    assert ds.num_episodes == 5 and ds.tasks == ["do 0", "do 1"]
    assert ds.feature_names("observation.state") == ["x", "y"]
    for k in range(5):
        np.testing.assert_array_equal(ds.episode(k)["observation.state"], states[k])
        np.testing.assert_array_equal(ds.episode(k)["action"], acts[k])
        fr = ds.frames(CAM, k)
        assert np.abs(fr.astype(int) - _frames(lengths[k], k).astype(int)).mean(axis=(1, 2, 3)).max() < 3.0
    # stats are missing in this dataset: a clear error naming the file
    with pytest.raises(MissingResourceError, match="meta/stats.json"):
        _ = ds.stats


def test_robot_data_and_its_stats_load_without_the_policy():
    """The statistics live with the dataset layout (handvla.data.lerobot): reading or writing a robot
    dataset never imports the policy package."""
    code = "import sys, handvla.robot.lerobot_format; assert 'handvla.policy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_video_and_stats_errors(written, tmp_path):
    root, _, _ = written
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    victim = broken / "videos" / CAM / "chunk-000" / "file-001.mp4"
    victim.unlink()
    with pytest.raises(MissingResourceError, match=r"file-001\.mp4"):
        RobotDataset(broken)
    shutil.copytree(root, tmp_path / "nostats")
    (tmp_path / "nostats/meta/stats.json").unlink()
    ds = RobotDataset(tmp_path / "nostats")  # readable without stats ...
    with pytest.raises(MissingResourceError, match="stats.json"):
        Normalizer(ds.stats, {"action": "mean_std"})  # ... but normalising needs them
    (broken / "meta/info.json").write_text(
        json.dumps({"codebase_version": "v2.1", "fps": 10, "features": {}})
    )
    with pytest.raises(InputError, match="codebase_version"):
        RobotDataset(broken)


def test_writer_rejects_bad_input(tmp_path):
    with RobotDatasetWriter(tmp_path / "w", FPS, FEATURES) as w:
        ep = _episode(4, 0, np.random.default_rng(0))
        with pytest.raises(InputError, match="observation.state"):
            w.add_episode({**ep, "observation.state": np.zeros((4, SD + 1), np.float32)}, "t")
        with pytest.raises(InputError, match="finite"):
            w.add_episode({**ep, "action": np.full((4, AD), np.nan, np.float32)}, "t")
        with pytest.raises(InputError, match=CAM):
            w.add_episode({k: v for k, v in ep.items() if k != CAM}, "t")
    with pytest.raises(ConfigError, match="fps"):
        RobotDatasetWriter(tmp_path / "w", FPS + 1, FEATURES)


def test_writer_abort_keeps_committed_files_and_resumes(tmp_path):
    rng = np.random.default_rng(7)
    eps = [_episode(5 + k, k, rng) for k in range(6)]
    w = RobotDatasetWriter(tmp_path / "d", FPS, FEATURES, episodes_per_file=3)
    for k in range(5):
        w.add_episode(eps[k], "t")
    with pytest.raises(ConfigError, match="one writer"):
        RobotDatasetWriter(tmp_path / "d")
    w.abort()  # like a killed writer: episodes 3 and 4 (not yet in a committed file) are lost
    assert RobotDataset(tmp_path / "d").num_episodes == 3
    with RobotDatasetWriter(tmp_path / "d") as w2:
        assert w2.add_episode(eps[5], "t") == 3
    ds = RobotDataset(tmp_path / "d")
    assert ds.num_episodes == 4
    np.testing.assert_array_equal(ds.episode(3)["action"], eps[5]["action"])
    assert np.abs(ds.frames(CAM, 3).astype(int) - eps[5][CAM]).mean() < 3.0
    assert not [p for p in (tmp_path / "d").rglob(".*") if ".tmp" in p.name]


# ---------------------------------------------------------------------------------------------------------
# normalisation
# ---------------------------------------------------------------------------------------------------------


def test_feature_stats_vs_numpy():
    rng = np.random.default_rng(3)
    x = rng.standard_t(3, size=(1001, 4))
    x[:, 2] = 0.5  # a constant dimension
    s = compute_feature_stats(x)
    np.testing.assert_allclose(s.mean, x.mean(0))
    np.testing.assert_allclose(s.std, x.std(0))
    np.testing.assert_allclose(s.q01, np.quantile(x, 0.01, axis=0))
    np.testing.assert_allclose(s.q99, np.quantile(x, 0.99, axis=0))
    np.testing.assert_allclose(s.q50, np.median(x, axis=0))
    n = Normalizer({"a": s}, {"a": "quantile"})
    y = n.normalize("a", x)
    # quantile mode maps q01 -> -1 and q99 -> +1; the constant dimension maps to 0, not to inf
    np.testing.assert_allclose(n.normalize("a", s.q01[None])[0, [0, 1, 3]], -1.0)
    np.testing.assert_allclose(n.normalize("a", s.q99[None])[0, [0, 1, 3]], 1.0)
    assert np.all(y[:, 2] == 0.0)
    m = Normalizer({"a": s}, {"a": "min_max"})
    ym = m.normalize("a", x)
    np.testing.assert_allclose(ym[:, [0, 1, 3]].min(0), -1.0)
    np.testing.assert_allclose(ym[:, [0, 1, 3]].max(0), 1.0)
    with pytest.raises(InputError, match="last axis"):
        n.normalize("a", np.zeros((2, 5)))
    with pytest.raises(ConfigError, match="mode"):
        Normalizer({"a": s}, {"a": "zscore"})


@settings(max_examples=25, deadline=None)
@given(
    mode=st.sampled_from(MODES),
    seed=st.integers(0, 10_000),
    dim=st.integers(1, 6),
    scale=st.floats(1e-3, 1e3),
)
def test_normalize_round_trip(mode, seed, dim, scale):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(50, dim)) * scale + rng.normal(size=dim) * scale
    n = Normalizer.from_arrays({"f": x}, {"f": mode})
    y = n.normalize("f", x)
    np.testing.assert_allclose(n.unnormalize("f", y), x, rtol=1e-9, atol=1e-9 * scale)
    t = torch.from_numpy(x.astype(np.float32))
    back = n.unnormalize("f", n.normalize("f", t))
    assert isinstance(back, torch.Tensor) and back.dtype == torch.float32
    np.testing.assert_allclose(back.numpy(), x, rtol=1e-4, atol=1e-4 * scale)


def test_normalizer_save_load_exact(tmp_path):
    rng = np.random.default_rng(5)
    arrays = {"observation.state": rng.normal(size=(300, 7)) * 3, "action": rng.uniform(-2, 5, size=(300, 4))}
    n = Normalizer.from_arrays(
        arrays,
        {"observation.state": "mean_std", "action": "quantile"},
        names={"action": ["a", "b", "c", "d"]},
    )
    n.save(tmp_path / "ckpt")
    m = Normalizer.load(tmp_path / "ckpt")
    assert m.modes == n.modes and m.names["action"] == ["a", "b", "c", "d"]
    for name in arrays:
        for k in ("mean", "std", "min", "max", "q01", "q10", "q50", "q90", "q99"):
            assert np.array_equal(getattr(m.stats[name], k), getattr(n.stats[name], k))  # bit-exact
        np.testing.assert_array_equal(m.unnormalize(name, arrays[name]), n.unnormalize(name, arrays[name]))
    js = json.loads((tmp_path / "ckpt/normalization.json").read_text())
    assert js["features"]["action"]["mode"] == "quantile"
    assert Normalizer.maybe_load(tmp_path / "empty") is None
    # a JSON that disagrees with the tensors, or a missing file, is a checkpoint error naming the file
    js["features"]["action"]["stats"]["mean"][0] += 1.0
    (tmp_path / "ckpt/normalization.json").write_text(json.dumps(js))
    with pytest.raises(CheckpointError, match="normalization.json"):
        Normalizer.load(tmp_path / "ckpt")
    (tmp_path / "ckpt/normalization.safetensors").unlink()
    with pytest.raises(CheckpointError, match="normalization.safetensors"):
        Normalizer.load(tmp_path / "ckpt")


# ---------------------------------------------------------------------------------------------------------
# open-loop evaluation
# ---------------------------------------------------------------------------------------------------------


class _ReplayPolicy:
    """Returns the recorded chunk (+ offset) for a recorded state: a policy with a known error."""

    def __init__(self, ds: RobotDataset, chunk: int, offset: float = 0.0, image: bool = False):
        self.ds, self.chunk, self.offset = ds, chunk, offset
        self.by_state = {ds.column("observation.state")[r].tobytes(): r for r in range(len(ds))}
        self.image = image
        self.images_seen = 0
        self.tasks_seen: list[tuple[int, str | None]] = []

    def metadata(self):
        obs = {"state": {"shape": [SD], "dtype": "float32"}}
        if self.image:
            obs["image"] = {"shape": [H, W, 3], "dtype": "uint8"}
        return {"chunk_size": self.chunk, "action_dim": AD, "observation": obs}

    def infer(self, obs):
        r = self.by_state[np.asarray(obs["state"], np.float32).tobytes()]
        k = self.ds.episode_of(r)
        s = self.ds.episode_slice(k)
        rows, _ = chunk_indices(r, s.start, s.stop, self.chunk)
        if self.image:
            assert obs["image"].shape == (H, W, 3)
            self.images_seen += 1
        self.tasks_seen.append((k, obs.get("task")))
        return self.ds.column("action")[rows] + self.offset


def test_open_loop_errors_by_horizon(written, tmp_path):
    root, _, _ = written
    ds = RobotDataset(root)
    replay = _ReplayPolicy(ds, 4)
    exact = evaluate_open_loop(replay, ds)
    assert exact.samples == ds.num_frames and exact.l1 == 0.0 and max(exact.l2_by_step) == 0.0
    # each frame is asked with its own episode's task (the fixture's episodes have different tasks)
    assert {k: t for k, t in replay.tasks_seen} == {k: ds.task(ds.episode_slice(k).start) for k in range(ds.num_episodes)}
    assert len({t for _, t in replay.tasks_seen}) > 1
    fixed = _ReplayPolicy(ds, 4)
    evaluate_open_loop(fixed, ds, instruction="do it")
    assert {t for _, t in fixed.tasks_seen} == {"do it"}
    policy = _ReplayPolicy(ds, 4, offset=0.25, image=True)
    res = evaluate_open_loop(policy, ds, stride=2, plot_path=tmp_path / "ol.png")
    np.testing.assert_allclose(res.l1_by_step, 0.25, rtol=1e-6)
    np.testing.assert_allclose(res.l2_by_step, 0.25 * np.sqrt(AD), rtol=1e-6)
    assert res.count_by_step[0] == res.samples and res.count_by_step[3] < res.samples  # padded steps skipped
    assert policy.images_seen == res.samples
    assert Path(res.plot).is_file() and Path(res.plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    wrong = _ReplayPolicy(ds, 4)
    wrong.metadata = lambda: {
        "chunk_size": 4,
        "action_dim": AD + 1,
        "observation": {"state": {"shape": [SD]}},
    }
    with pytest.raises(ConfigError, match="action_dim"):
        evaluate_open_loop(wrong, ds)
