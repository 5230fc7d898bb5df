"""Joints files, hand-parameter files and resampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handvla.errors import InputError
from handvla.hand.io import (
    JointsRecording,
    load_any,
    load_joints,
    load_motion,
    resample_joints,
    save_joints,
    save_motion,
)
from handvla.hand.motion import HandMotion

REAL = Path("/work/shared/data/real_hands")
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason="real-hands data folder not present")


def _rec(T: int = 6, **kw) -> JointsRecording:
    rng = np.random.default_rng(0)
    args = dict(
        joints=rng.normal(size=(T, 21, 3)).astype(np.float32) * 0.05,
        t=np.arange(T) / 30.0,
        side="right",
        fps=30.0,
    )
    args.update(kw)
    return JointsRecording(**args)


def _write(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


@needs_real
def test_real_files_and_point_zero_semantics():
    leap = load_joints(REAL / "leap_grab_right.npz")
    assert leap.joints.shape[1:] == (21, 3) and leap.side == "right"
    assert leap.joint_scheme == "leap21" and leap.root_is_palm
    assert leap.t.shape == (len(leap),) and 100 < leap.fps < 120
    mp = load_joints(REAL / "mediapipe_video_right.npz")
    assert mp.joint_scheme == "openpose21" and not mp.root_is_palm
    left = load_joints(REAL / "leap_flapping_left.npz")
    assert left.side == "left"
    # every real file loads and validates
    for f in sorted(REAL.glob("*.npz")):
        assert isinstance(load_any(f), JointsRecording)


def test_joints_round_trip(tmp_path):
    rec = _rec(joint_order="leap21: palm centre, ...", source="unit test", licence="MIT", frame="device")
    rec.joints[2, 5] = np.nan
    p = save_joints(tmp_path / "a.npz", rec)
    back = load_joints(p)
    np.testing.assert_array_equal(back.joints, rec.joints)
    np.testing.assert_array_equal(back.t, rec.t)
    assert (back.side, back.fps, back.source, back.licence, back.frame) == (
        "right",
        30.0,
        "unit test",
        "MIT",
        "device",
    )
    assert back.root_is_palm and back.observed.tolist() == [True, True, False, True, True, True]
    assert [x.name for x in tmp_path.iterdir()] == ["a.npz"]  # no temporary file left behind


def test_fps_only_and_defaults(tmp_path):
    p = _write(tmp_path / "b.npz", joints=np.zeros((4, 21, 3), np.float32), side="left", fps=np.array(20.0))
    rec = load_joints(p)
    np.testing.assert_allclose(rec.t, np.arange(4) / 20.0)
    assert rec.joint_scheme == "openpose21" and rec.source == "unknown"


@pytest.mark.parametrize(
    "arrays, field",
    [
        (dict(t=np.arange(3.0), side="right"), "joints"),  # missing joints
        (dict(joints=np.zeros((3, 20, 3)), t=np.arange(3.0), side="right"), "joints"),  # wrong shape
        (dict(joints=np.full((3, 21, 3), np.nan), t=np.arange(3.0), side="right"), "joints"),  # NaN only
        (dict(joints=np.zeros((3, 21, 3)), t=np.arange(3.0), side="middle"), "side"),  # unknown side
        (dict(joints=np.zeros((3, 21, 3)), t=np.arange(3.0)), "side"),  # missing side
        (dict(joints=np.zeros((3, 21, 3)), t=np.array([0.0, 0.2, 0.1]), side="right"), "t"),  # not monotonic
        (dict(joints=np.zeros((3, 21, 3)), t=np.arange(4.0), side="right"), "t"),  # wrong length
        (dict(joints=np.zeros((3, 21, 3)), side="right"), "t"),  # neither t nor fps
        (
            dict(joints=np.zeros((3, 21, 3)), t=np.arange(3.0), side="right", joint_order="kinect25: ..."),
            "joint_order",
        ),
        (dict(joints=np.zeros((3, 21, 3)), t=np.arange(3.0), side="right", fps=np.array([1.0, 2.0])), "fps"),
    ],
)
def test_validation_errors_name_file_and_field(tmp_path, arrays, field):
    p = _write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InputError) as e:
        load_joints(p)
    assert e.value.field == field
    assert str(p) in str(e.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_joints(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="readable"):
        load_any(tmp_path / "junk.npz")
    # object arrays need pickle, which is refused
    p = _write(tmp_path / "obj.npz", joints=np.array([{"a": 1}], dtype=object), side="right", t=np.zeros(1))
    with pytest.raises(InputError, match="joints"):
        load_joints(p)
    q = _write(tmp_path / "other.npz", something=np.zeros(3))
    with pytest.raises(InputError, match="joints file"):
        load_any(q)


def _corrupt_copies(tmp_path: Path) -> dict[str, Path]:
    """A 0-byte file, a truncated zip, and a zip whose first member's header bytes are overwritten."""
    good = save_joints(tmp_path / "good.npz", _rec(T=20))
    data = good.read_bytes()
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(data[: len(data) // 3])
    bad = bytearray(data)
    start = data.index(b"\x93NUMPY")  # the first member's .npy header (stored uncompressed by np.savez)
    bad[start + 10 : start + 60] = b"\x00" * 50
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(bytes(bad))
    return {"empty": empty, "trunc": trunc, "corrupt": corrupt}


@pytest.mark.parametrize("kind", ["empty", "trunc", "corrupt"])
def test_empty_truncated_and_corrupt_files_are_input_errors(tmp_path, kind):
    p = _corrupt_copies(tmp_path)[kind]
    for loader in (load_joints, load_any, load_motion):
        with pytest.raises(InputError) as e:
            loader(p)
        assert str(p) in str(e.value) and "\n" not in str(e.value)
    if kind == "empty":
        assert "0-byte" in str(e.value)


def test_motion_round_trip_and_load_any(tmp_path):
    rng = np.random.default_rng(1)
    m = HandMotion(
        global_orient=rng.normal(size=(5, 3)),
        hand_pose=rng.normal(size=(5, 15, 3)) * 0.3,
        wrist_pos=rng.normal(size=(5, 3)),
        betas=rng.normal(size=10),
        side="left",
        fps=15.0,
        valid=np.array([1, 1, 0, 1, 1], bool),
    )
    p = save_motion(tmp_path / "m.npz", m)
    back = load_any(p)
    assert isinstance(back, HandMotion)
    for k in ("global_orient", "hand_pose", "wrist_pos", "betas", "valid"):
        np.testing.assert_array_equal(getattr(back, k), getattr(m, k))
    assert (back.side, back.fps) == ("left", 15.0)
    assert isinstance(load_any(save_joints(tmp_path / "j.npz", _rec())), JointsRecording)
    bad = m.to_dict()
    bad["wrist_pos"] = np.full((5, 3), np.nan, np.float32)
    np.savez(tmp_path / "nan.npz", **bad)
    with pytest.raises(InputError, match="wrist_pos"):
        load_motion(tmp_path / "nan.npz")


def test_resample_linear_and_nan_aware():
    t = np.array([0.0, 0.01, 0.05, 0.06, 0.1])
    joints = np.zeros((5, 21, 3), np.float32)
    joints[..., 0] = (2.0 * t)[:, None]  # x = 2 t metres
    out, tq = resample_joints(joints, t, 50.0)
    np.testing.assert_allclose(tq, [0.0, 0.02, 0.04, 0.06, 0.08, 0.1], atol=1e-12)
    np.testing.assert_allclose(out[:, 0, 0], 2 * tq, atol=1e-6)
    # a NaN sample only poisons the targets it brackets; exact hits on finite samples survive
    joints[2, 3] = np.nan  # t = 0.05
    out, tq = resample_joints(joints, t, 50.0)
    bad = np.isnan(out[:, 3, 0])
    assert bad.tolist() == [False, True, True, False, False, False]  # 0.02 and 0.04 lie between 0.01 and 0.05
    assert np.isfinite(out[:, 4]).all()
    rec = _rec(T=10).resample(15.0)
    assert rec.fps == 15.0 and len(rec) == 5 and np.allclose(np.diff(rec.t), 1 / 15)


@settings(max_examples=30, deadline=None)
@given(
    gaps=st.lists(st.floats(0.001, 0.05), min_size=2, max_size=30),
    fps=st.floats(5.0, 120.0),
    slope=st.floats(-3, 3),
)
def test_resample_is_exact_for_linear_motion(gaps, fps, slope):
    t = np.concatenate([[0.0], np.cumsum(gaps)])
    joints = np.zeros((len(t), 21, 3))
    joints[..., 1] = (slope * t + 0.5)[:, None]
    out, tq = resample_joints(joints, t, fps)
    assert tq[0] == 0.0 and tq[-1] <= t[-1] + 1e-6 and len(tq) == int(np.floor(t[-1] * fps + 1e-6)) + 1
    np.testing.assert_allclose(out[:, 7, 1], slope * tq + 0.5, atol=1e-5)
