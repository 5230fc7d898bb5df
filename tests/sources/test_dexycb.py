"""DexYCB adapter: PCA-45 + hands_mean + MANO transl (manopth) -> project convention, camera frame."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures import mano, mano_folder, mano_joints_raw, project_joints, write_dexycb

from handvla.data.schema import Episode
from handvla.errors import InputError, MissingResourceError
from handvla.ingest.sources.dexycb import DexYCBSource


@pytest.fixture(scope="module")
def mano_dir(tmp_path_factory):
    return mano_folder(tmp_path_factory.mktemp("m"))[0]


@pytest.mark.parametrize("side", ["right", "left"])
def test_joints_match_raw_manopth_convention(tmp_path, mano_dir, side):
    gt = write_dexycb(tmp_path, side=side)
    src = DexYCBSource(mano_dir=mano_dir)
    assert src.list_episodes(tmp_path) == gt["keys"]
    ep = src.read_episode(tmp_path, gt["keys"][0])
    assert isinstance(ep, Episode) and list(ep.hands) == [side] and ep.num_frames == gt["T"]
    m = ep.hands[side]
    assert m.hand_model == "mano" and m.side == side and m.fps == 30.0
    assert m.valid.tolist() == [True, True, False, True, True, True]

    # Independent reference: the raw parameters through MANO's own convention, as manopth evaluates them
    # (PCA coefficients relative to hands_mean, transl added to the model frame, published left model).
    pm = gt["pose_m"].astype(np.float64)
    raw_model = mano(
        mano_dir, side, use_pca=True, num_pca_comps=45, flat_hand_mean=False, fix_left_shapedirs=False
    )
    ref = mano_joints_raw(raw_model, pm[:, :3], pm[:, 3:48], gt["raw"]["betas"], pm[:, 48:51])
    ours = project_joints(mano(mano_dir, side, fix_left_shapedirs=False), m)
    ok = m.valid
    err = np.abs(ours[ok] - ref[ok]).max()
    assert err < 2e-5, err
    # the wrist joint is exactly wrist_pos whatever the model, and lies in front of the camera
    assert np.allclose(ref[ok, 0], m.wrist_pos[ok], atol=2e-5)
    assert np.isfinite(m.wrist_pos).all() and (m.wrist_pos[~ok] == 0).all()

    # the dataset's own joints come through, missing frames as NaN
    j = ep.joints[side]
    assert np.isnan(j[2]).all() and np.allclose(j[[0, 1, 3, 4, 5]], gt["joints"][[0, 1, 3, 4, 5]])
    assert ep.camera.fx == pytest.approx(gt["K"]["fx"]) and ep.camera.cy == pytest.approx(gt["K"]["ppy"])
    assert (ep.camera.width, ep.camera.height) == (640, 480)
    assert ep.tasks == ["grasp the pitcher base"]
    assert ep.frame_paths is not None and ep.frame_paths[3].endswith("color_000003.jpg")
    assert ep.needs_fit == ()
    assert ep.licence == "CC BY-NC 4.0"
    # the second camera has no image files in the fixture
    assert src.read_episode(tmp_path, gt["keys"][1]).frame_paths is None


def test_errors(tmp_path, mano_dir):
    gt = write_dexycb(tmp_path)
    key = gt["keys"][0]
    with pytest.raises(MissingResourceError, match="MANO"):
        DexYCBSource().read_episode(tmp_path, key)
    src = DexYCBSource(mano_dir=mano_dir)
    # a label file with the wrong shape
    p = gt["seq_dir"] / gt["serials"][0] / "labels_000003.npz"
    np.savez(p, pose_m=np.zeros((1, 48), np.float32))
    with pytest.raises(InputError, match=r"labels_000003.npz.*pose_m"):
        src.read_episode(tmp_path, key)
    # a corrupt label file
    p.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="labels_000003.npz"):
        src.read_episode(tmp_path, key)
    # a missing intrinsics file
    (tmp_path / "calibration" / "intrinsics" / f"{gt['serials'][1]}_640x480.yml").unlink()
    with pytest.raises(InputError, match="intrinsics"):
        src.read_episode(tmp_path, gt["keys"][1])
    with pytest.raises(InputError, match="key"):
        src.read_episode(tmp_path, "../x")


def test_episode_goes_into_the_store(tmp_path, mano_dir):
    """A SourceEpisode is an Episode: with its frames loaded it is written and read back by the store."""
    from handvla.data.store import EpisodeStore, EpisodeWriter

    gt = write_dexycb(tmp_path / "d")
    ep = DexYCBSource(mano_dir=mano_dir).read_episode(tmp_path / "d", gt["keys"][0])
    plain = ep.to_episode(load_frames=True)
    assert type(plain) is Episode and plain.video.shape == (gt["T"], 480, 640, 3)
    with EpisodeWriter(tmp_path / "store", fps=30.0, hand_model="mano", joints=True, camera="main") as w:
        w.add_episode(plain)
    back = EpisodeStore(tmp_path / "store").load_episode(0)
    m, b = ep.hands["right"], back.hands["right"]
    assert np.allclose(b.wrist_pos[m.valid], m.wrist_pos[m.valid]) and (b.valid == m.valid).all()
    assert back.key == ep.key and back.tasks == ep.tasks and back.camera.fx == pytest.approx(ep.camera.fx)
