"""Episode store (handvla.data.store): bit-exact round trip, window reads, atomic append under kills,
resume, clear errors on damaged stores, stats and the ``handvla data stats`` command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import handvla.data.store as store_mod
from handvla.camera import Camera
from handvla.cli import main as cli_main
from handvla.data.schema import Episode
from handvla.data.store import EpisodeStore, EpisodeWriter
from handvla.errors import ConfigError, InputError
from handvla.hand.motion import HandMotion

FPS = 15
H, W = 32, 48
REAL_MP4 = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "data"
    / "real_hands"
    / "mediapipe_video_right.mp4"
)


def _bits(a: np.ndarray) -> np.ndarray:
    """float32 bit patterns: equality of these is bit-exact equality (NaN included)."""
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def _video(T: int, seed: int) -> np.ndarray:
    """Smooth frames whose colour changes per frame (lossy codecs keep flat colours close)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, size=3)
    t = np.arange(T)[:, None, None, None]
    frames = np.broadcast_to(base, (T, H, W, 3)) + (t * 3 % 50)
    return frames.astype(np.uint8)


def make_episode(T: int, key: str, seed: int = 0, hands=("left", "right"), joints=False, fps=FPS) -> Episode:
    rng = np.random.default_rng(seed)
    motions, jts = {}, {}
    for side in hands:
        valid = rng.random(T) > 0.25
        valid[0] = True
        go = rng.normal(size=(T, 3)).astype(np.float32)
        go[~valid] = np.nan  # values on invalid frames are meaningless; NaN must be allowed there
        motions[side] = HandMotion(
            global_orient=go,
            hand_pose=rng.normal(size=(T, 15, 3)).astype(np.float32),
            wrist_pos=rng.normal(size=(T, 3)).astype(np.float32),
            betas=rng.normal(size=10).astype(np.float32),
            side=side,
            fps=fps,
            valid=valid,
        )
        if joints:
            jts[side] = rng.normal(size=(T, 21, 3)).astype(np.float32)
    extr = np.eye(4)
    extr[:3, 3] = rng.normal(size=3)
    return Episode(
        hands=motions,
        camera=Camera(
            fx=55.5 + seed, fy=54.25, cx=W / 2 + 0.1, cy=H / 2 - 0.3, width=W, height=H, extrinsics=extr
        ),
        fps=fps,
        key=key,
        video=_video(T, seed),
        joints=jts,
        tasks=[f"pick up cup {seed % 2}", "describe"],
        source="unit" if seed % 3 else "other",
        licence="CC-BY-4.0",
        rig=f"rig{seed % 2}",
        annotations={"clip": {"instruction": "grasp", "per_second": ["a", "b"]}, "n": seed},
        ground_truth={"target_xyz": np.array([0.1, 0.2, 0.3])},
    )


def write_store(root: Path, episodes: list[Episode], fps: float = FPS, **kw) -> None:
    with EpisodeWriter(root, fps=fps, **kw) as w:
        for ep in episodes:
            w.add_episode(ep)


def assert_same_motion(a: HandMotion, b: HandMotion) -> None:
    assert np.array_equal(a.valid, b.valid)
    for f in ("global_orient", "hand_pose", "wrist_pos", "betas"):
        assert np.array_equal(_bits(getattr(a, f)), _bits(getattr(b, f))), f


# ---------------------------------------------------------------------------------------------------------


