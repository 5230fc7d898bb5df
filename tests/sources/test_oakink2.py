"""OakInk2 adapter: quaternion (wxyz) absolute pose, tsl = wrist (manotorch center_idx=0), per-frame extrinsics."""

from __future__ import annotations

import re

import numpy as np
import pytest
from fixtures import mano, mano_folder, project_joints, write_oakink2

from handvla.errors import ConfigError, InputError
from handvla.ingest.sources.oakink2 import OakInk2Source


def test_all_cameras(tmp_path):
    mano_dir = mano_folder(tmp_path)[0]
    gt = write_oakink2(tmp_path, mano_dir)
    src = OakInk2Source()  # no MANO model needed
    keys = src.list_episodes(tmp_path)
    assert len(keys) == 4 and keys[0] == f"{gt['token']}/allocentric_top"
    for key in keys:
        cam = key.split("/")[1]
        ep = src.read_episode(tmp_path, key)
        assert ep.num_frames == gt["T"] and ep.fps == 30.0 and ep.frame_ids.tolist() == gt["fids"]
        for side in ("right", "left"):
            m = ep.hands[side]
            ok = gt["valid"][side]
            assert (m.valid == ok).all()
            ours = project_joints(mano(mano_dir, side, fix_left_shapedirs=False), m)
            assert np.abs(ours[ok] - gt["expected"][side][cam][ok]).max() < 3e-5, (key, side)
        assert ep.camera.fx == 600.0
        if cam == "egocentric":
            assert ep.camera.extrinsics is None and np.allclose(ep.world_to_camera, gt["ego"], atol=1e-6)
        else:
            assert ep.world_to_camera is None and np.allclose(ep.camera.extrinsics, gt["static"], atol=1e-6)
        if cam == "allocentric_top":
            assert ep.frame_paths[1].endswith("/000104.png") and (ep.camera.width, ep.camera.height) == (
                848,
                480,
            )
        else:
            assert ep.frame_paths is None


def test_errors(tmp_path):
    with pytest.raises(ConfigError):
        OakInk2Source(cameras=("side",))
    mano_dir = mano_folder(tmp_path)[0]
    gt = write_oakink2(tmp_path, mano_dir)
    with pytest.raises(InputError, match="cam_intr"):
        OakInk2Source().read_episode(tmp_path, f"{gt['token']}/nocam")
    p = tmp_path / "anno_preview" / f"{gt['token']}.pkl"
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(InputError, match=re.escape(gt["token"])):
        OakInk2Source().read_episode(tmp_path, f"{gt['token']}/egocentric")
