"""The standardised episode: what every data source produces and every later stage reads.

One ``Episode`` = one continuous recording at one frame rate: per hand the MANO-convention parameters of
``handvla.hand.motion`` (camera frame), optional 21 OpenPose joints per hand (metres, camera frame), the
camera that saw it (``handvla.camera.Camera``: pinhole intrinsics in pixels, optional world->camera extrinsics), the video
(frames or an existing mp4), text (``tasks``, ``annotations``), provenance (``source``, ``licence``, ``rig``)
and optional ``ground_truth`` (synthetic worlds know it).

This module also holds the store's own schema (``handvla.data.store``): the per-hand per-frame columns,
the ``features`` block of its ``meta/info.json``, the hand convention and the format version of the
``handvla`` additions; the LeRobot v3 layout underneath is ``handvla.data.lerobot``. Camera frame = OpenCV
convention: x right, y down, z forward (points in front of the camera have z > 0).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from handvla.atomic import json_default
from handvla.camera import Camera
from handvla.data.lerobot import index_features, video_feature, video_key
from handvla.errors import InputError
from handvla.hand.motion import HandMotion
from handvla.hand.topology import MANO_JOINT_NAMES, NUM_BETAS, NUM_JOINTS, OPENPOSE_JOINT_NAMES, SIDES

#: Version of the handvla additions (the ``handvla`` block of info.json and the extra episode columns).
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
#: Identifier of the parameter convention of ``handvla.hand.motion`` (axis-angle, MANO joint order, flat
#: hand pose without hands_mean, wrist_pos = wrist joint position in metres, camera frame, OpenCV axes).
HAND_CONVENTION = "handvla-mano-flat-v1"
HAND_CONVENTION_TEXT = (
    "per hand and frame: global_orient axis-angle (3), hand_pose axis-angle 15x3 in MANO joint order "
    "(index, middle, little, ring, thumb; base to tip), flat convention (no hands_mean), wrist_pos = wrist "
    "joint position in metres, betas (10) of hand_model; all in the camera frame (OpenCV: x right, y down, "
    "z forward); joints = 21 points in OpenPose order, metres, camera frame"
)
DEFAULT_CAMERA = "main"

#: per-hand per-frame parameter fields: name -> width (float32 values)
HAND_FIELDS = {
    "global_orient": 3,
    "wrist_pos": 3,
    "hand_pose": 45,
    "betas": NUM_BETAS,
}
JOINTS_WIDTH = NUM_JOINTS * 3


def hand_column(side: str, name: str) -> str:
    """Per-frame column of one hand field, e.g. ``right_hand.hand_pose``."""
    return f"{side}_hand.{name}"


def _xyz(names) -> list[str]:
    return [f"{n}.{a}" for n in names for a in "xyz"]


def build_features(
    with_joints: bool, camera: str | None, video_shape: tuple[int, int] | None, fps: float
) -> dict[str, dict[str, Any]]:
    """The LeRobot ``features`` block of ``meta/info.json``: {name: {dtype, shape, names, info}}.

    ``video_shape`` = (height, width) of the store's video, or None if not known yet (no episode written).
    """
    feats: dict[str, dict[str, Any]] = {}
    for side in SIDES:
        feats[hand_column(side, "valid")] = {
            "dtype": "bool",
            "shape": [1],
            "names": None,
            "info": {"meaning": f"{side} hand observed in this frame (other fields meaningless where False)"},
        }
        feats[hand_column(side, "global_orient")] = {
            "dtype": "float32",
            "shape": [3],
            "names": ["x", "y", "z"],
            "info": {"units": "rad (axis-angle)", "frame": "camera"},
        }
        feats[hand_column(side, "wrist_pos")] = {
            "dtype": "float32",
            "shape": [3],
            "names": ["x", "y", "z"],
            "info": {"units": "m", "frame": "camera", "meaning": "wrist joint position"},
        }
        feats[hand_column(side, "hand_pose")] = {
            "dtype": "float32",
            "shape": [45],
            "names": _xyz(MANO_JOINT_NAMES[1:]),
            "info": {"units": "rad (axis-angle)", "frame": "parent joint", "convention": "MANO order, flat"},
        }
        feats[hand_column(side, "betas")] = {
            "dtype": "float32",
            "shape": [NUM_BETAS],
            "names": [f"beta{i}" for i in range(NUM_BETAS)],
            "info": {"units": "hand-model shape coefficients"},
        }
        if with_joints:
            feats[hand_column(side, "joints")] = {
                "dtype": "float32",
                "shape": [JOINTS_WIDTH],
                "names": _xyz(OPENPOSE_JOINT_NAMES),
                "info": {"units": "m", "frame": "camera", "order": "OpenPose 21"},
            }
    if camera is not None:
        h, w = video_shape if video_shape is not None else (None, None)
        feats[video_key(camera)] = video_feature(h, w, fps)
    feats |= index_features()
    feats["timestamp"]["info"] = {"units": "s"}
    return feats


def camera_to_row(camera: Camera) -> dict[str, Any]:
    """Episode-table columns of a camera (``camera/fx`` ... ``camera/extrinsics``, the latter a flat
    list of 16 or None)."""
    e = camera.extrinsics
    return {
        "camera/fx": camera.fx,
        "camera/fy": camera.fy,
        "camera/cx": camera.cx,
        "camera/cy": camera.cy,
        "camera/width": camera.width,
        "camera/height": camera.height,
        "camera/extrinsics": None if e is None else e.reshape(-1).tolist(),
    }


def camera_from_row(row: dict[str, Any]) -> Camera:
    """The ``Camera`` of an episode-table row (inverse of ``camera_to_row``)."""
    e = row.get("camera/extrinsics")
    return Camera(
        row["camera/fx"],
        row["camera/fy"],
        row["camera/cx"],
        row["camera/cy"],
        row["camera/width"],
        row["camera/height"],
        None if e is None else np.asarray(e, np.float64).reshape(4, 4),
    )


def to_json(obj: Any, where: str, field_name: str) -> str:
    """Serialise annotations / ground truth (numpy arrays become lists) with a clear error otherwise."""
    try:
        return json.dumps(obj, default=json_default, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise InputError(
            where, field_name, "JSON-serialisable data (dict of str, numbers, lists, arrays)", str(e)
        ) from None


@dataclass
class Episode:
    """One recording: hands (camera frame), camera, video, text and provenance.

    ``hands``: {'left'|'right': HandMotion}; a missing hand is stored as all-invalid, and episodes loaded
    from a store always carry both hands (check ``HandMotion.valid``). ``joints``: {side: (T, 21, 3)}
    metres, camera frame, OpenPose order. ``video``: (T, H, W, 3) uint8 RGB frames aligned 1:1 with the
    motion frames, or the path of an existing mp4 with exactly T frames at ``fps``, or None.
    ``key``: a stable name (e.g. 'egodex/part1/pour/17') that lets a rebuild skip finished episodes.
    ``frame_offset``: index of the first frame within the stored episode (non-zero for window reads).
    """

    hands: dict[str, HandMotion]
    camera: Camera
    fps: float = 15.0
    key: str = ""
    video: np.ndarray | str | Path | None = None
    joints: dict[str, np.ndarray] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)
    source: str = ""
    licence: str = ""
    rig: str = ""
    annotations: dict[str, Any] = field(default_factory=dict)
    ground_truth: dict[str, Any] | None = None
    episode_index: int | None = None
    frame_offset: int = 0

    @property
    def num_frames(self) -> int:
        """T, from the hands, else the joints, else the video frames (0 if none is given)."""
        for m in self.hands.values():
            return len(m)
        for j in self.joints.values():
            return int(np.shape(j)[0])
        if isinstance(self.video, np.ndarray):
            return int(self.video.shape[0])
        return 0

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps

    @property
    def start_s(self) -> float:
        """Time of the first frame within the stored episode (seconds)."""
        return self.frame_offset / self.fps

    def hands_present(self) -> list[str]:
        """Sides with at least one valid frame, in ``SIDES`` order."""
        return [s for s in SIDES if s in self.hands and bool(np.any(self.hands[s].valid))]
