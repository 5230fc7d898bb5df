"""HOI4D adapter: manopth flat full pose + trans (camera frame) -> project convention."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures import HOI4D_SEQ, mano, mano_folder, mano_joints_raw, project_joints, write_hoi4d, write_pickle

from handvla.errors import InputError, MissingResourceError
from handvla.ingest.sources.hoi4d import HOI4DSource


@pytest.fixture(scope="module")
def mano_dir(tmp_path_factory):
    return mano_folder(tmp_path_factory.mktemp("m"))[0]


def test_joints_match_manopth_flat(tmp_path, mano_dir):
    gt = write_hoi4d(tmp_path)
    src = HOI4DSource(mano_dir=mano_dir)
    assert src.list_episodes(tmp_path) == [HOI4D_SEQ]
    ep = src.read_episode(tmp_path, HOI4D_SEQ)
    assert ep.fps == 15.0 and ep.num_frames == gt["T"] and set(ep.hands) == {"right", "left"}
    assert ep.video is not None and ep.video.endswith("align_rgb/image.mp4")
    assert (ep.camera.width, ep.camera.height) == (32, 24)  # read from the video
    assert ep.camera.fy == pytest.approx(1001.0)
    for side in ("right", "left"):
        m = ep.hands[side]
        ok = np.zeros(gt["T"], bool)
        ok[gt["frames"][side]] = True
        assert (m.valid == ok).all()
        raw = gt["raw"][side]
        ref = mano_joints_raw(
            mano(mano_dir, side, fix_left_shapedirs=False),
            raw["go"],
            raw["pose"],
            raw["betas"],
            raw["transl"],
        )
        ours = project_joints(mano(mano_dir, side, fix_left_shapedirs=False), m)
        assert np.abs(ours[ok] - ref[ok]).max() < 2e-5
    assert ep.annotations["hoi4d"]["object"] == "Mug"


def test_alternative_folders_and_no_video(tmp_path, mano_dir):
    write_hoi4d(
        tmp_path, video=False, hand_dirs=("Hand_pose/handpose_right_hand", "Hand_pose/handpose_left_hand")
    )
    ep = HOI4DSource(mano_dir=mano_dir).read_episode(tmp_path, HOI4D_SEQ)
    assert ep.video is None and (ep.camera.width, ep.camera.height) == (1920, 1080) and ep.num_frames == 6


def test_errors(tmp_path, mano_dir):
    write_hoi4d(tmp_path, video=False)
    with pytest.raises(MissingResourceError):
        HOI4DSource().read_episode(tmp_path, HOI4D_SEQ)
    src = HOI4DSource(mano_dir=mano_dir)
    (tmp_path / "camera_params" / "ZY20210800001" / "intrin.npy").unlink()
    with pytest.raises(InputError, match="intrin.npy"):
        src.read_episode(tmp_path, HOI4D_SEQ)
    write_pickle(
        tmp_path / "handpose/refinehandpose_right" / HOI4D_SEQ / "3.pickle",
        {"poseCoeff": np.zeros(45), "beta": np.zeros(10), "trans": np.zeros(3)},
    )
    with pytest.raises(InputError, match=r"3.pickle.*poseCoeff"):
        src.read_episode(tmp_path, HOI4D_SEQ)
    with pytest.raises(InputError, match="key"):
        src.read_episode(tmp_path, "ZY1/H1")
