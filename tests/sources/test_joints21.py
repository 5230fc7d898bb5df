"""joints21 adapter: real_hands-format files -> joint episodes (pairs, Leap frame, resampling, video)."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures import write_joints21

from handvla.errors import InputError
from handvla.hand.io import resample_joints
from handvla.ingest.sources.joints21 import Joints21Source


def test_pairs_video_and_leap(tmp_path):
    gt = write_joints21(tmp_path)
    src = Joints21Source()
    assert src.list_episodes(tmp_path) == ["clips/rec", "leap_grab_right"]
    ep = src.read_episode(tmp_path, "clips/rec")
    assert (
        ep.needs_fit == ("left", "right") and ep.hands == {} and ep.fps == 30.0 and ep.num_frames == gt["T"]
    )
    for s in ("left", "right"):
        assert np.allclose(ep.joints[s], gt["pair"][s], equal_nan=True)
    assert (
        ep.video.endswith("rec.mp4")
        and (ep.camera.width, ep.camera.height) == (40, 30)
        and ep.rig == "virtual"
    )
    assert ep.joint_recording("left").root_is_palm is False and ep.licence == "CC0"

    ep = src.read_episode(tmp_path, "leap_grab_right")
    rec = ep.joint_recording("right")
    assert rec.root_is_palm and ep.fps == 100.0
    assert ep.annotations["provenance"]["resampled_to_fps"] == 100.0
    # reference: resample in the Leap frame, then rotate (x, y, z) -> (x, -z, y) by hand
    res, _ = resample_joints(gt["leap"], gt["leap_t"], 100.0)
    ref = np.stack([res[..., 0], -res[..., 2], res[..., 1]], -1)
    assert ep.num_frames == res.shape[0] and np.allclose(ep.joints["right"], ref, atol=1e-6, equal_nan=True)
    assert np.nanmin(ep.joints["right"][..., 2]) > 0  # in front of the virtual camera


def test_real_hands(real_hands_dir):
    src = Joints21Source()
    keys = src.list_episodes(real_hands_dir)
    assert "leap_confidence2" in keys and "mediapipe_video_right" in keys
    ep = src.read_episode(real_hands_dir, "leap_confidence2")
    assert set(ep.joints) == {"left", "right"} and ep.joint_recording("left").root_is_palm
    assert np.nanmedian(ep.joints["right"][:, 0, 2]) > 0.05
    ep = src.read_episode(real_hands_dir, "mediapipe_video_right")
    assert (
        ep.video is not None and ep.num_frames == 621 and (ep.camera.width, ep.camera.height) == (1280, 720)
    )


def test_errors(tmp_path):
    with pytest.raises(InputError, match="nothere"):
        Joints21Source().read_episode(tmp_path, "nothere")
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(InputError, match="bad.npz"):
        Joints21Source().read_episode(tmp_path, "bad")
