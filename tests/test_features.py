"""Motion features: layouts, dims, pack/unpack round trips, part split, normalisation."""

import numpy as np
import pytest
import torch

from handvla.errors import InputError
from handvla.hand.features import (
    FEATURE_SETS,
    FeatureNormalizer,
    feature_spec,
    features_to_params,
    merge_parts,
    motion_to_features,
    split_parts,
)
from handvla.hand.model import BuiltinHand
from handvla.hand.motion import HandMotion
from handvla.hand.rotations import axis_angle_to_matrix

EXPECTED_DIMS = {"D51": 51, "D99": 99, "D109": 109, "D114": 114, "D162": 162}
EXPECTED_PARTS = {"D51": (6, 45), "D99": (9, 90), "D109": (9, 100), "D114": (6, 105), "D162": (9, 150)}


def _motion(T=12, side="right", seed=0):
    rng = np.random.default_rng(seed)
    return HandMotion(
        global_orient=rng.normal(size=(T, 3)),
        hand_pose=0.3 * rng.normal(size=(T, 15, 3)),
        wrist_pos=rng.normal(size=(T, 3)) * 0.1 + [0, 0, 0.5],
        betas=rng.normal(size=10) * 0.5,
        side=side,
    )


@pytest.mark.parametrize("name", FEATURE_SETS)
def test_dims_and_part_split(name):
    spec = feature_spec(name)
    assert spec.dim == EXPECTED_DIMS[name]
    assert (spec.part_dim("wrist"), spec.part_dim("finger")) == EXPECTED_PARTS[name]
    idx = np.concatenate([spec.part_indices("wrist"), spec.part_indices("finger")])
    assert len(set(idx.tolist())) == len(idx)


def test_d162_layout_matches_reference_order():
    s = feature_spec("MANO-D162").slices()
    assert (s["hand_pose"], s["global_orient"], s["wrist_pos"], s["joints"]) == (
        slice(0, 90), slice(90, 96), slice(96, 99), slice(99, 162))


@pytest.mark.parametrize("name", FEATURE_SETS)
def test_round_trip_recovers_rotations_and_position(name):
    spec = feature_spec(name)
    m = _motion()
    f = motion_to_features(spec, m)
    assert f.shape == (12, spec.dim) and f.dtype == torch.float32
    p = features_to_params(spec, f)
    for key in ("global_orient", "hand_pose"):
        a = axis_angle_to_matrix(p[key])
        b = axis_angle_to_matrix(torch.from_numpy(getattr(m, key)))
        assert (a - b).abs().max() < 1e-5
    assert torch.allclose(p["wrist_pos"], torch.from_numpy(m.wrist_pos))
    if spec.has_betas:
        assert torch.allclose(p["betas"][0], torch.from_numpy(m.betas))


def test_joint_block_local_frame_is_orientation_free_and_camera_frame_is_not():
    m = _motion()
    hand = BuiltinHand("right")
    local = features_to_params(feature_spec("D162"), motion_to_features(feature_spec("D162"), m, hand))["joints_rel"]
    ref = hand(torch.zeros(12, 3), torch.from_numpy(m.hand_pose), torch.from_numpy(m.betas)).joints
    assert torch.allclose(local, ref, atol=1e-5)
    cam = motion_to_features(feature_spec("D162", joints_frame="camera"), m, hand)[:, 99:].reshape(12, 21, 3)
    full = hand(torch.from_numpy(m.global_orient), torch.from_numpy(m.hand_pose), torch.from_numpy(m.betas),
                torch.from_numpy(m.wrist_pos)).joints
    assert torch.allclose(cam, full - full[:, :1], atol=1e-5)


@pytest.mark.parametrize("name", FEATURE_SETS)
def test_split_merge_round_trip(name):
    spec = feature_spec(name)
    f = motion_to_features(spec, _motion())
    assert torch.equal(merge_parts(spec, split_parts(spec, f)), f)


def test_normalizer_fit_and_round_trip():
    spec = feature_spec("D162")
    feats = [motion_to_features(spec, _motion(seed=s)) for s in range(4)]
    norm = FeatureNormalizer.fit(feats)
    x = torch.cat(feats)
    z = norm.normalize(x)
    live = norm.std > 1e-3
    assert torch.allclose(z.mean(0)[live], torch.zeros(int(live.sum())), atol=1e-4)
    assert torch.allclose(norm.denormalize(z), x, atol=1e-5)
    again = FeatureNormalizer.from_state_dict(norm.state_dict())
    assert torch.equal(again.normalize(x), z)


def test_unknown_feature_set_is_a_clear_error():
    with pytest.raises(InputError, match="D51, D99, D109, D114, D162"):
        feature_spec("D200")
    with pytest.raises(InputError, match="last dimension 162"):
        features_to_params(feature_spec("D162"), torch.zeros(3, 51))


def test_hand_motion_validates_shapes():
    with pytest.raises(InputError, match="hand_pose"):
        HandMotion(np.zeros((4, 3)), np.zeros((4, 14, 3)), np.zeros((4, 3)))
    with pytest.raises(InputError, match="side"):
        HandMotion(np.zeros((4, 3)), np.zeros((4, 15, 3)), np.zeros((4, 3)), side="both")
    m = HandMotion(np.zeros((4, 3)), np.zeros((4, 45)), np.zeros((4, 3)))
    assert m.hand_pose.shape == (4, 15, 3) and m.valid.all()
    assert HandMotion.from_dict(m.to_dict()).hand_pose.shape == (4, 15, 3)
