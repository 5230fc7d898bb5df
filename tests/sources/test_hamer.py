"""HaMeR adapter: rotation matrices + crop camera (+ flipped left hands) -> camera-frame project convention."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures import hamer_reference, mano, mano_folder, mano_joints_raw, project_joints, write_hamer

from handvla.errors import InputError, MissingResourceError
from handvla.ingest.sources.hamer import HaMeRSource


@pytest.fixture(scope="module")
def mano_dir(tmp_path_factory):
    return mano_folder(tmp_path_factory.mktemp("m"), mirror_left=True)[0]


def test_fixture_left_model_is_the_mirror(mano_dir):
    rng = np.random.default_rng(0)
    go, hp, b = rng.normal(0, 1, (3, 3)), rng.normal(0, 0.4, (3, 45)), rng.normal(0, 1, (3, 10))
    jr = mano_joints_raw(mano(mano_dir, "right"), go, hp, b, np.zeros((3, 3)))
    s = np.array([1.0, -1.0, -1.0])
    jl = mano_joints_raw(
        mano(mano_dir, "left"), go * s, (hp.reshape(3, 15, 3) * s).reshape(3, 45), b, np.zeros((3, 3))
    )
    assert np.abs(jl - jr * [-1, 1, 1]).max() < 1e-5


@pytest.mark.parametrize("with_K", [False, True])
def test_matches_hamer_demo_pipeline(tmp_path, mano_dir, with_K):
    K = np.array([[70.0, 0, 30.0], [0, 71.0, 25.0], [0, 0, 1]]) if with_K else None
    gt = write_hamer(tmp_path, intrinsics=K)
    src = HaMeRSource(mano_dir=mano_dir)
    assert src.list_episodes(tmp_path) == [gt["key"]]
    ep = src.read_episode(tmp_path, gt["key"])
    a = gt["arrays"]
    assert ep.fps == pytest.approx(25.0) and ep.num_frames == gt["T"] and ep.video.endswith("cup.mp4")
    assert ep.hands["right"].valid.tolist() == [True, True, True, True, False, True]
    assert ep.hands["left"].valid.tolist() == [False, True, True, True, True, True]
    assert ep.annotations["provenance"]["dropped_duplicate_detections"] == 1
    if with_K:
        assert (ep.camera.fx, ep.camera.cx) == (70.0, 30.0)
    else:
        assert ep.camera.fx == pytest.approx(5000 / 256 * 64) and ep.camera.cx == 32.0
    right_model = mano(mano_dir, "right")
    for side, flag in (("right", 1), ("left", 0)):
        ours = project_joints(
            mano(mano_dir, side), ep.hands[side]
        )  # left: the shapedirs-fixed (mirror) model
        for i in np.flatnonzero((a["is_right"] == flag) & (a["score"] > 0.5)):
            f = int(a["frame_index"][i])
            ref = hamer_reference(right_model, a, i, K)
            assert np.abs(ours[f] - ref).max() < 3e-5, (side, f)
    # the wrist projects where HaMeR's camera puts it
    uv = ep.camera.project(ep.hands["right"].wrist_pos[0])
    assert np.isfinite(uv).all()


def test_errors(tmp_path, mano_dir):
    gt = write_hamer(tmp_path)
    with pytest.raises(MissingResourceError):
        HaMeRSource().read_episode(tmp_path, gt["key"])
    a = dict(gt["arrays"])
    a["hand_pose"] = a["hand_pose"][:, :14]
    np.savez(gt["path"], **a)
    with pytest.raises(InputError, match="hand_pose"):
        HaMeRSource(mano_dir=mano_dir).read_episode(tmp_path, gt["key"])
    a = dict(gt["arrays"])
    a["global_orient"] = a["global_orient"] * 2.0  # not rotations
    np.savez(gt["path"], **a)
    with pytest.raises(InputError, match="global_orient"):
        HaMeRSource(mano_dir=mano_dir).read_episode(tmp_path, gt["key"])
    a = dict(gt["arrays"])
    a["img_size"] = np.array([100.0, 48.0])
    np.savez(gt["path"], **a)
    with pytest.raises(InputError, match="img_size"):
        HaMeRSource(mano_dir=mano_dir).read_episode(tmp_path, gt["key"])
