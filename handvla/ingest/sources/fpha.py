"""First-Person Hand Action benchmark, FPHA (Garcia-Hernando et al., CVPR 2018; academic research only):
egocentric RGB-D video of the right hand with magnetic-sensor 3D joints, 45 action classes.

Layout and facts (guiggh/hand_pose_action ``README.md`` and ``load_example.py``):

    Hand_pose_annotation_v1/Subject_<n>/<action>/<seq>/skeleton.txt    lines "t x1 y1 z1 ... x21 y21 z21", mm,
                                                                        in the depth camera ("world") frame
    Video_files/Subject_<n>/<action>/<seq>/color/color_%04d.jpeg        1920 x 1080

Joint order in the file: wrist, the 5 MCPs (thumb, index, middle, ring, pinky), then PIP, DIP, TIP per
finger; ``load_example.py`` reorders to wrist + 4 points per finger with
[0, 1, 6, 7, 8, 2, 9, 10, 11, 3, 12, 13, 14, 4, 15, 16, 17, 5, 18, 19, 20] (OpenPose order). The colour
camera sees ``R @ p + t`` (the README's extrinsics, t in mm) and has fx 1395.749023, fy 1395.749268,
cx 935.732544, cy 540.681030. Joints only (no MANO): the hand is marked ``needs_fit``. Lines of zeros
(no annotation) become NaN. Key: ``Subject_<n>/<action>/<seq>``. The action folder is the dataset's label:
the task is its phrase (``flip_pages`` -> "flip the pages", `action_phrase`) and ``annotations['action']``
keeps both, so the annotators use it as the clip's instruction.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from handvla.camera import Camera
from handvla.errors import InputError
from handvla.ingest.sources.base import (
    Source,
    SourceEpisode,
    action_annotation,
    action_phrase,
    existing_frames,
    relative_keys,
)

FPHA_TO_OPENPOSE = np.array([0, 1, 6, 7, 8, 2, 9, 10, 11, 3, 12, 13, 14, 4, 15, 16, 17, 5, 18, 19, 20])
COLOR_K = np.array([[1395.749023, 0.0, 935.732544], [0.0, 1395.749268, 540.681030], [0.0, 0.0, 1.0]])
#: depth camera ("world") -> colour camera; translation in mm as published
COLOR_EXTRINSIC_MM = np.array(
    [
        [0.999988496304, -0.00468848412856, 0.000982563360594, 25.7],
        [0.00469115935266, 0.999985218048, -0.00273845880292, 1.22],
        [-0.000969709653873, 0.00274303671904, 0.99999576807, 3.902],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
WIDTH, HEIGHT = 1920, 1080


def color_extrinsics_m() -> np.ndarray:
    """The colour extrinsics with the translation in metres."""
    E = COLOR_EXTRINSIC_MM.copy()
    E[:3, 3] /= 1000.0
    return E


class FPHASource(Source):
    name = "fpha"
    licence = "FPHA terms: academic research only, no redistribution or commercial use"
    kind = "mocap"
    params = "joints"
    fps = 30.0
    url = "https://guiggh.github.io/publications/first-person-hands/"
    needs_mano = False
    layout = "Hand_pose_annotation_v1/Subject_<n>/<action>/<seq>/skeleton.txt, Video_files/.../color/color_%04d.jpeg"

    def list_episodes(self, root: str | Path) -> list[str]:
        r = self._root(root)
        base = r / "Hand_pose_annotation_v1"
        return relative_keys((p.parent for p in base.glob("*/*/*/skeleton.txt")), base)

    def read_episode(self, root: str | Path, key: str) -> SourceEpisode:
        r = self._root(root)
        subject, action, seq = self._key_parts(key, 3)
        path = r / "Hand_pose_annotation_v1" / subject / action / seq / "skeleton.txt"
        if not path.is_file():
            raise InputError(path, None, "an existing skeleton.txt", "no such file")
        try:
            vals = np.loadtxt(path, ndmin=2)
        except ValueError as e:
            raise InputError(path, None, "lines of 64 numbers (frame + 21 x 3 mm)", str(e)) from None
        if vals.ndim != 2 or vals.shape[1] != 64 or vals.shape[0] < 1:
            raise InputError(path, None, "lines of 64 numbers (frame + 21 x 3 mm)", f"shape {vals.shape}")
        frame_ids = vals[:, 0].astype(int)
        if not (np.diff(frame_ids) == 1).all():
            raise InputError(path, "t", "consecutive frame numbers", f"{frame_ids[:5].tolist()}...")
        T = vals.shape[0]
        skel_mm = vals[:, 1:].reshape(T, 21, 3)[:, FPHA_TO_OPENPOSE]
        E = color_extrinsics_m()
        joints = (skel_mm / 1000.0) @ E[:3, :3].T + E[:3, 3]  # metres, colour camera frame
        joints[np.all(skel_mm == 0, axis=(1, 2))] = np.nan
        color_dir = r / "Video_files" / subject / action / seq / "color"
        frames = [color_dir / f"color_{int(t):04d}.jpeg" for t in frame_ids]
        return self.episode(
            key,
            [path],
            {"joints": "magnetic sensors, depth-camera frame mm -> colour camera metres"},
            annotations=action_annotation(action),
            hands={},
            joints={"right": joints.astype(np.float32)},
            camera=Camera.from_K(COLOR_K, WIDTH, HEIGHT, extrinsics=E),
            tasks=[action_phrase(action)],
            rig="fpha-sr300-color",
            needs_fit=("right",),
            frame_paths=existing_frames(frames),
            frame_ids=frame_ids,
        )
