"""The built-in hand: topology, wrist convention, shape semantics, mirroring, anatomical frames."""

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from handvla.hand.model import BuiltinHand
from handvla.hand.registry import load_hand_model
from handvla.hand.rotations import mirror_axis_angle
from handvla.hand.topology import MANO_TO_OPENPOSE, OPENPOSE_FINGERS, OPENPOSE_PARENTS


def _bone_lengths(j):
    return np.linalg.norm(j[:, 1:] - j[:, OPENPOSE_PARENTS[1:]], axis=-1)


def test_rest_pose_is_plausible_adult_hand():
    out = BuiltinHand("right")(torch.zeros(1, 3), torch.zeros(1, 15, 3))
    j = out.joints[0].numpy()
    assert j.shape == (21, 3)
    hand_length = np.linalg.norm(j[OPENPOSE_FINGERS["middle"][3]] - j[0])
    assert 0.17 < hand_length < 0.20  # wrist to middle fingertip, adult average ~18.5 cm
    assert np.all(_bone_lengths(j[None]) > 0.015)


def test_wrist_pos_is_the_wrist_joint_and_global_rotation_is_about_it():
    hand = BuiltinHand("right")
    rng = np.random.default_rng(0)
    go = torch.from_numpy(rng.normal(size=(8, 3)).astype(np.float32))
    hp = torch.from_numpy(0.3 * rng.normal(size=(8, 15, 3)).astype(np.float32))
    wp = torch.from_numpy(rng.normal(size=(8, 3)).astype(np.float32))
    out = hand(go, hp, None, wp).joints
    assert torch.allclose(out[:, 0], wp)
    local = hand(torch.zeros(8, 3), hp).joints
    rot = torch.from_numpy(Rotation.from_rotvec(go.double().numpy()).as_matrix()).float()
    assert torch.allclose(out - wp[:, None], local @ rot.transpose(1, 2), atol=1e-5)


def test_pose_preserves_bone_lengths():
    hand = BuiltinHand("left")
    hp = 0.5 * torch.randn(16, 15, 3)
    rest = hand(torch.zeros(1, 3), torch.zeros(1, 15, 3)).joints.numpy()
    posed = hand(torch.randn(16, 3), hp).joints.numpy()
    assert np.allclose(_bone_lengths(posed), _bone_lengths(rest), atol=1e-6)


def test_shape_coefficients_scale_size_and_fingers():
    hand = BuiltinHand("right")
    zero = torch.zeros(1, 15, 3)
    base = hand(torch.zeros(1, 3), zero).joints.numpy()
    big = hand(torch.zeros(1, 3), zero, torch.tensor([1.0] + [0.0] * 9)).joints.numpy()
    assert np.allclose(big, base * 1.07, atol=1e-6)
    long_index = hand(torch.zeros(1, 3), zero, torch.tensor([0.0] * 5 + [2.0] + [0.0] * 4)).joints.numpy()
    changed = np.abs(long_index - base).max(-1)[0] > 1e-6
    assert set(np.flatnonzero(changed)) == set(OPENPOSE_FINGERS["index"][1:])


def test_left_hand_is_mirror_of_right():
    right, left = BuiltinHand("right"), BuiltinHand("left")
    go, hp = torch.randn(10, 3), 0.4 * torch.randn(10, 15, 3)
    jr = right(go, hp).joints
    jl = left(mirror_axis_angle(go), mirror_axis_angle(hp)).joints
    assert torch.allclose(jl, jr * torch.tensor([-1.0, 1.0, 1.0]), atol=1e-5)


def test_bend_axis_flexes_fingers_towards_the_palm():
    for side in ("left", "right"):
        hand = BuiltinHand(side)
        frames = hand.anatomical_frames()[0]  # (15, 3, 3) columns twist, spread, bend
        assert torch.allclose(frames.transpose(-1, -2) @ frames, torch.eye(3).expand(15, 3, 3), atol=1e-5)
        palm_normal = hand.palm_normal(hand.rest_joints_and_tips(torch.zeros(1, 10))[0])[0]
        for k, tip in ((0, 8), (3, 12), (6, 20), (9, 16)):  # MCP of index, middle, little, ring
            pose = torch.zeros(1, 15, 3)
            pose[0, k] = frames[k, :, 2] * 0.8
            moved = hand(torch.zeros(1, 3), pose).joints[0, tip] - hand(torch.zeros(1, 3), torch.zeros(1, 15, 3)).joints[0, tip]
            assert float(moved @ palm_normal) > 0.02


def test_joint_order_reorder_is_a_permutation():
    assert sorted(MANO_TO_OPENPOSE.tolist()) == list(range(21))


def test_unknown_model_and_side_errors():
    import pytest

    from handvla.errors import HandvlaError

    with pytest.raises(HandvlaError, match="unknown hand model"):
        load_hand_model("smpl")
    with pytest.raises(HandvlaError, match="side"):
        BuiltinHand("middle")
