"""ARCTIC adapter: world-frame MANO (hands_mean, transl) -> camera frame of each view (static and ego)."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures import mano, mano_folder, mano_joints_raw, project_joints, transform, write_arctic

from handvla.errors import ConfigError, InputError, MissingResourceError
from handvla.ingest.sources.arctic import ArcticSource


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("arctic")
    mano_dir = mano_folder(root)[0]
    return root, mano_dir, write_arctic(root / "arctic_data" / "data")


def _reference(mano_dir, raw, side, E):
    """smplx-style evaluation in the world frame (pose relative to hands_mean, + transl), then world->camera."""
    model = mano(mano_dir, side, flat_hand_mean=False, fix_left_shapedirs=False)
    world = mano_joints_raw(model, raw["go"], raw["pose"], raw["betas"], raw["transl"])
    return transform(E, world)


def test_allocentric_and_ego_views(data):
    root, mano_dir, gt = data
    droot = root / "arctic_data" / "data"
    src = ArcticSource(mano_dir=mano_dir, views=(0, 1, 5))
    keys = src.list_episodes(droot)
    assert keys == ["s01/box_grab_01/0", "s01/box_grab_01/1", "s01/box_grab_01/5"]
    assert (
        ArcticSource(mano_dir=mano_dir).list_episodes(droot)[0] == "s01/box_grab_01/1"
    )  # ego not by default
    for key, view in zip(keys, (0, 1, 5)):
        ep = src.read_episode(droot, key)
        assert set(ep.hands) == {"left", "right"} and ep.num_frames == gt["T"]
        E = gt["ego_E"] if view == 0 else gt["world2cam"][view - 1]
        for side in ("right", "left"):
            ref = _reference(mano_dir, gt["raw"][side], side, E)
            ours = project_joints(mano(mano_dir, side, fix_left_shapedirs=False), ep.hands[side])
            err = np.abs(ours - ref).max()
            assert err < 3e-5, (key, side, err)
        if view == 0:
            assert ep.camera.extrinsics is None and np.allclose(ep.world_to_camera, gt["ego_E"], atol=1e-6)
            assert ep.camera.fx == pytest.approx(800.0) and ep.annotations["lens_distortion"][
                1
            ] == pytest.approx(0.01)
            assert ep.rig == "arctic-ego"
        else:
            assert np.allclose(ep.camera.extrinsics, gt["world2cam"][view - 1], atol=1e-6)
            assert ep.camera.fx == pytest.approx(gt["K"][view - 1][0, 0])
        assert (ep.camera.width, ep.camera.height) == (2800, 2000)
        assert ep.tasks == ["grab the box"]
        assert ep.frame_ids.tolist() == [3, 4, 5, 6, 7, 8]  # image index = MANO frame + ioi_offset
    ep1 = src.read_episode(droot, "s01/box_grab_01/1")
    assert ep1.frame_paths[0].endswith("images/s01/box_grab_01/1/00003.jpg")
    assert src.read_episode(droot, "s01/box_grab_01/5").frame_paths is None


def test_errors(data, tmp_path):
    root, mano_dir, gt = data
    droot = root / "arctic_data" / "data"
    with pytest.raises(MissingResourceError, match="mano_dir"):
        ArcticSource().read_episode(droot, "s01/box_grab_01/1")
    with pytest.raises(ConfigError):
        ArcticSource(views=(9,))
    src = ArcticSource(mano_dir=mano_dir)
    with pytest.raises(InputError, match="view"):
        src.read_episode(droot, "s01/box_grab_01/x")
    # a corrupted .mano.npy: truncated pickle payload
    bad = tmp_path / "raw_seqs" / "s01"
    bad.mkdir(parents=True)
    (bad / "box_grab_01.mano.npy").write_bytes(gt["mano_path"].read_bytes()[:300])
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "misc.json").write_text((droot / "meta" / "misc.json").read_text())
    with pytest.raises(InputError, match="box_grab_01.mano.npy"):
        src.read_episode(tmp_path, "s01/box_grab_01/1")
    # wrong shapes
    d = {
        s: {
            "rot": np.zeros((4, 3)),
            "pose": np.zeros((4, 44)),
            "trans": np.zeros((4, 3)),
            "shape": np.zeros(10),
        }
        for s in ("right", "left")
    }
    np.save(bad / "box_grab_01.mano.npy", d, allow_pickle=True)
    with pytest.raises(InputError, match=r"\[right\].*pose"):
        src.read_episode(tmp_path, "s01/box_grab_01/1")
