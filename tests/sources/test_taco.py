"""TACO adapter: torch-tensor pickles, hand_trans = wrist (manopth center_idx=0), world -> ego camera."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures import mano, mano_folder, project_joints, write_taco

from handvla.errors import InputError
from handvla.ingest.sources.taco import TACOSource, task_text


@pytest.fixture(scope="module")
def mano_dir(tmp_path_factory):
    return mano_folder(tmp_path_factory.mktemp("m"))[0]


@pytest.mark.parametrize("per_frame_files", [False, True])
def test_joints_in_ego_camera(tmp_path, mano_dir, per_frame_files):
    gt = write_taco(tmp_path, mano_dir, per_frame_files=per_frame_files)
    src = TACOSource()  # no MANO needed to convert
    assert src.list_episodes(tmp_path) == [gt["key"]]
    ep = src.read_episode(tmp_path, gt["key"])
    assert ep.num_frames == gt["T"] and set(ep.hands) == {"left", "right"}
    for side in ("left", "right"):
        ours = project_joints(mano(mano_dir, side, fix_left_shapedirs=False), ep.hands[side])
        assert np.abs(ours - gt["expected"][side]).max() < 3e-5
    assert np.allclose(ep.world_to_camera, gt["E"], atol=1e-9) and ep.camera.extrinsics is None
    assert ep.camera.fx == 1470.0 and (ep.camera.width, ep.camera.height) == (32, 24)
    assert ep.video.endswith("color.mp4") and ep.tasks == ["stir the bowl with the spoon"]


def test_errors(tmp_path, mano_dir):
    gt = write_taco(tmp_path, mano_dir, video_frames=4)
    with pytest.raises(InputError, match="color.mp4.*frames"):
        TACOSource().read_episode(tmp_path, gt["key"])
    assert task_text("(brush, brush, box)") == "brush the box with the brush" and task_text("x") == ""
    cd = tmp_path / "Egocentric_Camera_Parameters" / gt["key"]
    np.save(cd / "egocentric_frame_extrinsic.npy", np.zeros((gt["T"], 4, 4)))
    with pytest.raises(InputError, match="egocentric_frame_extrinsic"):
        TACOSource().read_episode(tmp_path, gt["key"])
    (cd / "egocentric_intrinsic.txt").unlink()
    with pytest.raises(InputError, match="egocentric_intrinsic"):
        TACOSource().read_episode(tmp_path, gt["key"])
