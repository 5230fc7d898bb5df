"""``HandMotion`` operations (mirror, rigid change of frame, resampling, gap filling) against scipy and the
hand model, the numpy face of the rotations, and motion -> joints through the shared hand models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation, Slerp

from handvla.errors import InputError
from handvla.hand import rotations as R
from handvla.hand.model import BuiltinHand
from handvla.hand.motion import HandMotion
from handvla.hand.registry import load_hand_model, motion_joints, shared_hand_model


def _motion(T=12, side="right", fps=15.0, seed=0) -> HandMotion:
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, T)[:, None]
    return HandMotion(
        global_orient=rng.normal(size=3) + t * rng.normal(size=3),
        hand_pose=0.3 * rng.normal(size=(15, 3)) + 0.2 * t[:, :, None] * rng.normal(size=(15, 3)),
        wrist_pos=np.array([0.05, 0.1, 0.45]) + 0.1 * t * rng.normal(size=3),
        betas=rng.normal(size=10) * 0.5,
        side=side,
        fps=fps,
    )


def test_numpy_rotations_match_torch_and_scipy():
    rng = np.random.default_rng(0)
    aa = rng.normal(size=(4, 5, 3)) * 1.5
    for name in ("axis_angle_to_matrix", "axis_angle_to_quaternion"):
        got = getattr(R, name)(aa)
        assert isinstance(got, np.ndarray) and got.shape[:2] == (4, 5)
        np.testing.assert_allclose(got, getattr(R, name)(torch.from_numpy(aa)).numpy(), atol=1e-12)
    M = Rotation.from_rotvec(aa.reshape(-1, 3)).as_matrix().reshape(4, 5, 3, 3)
    np.testing.assert_allclose(R.axis_angle_to_matrix(aa), M, atol=1e-12)
    back = R.matrix_to_axis_angle(M)
    np.testing.assert_allclose(R.axis_angle_to_matrix(back), M, atol=1e-12)
    q = R.matrix_to_quaternion(M)
    assert (q[..., 0] >= 0).all()
    np.testing.assert_allclose(R.quaternion_to_matrix(q), M, atol=1e-12)
    np.testing.assert_allclose(R.axis_angle_to_matrix(R.quaternion_to_axis_angle(q)), M, atol=1e-12)
    # non-finite rows give NaN, as in torch
    assert np.isnan(R.quaternion_to_axis_angle(np.array([np.nan, 0.0, 0.0, 1.0]))).all()


def test_mirrored_motion_mirrors_the_joints():
    right = _motion(seed=1)
    left = right.mirrored()
    assert left.side == "left" and left.mirrored().side == "right"
    np.testing.assert_array_equal(left.mirrored().global_orient, right.global_orient)
    jr, jl = motion_joints(right), motion_joints(left)
    np.testing.assert_allclose(jl, jr * [-1.0, 1.0, 1.0], atol=1e-6)


def test_transformed_is_a_rigid_change_of_frame():
    m = _motion(seed=2)
    rot = Rotation.from_rotvec([0.3, -1.1, 0.4])
    t = np.array([0.2, -0.1, 0.3])
    out = m.transformed(rot.as_matrix(), t)
    ref = (rot * Rotation.from_rotvec(m.global_orient.astype(np.float64))).as_rotvec()
    assert (
        np.degrees(
            (Rotation.from_rotvec(ref).inv() * Rotation.from_rotvec(out.global_orient)).magnitude()
        ).max()
        < 1e-4
    )
    np.testing.assert_array_equal(out.hand_pose, m.hand_pose)
    # every joint moves rigidly (the wrist is the parameter, so this holds for any hand model)
    np.testing.assert_allclose(motion_joints(out), motion_joints(m) @ rot.as_matrix().T + t, atol=1e-5)
    # one transform per frame
    per_frame = Rotation.random(len(m), random_state=3)
    out2 = m.transformed(per_frame.as_matrix(), np.zeros((len(m), 3)))
    np.testing.assert_allclose(
        motion_joints(out2)[3], motion_joints(m)[3] @ per_frame[3].as_matrix().T, atol=1e-5
    )


def test_resampled_matches_scipy_slerp_and_marks_validity():
    m = _motion(31, fps=30.0, seed=4)
    m.valid[10] = False
    m15 = m.resampled(15.0)
    assert m15.fps == 15.0 and len(m15) == 16 and m.resampled(30.0) is m
    np.testing.assert_allclose(m15.wrist_pos, m.wrist_pos[::2], atol=1e-6)
    # half-way samples: slerp between the two frames around them
    tq = np.array([0.05, 0.35])
    half = m.at_times(tq)
    ref = Slerp(m.times, Rotation.from_rotvec(m.global_orient.astype(np.float64)))(tq)
    assert np.degrees((ref.inv() * Rotation.from_rotvec(half.global_orient)).magnitude()).max() < 1e-4
    # a frame interpolated from an invalid one is invalid; frames on the grid need only themselves
    assert not m.at_times(np.array([10.5 / 30])).valid[0] and m15.valid.sum() == 15 and not m15.valid[5]


def test_filled_interpolates_gaps_and_keeps_valid_frames():
    m = _motion(20, seed=5)
    holed = HandMotion(
        m.global_orient, m.hand_pose, m.wrist_pos, m.betas, valid=~np.isin(np.arange(20), [0, 6, 7, 8, 19])
    )
    f = holed.filled(max_gap=2)
    np.testing.assert_array_equal(f.valid, holed.valid)  # the 3-frame gap is too long, the ends never valid
    f3 = holed.filled(max_gap=3)
    np.testing.assert_array_equal(f3.valid, ~np.isin(np.arange(20), [0, 19]))
    np.testing.assert_array_equal(f3.hand_pose[holed.valid], m.hand_pose[holed.valid])
    np.testing.assert_allclose(f3.wrist_pos[7], 0.5 * (m.wrist_pos[5] + m.wrist_pos[9]), atol=1e-7)
    np.testing.assert_array_equal(f3.global_orient[0], m.global_orient[1])  # an end holds its neighbour


def test_shared_hand_models_and_motion_joints():
    assert shared_hand_model("builtin", "left") is shared_hand_model("builtin", "left")
    assert load_hand_model("builtin", "left") is not shared_hand_model("builtin", "left")
    m = _motion(seed=6)
    model = BuiltinHand("right")
    with torch.no_grad():
        ref = model(
            torch.tensor(m.global_orient),
            torch.tensor(m.hand_pose),
            torch.tensor(m.betas),
            torch.tensor(m.wrist_pos),
        ).joints.numpy()
    np.testing.assert_array_equal(motion_joints(m), ref)
    np.testing.assert_array_equal(motion_joints(m, model), ref)
    np.testing.assert_allclose(motion_joints(m)[:, 0], m.wrist_pos, atol=1e-7)
    with pytest.raises(InputError, match="right hand model"):
        motion_joints(m, BuiltinHand("left"))
