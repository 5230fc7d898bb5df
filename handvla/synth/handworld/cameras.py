"""HandWorld camera rigs: where the cameras stand and what lenses they have; ``make_camera`` turns a rig
into a ``handvla.camera.Camera`` (intrinsics, image size and world -> camera extrinsics; all conventions
are that module's), jittered per episode.

Rigs (see ``RIGS``), all looking at the HandWorld table (``scene``'s world frame: table top z = 0, the
user at y < 0):
- ``ego``: head-mounted, above and behind the user's side of the table, looking down; Apple Vision Pro
  intrinsics (fx = fy = 736.6339 at 1920x1080, principal point at the centre) scaled to the render width.
- ``third``: fixed camera across the table facing the user, narrow field of view (50 degrees across).
- ``phone``: a handheld phone at the user's right, wide angle (short focal length, ~90 degrees across),
  principal point off centre and a slight roll.
Each is jittered per episode (position, aim, focal length, principal point, roll) when given a generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from handvla.camera import CANONICAL_FOCAL_PX, CANONICAL_IMAGE_SIZE, Camera
from handvla.errors import ConfigError, InputError


def camera_record(rig: str, camera: Camera) -> dict[str, Any]:
    """The ``ground_truth['camera']`` record of a HandWorld episode: the rig name, the intrinsics, the image
    size and ``world_to_cam`` (the extrinsics as nested lists)."""
    return {
        "rig": rig,
        "fx": float(camera.fx),
        "fy": float(camera.fy),
        "cx": float(camera.cx),
        "cy": float(camera.cy),
        "width": int(camera.width),
        "height": int(camera.height),
        "world_to_cam": camera.extrinsics.tolist(),
    }


def camera_from_record(d: dict[str, Any]) -> Camera:
    """The ``Camera`` (with world -> camera extrinsics) of a ``camera_record``."""
    return Camera(
        d["fx"], d["fy"], d["cx"], d["cy"], int(d["width"]), int(d["height"]), np.asarray(d["world_to_cam"])
    )


def look_at(
    eye: np.ndarray, target: np.ndarray, up: np.ndarray = (0.0, 0.0, 1.0), roll_rad: float = 0.0
) -> np.ndarray:
    """(4, 4) world -> camera transform of a camera at ``eye`` looking at ``target`` (OpenCV axes: z along
    the view direction, x to the right, y down in the image), rolled by ``roll_rad`` about its z axis."""
    eye = np.asarray(eye, np.float64)
    z = np.asarray(target, np.float64) - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, np.float64))
    if np.linalg.norm(x) < 1e-6:
        raise InputError("look_at", "up", "a direction not parallel to the view direction", str(up))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)  # points down in the image when ``up`` is up
    R = np.stack([x, y, z])  # rows: camera axes in world coordinates -> world -> camera rotation
    c, s = np.cos(roll_rad), np.sin(roll_rad)
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ R
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = -R @ eye
    return T


@dataclass(frozen=True)
class RigSpec:
    """A rig's nominal pose and intrinsics (relative to the render size) and its per-episode jitter."""

    name: str
    eye: tuple[float, float, float]  # world, metres
    target: tuple[float, float, float]  # world, metres
    fx_over_width: float  # focal length in units of the image width
    cx_frac: float = 0.5  # principal point as a fraction of width / height
    cy_frac: float = 0.5
    roll_deg: float = 0.0
    jitter_eye_m: float = 0.03
    jitter_target_m: float = 0.03
    jitter_focal: float = 0.05  # relative
    jitter_pp_frac: float = 0.01
    jitter_roll_deg: float = 3.0
    description: str = ""

    def hfov_deg(self) -> float:
        return float(np.degrees(2 * np.arctan(0.5 / self.fx_over_width)))


RIGS: dict[str, RigSpec] = {
    "ego": RigSpec(
        "ego",
        eye=(0.0, -0.22, 0.46),
        target=(0.0, 0.14, 0.0),
        fx_over_width=CANONICAL_FOCAL_PX / CANONICAL_IMAGE_SIZE[0],  # ~105 degrees across
        description="head-mounted, Vision Pro intrinsics scaled to the render width, looking down at the table",
    ),
    "third": RigSpec(
        "third",
        eye=(0.05, 1.05, 0.55),
        target=(0.0, 0.18, 0.02),
        fx_over_width=0.5 / np.tan(np.radians(25.0)),  # 50 degrees across
        jitter_eye_m=0.05,
        description="fixed camera across the table facing the user, narrow field of view",
    ),
    "phone": RigSpec(
        "phone",
        eye=(0.40, -0.10, 0.30),
        target=(-0.02, 0.25, 0.0),
        fx_over_width=0.5,  # 90 degrees across
        cx_frac=0.44,
        cy_frac=0.56,
        roll_deg=6.0,
        jitter_eye_m=0.04,
        description="handheld phone at the user's right, wide angle, off-centre principal point, rolled",
    ),
}


def parse_rigs(rigs: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """'ego,third' or ['ego', 'third'] or None (all) -> a validated list of rig names."""
    if rigs is None:
        return list(RIGS)
    names = [r.strip() for r in rigs.split(",")] if isinstance(rigs, str) else [str(r).strip() for r in rigs]
    names = [n for n in names if n]
    bad = [n for n in names if n not in RIGS]
    if bad or not names:
        raise ConfigError(
            f"--rigs: unknown rig {bad[0] if bad else '(none)'!r}; expected a comma list of {', '.join(RIGS)}"
        )
    return names


def make_camera(
    rig: str, width: int = 256, height: int = 192, rng: np.random.Generator | None = None
) -> Camera:
    """The camera of rig ``rig`` for a ``width x height`` render, jittered when ``rng`` is given."""
    if rig not in RIGS:
        raise ConfigError(f"unknown camera rig {rig!r}; expected one of {', '.join(RIGS)}")
    if width < 8 or height < 8:
        raise ConfigError(f"render size {width}x{height} too small; expected at least 8x8")
    spec = RIGS[rig]
    eye = np.array(spec.eye)
    target = np.array(spec.target)
    f = spec.fx_over_width * width
    cx, cy = spec.cx_frac * width, spec.cy_frac * height
    roll = np.radians(spec.roll_deg)
    if rng is not None:
        eye = eye + rng.uniform(-1, 1, 3) * spec.jitter_eye_m
        target = target + rng.uniform(-1, 1, 3) * spec.jitter_target_m
        f *= 1 + rng.uniform(-1, 1) * spec.jitter_focal
        cx += rng.uniform(-1, 1) * spec.jitter_pp_frac * width
        cy += rng.uniform(-1, 1) * spec.jitter_pp_frac * height
        roll += np.radians(rng.uniform(-1, 1) * spec.jitter_roll_deg)
    # Square pixels: fx = fy. With pixel centres at +0.5 the image centre is (W/2, H/2), as EgoDex's cx = 960.
    return Camera(
        float(f),
        float(f),
        float(cx),
        float(cy),
        int(width),
        int(height),
        look_at(eye, target, roll_rad=roll),
    )


def parse_size(size: str) -> tuple[int, int]:
    """'256x192' -> (256, 192)."""
    try:
        w, h = (int(v) for v in str(size).lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size: expected WxH such as 256x192, got {size!r}") from None
    if w < 8 or h < 8 or w > 4096 or h > 4096:
        raise ConfigError(f"--size: expected each side in 8..4096, got {size!r}")
    return w, h
