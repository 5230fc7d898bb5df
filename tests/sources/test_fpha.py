"""FPHA adapter: skeleton.txt (mm, depth camera, file joint order) -> OpenPose joints in the colour camera."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures import write_fpha

from handvla.errors import InputError
from handvla.ingest.sources.fpha import FPHASource


def test_joints_in_color_camera(tmp_path):
    gt = write_fpha(tmp_path)
    src = FPHASource()
    assert src.list_episodes(tmp_path) == [gt["key"]]
    ep = src.read_episode(tmp_path, gt["key"])
    assert ep.hands == {} and ep.needs_fit == ("right",) and ep.tasks == ["put salt in"]
    # the action folder is the dataset's label: kept, with its phrase, for the annotators
    assert ep.annotations["action"] == {"label": "put_salt", "text": "put salt in"}
    j = ep.joints["right"]
    ok = np.arange(gt["T"]) != 3
    assert np.isnan(j[3]).all()
    assert np.abs(j[ok] - gt["joints"][ok]).max() < 1e-6  # 1 micrometre (file has 1e-6 mm precision)
    # the colour intrinsics put the joints where the camera sees them
    uv = ep.camera.project(j[ok])
    assert np.isfinite(uv).all() and ep.camera.fx == pytest.approx(1395.749023)
    rec = ep.joint_recording("right")
    assert rec.root_is_palm is False and rec.fps == 30.0
    assert ep.frame_paths[4].endswith("color/color_0004.jpeg")


def test_errors(tmp_path):
    gt = write_fpha(tmp_path)
    p = tmp_path / "Hand_pose_annotation_v1" / gt["key"] / "skeleton.txt"
    p.write_text("0 1 2 3\n")
    with pytest.raises(InputError, match="skeleton.txt"):
        FPHASource().read_episode(tmp_path, gt["key"])
    p.write_text("0 " + " ".join(["1"] * 63) + "\n2 " + " ".join(["1"] * 63) + "\n")
    with pytest.raises(InputError, match="consecutive"):
        FPHASource().read_episode(tmp_path, gt["key"])


def test_action_labels_become_phrases(tmp_path):
    from handvla.ingest.sources.base import action_phrase

    gt = write_fpha(tmp_path, key="Subject_2/flip_pages/5")
    ep = FPHASource().read_episode(tmp_path, gt["key"])
    assert ep.tasks == ["flip the pages"] and ep.annotations["action"]["label"] == "flip_pages"
    assert action_phrase("open_juice_bottle") == "open the juice bottle"
    assert action_phrase("add_remove_lid") == "add and remove the lid"
    assert action_phrase("drink_mug") == "drink from the mug" and action_phrase("Stir") == "stir"
    with pytest.raises(InputError, match="label"):
        action_phrase("__")