def test_round_trip_bit_exact(tmp_path):
    eps = [make_episode(23, "a", 0, joints=True), make_episode(17, "b", 1, hands=("right",), joints=True)]
    eps[1].ground_truth = None
    write_store(tmp_path, eps, joints=True)
    s = EpisodeStore(tmp_path)
    assert len(s) == 2 and s.clean and s.tasks == ["pick up cup 0", "describe", "pick up cup 1"]
    for k, ep in enumerate(eps):
        got = s.load_episode(k)
        assert got.key == ep.key and got.episode_index == k and got.num_frames == ep.num_frames
        for side in ("left", "right"):
            if side in ep.hands:
                assert_same_motion(got.hands[side], ep.hands[side])
                assert np.array_equal(_bits(got.joints[side]), _bits(ep.joints[side]))
            else:  # a missing hand comes back all-invalid
                assert not got.hands[side].valid.any()
        # camera floats (float64) and extrinsics exactly; text and JSON exactly
        for f in ("fx", "fy", "cx", "cy", "width", "height"):
            assert getattr(got.camera, f) == getattr(ep.camera, f)
        assert np.array_equal(got.camera.extrinsics, ep.camera.extrinsics)
        assert (got.tasks, got.source, got.licence, got.rig) == (ep.tasks, ep.source, ep.licence, ep.rig)
        assert got.annotations == ep.annotations
        want_gt = None if ep.ground_truth is None else {"target_xyz": [0.1, 0.2, 0.3]}
        assert got.ground_truth == want_gt
        # video is lossy: same frame count and size, colours close
        assert got.video.shape == ep.video.shape and got.video.dtype == np.uint8
        err = np.abs(got.video.astype(int) - ep.video.astype(int)).mean(axis=(1, 2, 3))
        assert err.max() < 3.0, err
    # per-frame bookkeeping columns as LeRobot defines them (global index, timestamps, task index)
    t1 = pq.read_table(s.data_path(1))
    assert t1.column("index").to_pylist() == list(range(23, 40))
    assert np.array_equal(t1.column("timestamp").to_numpy(), (np.arange(17) / FPS).astype(np.float32))
    assert set(t1.column("task_index").to_pylist()) == {2}
    assert t1.schema.field("right_hand.hand_pose").type == pa.list_(pa.float32(), 45)
    info = json.loads((tmp_path / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 2 and info["total_frames"] == 40
    assert info["features"]["observation.images.main"]["shape"] == [H, W, 3]
    assert info["features"]["left_hand.hand_pose"]["shape"] == [45]
    # stats.json against numpy over the valid frames of both episodes (an independent computation)
    st = json.loads((tmp_path / "meta/stats.json").read_text())
    pose = np.concatenate([e.hands["right"].hand_pose.reshape(-1, 45)[e.hands["right"].valid] for e in eps])
    np.testing.assert_allclose(
        st["right_hand.hand_pose"]["mean"], pose.astype(np.float64).mean(0), rtol=1e-10
    )
    np.testing.assert_allclose(st["right_hand.hand_pose"]["std"], pose.astype(np.float64).std(0), rtol=1e-9)
    np.testing.assert_array_equal(st["right_hand.hand_pose"]["min"], pose.min(0))
    assert st["right_hand.hand_pose"]["count"] == [len(pose)]
    assert st["left_hand.valid"]["count"] == [40]
    stats = s.stats()
    np.testing.assert_allclose(
        stats["right_hand.hand_pose"].mean, pose.astype(np.float64).mean(0), rtol=1e-10
    )
    assert s.validate(deep=True) == []


def test_episode_without_tasks_and_without_video(tmp_path):
    ep = make_episode(5, "x", 2)
    ep.tasks, ep.video = [], None
    write_store(tmp_path, [ep], camera=None)
    s = EpisodeStore(tmp_path)
    got = s.load_episode(0)
    assert got.tasks == [] and got.video is None and s.video_path(0) is None
    assert s.tasks == [""]  # frames point to the empty task, as LeRobot needs a task per frame
    assert not (tmp_path / "videos").exists()


def test_window_reads_match_full_read(tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "ROW_GROUP_FRAMES", 8)  # windows cross row-group boundaries
    ep = make_episode(45, "w", 3)
    write_store(tmp_path, [ep])
    s = EpisodeStore(tmp_path)
    full = s.load_episode(0)
    for start_s, end_s, a, b in [
        (0.5, 1.0, 8, 15),
        (None, 0.2, 0, 3),
        (2.0, None, 30, 45),
        (1.0, 1.0, 15, 15),
        (0.0, 99, 0, 45),
    ]:
        assert s.frame_window(0, start_s, end_s) == (a, b)
        win = s.load_episode(0, start_s, end_s)
        assert win.frame_offset == a and win.num_frames == b - a
        assert win.start_s == pytest.approx(a / FPS)
        for side in ("left", "right"):
            assert_same_motion(win.hands[side], full.hands[side].slice(a, b))
        assert np.array_equal(win.video, full.video[a:b])  # same decoder, exact frames
    assert s.load_episode(0, 0.5, 1.0, with_video=False).video is None


def test_real_mp4_ingest_and_seek(tmp_path):
    """A real 30 fps 1280x720 H.264 clip given as a path: copied as is, windows decode the right frames."""
    if not REAL_MP4.is_file():
        pytest.skip(f"real video not found at {REAL_MP4}")
    T = 621
    rng = np.random.default_rng(0)
    ep = Episode(
        hands={
            "right": HandMotion(
                rng.normal(size=(T, 3)), np.zeros((T, 45)), rng.normal(size=(T, 3)), side="right", fps=30
            )
        },
        camera=Camera(1000.0, 1000.0, 640.0, 360.0, 1280, 720),
        fps=30,
        key="real",
        video=REAL_MP4,
        source="dex-retargeting",
        licence="MIT",
    )
    write_store(tmp_path, [ep], fps=30)
    s = EpisodeStore(tmp_path)
    assert s.video_path(0).read_bytes() == REAL_MP4.read_bytes()
    win = s.load_episode(0, 10.0, 10.2)  # frames 300..305, reached by seeking
    assert win.frame_offset == 300 and win.video.shape == (6, 720, 1280, 3)
    # independent reference: PyAV decoding sequentially from the first frame
    with av.open(str(REAL_MP4)) as c:
        ref = []
        for i, frame in enumerate(c.decode(video=0)):
            if i >= 300:
                ref.append(frame.to_ndarray(format="rgb24"))
            if i == 305:
                break
    assert np.array_equal(win.video, np.stack(ref))
    # a path to a video with the wrong frame count is refused with the numbers
    bad = Episode(
        hands={"right": ep.hands["right"].slice(0, 100)}, camera=ep.camera, fps=30, key="bad", video=REAL_MP4
    )
    with EpisodeWriter(tmp_path) as w, pytest.raises(InputError, match="100 frames .*621 frames"):
        w.add_episode(bad)


# ---------------------------------------------------------------------------------------------------------
# atomicity, kills, resume


def test_exception_mid_episode_leaves_nothing_visible(tmp_path, monkeypatch):
    eps = [make_episode(10, f"e{i}", i) for i in range(3)]
    w = EpisodeWriter(tmp_path, fps=FPS)
    w.add_episode(eps[0])

    def boom(*a, **k):
        raise RuntimeError("disk full")

    real = store_mod.V.write_video
    monkeypatch.setattr(store_mod.V, "write_video", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        w.add_episode(eps[1])  # its data parquet is already written, its video is not
    assert (tmp_path / "data/chunk-000/file-001.parquet").exists()
    assert len(EpisodeStore(tmp_path)) == 1  # but it is not committed: invisible
    monkeypatch.setattr(store_mod.V, "write_video", real)
    assert w.add_episode(eps[2]) == 1  # the index is reused, the orphan overwritten
    w.close()
    s = EpisodeStore(tmp_path)
    assert [s.meta(k)["key"] for k in range(len(s))] == ["e0", "e2"]
    assert_same_motion(s.load_episode(1).hands["right"], eps[2].hands["right"])
    assert s.validate(deep=True) == []


_CHILD = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {tests!r})
    import handvla.data.store as store_mod
    from test_store import make_episode, FPS
    mode = sys.argv[2]
    # durable=False: no fsync; a killed process must still leave exactly the committed episodes
    w = store_mod.EpisodeWriter(sys.argv[1], fps=FPS, durable=mode != "loop")
    if mode == "die_before_commit":
        w.add_episode(make_episode(12, "c0", 0))
        real = store_mod.EpisodeWriter._write_video
        def die(self, *a, **k):
            real(self, *a, **k)
            os._exit(9)  # data and video of episode 1 are in place, its journal line is not
        store_mod.EpisodeWriter._write_video = die
        w.add_episode(make_episode(12, "c1", 1))
    else:  # write until killed
        i = 0
        while True:
            w.add_episode(make_episode(12, f"c{{i}}", i))
            print(i, flush=True)
            i += 1
    """
)


def _child(tmp_path: Path, mode: str) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(tests=str(Path(__file__).parent)))
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "store"), mode], stdout=subprocess.PIPE, text=True
    )


def test_kill_before_commit_then_resume(tmp_path):
    p = _child(tmp_path, "die_before_commit")
    assert p.wait(timeout=60) == 9
    root = tmp_path / "store"
    assert (root / "data/chunk-000/file-001.parquet").exists()  # the uncommitted episode's files exist ...
    s = EpisodeStore(root)
    assert len(s) == 1 and not s.clean  # ... but only the committed episode is visible
    assert s.validate(deep=True) == []
    # a stale temp file and a torn journal line, as a kill during a write / an append leaves them
    (root / "data/chunk-000/.file-002.parquet.tmp-123").write_bytes(b"partial")
    with open(root / "meta/handvla_journal.jsonl", "ab") as f:
        f.write(b'{"episode_index": 1, "key": "c1", "len')
    assert len(EpisodeStore(root)) == 1
    with EpisodeWriter(root) as w:  # resume: cleans up, skips committed keys, appends
        assert not (root / "data/chunk-000/.file-002.parquet.tmp-123").exists()
        assert not (root / "data/chunk-000/file-001.parquet").exists()
        assert w.add_episode(make_episode(12, "c0", 0)) == 0  # already there: skipped
        assert w.add_episode(make_episode(12, "c1", 1)) == 1
        assert len(EpisodeStore(root)) == 2  # a reader sees committed episodes while the writer runs
        assert w.add_episode(make_episode(12, "c2", 2)) == 2
    s = EpisodeStore(root)
    assert s.clean and [s.meta(k)["key"] for k in range(3)] == ["c0", "c1", "c2"]
    assert s.validate(deep=True) == []
    assert_same_motion(s.load_episode(1).hands["left"], make_episode(12, "c1", 1).hands["left"])


def test_sigkill_at_a_random_moment(tmp_path):
    p = _child(tmp_path, "loop")
    printed = []
    deadline = time.time() + 60
    while len(printed) < 3 and time.time() < deadline:
        printed.append(int(p.stdout.readline()))
    time.sleep(0.013)  # somewhere inside the next episode's write
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    p.stdout.close()
    root = tmp_path / "store"
    s = EpisodeStore(root)
    assert len(s) >= len(printed)  # everything reported committed is there (one more may have committed)
    assert s.validate(deep=True) == []  # and nothing partial is visible
    n = len(s)
    with EpisodeWriter(root) as w:
        for i in range(n + 1):
            w.add_episode(make_episode(12, f"c{i}", i))
    s = EpisodeStore(root)
    assert len(s) == n + 1 and s.clean and s.validate() == []
    assert_same_motion(s.load_episode(n).hands["right"], make_episode(12, f"c{n}", n).hands["right"])


def test_resume_compaction_across_meta_files(tmp_path, monkeypatch):
    """Several episode-table files, compaction every 2 episodes, a reopen mid-file: rows and stats exact."""
    monkeypatch.setattr(store_mod, "EPISODES_PER_META_FILE", 3)
    eps = [make_episode(6 + i, f"r{i}", i) for i in range(7)]
    with EpisodeWriter(tmp_path, fps=FPS, compact_every=2) as w:
        for ep in eps[:4]:
            w.add_episode(ep)
    w = EpisodeWriter(tmp_path)
    for ep in eps[4:]:
        w.add_episode(ep)
    w.abort()  # killed-like: last episode only in the journal
    s = EpisodeStore(tmp_path)
    assert len(s) == 7 and not s.clean
    assert sorted(p.name for p in (tmp_path / "meta/episodes/chunk-000").iterdir()) == [
        "file-000.parquet",
        "file-001.parquet",
    ]
    pose = np.concatenate([e.hands["left"].hand_pose.reshape(-1, 45)[e.hands["left"].valid] for e in eps])
    np.testing.assert_allclose(
        s.stats()["left_hand.hand_pose"].mean, pose.astype(np.float64).mean(0), rtol=1e-10
    )
    with EpisodeWriter(tmp_path):
        pass
    s = EpisodeStore(tmp_path)
    assert s.clean and [s.meta(k)["key"] for k in range(7)] == [f"r{i}" for i in range(7)]
    assert [s.meta(k)["dataset_from_index"] for k in range(7)] == list(
        np.cumsum([0] + [6 + i for i in range(6)])
    )
    st = json.loads((tmp_path / "meta/stats.json").read_text())
    np.testing.assert_allclose(st["left_hand.hand_pose"]["mean"], pose.astype(np.float64).mean(0), rtol=1e-10)
    np.testing.assert_allclose(st["left_hand.hand_pose"]["std"], pose.astype(np.float64).std(0), rtol=1e-9)
    assert s.validate(deep=True) == []


def test_writer_options_and_lock(tmp_path):
    write_store(tmp_path, [make_episode(4, "a", 0)])
    with pytest.raises(ConfigError, match="fps=15"):
        EpisodeWriter(tmp_path, fps=30)
    with pytest.raises(ConfigError, match="camera"):
        EpisodeWriter(tmp_path, camera=None)
    with EpisodeWriter(tmp_path) as w:
        with pytest.raises(ConfigError, match="another EpisodeWriter"):
            EpisodeWriter(tmp_path)
        assert w.has("a") and not w.has("b")
    with pytest.raises(ConfigError, match="needs fps"):
        EpisodeWriter(tmp_path / "new")
    (tmp_path / "other/data").mkdir(parents=True)
    (tmp_path / "other/data/file-000.parquet").write_bytes(b"not ours")
    with pytest.raises(ConfigError, match="not an episode store"):
        EpisodeWriter(tmp_path / "other", fps=FPS)
    assert (tmp_path / "other/data/file-000.parquet").exists()


# ---------------------------------------------------------------------------------------------------------
# clear errors


@pytest.fixture
def two(tmp_path) -> Path:
    write_store(tmp_path, [make_episode(10, "a", 0), make_episode(14, "b", 1)])
    return tmp_path


def _rewrite(path: Path, fn) -> None:
    pq.write_table(fn(pq.read_table(path)), path)


def test_error_truncated_parquet(two):
    p = two / "data/chunk-000/file-001.parquet"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    s = EpisodeStore(two)
    with pytest.raises(InputError, match=r"file-001\.parquet \(episode 1\).*complete, readable parquet"):
        s.load_episode(1)
    problems = s.validate()
    assert len(problems) == 1 and "file-001.parquet (episode 1)" in problems[0]
    s.load_episode(0)  # the other episode still reads


def test_error_missing_video(two):
    (two / "videos/observation.images.main/chunk-000/file-000.mp4").unlink()
    s = EpisodeStore(two)
    with pytest.raises(
        InputError, match=r"file-000\.mp4 \(episode 0\): field 'observation.images.main'.*missing"
    ):
        s.load_episode(0)
    assert s.load_episode(0, with_video=False).num_frames == 10
    assert "file-000.mp4 (episode 0)" in s.validate()[0]


def test_error_frame_count_video_vs_metadata(two):
    vdir = two / "videos/observation.images.main/chunk-000"
    (vdir / "file-000.mp4").write_bytes((vdir / "file-001.mp4").read_bytes())  # 14 frames where 10 belong
    s = EpisodeStore(two)
    with pytest.raises(InputError, match=r"episode 0.*observation.images.main.*10 frames.*got 14 frames"):
        s.load_episode(0, 0.0, 0.2)


def test_error_row_count_parquet_vs_metadata(two):
    d = two / "data/chunk-000"
    (d / "file-000.parquet").write_bytes((d / "file-001.parquet").read_bytes())
    s = EpisodeStore(two)
    with pytest.raises(InputError, match=r"episode 0\): field 'length': expected 10 rows.*got 14 rows"):
        s.load_episode(0)
    assert "field 'length'" in s.validate()[0]


def test_error_nan_on_valid_frame(two, tmp_path_factory):
    # writer side
    ep = make_episode(8, "n", 5)
    ep.hands["right"].hand_pose[3, 2, 1] = np.nan
    ep.hands["right"].valid[3] = True
    with (
        EpisodeWriter(two) as w,
        pytest.raises(InputError, match=r"episode 'n'.*right_hand.hand_pose.*frame 3"),
    ):
        w.add_episode(ep)
    assert len(EpisodeStore(two)) == 2
    # reader side: a damaged file
    p = two / "data/chunk-000/file-000.parquet"
    valid = pq.read_table(p).column("left_hand.valid").to_pylist()
    f = valid.index(True, 2)

    def poison(t: pa.Table) -> pa.Table:
        a = np.asarray(t.column("left_hand.wrist_pos").combine_chunks().flatten()).reshape(-1, 3).copy()
        a[f, 0] = np.nan
        i = t.column_names.index("left_hand.wrist_pos")
        return t.set_column(
            i, "left_hand.wrist_pos", pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), 3)
        )

    _rewrite(p, poison)
    with pytest.raises(InputError, match=rf"episode 0\): field 'left_hand.wrist_pos'.*NaN/inf at frame {f}"):
        EpisodeStore(two).load_episode(0)
    assert EpisodeStore(two).validate() == []  # cheap validation does not read values ...
    assert "left_hand.wrist_pos" in EpisodeStore(two).validate(deep=True)[0]  # ... deep validation does


def test_error_wrong_shapes(two):
    p = two / "data/chunk-000/file-001.parquet"

    def narrow(t: pa.Table) -> pa.Table:
        a = np.asarray(t.column("right_hand.hand_pose").combine_chunks().flatten()).reshape(-1, 45)[:, :44]
        i = t.column_names.index("right_hand.hand_pose")
        return t.set_column(
            i, "right_hand.hand_pose", pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), 44)
        )

    _rewrite(p, narrow)
    with pytest.raises(InputError, match=r"episode 1\): field 'right_hand.hand_pose'.*\[45\].*\[44\]"):
        EpisodeStore(two).load_episode(1)
    # writer side: video of the wrong size, joints into a store without joints, wrong fps
    with EpisodeWriter(two) as w:
        ep = make_episode(6, "v", 3)
        ep.video = ep.video[:, :, :-2]
        with pytest.raises(InputError, match=r"episode 'v'.*video.*\(6, 32, 48, 3\)"):
            w.add_episode(ep)
        ep = make_episode(6, "j", 3, joints=True)
        with pytest.raises(InputError, match=r"episode 'j'.*joints.*joints=False"):
            w.add_episode(ep)
        ep = make_episode(6, "f", 3, fps=30)
        with pytest.raises(InputError, match=r"episode 'f'.*fps.*15"):
            w.add_episode(ep)
        ep = make_episode(6, "ann", 3)
        ep.annotations = {"when": object()}
        with pytest.raises(InputError, match=r"episode 'ann': field 'annotations'.*JSON"):
            w.add_episode(ep)
        assert len(w) == 2
    with EpisodeWriter(two.parent / "j", fps=FPS, joints=True) as w:
        ep = make_episode(6, "j2", 3, joints=True)
        ep.joints["left"] = ep.joints["left"][:, :20]
        with pytest.raises(InputError, match=r"joints\['left'\].*\(6, 21, 3\)"):
            w.add_episode(ep)
        ep.joints.pop("left")
        with pytest.raises(InputError, match=r"joints\['left'\].*missing"):
            w.add_episode(ep)


def test_error_unknown_versions(two):
    info_path = two / "meta/info.json"
    info = json.loads(info_path.read_text())
    info["handvla"]["format_version"] = 99
    info_path.write_text(json.dumps(info))
    with pytest.raises(InputError, match=r"info.json: field 'handvla.format_version'.*got 99"):
        EpisodeStore(two)
    info["handvla"]["format_version"] = 1
    info["codebase_version"] = "v2.1"
    info_path.write_text(json.dumps(info))
    with pytest.raises(InputError, match=r"field 'codebase_version': expected 'v3.0', got 'v2.1'"):
        EpisodeStore(two)
    with pytest.raises(InputError, match="meta/info.json"):
        EpisodeStore(two / "meta")


def test_camera_projection_against_K():
    cam = Camera(500.0, 480.0, 320.0, 240.0, 640, 480, extrinsics=np.eye(4))
    rng = np.random.default_rng(0)
    p = rng.normal(size=(50, 3)) + [0, 0, 3]
    uvw = p @ cam.K.T  # homogeneous pixels from the intrinsic matrix (a second code path)
    np.testing.assert_allclose(cam.project(p), uvw[:, :2] / uvw[:, 2:], rtol=1e-12)
    assert np.isnan(cam.project(np.array([[0.1, 0.2, -1.0]]))).all()
    np.testing.assert_allclose(cam.world_to_camera(p), p)
    with pytest.raises(InputError, match="fx"):
        Camera(-1, 1, 0, 0, 10, 10)


# ---------------------------------------------------------------------------------------------------------
# the command


def test_data_stats_command(two, capsys):
    assert cli_main(["data", "stats", str(two), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    size = sum(f.stat().st_size for f in two.rglob("*") if f.is_file())
    assert out["episodes"] == 2 and out["frames"] == 24 and out["fps"] == 15
    assert out["hours"] == pytest.approx(24 / 15 / 3600, abs=1e-4)
    assert out["sources"] == {
        "other": {"episodes": 1, "frames": 10, "hours": pytest.approx(10 / 15 / 3600, abs=1e-4)},
        "unit": {"episodes": 1, "frames": 14, "hours": pytest.approx(14 / 15 / 3600, abs=1e-4)},
    }
    assert set(out["rigs"]) == {"rig0", "rig1"}
    assert out["hands"] == {"left": 2, "right": 2, "both": 2, "none": 0}
    assert out["size_bytes"] == size and out["compacted"] is True
    assert cli_main(["data", "stats", str(two)]) == 0
    text = capsys.readouterr().out
    assert "episodes   2" in text and "per source:" in text and "rig1" in text
    assert cli_main(["data", "validate", str(two), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["problems"] == []
    (two / "videos/observation.images.main/chunk-000/file-001.mp4").unlink()
    assert cli_main(["data", "validate", str(two)]) == 2
    assert "file-001.mp4 (episode 1)" in capsys.readouterr().out
    assert cli_main(["data", "stats", str(two / "nowhere")]) == 2
