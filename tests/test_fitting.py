"""Joint-to-hand-parameter fitting: synthetic ground truth, gaps, real recordings, the CLI."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation, Slerp

from handvla.cli import main
from handvla.errors import InputError
from handvla.hand.anatomy import joint_kinds
from handvla.hand.fitting import (
    FitConfig,
    anatomical_angles,
    fit_joints,
    fit_recording,
    limits_rad,
    local_joints_fn,
    lowpass,
)
from handvla.hand.io import JointsRecording, load_joints, load_motion, save_joints
from handvla.hand.metrics import wrist_rotation_error_deg
from handvla.hand.model import BuiltinHand
from handvla.hand.motion import HandMotion

REAL = Path("/work/shared/data/real_hands")
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason="real-hands data folder not present")
FAST = FitConfig(iters=30, global_iters=3)


def synthetic(T: int = 60, side: str = "right", seed: int = 0, fps: float = 30.0) -> dict:
    """Plausible motion through BuiltinHand: anatomical angles inside the strict limits, interpolated
    between random keyframes; wrist rotation slerped between random keyframes; a smooth wrist path."""
    rng = np.random.default_rng(seed)
    model = BuiltinHand(side)
    lo, hi = (v.numpy() for v in limits_rad(0.0))  # (15, 3) radians
    hi = np.where(hi - lo > np.deg2rad(60), lo + 0.8 * (hi - lo), hi)  # avoid fully curled fingers
    K = T // 15 + 2
    tk = np.linspace(0, T - 1, K)
    keys = lo + (hi - lo) * rng.uniform(size=(K, 15, 3))
    ang = np.stack([np.interp(np.arange(T), tk, keys[:, j, c]) for j in range(15) for c in range(3)], -1)
    ang = torch.tensor(ang.reshape(T, 15, 3), dtype=torch.float32)
    if side == "left":  # anatomical_angles negates twist/spread for a left hand: invert that
        ang = ang * torch.tensor([-1.0, -1.0, 1.0])
    frames = model.anatomical_frames()[0]  # (15, 3, 3) columns twist, spread, bend
    hand_pose = torch.einsum("jck,tjk->tjc", frames, ang)  # axis-angle = sum of angle * axis
    rots = Rotation.from_rotvec(rng.normal(size=(K, 3)) * 1.2)
    go = Slerp(tk, rots)(np.arange(T)).as_rotvec().astype(np.float32)
    wrist = (np.cumsum(rng.normal(size=(T, 3)) * 0.002, 0) + [0.0, 0.1, 0.5]).astype(np.float32)
    betas = (rng.normal(size=10) * 0.7).astype(np.float32)
    with torch.no_grad():
        joints = model(torch.tensor(go), hand_pose, torch.tensor(betas), torch.tensor(wrist)).joints.numpy()
    return dict(
        joints=joints, global_orient=go, hand_pose=hand_pose.numpy(), wrist=wrist, betas=betas, model=model
    )


def test_fast_kinematics_equal_model_forward():
    for side in ("right", "left"):
        m = BuiltinHand(side)
        pose, betas = torch.randn(7, 15, 3) * 0.5, torch.randn(10)
        ref = m(torch.zeros(7, 3), pose, betas).joints
        torch.testing.assert_close(local_joints_fn(m)(pose, betas), ref, atol=1e-6, rtol=0)


def test_anatomical_angles_are_mirror_consistent():
    pose = torch.randn(5, 15, 3) * 0.4
    mirror = torch.tensor([1.0, -1.0, -1.0])
    a_r = anatomical_angles(pose, BuiltinHand("right").anatomical_frames(), "right")
    a_l = anatomical_angles(pose * mirror, BuiltinHand("left").anatomical_frames(), "left")
    torch.testing.assert_close(a_r, a_l, atol=1e-6, rtol=0)


@pytest.mark.parametrize("side", ["right", "left"])
def test_synthetic_ground_truth_is_recovered(side):
    s = synthetic(T=60, side=side, seed=1)
    rng = np.random.default_rng(2)
    noisy = s["joints"] + rng.normal(size=s["joints"].shape).astype(np.float32) * 0.001  # 1 mm noise
    r = fit_joints(noisy, side=side, fps=30.0, config=FAST)
    assert r.motion.valid.all() and len(r.motion) == 60
    truth_err = np.linalg.norm(r.joints - s["joints"], axis=-1).mean() * 1000
    assert r.fit_mpjpe_mm < 2.5, r.fit_mpjpe_mm  # against the noisy input (noise alone: 1.6 mm)
    assert truth_err < 2.0, truth_err  # against the noise-free truth
    # identifiable rotations: the wrist, and the bend of every finger joint (twist is not observable)
    assert wrist_rotation_error_deg(r.motion.global_orient, s["global_orient"]) < 3.0
    frames = s["model"].anatomical_frames()
    a_fit = anatomical_angles(torch.tensor(r.motion.hand_pose), frames, side).numpy()
    a_true = anatomical_angles(torch.tensor(s["hand_pose"]), frames, side).numpy()
    fingers = [j for j, k in enumerate(joint_kinds()) if k.startswith("finger")]
    bend_err = np.degrees(np.abs(a_fit[:, fingers, 2] - a_true[:, fingers, 2])).mean()
    assert bend_err < 4.0, bend_err
    np.testing.assert_allclose(r.motion.wrist_pos, s["wrist"], atol=0.004)


def test_mirrored_input_gives_mirrored_parameters():
    s = synthetic(T=30, side="right", seed=3)
    r = fit_joints(s["joints"], side="right", fps=30.0, config=FAST)
    left = fit_joints(s["joints"] * np.array([-1, 1, 1], np.float32), side="left", fps=30.0, config=FAST)
    np.testing.assert_allclose(left.motion.hand_pose, r.motion.hand_pose * np.array([1, -1, -1]), atol=1e-3)
    assert left.fit_mpjpe_mm == pytest.approx(r.fit_mpjpe_mm, abs=1e-3)


def test_palm_centre_root_recovers_the_wrist():
    """Leap-style input: point 0 is a palm point (rigid in the hand), not the wrist. The fitter must
    estimate the wrist from the other points, not put it at point 0."""
    s = synthetic(T=40, seed=4)
    j = s["joints"].copy()
    palm = 0.3 * j[:, 0] + 0.7 * j[:, [5, 9, 13, 17]].mean(1)  # a fixed combination: rigid in the palm
    j[:, 0] = palm
    r = fit_joints(j, fps=30.0, root_is_palm=True, config=FAST)
    assert r.fit_mpjpe_mm < 1.5
    assert np.linalg.norm(r.motion.wrist_pos - s["wrist"], axis=-1).mean() < 0.004
    naive = fit_joints(j, fps=30.0, root_is_palm=False, config=FAST)  # treating it as the wrist is wrong
    assert naive.fit_mpjpe_mm > 2 * r.fit_mpjpe_mm


def test_gaps_are_filled_by_slerp_and_marked_invalid():
    s = synthetic(T=50, seed=5)
    j = s["joints"].copy()
    j[20:26] = np.nan
    j[0:2] = np.nan
    j[30, 7, 1] = np.nan  # one missing point: the frame is a gap too
    r = fit_joints(j, fps=30.0, config=FAST)
    gaps = np.zeros(50, bool)
    gaps[[0, 1, 30, *range(20, 26)]] = True
    np.testing.assert_array_equal(r.motion.valid, ~gaps)
    assert np.isnan(r.per_frame_mpjpe_mm[gaps]).all() and np.isfinite(r.per_frame_mpjpe_mm[~gaps]).all()
    # slerp between the fitted frames 19 and 26, constant before the first fitted frame
    go = Rotation.from_rotvec(r.motion.global_orient)
    ref = Slerp([19, 26], go[[19, 26]])(np.arange(20, 26))
    assert np.degrees((ref.inv() * go[20:26]).magnitude()).max() < 1e-3
    np.testing.assert_allclose(r.motion.global_orient[0], r.motion.global_orient[2], atol=1e-6)
    np.testing.assert_allclose(
        r.motion.wrist_pos[22],
        r.motion.wrist_pos[19] + 3 / 7 * (r.motion.wrist_pos[26] - r.motion.wrist_pos[19]),
        atol=1e-6,
    )
    # the filled frames stay near the truth, as near as interpolating the true joints across the gap
    a = (np.arange(20, 26) - 19)[:, None, None] / 7
    lerp_truth = s["joints"][19] * (1 - a) + s["joints"][26] * a
    err_fill = np.linalg.norm(r.joints[20:26] - s["joints"][20:26], axis=-1).mean()
    assert err_fill < 1.5 * np.linalg.norm(lerp_truth - s["joints"][20:26], axis=-1).mean(), err_fill


def test_motion_filled_matches_scipy_slerp():
    """``HandMotion.filled`` (how the fitter fills unfitted frames) against scipy's Slerp."""
    rng = np.random.default_rng(6)
    obs = [1, 5, 9]
    rot = Rotation.from_rotvec(rng.normal(size=(3, 3)))
    pose = Rotation.from_rotvec(rng.normal(size=(3 * 15, 3)) * 0.5)
    go, hp, wp = np.zeros((12, 3)), np.zeros((12, 15, 3)), np.zeros((12, 3))
    go[obs], hp[obs], wp[obs] = rot.as_rotvec(), pose.as_rotvec().reshape(3, 15, 3), rng.normal(size=(3, 3))
    valid = np.isin(np.arange(12), obs)
    m = HandMotion(go, hp, wp, valid=valid).filled()
    assert np.array_equal(m.valid, valid)
    np.testing.assert_array_equal(m.global_orient[obs], go[obs].astype(np.float32))  # fitted frames kept
    ref = Slerp([1, 5, 9], rot)(np.clip(np.arange(12), 1, 9))
    assert np.degrees((ref.inv() * Rotation.from_rotvec(m.global_orient)).magnitude()).max() < 1e-3
    j = 4  # one finger joint through all frames
    ref_j = Slerp([1, 5, 9], Rotation.from_rotvec(pose.as_rotvec().reshape(3, 15, 3)[:, j]))(
        np.clip(np.arange(12), 1, 9)
    )
    assert np.degrees((ref_j.inv() * Rotation.from_rotvec(m.hand_pose[:, j])).magnitude()).max() < 1e-3
    wp = m.wrist_pos
    np.testing.assert_allclose(wp[3], wp[1] + 0.5 * (wp[5] - wp[1]), atol=1e-6)
    # with max_gap, gaps that short between valid frames become valid; the ends never do
    short = HandMotion(go, hp, wp, valid=valid).filled(max_gap=3)
    assert np.array_equal(short.valid, np.isin(np.arange(12), range(1, 10)))


