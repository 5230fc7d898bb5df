"""EgoDex adapter: HDF5 world transforms -> OpenPose joints in the (OpenCV) camera frame, both axis conventions."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures import write_egodex

from handvla.errors import ConfigError, InputError
from handvla.ingest.sources.egodex import EgoDexSource

h5py = pytest.importorskip("h5py")  # an optional dependency: only EgoDex needs it


@pytest.mark.parametrize("arkit", [False, True])
def test_joints_and_projection(tmp_path, arkit):
    gt = write_egodex(tmp_path, arkit=arkit)
    src = EgoDexSource()
    assert src.list_episodes(tmp_path) == [gt["key"]]
    ep = src.read_episode(tmp_path, gt["key"])
    assert ep.annotations["provenance"]["camera_axes"] == ("arkit" if arkit else "opencv")
    assert ep.hands == {} and ep.needs_fit == ("left", "right") and ep.num_frames == gt["T"]
    for s in ("left", "right"):
        assert np.abs(ep.joints[s] - gt["joints"][s]).max() < 2e-5  # float32 files
        # projection with the file's intrinsics, written out here: u = fx X / Z + cx
        K = gt["K"]
        j = gt["joints"][s]
        uv = np.stack(
            [K[0, 0] * j[..., 0] / j[..., 2] + K[0, 2], K[1, 1] * j[..., 1] / j[..., 2] + K[1, 2]], -1
        )
        assert np.allclose(ep.camera.project(ep.joints[s]), uv, atol=0.05)
    # world -> camera of the episode maps a world point to the OpenCV camera point
    p_world = gt["c2w"][:, :3, :3] @ (gt["joints"]["right"][:, 0] * ([1, -1, -1] if arkit else 1))[..., None]
    p_world = p_world[..., 0] + gt["c2w"][:, :3, 3]
    E = ep.world_to_camera
    assert np.allclose(
        np.einsum("tij,tj->ti", E[:, :3, :3], p_world) + E[:, :3, 3], gt["joints"]["right"][:, 0], atol=2e-5
    )
    assert ep.tasks == ["Remove the lid from the jar, then put it back on."]
    assert ep.annotations["action"] == {"label": "add_remove_lid", "text": ep.tasks[0]}
    assert ep.video.endswith("0.mp4") and (ep.camera.width, ep.camera.height) == (64, 36)
    assert ep.camera.fx == pytest.approx(736.6339, rel=1e-6)


def test_forced_axes_confidence_and_errors(tmp_path):
    gt = write_egodex(tmp_path, video=False)
    ep = EgoDexSource(camera_axes="arkit").read_episode(tmp_path, gt["key"])
    assert np.allclose(ep.joints["right"], gt["joints"]["right"] * [1, -1, -1], atol=2e-5)  # wrong on purpose
    ep = EgoDexSource(min_confidence=0.5).read_episode(tmp_path, gt["key"])
    assert np.isnan(ep.joints["right"][2, 8]).all() and np.isfinite(ep.joints["right"][2, 7]).all()
    assert ep.video is None and (ep.camera.width, ep.camera.height) == (1920, 1080)
    with pytest.raises(ConfigError):
        EgoDexSource(camera_axes="y-up")
    with h5py.File(gt["path"], "a") as f:
        del f["transforms/leftThumbTip"]
        f.create_dataset("transforms/leftThumbTip", data=np.zeros((gt["T"], 3, 4)))
    with pytest.raises(InputError, match=r"0.hdf5.*leftThumbTip"):
        EgoDexSource().read_episode(tmp_path, gt["key"])
    with h5py.File(gt["path"], "a") as f:
        del f["camera/intrinsic"]
    gt["path"].write_bytes(gt["path"].read_bytes()[:2000])  # truncated / corrupt
    with pytest.raises(InputError, match="0.hdf5"):
        EgoDexSource().read_episode(tmp_path, gt["key"])
    gt2 = write_egodex(tmp_path / "b", T=6)
    gt2["path"].with_suffix(".mp4").unlink()
    from fixtures import write_mp4

    write_mp4(gt2["path"].with_suffix(".mp4"), 4)
    with pytest.raises(InputError, match="0.mp4"):
        EgoDexSource().read_episode(tmp_path / "b", gt2["key"])
