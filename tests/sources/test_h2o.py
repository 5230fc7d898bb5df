"""H2O adapter: per-frame txt files, two hands, MANO translation convention checked against the joints."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures import mano, mano_folder, project_joints, write_h2o

from handvla.errors import InputError
from handvla.ingest.sources.h2o import H2OSource


@pytest.fixture(scope="module")
def mano_dir(tmp_path_factory):
    return mano_folder(tmp_path_factory.mktemp("m"))[0]


@pytest.mark.parametrize("trans_is_wrist", [False, True])
def test_params_joints_cameras(tmp_path, mano_dir, trans_is_wrist):
    gt = write_h2o(tmp_path, mano_dir, trans_is_wrist=trans_is_wrist)
    src = H2OSource(mano_dir=mano_dir)
    assert src.list_episodes(tmp_path) == gt["keys"]
    for key in gt["keys"]:
        ep = src.read_episode(tmp_path, key)
        assert ep.num_frames == gt["T"] and set(ep.hands) == {"left", "right"} and ep.needs_fit == ()
        for s in ("left", "right"):
            m = ep.hands[s]
            ok = gt["valid"][s]
            assert (m.valid == ok).all()
            ours = project_joints(mano(mano_dir, s, fix_left_shapedirs=False), m)
            assert np.abs(ours[ok] - gt["joints"][s][ok]).max() < 3e-5
            assert np.isnan(ep.joints[s][~ok]).all() and np.allclose(
                ep.joints[s][ok], gt["joints"][s][ok], atol=1e-7
            )
            conv = ep.annotations["provenance"][f"{s}_mano_convention"]
            assert conv.endswith("= wrist") if trans_is_wrist else conv.endswith("wrist - J0")
        assert ep.camera.fx == pytest.approx(636.6593) and (ep.camera.width, ep.camera.height) == (1280, 720)
        w2c = np.linalg.inv(gt["c2w"][key[-4:]])
        if key.endswith("cam0"):
            assert np.allclose(ep.camera.extrinsics, w2c[0], atol=1e-6) and ep.world_to_camera is None
        else:
            assert ep.camera.extrinsics is None and np.allclose(ep.world_to_camera, w2c, atol=1e-6)
            assert ep.tasks == ["pour milk", "grab milk"] and ep.annotations["action_label"] == [
                0,
                0,
                23,
                23,
                5,
            ]
            assert ep.frame_paths[1].endswith("cam4/rgb/000001.png")


def test_joints_only_and_errors(tmp_path, mano_dir):
    gt = write_h2o(tmp_path, mano_dir, with_mano=False)
    ep = H2OSource().read_episode(tmp_path, gt["keys"][0])  # joints only: no MANO needed
    assert ep.hands == {} and ep.needs_fit == ("left", "right")
    rec = ep.joint_recording("right")
    assert rec.joints.shape == (gt["T"], 21, 3) and rec.fps == 30.0
    # a forced wrong convention is refused in auto mode when nothing fits
    gt = write_h2o(tmp_path / "b", mano_dir)
    p = tmp_path / "b" / "subject1/h1/0/cam0/hand_pose/000002.txt"
    p.write_text("1 2 3")
    with pytest.raises(InputError, match="000002.txt"):
        H2OSource(mano_dir=mano_dir).read_episode(tmp_path / "b", gt["keys"][0])
    (tmp_path / "b" / "subject1/h1/0/cam4/cam_intrinsics.txt").unlink()
    with pytest.raises(InputError, match="cam_intrinsics"):
        H2OSource(mano_dir=mano_dir).read_episode(tmp_path / "b", gt["keys"][1])