def test_lowpass_keeps_ramps_and_removes_noise():
    n = 200
    inv_dt = torch.full((n - 1,), 30.0)
    inv_dt2 = torch.full((n - 2,), 30.0)
    w = (2 * np.pi * 4.0) ** -4
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)[:, None]
    torch.testing.assert_close(lowpass(ramp, inv_dt, inv_dt2, w), ramp, atol=1e-9, rtol=0)
    noise = torch.randn(n, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert lowpass(noise, inv_dt, inv_dt2, w).std() < 0.5 * noise.std()


def test_any_hand_model_through_the_interface():
    """A model that overrides forward (as a mesh model does) takes the generic path: same fit."""

    class MeshLikeHand(BuiltinHand):
        def forward(self, global_orient, hand_pose, betas=None, wrist_pos=None):
            return super().forward(global_orient, hand_pose, betas, wrist_pos)

    s = synthetic(T=30, seed=7)
    a = fit_joints(s["joints"], fps=30.0, config=FAST)
    b = fit_joints(s["joints"], fps=30.0, hand_model=MeshLikeHand("right"), config=FAST)
    assert b.fit_mpjpe_mm == pytest.approx(a.fit_mpjpe_mm, abs=0.05)
    with pytest.raises(InputError, match="side"):
        fit_joints(s["joints"], side="left", hand_model=BuiltinHand("right"))


def test_bad_input():
    with pytest.raises(InputError, match="NaN-only"):
        fit_joints(np.full((5, 21, 3), np.nan, np.float32))
    with pytest.raises(InputError, match=r"\(T, 21, 3\)"):
        fit_joints(np.zeros((5, 20, 3), np.float32))
    with pytest.raises(InputError, match="strictly increasing"):
        fit_joints(np.zeros((3, 21, 3), np.float32), t=np.array([0.0, 0.0, 1.0]))
    with pytest.warns(UserWarning, match="left hand"):
        s = synthetic(T=20, seed=8)  # fingers flexed: handedness is detectable
        fit_joints(
            s["joints"] * np.array([-1, 1, 1], np.float32),
            side="right",
            config=FitConfig(iters=1, global_iters=0),
        )


@needs_real
def test_all_real_recordings_fit_within_a_few_mm():
    """Every real file (Leap: palm-centre root; MediaPipe: wrist root), a short clip each."""
    errors = {}
    for f in sorted(REAL.glob("*.npz")):
        rec = load_joints(f)
        clip = JointsRecording(
            joints=rec.joints[:50],
            t=rec.t[:50],
            side=rec.side,
            fps=rec.fps,
            joint_order=rec.joint_order,
            path=str(f),
        )
        r = fit_recording(clip, config=FitConfig(iters=15, global_iters=2))
        errors[f.name] = r.fit_mpjpe_mm
        assert r.root_is_palm == f.name.startswith("leap_")
        assert np.isfinite(r.motion.hand_pose).all()
    assert max(errors.values()) < 8.0, errors
    assert np.mean(list(errors.values())) < 5.0, errors


@needs_real
def test_cli_fit(tmp_path, capsys):
    rec = load_joints(REAL / "leap_pinch_right.npz")
    clip = JointsRecording(
        joints=rec.joints[:40], t=rec.t[:40], side="right", fps=rec.fps, joint_order=rec.joint_order
    )
    src = save_joints(tmp_path / "clip.npz", clip)
    out = tmp_path / "params.npz"
    assert main(["hand", "fit", "--joints", str(src), "--out", str(out), "--iters", "10", "--quiet"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert {"fit_mpjpe_mm", "frames", "frames_per_s"} <= set(res) and res["frames"] == 40
    assert res["root_is_palm"] is True and 0 < res["fit_mpjpe_mm"] < 8
    assert len(load_motion(out)) == 40
    # resampling to 30 fps: 40 frames at ~115 fps last ~0.34 s
    assert (
        main(
            ["hand", "fit", "--joints", str(src), "--out", str(out), "--iters", "5", "--fps", "30", "--quiet"]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["frames"] == len(load_motion(out)) == 11


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    p = tmp_path / "nan.npz"
    np.savez(p, joints=np.full((4, 21, 3), np.nan, np.float32), t=np.arange(4) / 30, side="right")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["hand", "fit", "--joints", str(p), "--out", str(tmp_path / "o.npz"), "--quiet"])
    assert rc == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and str(p) in lines[0] and "joints" in lines[0]
    assert not (tmp_path / "o.npz").exists()
