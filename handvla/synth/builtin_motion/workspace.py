"""The tabletop workspace seen by a head-mounted camera, in the camera frame, and wrist orientations from directions."""


from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from handvla.errors import ConfigError, InputError
from handvla.hand.topology import check_side

# ---------------------------------------------------------------------------------------------------------
# The tabletop workspace, in the camera frame
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workspace:
    """A table seen by a head-mounted camera pitched down by ``camera_pitch_deg`` from ``camera_height_m``
    above the table top. Table coordinates (metres): lateral (+ = camera right), forward (horizontal, away
    from the camera; 0 = right below it), height above the table top. The camera has no roll."""

    camera_pitch_deg: float = 40.0
    camera_height_m: float = 0.45
    lateral_range: tuple[float, float] = (-0.3, 0.3)
    forward_range: tuple[float, float] = (0.18, 0.50)
    #: where the right shoulder is (table coordinates); the left is its mirror. Sets natural wrist headings.
    shoulder: tuple[float, float, float] = (0.19, -0.12, 0.28)
    min_depth_m: float = 0.25

    def __post_init__(self) -> None:
        if not 0.0 <= self.camera_pitch_deg <= 80.0:
            raise ConfigError(
                f"Workspace.camera_pitch_deg: expected 0..80 degrees, got {self.camera_pitch_deg}"
            )
        if not 0.1 <= self.camera_height_m <= 1.5:
            raise ConfigError(f"Workspace.camera_height_m: expected 0.1..1.5 m, got {self.camera_height_m}")

    @property
    def axes(self) -> np.ndarray:
        """(3, 3) columns: the table's right, forward and up directions in the camera frame."""
        p = math.radians(self.camera_pitch_deg)
        right = np.array([1.0, 0.0, 0.0])
        forward = np.array([0.0, -math.sin(p), math.cos(p)])  # far side of the table is higher in the image
        up = np.array([0.0, -math.cos(p), -math.sin(p)])
        return np.stack([right, forward, up], 1)

    @property
    def up(self) -> np.ndarray:
        return self.axes[:, 2]

    @property
    def forward(self) -> np.ndarray:
        return self.axes[:, 1]

    def to_camera(self, p_table: np.ndarray) -> np.ndarray:
        """(..., 3) table coordinates (lateral, forward, height) -> camera frame (metres)."""
        p = np.asarray(p_table, np.float64) - np.array([0.0, 0.0, self.camera_height_m])
        return p @ self.axes.T

    def to_table(self, p_cam: np.ndarray) -> np.ndarray:
        """(..., 3) camera frame -> table coordinates."""
        return np.asarray(p_cam, np.float64) @ self.axes + np.array([0.0, 0.0, self.camera_height_m])

    def sample_point(
        self,
        rng: np.random.Generator,
        lateral: tuple[float, float] | None = None,
        forward: tuple[float, float] | None = None,
        height: tuple[float, float] = (0.03, 0.15),
    ) -> np.ndarray:
        """A random camera-frame point over the table, at least ``min_depth_m`` in front of the camera."""
        lateral = lateral or self.lateral_range
        forward = forward or self.forward_range
        for _ in range(100):
            p = self.to_camera([rng.uniform(*lateral), rng.uniform(*forward), rng.uniform(*height)])
            if p[2] >= self.min_depth_m:
                return p
        raise ConfigError(f"Workspace: no point with depth >= {self.min_depth_m} m in the ranges asked for")

    @classmethod
    def random(cls, rng: np.random.Generator) -> Workspace:
        """A workspace with a random camera pitch and height (views vary between recordings)."""
        return cls(
            camera_pitch_deg=float(rng.uniform(25, 60)), camera_height_m=float(rng.uniform(0.38, 0.55))
        )


def rotation_from_directions(
    finger_dir: np.ndarray, palm_normal: np.ndarray, side: str = "right"
) -> Rotation:
    """The wrist rotation (camera frame) of a hand whose fingers point along ``finger_dir`` and whose palm
    faces ``palm_normal`` (made orthogonal to the fingers). Built-in hand: rest fingers +x, palm -y;
    for the left hand rest fingers point -x."""
    check_side(side)
    d = np.asarray(finger_dir, np.float64)
    d = d / np.linalg.norm(d)
    n = np.asarray(palm_normal, np.float64)
    n = n - (n @ d) * d
    if np.linalg.norm(n) < 1e-6:
        raise InputError(
            "rotation_from_directions",
            "palm_normal",
            "a direction not parallel to finger_dir",
            str(palm_normal),
        )
    n = n / np.linalg.norm(n)
    if side == "left":  # left rest: fingers -x, palm -y, so model x maps to -d
        return Rotation.from_matrix(np.stack([-d, -n, np.cross(-d, -n)], 1))
    return Rotation.from_matrix(np.stack([d, -n, np.cross(d, -n)], 1))
