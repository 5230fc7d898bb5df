"""Shared adapter machinery: safe pickle/npy reading, array checks, SourceEpisode checks and helpers."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from handvla.camera import Camera
from handvla.errors import InputError
from handvla.hand.pickle_safe import UnsafePickleError
from handvla.ingest.sources.base import (
    SourceEpisode,
    as_array,
    invert_rigid,
    load_npy,
    load_pickle,
    mano_motion,
    quat_wxyz_to_aa,
)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_pickles_with_tensors_load_and_code_does_not_run(tmp_path):
    data = {7: {"x": torch.arange(6.0).reshape(2, 3)}, "p": torch.nn.Parameter(torch.ones(2)), "n": np.eye(2)}
    for proto in (2, 4, 5):
        (tmp_path / "a.pkl").write_bytes(pickle.dumps(data, protocol=proto))
        back = load_pickle(tmp_path / "a.pkl")
        assert torch.equal(back[7]["x"], data[7]["x"]) and np.array_equal(back["n"], np.eye(2))
    marker = tmp_path / "pwned"
    (tmp_path / "e.pkl").write_bytes(pickle.dumps({"x": _Evil(marker)}))
    with pytest.raises(UnsafePickleError, match="e.pkl"):
        load_pickle(tmp_path / "e.pkl")
    assert not marker.exists()
    np.save(tmp_path / "o.npy", {"right": {"x": _Evil(marker)}}, allow_pickle=True)
    with pytest.raises(UnsafePickleError):
        load_npy(tmp_path / "o.npy")
    assert not marker.exists()
    np.save(tmp_path / "plain.npy", np.arange(4.0))
    assert load_npy(tmp_path / "plain.npy").tolist() == [0, 1, 2, 3]
    with pytest.raises(InputError, match="missing.pkl"):
        load_pickle(tmp_path / "missing.pkl")


def test_as_array_and_rotations():
    assert as_array(torch.zeros(1, 16, 4), "f", "q", (16, 4)).shape == (16, 4)
    with pytest.raises(InputError, match="'q'.*shape"):
        as_array(np.zeros((3, 5, 3)), "f", "q", (5, 3, 3))
    with pytest.raises(InputError, match="finite"):
        as_array([np.nan, 1.0], "f", "v", (2,))
    from scipy.spatial.transform import Rotation

    rv = np.random.default_rng(0).normal(0, 1, (5, 3))
    xyzw = Rotation.from_rotvec(rv).as_quat()
    wxyz = np.concatenate([xyzw[:, 3:], xyzw[:, :3]], 1) * 3.0  # unnormalised on purpose
    assert np.allclose(
        Rotation.from_rotvec(quat_wxyz_to_aa(wxyz)).as_matrix(),
        Rotation.from_rotvec(rv).as_matrix(),
        atol=1e-9,
    )
    E = np.eye(4)
    E[:3, :3] = Rotation.from_rotvec(rv[0]).as_matrix()
    E[:3, 3] = [1, 2, 3]
    assert np.allclose(invert_rigid(E) @ E, np.eye(4))


def test_mano_motion_moves_to_camera_and_zeroes_invalid_frames():
    rng = np.random.default_rng(2)
    go, hp, w = rng.normal(size=(3, 3)), rng.normal(size=(3, 15, 3)), rng.normal(size=(3, 3))
    from scipy.spatial.transform import Rotation

    E = np.eye(4)
    E[:3, :3] = Rotation.from_rotvec([0.3, -0.2, 1.0]).as_matrix()
    E[:3, 3] = [0.1, 0.0, 0.5]
    m = mano_motion(
        side="left",
        global_orient=go,
        hand_pose=hp,
        betas=np.zeros(10),
        wrist=w,
        fps=30,
        valid=np.array([True, False, True]),
        world_to_camera=E,
    )
    ref = (Rotation.from_matrix(E[:3, :3]) * Rotation.from_rotvec(go)).as_matrix()
    assert np.allclose(Rotation.from_rotvec(m.global_orient[[0, 2]]).as_matrix(), ref[[0, 2]], atol=1e-6)
    assert np.allclose(m.wrist_pos[[0, 2]], w[[0, 2]] @ E[:3, :3].T + E[:3, 3], atol=1e-6)
    assert (m.wrist_pos[1] == 0).all() and (m.global_orient[1] == 0).all() and m.hand_model == "mano"


def test_source_episode_checks():
    cam = Camera(500, 500, 320, 240, 640, 480)
    j = np.zeros((4, 21, 3), np.float32)
    ep = SourceEpisode(hands={}, camera=cam, joints={"right": j}, needs_fit=("right",), fps=10.0, key="k")
    assert ep.validate() is ep and ep.joint_recording("right").t[-1] == pytest.approx(0.3)
    with pytest.raises(InputError, match="needs_fit"):
        SourceEpisode(hands={}, camera=cam, joints={"right": j}, needs_fit=("left",)).validate()
    with pytest.raises(InputError, match="frame_paths"):
        SourceEpisode(hands={}, camera=cam, joints={"right": j}, frame_paths=["a"]).validate()
    with pytest.raises(InputError, match="world_to_camera"):
        SourceEpisode(
            hands={}, camera=cam, joints={"right": j}, world_to_camera=np.zeros((3, 4, 4))
        ).validate()
    with pytest.raises(InputError, match=r"joints\['right'\]"):
        SourceEpisode(hands={}, camera=cam, joints={"right": j[:, :20]}).validate()
    with pytest.raises(InputError, match="frame"):
        SourceEpisode(hands={}, camera=cam).validate()
