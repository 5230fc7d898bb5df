"""Standardisation: fitting quality on real joints, swap repair, gap interpolation, outliers, resampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation, Slerp

from handvla.camera import Camera
from handvla.data.schema import Episode
from handvla.errors import InputError
from handvla.hand import rotations as R
from handvla.hand.model import BuiltinHand
from handvla.hand.motion import HandMotion, interp_points
from handvla.hand.registry import motion_joints
from handvla.ingest.sources import get_source
from handvla.ingest.sources.base import SourceEpisode
from handvla.ingest.standardize import (
    ParamTrack,
    StandardizeConfig,
    fill_gaps,
    outlier_frames,
    output_times,
    repair_swaps,
    resample_track,
    smooth_track,
    standardize_episode,
)

FAST = StandardizeConfig(fit_iters=20)


@pytest.fixture(scope="module")
def claps(real_hands_dir):
    """The real two-hand Leap clip 'three-claps', standardised to 15 fps (fitted), and its raw joints."""
    src = get_source("joints21")
    ep = src.read_episode(real_hands_dir, "leap_three-claps")
    res = standardize_episode(ep, FAST, kind="vr", params="joints")
    return ep, res


def test_fit_real_joints_quality(claps):
    ep, res = claps
    rep = res.report
    assert rep["fps_out"] == 15.0 and rep["frames_out"] == res.times_s.size
    # 3.7 s at about 110 fps -> 56 frames at 15 fps
    assert abs(rep["frames_out"] - (ep.num_frames - 1) / ep.fps * 15) <= 1.0
    for side in ("left", "right"):
        h = rep["hands"][side]
        assert h["origin"] == "fit"
        assert h["fit_error_mm"] < 8.0, h  # measured 2.6-3.7 mm
        assert h["frames_fitted"] == rep["frames_out"] and h["frames_dropped"] == 0
        m = res.episode.hands[side]
        assert m.fps == 15.0 and m.hand_model == "builtin" and m.valid.all()
        # the stored joints are the model's joints of the stored parameters
        again = motion_joints(m, BuiltinHand(side))
        np.testing.assert_allclose(res.episode.joints[side], again, atol=1e-5)
        # and they follow the real tracker points (not the palm centre point 0) at the output times
        obs = interp_points(ep.joints[side], np.arange(ep.num_frames) / ep.fps, res.times_s)
        err_mm = 1000 * np.linalg.norm(res.episode.joints[side][:, 1:] - obs[:, 1:], axis=-1).mean()
        assert err_mm < 10.0


def _tracks(res) -> tuple[ParamTrack, ParamTrack]:
    return tuple(ParamTrack.from_motion(res.episode.hands[s], res.times_s) for s in ("left", "right"))


def test_swap_repair_on_injected_swaps(claps):
    _, res = claps
    L, R = _tracks(res)
    T = len(L)
    rng = np.random.default_rng(0)
    ex = np.zeros(T, bool)  # both hands seen, labels exchanged
    while ex.mean() < 0.15:
        a = int(rng.integers(2, T - 6))
        ex[a : a + int(rng.integers(1, 5))] = True
    one = np.zeros(T, bool)  # only the right hand seen, labelled left
    for a in rng.choice(np.flatnonzero(~ex[2:-2]) + 2, 4, replace=False):
        one[a] = True
    Li, Ri = L.copy(), R.copy()
    for name in ("go", "pose", "wrist"):
        getattr(Li, name)[ex], getattr(Ri, name)[ex] = getattr(R, name)[ex], getattr(L, name)[ex]
        getattr(Li, name)[one] = getattr(R, name)[one]
    Li.valid[one], Ri.valid[one] = True, False
    sw = repair_swaps(Li, Ri, FAST.model_copy(update={"swap_refill": "keep"}))
    out_r, out_l = sw.tracks["right"], sw.tracks["left"]
    ok_ex = (np.abs(out_l.wrist - L.wrist).max(1) < 1e-12) & (np.abs(out_r.wrist - R.wrist).max(1) < 1e-12)
    assert ok_ex[ex].mean() >= 0.95
    assert (np.abs(out_r.wrist[one] - R.wrist[one]).max(1) < 1e-12).mean() >= 0.75
    assert not out_l.valid[one].any()
    untouched = ~(ex | one)
    assert ok_ex[untouched].all()  # no false swap
    assert sw.moved["left"][ex].all() and not sw.moved["left"][untouched].any()


def test_swap_repair_through_standardize(claps):
    """A per-frame pseudo-label episode (kind rgb) with swapped labels: repaired and refilled by slerp."""
    _, res = claps
    L, R = _tracks(res)
    T = len(L)
    ex = np.zeros(T, bool)
    ex[[10, 11, 30, 44]] = True
    hands = {}
    for side, own, other in (("left", L, R), ("right", R, L)):
        tr = own.copy()
        tr.go[ex], tr.pose[ex], tr.wrist[ex] = other.go[ex], other.pose[ex], other.wrist[ex]
        hands[side] = tr.to_motion(15.0)
    ep = SourceEpisode(hands=hands, camera=Camera(500, 500, 320, 240, 640, 480), fps=15.0, key="pseudo")
    cfg = FAST.model_copy(update={"smooth": "off", "outliers": "off"})
    out = standardize_episode(ep, cfg, kind="rgb", params="mano")
    for side, truth in (("left", L), ("right", R)):
        h = out.report["hands"][side]
        assert h["swaps_repaired"] == 4 and h["frames_repaired"] == 4 and h["frames_dropped"] == 0
        m = out.episode.hands[side]
        err = 1000 * np.linalg.norm(m.wrist_pos[ex] - truth.wrist[ex], axis=-1)
        assert err.max() < 40.0  # interpolated from the correctly labelled neighbours
    no_repair = standardize_episode(
        ep, cfg.model_copy(update={"swap_repair": "off"}), kind="rgb", params="mano"
    )
    bad = 1000 * np.linalg.norm(no_repair.episode.hands["left"].wrist_pos[ex] - L.wrist[ex], axis=-1)
    assert bad.min() > 60.0  # the hands are far apart: without repair the wrist is wrong


def test_gap_interpolation_error_bound(claps):
    _, res = claps
    model = BuiltinHand("right")
    tr = _tracks(res)[1]
    truth = motion_joints(tr.to_motion(15.0), model)
    T = len(tr)
    rng = np.random.default_rng(1)
    gap = np.zeros(T, bool)
    pos = 3
    while pos < T - 8:
        n = int(rng.integers(1, 6))
        gap[pos : pos + n] = True
        pos += n + int(rng.integers(4, 9))
    holed = tr.copy()
    holed.valid[gap] = False
    filled, repaired = fill_gaps(holed, 5)
    assert (repaired == gap).all() and filled.valid.all()
    err = 1000 * np.linalg.norm(motion_joints(filled.to_motion(15.0), model) - truth, axis=-1).mean(-1)
    assert err[~gap].max() < 1e-3
    assert err[gap].mean() < 15.0, err[gap]  # measured 7.3 mm
    # a gap longer than max_gap stays invalid (but finite)
    holed = tr.copy()
    holed.valid[20:28] = False
    filled, repaired = fill_gaps(holed, 5)
    assert not repaired.any() and not filled.valid[20:28].any()
    assert np.isfinite(filled.to_motion(15.0).wrist_pos).all()


def test_outlier_rejection_real(claps):
    _, res = claps
    cfg = StandardizeConfig()
    for tr in _tracks(res):
        assert outlier_frames(tr, cfg).sum() == 0  # real jitter and fast claps are not outliers
        rng = np.random.default_rng(2)
        spikes = rng.choice(np.arange(4, len(tr) - 4), 6, replace=False)
        bad = tr.copy()
        for n, s in enumerate(spikes):
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            if n % 3 == 0:
                bad.wrist[s] += 0.08 * d  # an 8 cm jump for one frame
            elif n % 3 == 1:
                # about 70 degrees
                bad.go[s] = R.axis_angle_to_quaternion(R.quaternion_to_axis_angle(bad.go[s]) + 1.2 * d)
            else:
                bad.pose[s] = R.axis_angle_to_quaternion(rng.normal(0, 0.8, (15, 3)))  # garbage fingers
        flags = outlier_frames(bad, cfg)
        assert flags[spikes].all()
        assert flags.sum() == len(spikes)


def test_resample_exact_on_known_signal():
    """Constant angular velocity about a fixed axis and linear wrist motion, uneven timestamps: slerp and
    linear interpolation reproduce the signal exactly at the 15 fps grid."""
    rng = np.random.default_rng(3)
    t = np.cumsum(np.r_[0.0, rng.uniform(0.5, 1.5, 120) / 50.0])  # ~50 fps with jitter
    axis = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    w = 1.3  # rad/s

    def signal(tt):
        aa = (0.2 + w * tt)[:, None] * axis
        pose = np.broadcast_to(aa[:, None] * 0.5, (tt.size, 15, 3))
        wrist = np.stack([0.1 + 0.2 * tt, -0.05 * tt, 0.5 + 0.1 * tt], -1)
        return aa, pose, wrist

    aa, pose, wrist = signal(t)
    quat = R.axis_angle_to_quaternion
    tr = ParamTrack(t, quat(aa), quat(pose), wrist, np.ones(t.size, bool), np.zeros(10))
    tq, _, snapped = output_times(t, 50.0, 15.0, snap=False)
    assert not snapped and np.allclose(np.diff(tq), 1 / 15)
    out = resample_track(tr, tq)
    aa_q, pose_q, wrist_q = signal(tq)
    assert out.valid.all()
    np.testing.assert_allclose(R.quaternion_angle(out.go, R.axis_angle_to_quaternion(aa_q)), 0, atol=1e-7)
    np.testing.assert_allclose(R.quaternion_angle(out.pose, R.axis_angle_to_quaternion(pose_q)), 0, atol=1e-7)
    np.testing.assert_allclose(out.wrist, wrist_q, atol=1e-12)
    # slerp against scipy on random rotations
    r = Rotation.random(2, random_state=4)
    a = np.linspace(0, 1, 7)
    ref = Slerp([0, 1], r)(a).as_quat()[:, [3, 0, 1, 2]]
    q = r.as_quat()[:, [3, 0, 1, 2]]
    mine = R.slerp(np.repeat(q[:1], 7, 0), np.repeat(q[1:], 7, 0), a)
    np.testing.assert_allclose(R.quaternion_angle(mine, ref), 0, atol=1e-7)
    # an invalid source frame invalidates the output frames it brackets, nothing else
    tr.valid[60] = False
    out = resample_track(tr, tq)
    near = (tq > t[59]) & (tq < t[61])
    assert (~out.valid == near).all()


def test_output_times_snap_to_video_frames():
    t30 = np.arange(31) / 30.0
    tq, idx, snapped = output_times(t30, 30.0, 15.0, snap=True)
    assert snapped and (idx == np.arange(0, 31, 2)).all() and np.allclose(tq, idx / 30.0)
    t25 = np.arange(26) / 25.0  # 1 s at 25 fps -> 16 frames, nearest source frames
    tq, idx, _ = output_times(t25, 25.0, 15.0, snap=True)
    assert len(idx) == 16 and np.abs(tq - np.arange(16) / 15).max() <= 0.5 / 25 + 1e-9
    tq, idx, snapped = output_times(np.arange(11) / 10.0, 10.0, 15.0, snap=True)  # upsampling: the grid
    assert not snapped and len(tq) == 16 and np.allclose(np.diff(tq), 1 / 15)


def test_smoothing_reduces_jitter_and_keeps_constant_rotation():
    rng = np.random.default_rng(5)
    T = 120
    t = np.arange(T) / 30.0
    truth = np.stack([0.2 * np.sin(2 * np.pi * 0.5 * t), 0.1 * t, 0.5 + 0.0 * t], -1)
    noisy = truth + rng.normal(0, 0.004, truth.shape)
    q = np.tile(R.axis_angle_to_quaternion(np.array([0.3, 1.0, -0.2])), (T, 1))
    q[::2] *= -1  # sign flips must not matter
    tr = ParamTrack(t, q, np.tile(q[:, None], (1, 15, 1)), noisy, np.ones(T, bool), np.zeros(10))
    tr.valid[50] = False  # smoothing never crosses a gap
    sm = smooth_track(tr, 0.06)
    inner = np.r_[5:45, 56:115]
    before = np.linalg.norm(noisy - truth, axis=-1)[inner].mean()
    after = np.linalg.norm(sm.wrist - truth, axis=-1)[inner].mean()
    assert after < 0.6 * before
    assert R.quaternion_angle(sm.go, q).max() < 1e-9 and R.quaternion_angle(sm.pose, tr.pose).max() < 1e-9


def _motion_episode(T=40, fps=30.0, key="mocap/x"):
    t = np.arange(T) / fps
    go = np.stack([0.5 * t, 0.2 + 0 * t, -0.3 * t], -1)
    pose = np.tile(np.linspace(0.0, 0.4, 45).reshape(15, 3), (T, 1, 1)) * (1 + t)[:, None, None] / 2
    wrist = np.stack([0.05 * t, 0.02 * t, 0.5 + 0.1 * t], -1)
    valid = np.ones(T, bool)
    valid[[7, 8, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30]] = False
    m = HandMotion(go, pose, wrist, side="right", fps=fps, valid=valid, hand_model="builtin")
    return Episode(hands={"right": m}, camera=Camera(500, 500, 320, 240, 640, 480), fps=fps, key=key)


def test_param_episode_resampled_and_gaps():
    ep = _motion_episode()
    res = standardize_episode(ep, StandardizeConfig(), kind="mocap", params="mano", has_video=False)
    m = res.episode.hands["right"]
    assert len(m) == 20 and m.fps == 15.0
    h = res.report["hands"]["right"]
    assert h["origin"] == "params" and h["outliers_rejected"] == 0
    # frames 7-8 at 30 fps -> output frames 3 (t=0.2) and 4 invalid before repair -> repaired (short gap);
    # 20-30 at 30 fps -> a 6-frame gap at 15 fps (> 5): dropped
    assert h["frames_repaired"] >= 1
    assert not m.valid[10:15].any() and m.valid[:9].all()
    assert h["frames_dropped"] == int((~m.valid).sum())
    np.testing.assert_allclose(m.wrist_pos[m.valid], ep.hands["right"].wrist_pos[::2][m.valid], atol=2e-3)


def test_uneven_timestamps_through_standardize():
    """Linear wrist motion sampled at jittery times (~50 fps): the 15 fps output lies on the line."""
    rng = np.random.default_rng(9)
    t = np.cumsum(np.r_[0.0, rng.uniform(0.5, 1.5, 99) / 50.0])
    wrist = np.stack([0.1 * t, -0.2 * t, 0.5 + 0.05 * t], -1)
    m = HandMotion(np.zeros((100, 3)), np.zeros((100, 15, 3)), wrist, side="left", fps=50.0)
    ep = Episode(hands={"left": m}, camera=Camera(500, 500, 320, 240, 640, 480), fps=50.0, key="u")
    cfg = StandardizeConfig(antialias=False)
    res = standardize_episode(ep, cfg, kind="mocap", params="mano", times_s=t, has_video=False)
    tq = res.times_s
    assert np.allclose(np.diff(tq), 1 / 15) and tq[-1] <= t[-1]
    expect = np.stack([0.1 * tq, -0.2 * tq, 0.5 + 0.05 * tq], -1)
    np.testing.assert_allclose(res.episode.hands["left"].wrist_pos, expect, atol=1e-6)


def test_refit_to_store_model_and_bad_input(real_hands_dir):
    # all-NaN joints: a clear error
    ep = SourceEpisode(
        hands={},
        joints={"right": np.full((10, 21, 3), np.nan, np.float32)},
        camera=Camera(500, 500, 320, 240, 640, 480),
        fps=30.0,
        key="bad/nan",
        needs_fit=("right",),
    )
    with pytest.raises(InputError, match="observed"):
        standardize_episode(ep, FAST, kind="vr", params="joints")
    # a right hand recorded as 'left' (mislabelled): refused, naming the hand
    src = get_source("joints21")
    real = src.read_episode(real_hands_dir, "leap_wave_right")
    wrong = SourceEpisode(
        hands={},
        joints={"left": real.joints["right"]},
        camera=real.camera,
        fps=real.fps,
        key="bad/mislabelled",
        needs_fit=("left",),
        joint_order=real.joint_order,
    )
    with pytest.raises(InputError, match="mislabelled"):
        standardize_episode(wrong, FAST.model_copy(update={"fit_iters": 3}), kind="vr", params="joints")


def _right_hand(curl: bool = False, T: int = 45, fps: float = 30.0) -> np.ndarray:
    """Joints (T, 21, 3) metres, camera frame, OpenPose order, of the builtin right hand. Default: turning
    pages, as in FPHA ``Subject_2/flip_pages/5``: the four fingers flat and pressed (PIP and DIP bent
    slightly BACKWARDS, MCPs lifted), the thumb sliding under a page. ``curl``: the fingers half closed."""
    from handvla.hand import anatomy
    from handvla.hand.registry import shared_hand_model

    model = shared_hand_model("builtin", "right")
    frames = model.anatomical_frames().detach().numpy()[0]
    t = np.arange(T) / fps
    ang = np.zeros((T, 15, 3))
    bend = {"finger_mcp": 30.0, "finger_pip": 45.0, "finger_dip": 25.0} if curl else {
        "finger_mcp": -12.0, "finger_pip": -7.0, "finger_dip": -9.0}  # fmt: skip
    for i, k in enumerate(anatomy.joint_kinds()):
        wobble = np.radians(2.0) * np.sin(2 * np.pi * 0.7 * t + i)
        if k in bend:
            ang[:, i, 2] = np.radians(bend[k]) + wobble
        elif k == "thumb_ip":
            ang[:, i, 2] = np.radians(25.0) * (1 + np.sin(2 * np.pi * 0.5 * t))
    pose = anatomy.anatomical_to_pose(ang, frames, "right")
    orient = Rotation.from_euler("xyz", np.c_[0.4 + 0.2 * t, 0.3 * np.ones(T), 0.2 * t]).as_rotvec()
    wrist = np.c_[0.02 * np.sin(t), 0.05 + 0.03 * t, 0.45 * np.ones(T)]
    m = HandMotion(orient, pose, wrist, side="right", fps=fps)
    return np.asarray(motion_joints(m, "builtin"), np.float64)


def test_a_right_hand_turning_pages_is_not_taken_for_a_left_hand(tmp_path):
    """The FPHA false positive: a right-hand-only dataset, fingers flat and slightly hyperextended. The
    median PIP/DIP bend is backwards (the old rule, "median bend < -2 deg = mislabelled", refused it), but
    a flat hand says little about its side: the check now needs clear cues, and a curled right hand
    labelled left (a real mislabel) is still refused."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "sources"))
    from fixtures import write_fpha

    from handvla.ingest.standardize import handedness_cues, side_verdict

    joints = _right_hand()
    cues = handedness_cues(joints, "right")
    assert cues["flex_deg"] < -2.0  # backwards: what made the old rule fire
    assert side_verdict(cues, FAST) == "unclear"
    gt = write_fpha(tmp_path, joints=joints, key="Subject_2/flip_pages/5", blank=None)
    ep = get_source("fpha").read_episode(tmp_path, gt["key"])
    res = standardize_episode(ep, FAST, kind="mocap", params="joints")
    rep = res.report["hands"]["right"]
    assert rep["side_check"]["verdict"] == "unclear" and res.episode.hands["right"].valid.all()
    assert rep["fit_error_mm"] < 10.0
    assert res.episode.annotations["action"] == {"label": "flip_pages", "text": "flip the pages"}
    # a curled right hand: clearly right; labelled left, it is refused, naming the hand
    curled = _right_hand(curl=True)
    assert side_verdict(handedness_cues(curled, "right"), FAST) == "same"
    wrong = SourceEpisode(
        hands={}, joints={"left": curled.astype(np.float32)}, camera=ep.camera, fps=30.0, key="bad/curled",
        needs_fit=("left",),
    )  # fmt: skip
    with pytest.raises(InputError, match=r"joints\['left'\].*mislabelled"):
        standardize_episode(wrong, FAST, kind="mocap", params="joints")


def test_side_check_on_real_captures(real_hands_dir):
    """Every real capture's own label passes the side check, and the other label is refused."""
    from handvla.hand.io import load_joints
    from handvla.ingest.standardize import handedness_cues, side_verdict

    files = sorted(real_hands_dir.glob("*.npz"))
    assert len(files) >= 10
    for f in files:
        rec = load_joints(f)
        other = "left" if rec.side == "right" else "right"
        assert side_verdict(handedness_cues(rec.joints, rec.side), FAST) == "same", f.name
        assert side_verdict(handedness_cues(rec.joints, other), FAST) == "other", f.name
