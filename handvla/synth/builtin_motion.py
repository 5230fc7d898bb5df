"""Procedural one- and two-hand motion: data for the motion tokenizer when no dataset is at hand, and the
hand "actor" of the HandWorld tabletop world.

Output: ``HandMotion`` objects (``handvla.hand.motion``), wrist position in metres in a CAMERA frame (OpenCV:
x right, y down, z forward), 15 fps by default, for the built-in hand (``handvla.hand.model``).

How motion is made:
- A ``Workspace`` describes a head-mounted camera looking down at a table: targets are placed on or above
  the table and converted to camera coordinates; wrists are typically 0.3-0.75 m from the camera, and
  every joint stays at least ``MIN_HAND_DEPTH_M`` (0.22 m) in front of it, except where a caller's explicit
  target puts it closer.
- A ``HandScript`` chains primitives (reach, grasp, release, pinch, point, wave, rotate, flex, open, close,
  lift, move, place, push, idle; clap for two hands): each moves the wrist along a minimum-jerk
  (10t^3 - 15t^4 + 6t^5) path through via-points (a natural arc above the table for reaches), slerps the
  wrist orientation on the same profile, and blends the fingers between key shapes.
- Finger poses live as anatomical angles (twist, spread, bend) per joint, in the frames of
  ``HandModel.anatomical_frames()`` (positive bend flexes towards the palm), inside the joint limits of
  ``JOINT_LIMITS_DEG``. Blends of in-limit shapes stay in the limits; noise is clipped to them.
- The left hand is made as a right hand in the mirrored world (x -> -x) and mirrored back (axis-angle
  (x, y, z) -> (x, -y, -z), as for MANO), so both hands move alike and the left is exactly the mirror image
  of a right hand doing the mirrored task.
- Small randomness everywhere: hand shape (betas), durations and tempo, arcs, orientations, smooth tremor and
  drift on wrist and fingers.

Anatomical angles are given in the RIGHT-hand convention for both sides. With ``anatomical_frames()`` of the
left model (the mirror of the right), the twist and spread of a mirrored pose change sign (mirroring turns
rotation axes into their mirror images); ``pose_to_anatomical(..., side='left')`` undoes that, so one
table of limits holds for both hands.

Ground truth comes with every script: ``MotionLabels`` gives, per frame, the active primitive and the grip
state (closed while a grasp or pinch holds), and the list of segments with their targets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.ndimage import gaussian_filter1d
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from handvla.errors import ConfigError, InputError
from handvla.hand import anatomy
from handvla.hand.anatomy import anatomical_to_pose, pose_to_anatomical  # noqa: F401  (part of this module's API)
from handvla.hand.motion import HandMotion
from handvla.hand.topology import MANO_PARENTS, MANO_TO_OPENPOSE, NUM_BETAS, check_side

#: every primitive, in the order of the ids in ``MotionLabels.primitive``
PRIMITIVES = (
    "idle", "reach", "grasp", "release", "pinch", "point", "wave", "rotate",
    "flex", "open", "close", "lift", "move", "place", "push", "clap",
)  # fmt: skip
PRIMITIVE_ID = {name: i for i, name in enumerate(PRIMITIVES)}
#: primitives ``sample_sequence`` can draw one at a time (clap needs two hands, so it is drawn for pairs)
SINGLE_PRIMITIVES = tuple(p for p in PRIMITIVES if p != "clap")

FINGERS = ("thumb", "index", "middle", "ring", "little")
#: first row of each finger in ``hand_pose`` (MANO order: index, middle, little, ring, thumb; base to tip)
FINGER_ROW = {"index": 0, "middle": 3, "little": 6, "ring": 9, "thumb": 12}
_FINGERS4 = ("index", "middle", "ring", "little")
#: the generator keeps every joint at least this far in front of the camera (except at explicit targets)
MIN_HAND_DEPTH_M = 0.22
#: average wrist turning speed (rad/s) that sets the least duration of a turn (its min-jerk peak is 1.875x)
_MEAN_WRIST_TURN_RAD_S = 3.0
_MIRROR = np.array([-1.0, 1.0, 1.0])  # x -> -x: the camera-frame mirror that turns a right hand into a left
_AA_MIRROR = np.array([1.0, -1.0, -1.0])  # the same mirror acting on an axis-angle vector


#: anatomical joint limits (degrees and radians; twist, spread, bend; [min, max]): ``handvla.hand.anatomy``
JOINT_LIMITS_DEG = anatomy.JOINT_LIMITS_DEG
JOINT_LIMITS_RAD = anatomy.JOINT_LIMITS_RAD


# ---------------------------------------------------------------------------------------------------------
# Anatomical angles <-> axis-angle
# ---------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _model_geometry(hand_model: str, betas_key: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-hand rest joints (16, 3), tips (5, 3) and anatomical frames (15, 3, 3) of a model, float64."""
    import torch

    from handvla.hand.model import load_hand_model

    betas = torch.from_numpy(np.frombuffer(betas_key, np.float64).astype(np.float32)).reshape(1, NUM_BETAS)
    model = load_hand_model(hand_model, "right")
    with torch.no_grad():
        J, tips = model.rest_joints_and_tips(betas)
        frames = model.anatomical_frames(betas)
    return J[0].double().numpy(), tips[0].double().numpy(), frames[0].double().numpy()


def anatomical_frames(
    betas: np.ndarray | None = None, hand_model: str = "builtin", side: str = "right"
) -> np.ndarray:
    """(15, 3, 3) rest-pose frames (columns twist, spread, bend) of the model's ``side`` hand, float64."""
    check_side(side)
    b = np.zeros(NUM_BETAS) if betas is None else np.asarray(betas, np.float64).reshape(NUM_BETAS)
    F = _model_geometry(hand_model, b.tobytes())[2]
    if side == "left":  # the left model's frames are the right's mirrored: twist M t, spread M s, bend -M b
        F = _MIRROR[None, :, None] * F * np.array([1.0, 1.0, -1.0])
    return F


def clip_to_limits(anat: np.ndarray) -> np.ndarray:
    """Clip (..., 15, 3) anatomical angles (radians) into ``JOINT_LIMITS_RAD``."""
    return np.clip(anat, JOINT_LIMITS_RAD[..., 0], JOINT_LIMITS_RAD[..., 1])


def forward_kinematics_local(
    rest_joints: np.ndarray, rest_tips: np.ndarray, hand_pose: np.ndarray
) -> np.ndarray:
    """Joints (21, 3) in OpenPose order of a right hand in its own frame (wrist at 0, no global rotation),
    from (15, 3) axis-angle ``hand_pose``. A small numpy FK used to place the thumb and the grasp points."""
    R = np.concatenate([np.eye(3)[None], Rotation.from_rotvec(hand_pose).as_matrix()])  # (16, 3, 3)
    G = np.zeros((16, 3, 3))
    P = np.zeros((16, 3))
    G[0], P[0] = R[0], rest_joints[0]
    for i in range(1, 16):  # MANO order lists every parent before its children
        p = MANO_PARENTS[i]
        G[i] = G[p] @ R[i]
        P[i] = P[p] + G[p] @ (rest_joints[i] - rest_joints[p])
    tip_parents = (15, 3, 6, 12, 9)  # thumb, index, middle, ring, little
    tips = np.stack([P[j] + G[j] @ (rest_tips[k] - rest_joints[j]) for k, j in enumerate(tip_parents)])
    joints = np.concatenate([P, tips])[MANO_TO_OPENPOSE]
    return joints - joints[0]


# ---------------------------------------------------------------------------------------------------------
# Key hand shapes (anatomical angles, right-hand convention)
# ---------------------------------------------------------------------------------------------------------


def _shape(mcp, pip, dip, spread=(0, 0, 0, 0), thumb=(0, 0, 0, 0, 0, 0)) -> np.ndarray:
    """Degrees -> (15, 3) radians. mcp/pip/dip/spread: (index, middle, ring, little); spread > 0 turns a
    finger towards the little finger. thumb: (CMC twist, CMC spread, CMC bend, MCP spread, MCP bend, IP bend)."""
    a = np.zeros((15, 3))
    for k, f in enumerate(_FINGERS4):
        r = FINGER_ROW[f]
        a[r, 1], a[r, 2], a[r + 1, 2], a[r + 2, 2] = spread[k], mcp[k], pip[k], dip[k]
    a[12] = thumb[0:3]
    a[13, 1], a[13, 2], a[14, 2] = thumb[3], thumb[4], thumb[5]
    return np.deg2rad(a)


_BASE_SHAPES = {
    "flat": _shape((0, 0, 0, 0), (0, 0, 0, 0), (0, 0, 0, 0)),
    "open": _shape((4, 4, 5, 6), (6, 6, 8, 8), (3, 3, 4, 5), (-4, -1, 2, 5), (0, -5, 5, 0, 8, 5)),
    "together": _shape((2, 2, 2, 2), (4, 4, 4, 4), (2, 2, 2, 2), (-1, 0, 1, 2), (0, 25, 0, 0, 5, 5)),
    "spread": _shape((0, 0, 0, 0), (2, 2, 2, 2), (0, 0, 0, 0), (-5, -2, 3, 5), (0, -15, 0, 0, 0, 0)),
    "relaxed": _shape(
        (18, 24, 30, 36), (30, 35, 38, 42), (14, 18, 20, 22), (-2, 0, 1, 3), (5, 0, 18, 0, 15, 15)
    ),
    "preshape": _shape(
        (12, 14, 16, 18), (16, 18, 20, 22), (8, 9, 10, 11), (-3, -1, 2, 4), (10, -12, 20, 0, 10, 8)
    ),
    # thumb rows of these three are placed by _solve_thumb (see key_shapes)
    "fist": _shape((84, 86, 88, 88), (88, 88, 88, 88), (52, 55, 58, 62)),
    "pinch": _shape((40, 52, 58, 62), (42, 60, 64, 66), (24, 35, 38, 40), (-2, 0, 2, 4)),
    "point": _shape((3, 82, 86, 88), (4, 88, 88, 88), (2, 55, 58, 62), (-2, 0, 0, 2)),
}
#: flexion (MCP, PIP, DIP, degrees) of one finger in a "flex" movement
_FLEXED_FINGER = (75, 85, 50)
_THUMB_LO = np.deg2rad([-45, -15, 0, -10, 0, 0])
_THUMB_HI = np.deg2rad([45, 45, 45, 10, 90, 90])


def _set_thumb(anat: np.ndarray, x: np.ndarray) -> np.ndarray:
    a = anat.copy()
    a[12] = x[0:3]
    a[13, 1], a[13, 2], a[14, 2] = x[3], x[4], x[5]
    return a


def _solve_thumb(base: np.ndarray, target_fn, x0_deg, J, tips, frames) -> np.ndarray:
    """Thumb angles (inside the limits) that bring the thumb tip to ``target_fn(joints)``, the rest of the
    hand fixed at ``base``; a weak pull towards ``x0`` picks a natural solution among equivalent ones."""
    x0 = np.deg2rad(np.asarray(x0_deg, np.float64))

    def residual(x):
        j = forward_kinematics_local(J, tips, anatomical_to_pose(_set_thumb(base, x), frames))
        return np.r_[j[4] - target_fn(j), 0.004 * (x - x0)]

    sol = least_squares(
        residual,
        np.clip(x0, _THUMB_LO + 1e-6, _THUMB_HI - 1e-6),
        bounds=(_THUMB_LO, _THUMB_HI),
        diff_step=1e-4,
    )
    return _set_thumb(base, sol.x)


@lru_cache(maxsize=4)
def _key_shapes(hand_model: str) -> dict[str, np.ndarray]:
    J, tips, frames = _model_geometry(hand_model, np.zeros(NUM_BETAS).tobytes())
    shapes = dict(_BASE_SHAPES)
    # Pinch: the thumb tip meets the index tip.
    shapes["pinch"] = _solve_thumb(shapes["pinch"], lambda j: j[8], (20, 20, 25, 0, 20, 10), J, tips, frames)
    # Fist: the thumb tip lies across the outside of the index and middle middle phalanges.
    palm_out = _palm_normal(J)

    def over_phalanges(j):
        return 0.25 * (j[6] + j[7] + j[10] + j[11]) + 0.012 * palm_out

    shapes["fist"] = _solve_thumb(shapes["fist"], over_phalanges, (20, 5, 40, 0, 40, 30), J, tips, frames)
    # Point: the thumb holds the curled middle finger down.
    shapes["point"] = _solve_thumb(
        shapes["point"],
        lambda j: 0.5 * (j[10] + j[11]) + 0.012 * palm_out,
        (15, 5, 35, 0, 40, 25),
        J,
        tips,
        frames,
    )
    return {k: clip_to_limits(v) for k, v in shapes.items()}


def key_shape(name: str, hand_model: str = "builtin") -> np.ndarray:
    """(15, 3) anatomical angles (radians) of a key shape: 'flat', 'open', 'together' (fingers and thumb
    straight and closed up), 'spread', 'relaxed', 'preshape',
    'fist', 'pinch', 'point', 'flex_<finger>' (one finger flexed from relaxed) or 'grasp_<0..1>' (a power
    grasp closing from preshape (0) to fist (1))."""
    shapes = _key_shapes(hand_model)
    if name in shapes:
        return shapes[name].copy()
    if name.startswith("flex_") and name[5:] in FINGERS:
        return flex_finger(shapes["relaxed"], name[5:], 1.0)
    if name.startswith("grasp_"):
        try:
            c = float(name[6:])
        except ValueError:
            c = -1.0
        if 0 <= c <= 1:
            return (1 - c) * shapes["preshape"] + c * shapes["fist"]
    raise InputError(
        "key_shape", "name", f"one of {sorted(shapes)}, flex_<finger> or grasp_<0..1>", repr(name)
    )


def flex_finger(anat: np.ndarray, finger: str, amount: float) -> np.ndarray:
    """``anat`` with one finger flexed by ``amount`` (0..1) of the way to a full flexion."""
    a = anat.copy()
    r = FINGER_ROW[finger]
    if finger == "thumb":
        target = np.deg2rad([(0, 5, 40), (0, 0, 70), (0, 0, 60)])
    else:
        target = np.zeros((3, 3))
        target[:, 2] = np.deg2rad(_FLEXED_FINGER)
        target[0, 1] = a[r, 1]
    a[r : r + 3] = (1 - amount) * a[r : r + 3] + amount * target
    return a


def _palm_normal(J: np.ndarray) -> np.ndarray:
    """Unit normal out of the palm of the right rest hand, (3,), model frame (the builtin's is -y)."""
    n = np.cross(J[1] - J[0], J[7] - J[0])
    return n / np.linalg.norm(n)


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


# ---------------------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Segment:
    name: str
    start: int  # first frame
    stop: int  # one past the last frame
    params: dict = field(default_factory=dict)  # targets etc., camera frame, metres


@dataclass
class MotionLabels:
    """Per-frame ground truth of a scripted motion."""

    primitive: np.ndarray  # (T,) int16, index into PRIMITIVES
    grip_closed: np.ndarray  # (T,) bool: a grasp or pinch holds (closure >= 0.5)
    closure: np.ndarray  # (T,) float32 0 = open .. 1 = fully closed grip
    segments: list[Segment]

    @property
    def names(self) -> list[str]:
        return [PRIMITIVES[i] for i in self.primitive]

    def slice(self, start: int, stop: int) -> MotionLabels:
        segs = [
            Segment(s.name, max(s.start, start) - start, min(s.stop, stop) - start, s.params)
            for s in self.segments
            if s.stop > start and s.start < stop
        ]
        return MotionLabels(
            self.primitive[start:stop], self.grip_closed[start:stop], self.closure[start:stop], segs
        )


# ---------------------------------------------------------------------------------------------------------
# Trajectory pieces
# ---------------------------------------------------------------------------------------------------------


def min_jerk(tau: np.ndarray) -> np.ndarray:
    """Minimum-jerk position profile 10t^3 - 15t^4 + 6t^5 on t in [0, 1] (clipped outside)."""
    t = np.clip(tau, 0.0, 1.0)
    return t**3 * (10 - 15 * t + 6 * t * t)


def _profile(n: int, start: float = 0.0, stop: float = 1.0) -> np.ndarray:
    """(n,) min-jerk progress of frames 1..n of a segment, moving only during [start, stop] of it."""
    tau = np.arange(1, n + 1) / n
    return min_jerk((tau - start) / max(stop - start, 1e-9))


def _path(points: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Positions (n, 3) at progress s along a smooth curve through ``points`` (K, 3): a cubic spline in
    chord length, so the via-points are passed without stopping; the ends are exact."""
    if len(points) == 2:
        return points[0] + s[:, None] * (points[1] - points[0])
    chord = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))]
    if chord[-1] < 1e-9:
        return np.repeat(points[-1:], len(s), 0)
    keep = np.r_[True, np.diff(chord) > 1e-9]
    spline = CubicSpline(chord[keep], points[keep], bc_type="natural")
    return spline(s * chord[-1])


def _slerp(r0: Rotation, r1: Rotation, s: np.ndarray) -> Rotation:
    """Rotations (n,) from r0 to r1 along the shortest arc at progress s (n,)."""
    delta = (r0.inv() * r1).as_rotvec()
    return r0 * Rotation.from_rotvec(s[:, None] * delta[None])


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma_frames: float, amplitude: float
) -> np.ndarray:
    """Gaussian noise low-passed along axis 0 and rescaled to standard deviation ``amplitude``."""
    if amplitude == 0 or shape[0] == 0:
        return np.zeros(shape)
    x = gaussian_filter1d(rng.standard_normal(shape), sigma_frames, axis=0, mode="reflect")
    return x * (amplitude / max(float(x.std()), 1e-9))


# ---------------------------------------------------------------------------------------------------------
# One hand's script
# ---------------------------------------------------------------------------------------------------------


class HandScript:
    """Build one hand's motion from primitives with explicit targets (camera frame, metres)::

        s = HandScript("right", rng)
        s.reach(cup, anchor="grasp").grasp().lift(0.1).move(shelf).place(shelf_top).release()
        motion, labels = s.build()

    Every primitive returns ``self``; durations (seconds) are drawn at random when not given, scaled by
    ``tempo`` (< 1 is faster), and stretched where a wrist turn would otherwise be faster than natural
    (3 rad/s on average). ``anchor`` says which point of the hand goes to a target: 'wrist' (the wrist
    joint), 'grasp' (the point a power grasp closes around, 3 cm out of the palm) or 'pinch' (where thumb
    and index tips meet in a pinch); orientations are chosen naturally from the shoulder towards the target
    unless given (a scipy ``Rotation`` in the camera frame, or 'top' / 'side').
    """

    def __init__(
        self,
        side: str = "right",
        rng: np.random.Generator | None = None,
        fps: float = 15.0,
        betas: np.ndarray | None = None,
        workspace: Workspace | None = None,
        start: np.ndarray | None = None,
        tempo: float = 1.0,
        hand_model: str = "builtin",
    ):
        self.side = check_side(side)
        self.rng = rng if rng is not None else np.random.default_rng()
        if not (math.isfinite(fps) and fps > 0):
            raise InputError("HandScript", "fps", "a positive number", repr(fps))
        if not (math.isfinite(tempo) and 0.2 <= tempo <= 5):
            raise InputError("HandScript", "tempo", "a factor in [0.2, 5]", repr(tempo))
        self.fps, self.tempo, self.hand_model = float(fps), float(tempo), hand_model
        self.ws = workspace or Workspace()
        if betas is None:
            betas = np.clip(self.rng.normal(0, 0.5, NUM_BETAS), -1.5, 1.5)
        self.betas = np.asarray(betas, np.float64).reshape(NUM_BETAS)
        self._J, self._tips, self._frames = _model_geometry(hand_model, self.betas.tobytes())
        self._shapes = _key_shapes(hand_model)
        # State, in the right-hand world (the left hand's world mirrored; see module doc)
        if start is None:
            start = self.ws.to_camera(
                [self.rng.uniform(0.13, 0.22), self.rng.uniform(0.14, 0.22), self.rng.uniform(0.02, 0.06)]
            )
        else:
            start = self._in(start)
        self.pos = np.asarray(start, np.float64)
        self.rot = self._natural_rot(self.pos)
        self.anat = self._shapes["relaxed"].copy()
        self.closure = 0.0
        self._pos: list[np.ndarray] = [self.pos[None]]
        self._quat: list[np.ndarray] = [self.rot.as_quat()[None]]
        self._anat: list[np.ndarray] = [self.anat[None]]
        self._clos: list[np.ndarray] = [np.zeros(1)]
        self._prim: list[np.ndarray] = [np.zeros(1, np.int16)]
        self.segments: list[Segment] = []

    # -- frames of the mirrored world ---------------------------------------------------------------------
    def _in(self, p: np.ndarray) -> np.ndarray:
        """Camera-frame point of this side -> the right-hand world."""
        p = np.asarray(p, np.float64)
        if p.shape != (3,) or not np.isfinite(p).all():
            raise InputError("HandScript", "target", "a finite camera-frame point (3,) in metres", str(p))
        return p * _MIRROR if self.side == "left" else p

    def _in_rot(self, r: Rotation) -> Rotation:
        if self.side == "left":
            M = np.diag(_MIRROR)
            return Rotation.from_matrix(M @ r.as_matrix() @ M)
        return r

    def _in_dir(self, v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, np.float64)
        return v * _MIRROR if self.side == "left" else v

    @property
    def wrist_position(self) -> np.ndarray:
        """(3,) where the wrist is now (end of the script so far), camera frame, metres."""
        return self.pos * _MIRROR if self.side == "left" else self.pos.copy()

    @property
    def wrist_rotation(self) -> Rotation:
        """The wrist rotation now (end of the script so far), camera frame (``global_orient``)."""
        return self._in_rot(self.rot)  # mirroring is its own inverse

    def anchor_positions(self, motion: HandMotion, anchor: str = "grasp") -> np.ndarray:
        """(T, 3) camera-frame path of an anchor point ('wrist', 'grasp', 'pinch') of a motion built by this
        script: e.g. where a held object is, frame by frame."""
        offset = self.anchor_offset(anchor)  # right-hand model frame; the left model is its mirror image
        if motion.side == "left":
            offset = offset * _MIRROR
        rot = Rotation.from_rotvec(motion.global_orient.astype(np.float64))
        return motion.wrist_pos.astype(np.float64) + rot.apply(offset)

    @property
    def num_frames(self) -> int:
        return sum(len(p) for p in self._pos)

    @property
    def time_s(self) -> float:
        return (self.num_frames - 1) / self.fps

    def _dur(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi)) * self.tempo

    def _n(self, duration: float) -> int:
        if not (math.isfinite(duration) and duration > 0):
            raise InputError("HandScript", "duration", "a positive number of seconds", repr(duration))
        return max(2, int(round(duration * self.fps)))

    # -- orientations -------------------------------------------------------------------------------------
    def _natural_rot(self, target: np.ndarray, style: str = "top", roll_deg: float | None = None) -> Rotation:
        """A relaxed wrist orientation for a hand at ``target`` (right-hand world): fingers along the
        shoulder -> target heading, tilted down; palm down ('top'), or turned thumb-up ('side')."""
        ws = self.ws
        tp = ws.to_table(target)
        dx, dy = tp[0] - ws.shoulder[0], tp[1] - ws.shoulder[1]
        heading = math.atan2(-dx, max(dy, 0.05))  # > 0 turns the fingers to the left
        heading = float(np.clip(heading + self.rng.normal(0, 0.12), -0.8, 1.3))
        pitch = math.radians(self.rng.uniform(-30, -8))  # fingers slightly down towards the table
        if roll_deg is None:
            roll_deg = self.rng.uniform(-8, 25) if style == "top" else self.rng.uniform(70, 95)
        right, fwd, up = ws.axes.T
        d = math.cos(heading) * fwd - math.sin(heading) * right  # heading in the table plane
        d = math.cos(pitch) * d + math.sin(pitch) * up
        side_dir = np.cross(d, up)  # the little-finger side of a palm-down right hand
        side_dir /= np.linalg.norm(side_dir)
        up_perp = np.cross(side_dir, d)
        r = math.radians(roll_deg)
        # palm normal: down, rolled (supination, > 0) so the palm turns towards the body's midline (-right)
        n = -math.cos(r) * up_perp - math.sin(r) * side_dir
        return rotation_from_directions(d, n, "right")

    def _resolve_rot(self, target: np.ndarray, orient) -> Rotation:
        if orient is None or orient == "top":
            return self._natural_rot(target, "top")
        if orient == "side":
            return self._natural_rot(target, "side")
        if isinstance(orient, Rotation):
            return self._in_rot(orient)
        raise InputError(
            "HandScript", "orient", "None, 'top', 'side' or a scipy Rotation (camera frame)", repr(orient)
        )

    def anchor_offset(self, anchor: str, shape: np.ndarray | None = None) -> np.ndarray:
        """(3,) position of an anchor point relative to the wrist, in the hand's own frame (right hand)."""
        if anchor == "wrist":
            return np.zeros(3)
        J = self._J
        if anchor == "grasp":
            palm = (J[0] + J[1] + J[4] + J[7] + J[10]) / 5 - J[0]
            return palm + 0.03 * _palm_normal(J)
        if anchor == "pinch":
            a = self._shapes["pinch"] if shape is None else shape
            j = forward_kinematics_local(J, self._tips, anatomical_to_pose(a, self._frames))
            return 0.5 * (j[4] + j[8])
        raise InputError("HandScript", "anchor", "'wrist', 'grasp' or 'pinch'", repr(anchor))

    # -- the core: one segment ----------------------------------------------------------------------------
    def _append(
        self, name: str, pos: np.ndarray, rot: Rotation, anat: np.ndarray, clos: np.ndarray, params=None
    ) -> None:
        n = len(pos)
        start = self.num_frames
        self._pos.append(pos)
        self._quat.append(rot.as_quat())
        self._anat.append(anat)
        self._clos.append(clos)
        self._prim.append(np.full(n, PRIMITIVE_ID[name], np.int16))
        self.segments.append(Segment(name, start, start + n, dict(params or {})))
        self.pos, self.rot, self.anat, self.closure = (
            pos[-1].copy(),
            rot[-1],
            anat[-1].copy(),
            float(clos[-1]),
        )

    def _segment(
        self,
        name: str,
        duration: float,
        via: Sequence[np.ndarray] = (),
        rot: Rotation | None = None,
        shape: np.ndarray | None = None,
        closure: float | None = None,
        shape_window: tuple[float, float] = (0.0, 1.0),
        rot_window: tuple[float, float] = (0.0, 1.0),
        params: dict | None = None,
        frames: int | None = None,
        keep_in_front: bool = True,
    ) -> None:
        """Move the wrist through ``via`` (ending at the last one), turn to ``rot`` and blend the fingers to
        ``shape``, each on a min-jerk profile (fingers and rotation within a window of the segment).
        ``frames`` overrides the frame count from ``duration``; otherwise a large turn gets the time it
        needs at a natural wrist speed. ``keep_in_front``: move the end point away from the camera if the
        hand would come closer than ``MIN_HAND_DEPTH_M`` (off for explicit targets)."""
        r1 = self.rot if rot is None else rot
        n = frames
        if n is None:
            angle = float((self.rot.inv() * r1).magnitude())
            n = max(self._n(duration), int(math.ceil(angle / _MEAN_WRIST_TURN_RAD_S * self.fps)))
        s = _profile(n)
        via = [np.asarray(v, np.float64) for v in via]
        if via and keep_in_front:
            via[-1] = self._in_front(via[-1], r1)
        if via:
            pos = _path(np.vstack([self.pos[None], *[v[None] for v in via]]), s)
        else:
            pos = np.repeat(self.pos[None], n, 0)
        rots = _slerp(self.rot, r1, _profile(n, *rot_window))
        sw = _profile(n, *shape_window)
        a1 = self.anat if shape is None else clip_to_limits(shape)
        anat = self.anat[None] + sw[:, None, None] * (a1 - self.anat)[None]
        c1 = self.closure if closure is None else float(closure)
        clos = self.closure + sw * (c1 - self.closure)
        self._append(name, pos, rots, anat, clos, params)

    def _in_front(self, wrist: np.ndarray, rot: Rotation) -> np.ndarray:
        """``wrist`` moved along the table's forward direction until every point of the (flat, so longest)
        hand at ``rot`` is at least ``MIN_HAND_DEPTH_M`` in front of the camera."""
        pts = rot.apply(np.concatenate([self._J, self._tips]) - self._J[0]) + wrist
        deficit = MIN_HAND_DEPTH_M - float(pts[:, 2].min())
        fwd = self.ws.forward
        return wrist + (deficit / fwd[2]) * fwd if deficit > 0 else wrist

    def _arc_via(self, target: np.ndarray, height: float, lateral: float = 0.0) -> list[np.ndarray]:
        """A via-point above the middle of the way (a natural, slightly curved transport path)."""
        mid = 0.5 * (self.pos + target)
        d = target - self.pos
        side = np.cross(d, self.ws.up)
        side = side / (np.linalg.norm(side) + 1e-9)
        via = mid + height * self.ws.up + lateral * side
        if np.linalg.norm(d) < 0.03 or via[2] < self.ws.min_depth_m:
            return [target]
        return [via, target]

    def _transport_duration(self, dist: float, speed: tuple[float, float]) -> float:
        v = self.rng.uniform(*speed)  # average speed, m/s; a min-jerk peak is 1.875x the average
        return max(0.45, 0.2 + dist / v) * self.tempo

    # -- primitives -----------------------------------------------------------------------------------------
    def reach(
        self,
        target: np.ndarray,
        duration: float | None = None,
        orient: Rotation | str | None = None,
        anchor: str = "wrist",
        shape: str | np.ndarray | None = "preshape",
        arc: float | None = None,
    ) -> HandScript:
        """Move so that ``anchor`` ends at ``target`` (camera frame), with an arc above the table; the hand
        pre-shapes (opens) during the second half."""
        p = self._in(target)
        rot = self._resolve_rot(p, orient)
        wrist = p - rot.apply(self.anchor_offset(anchor))
        dist = float(np.linalg.norm(wrist - self.pos))
        duration = duration if duration is not None else self._transport_duration(dist, (0.3, 0.6))
        arc = arc if arc is not None else self.rng.uniform(0.12, 0.3) * dist
        lateral = self.rng.normal(0, 0.08) * dist
        a1 = self._shape_arg(shape)
        c1 = 0.0 if shape is not None else None
        self._segment(
            "reach", duration, self._arc_via(wrist, arc, lateral), rot, a1, c1,
            shape_window=(0.3, 0.9),
            params={"target": np.asarray(target, float), "anchor": anchor}, keep_in_front=False,
        )  # fmt: skip
        return self

    def _shape_arg(self, shape) -> np.ndarray | None:
        if shape is None:
            return None
        if isinstance(shape, str):
            return key_shape(shape, self.hand_model)
        a = np.asarray(shape, np.float64)
        if a.shape != (15, 3):
            raise InputError(
                "HandScript", "shape", "a key-shape name or (15, 3) anatomical angles (radians)", str(a.shape)
            )
        return a

    def grasp(
        self, closure: float = 1.0, duration: float | None = None, approach: float | None = None
    ) -> HandScript:
        """Close a power grasp (``closure`` 1 = fist; ~0.5-0.8 around an object), settling the wrist
        ``approach`` metres towards the palm as the fingers close."""
        if not 0 <= closure <= 1:
            raise InputError("HandScript.grasp", "closure", "a value in [0, 1]", repr(closure))
        duration = duration if duration is not None else self._dur(0.4, 0.7)
        approach = approach if approach is not None else self.rng.uniform(0.0, 0.015)
        palm_dir = self.rot.apply(_palm_normal(self._J))
        shape = (1 - closure) * self._shapes["preshape"] + closure * self._shapes["fist"]
        target = self.pos + approach * palm_dir
        self._segment(
            "grasp",
            duration,
            [target],
            None,
            shape,
            1.0,
            shape_window=(0.0, 1.0),
            params={"closure": closure},
        )
        return self

    def release(self, duration: float | None = None, retreat: float | None = None) -> HandScript:
        """Open the hand and back off ``retreat`` metres (away from the palm and up)."""
        duration = duration if duration is not None else self._dur(0.35, 0.6)
        retreat = retreat if retreat is not None else self.rng.uniform(0.01, 0.03)
        back = -self.rot.apply(_palm_normal(self._J)) + self.ws.up
        target = self.pos + retreat * back / np.linalg.norm(back)
        self._segment("release", duration, [target], None, self._shapes["open"], 0.0)
        return self

    def pinch(self, duration: float | None = None) -> HandScript:
        """Thumb-index pinch (a precision grip)."""
        duration = duration if duration is not None else self._dur(0.4, 0.7)
        self._segment("pinch", duration, (), None, self._shapes["pinch"], 1.0)
        return self

    def point(
        self, target: np.ndarray | None = None, duration: float | None = None, hold: float | None = None
    ) -> HandScript:
        """Turn the index towards ``target`` (camera frame; default a random table point), others curled."""
        if target is None:
            target = self.ws.sample_point(self.rng, height=(0.0, 0.05))
            target = target * _MIRROR if self.side == "left" else target
        p = self._in(target)
        duration = duration if duration is not None else self._dur(0.5, 0.9)
        hold = hold if hold is not None else self._dur(0.3, 0.8)
        d = p - self.pos
        if np.linalg.norm(d) < 0.05:
            d = self.ws.forward
        up = self.ws.up
        side_dir = np.cross(d, up)
        side_dir /= np.linalg.norm(side_dir) + 1e-9
        up_perp = np.cross(side_dir, d)
        up_perp /= np.linalg.norm(up_perp) + 1e-9
        roll = math.radians(self.rng.uniform(20, 60))  # palm down, turned a little towards the midline
        n = -math.cos(roll) * up_perp - math.sin(roll) * side_dir
        rot = rotation_from_directions(d, n, "right")
        # arm extends a little towards the target while pointing
        wrist = self.pos + self.rng.uniform(0.02, 0.08) * d / np.linalg.norm(d)
        self._segment(
            "point",
            duration,
            [wrist],
            rot,
            self._shapes["point"],
            0.0,
            params={"target": np.asarray(target, float)},
        )
        self.idle(hold, drift=0.004, name="point")
        return self

    def wave(
        self,
        duration: float | None = None,
        frequency: float | None = None,
        amplitude_deg: float | None = None,
    ) -> HandScript:
        """Raise the hand (fingers up, palm forward) and wave it side to side."""
        duration = duration if duration is not None else self._dur(1.5, 3.0)
        f = frequency if frequency is not None else self.rng.uniform(1.3, 2.2)
        amp = math.radians(amplitude_deg if amplitude_deg is not None else self.rng.uniform(15, 30))
        ws = self.ws
        tp = ws.to_table(self.pos)
        raised = ws.to_camera(
            [np.clip(tp[0], 0.05, 0.3), np.clip(tp[1], 0.32, 0.5), self.rng.uniform(0.15, 0.25)]
        )
        up, fwd = ws.up, ws.forward
        rot_up = rotation_from_directions(up + 0.4 * fwd, fwd, "right")
        raise_d = self._dur(0.5, 0.8)
        self._segment("wave", raise_d, self._arc_via(raised, 0.0), rot_up, self._shapes["spread"], 0.0)
        n = self._n(max(duration - raise_d, 0.6))
        t = np.arange(1, n + 1) / self.fps
        env = np.sqrt(np.clip(np.sin(np.pi * np.arange(1, n + 1) / n), 0, 1))  # fades in and out
        phase = np.sin(2 * np.pi * f * t)
        axis = self.rot.apply([0.0, -1.0, 0.0])  # palm normal: the hand swings in the plane of the palm
        rots = Rotation.from_rotvec((amp * env * phase)[:, None] * axis[None]) * self.rot
        side_dir = np.cross(up, fwd)
        pos = self.pos[None] + (0.025 * env * phase)[:, None] * side_dir[None]
        anat = np.repeat(self.anat[None], n, 0)
        self._append("wave", pos, rots, anat, np.zeros(n), {"frequency_hz": f})
        return self

    def rotate(self, angle_deg: float | None = None, duration: float | None = None) -> HandScript:
        """Turn the wrist about the forearm axis: supination (> 0, palm turns up) or pronation (< 0)."""
        angle_deg = (
            angle_deg
            if angle_deg is not None
            else float(self.rng.choice([-1, 1]) * self.rng.uniform(40, 110))
        )
        duration = duration if duration is not None else self._dur(0.5, 1.0) * (0.6 + abs(angle_deg) / 150)
        axis = self.rot.apply([1.0, 0.0, 0.0])  # the finger direction ~ the forearm axis
        rot = Rotation.from_rotvec(math.radians(angle_deg) * axis) * self.rot
        self._segment("rotate", duration, (), rot, None, None, params={"angle_deg": angle_deg})
        return self

    def flex(self, fingers: Sequence[str] | None = None, duration_each: float | None = None) -> HandScript:
        """Flex and extend single fingers one after another (counting, tapping)."""
        if fingers is None:
            k = int(self.rng.integers(2, 6))
            fingers = list(self.rng.choice(FINGERS, size=k, replace=False))
        for f in fingers:
            if f not in FINGERS:
                raise InputError("HandScript.flex", "fingers", f"names from {FINGERS}", repr(f))
        base = self._shapes["open"] if self.closure < 0.5 else self.anat
        if self.closure < 0.5:
            self._segment("flex", self._dur(0.3, 0.5), (), None, base, 0.0)
        for f in fingers:
            d = duration_each if duration_each is not None else self._dur(0.55, 0.85)
            n = self._n(d)
            bump = np.sin(np.pi * _profile(n)) ** 2  # down and back up, smooth at both ends
            amount = self.rng.uniform(0.6, 1.0)
            flexed = flex_finger(self.anat, f, amount)
            anat = self.anat[None] + bump[:, None, None] * (flexed - self.anat)[None]
            self._append(
                "flex",
                np.repeat(self.pos[None], n, 0),
                Rotation.from_quat(np.repeat(self.rot.as_quat()[None], n, 0)),
                anat,
                np.full(n, self.closure),
                {"finger": f},
            )
        return self

    def open(self, duration: float | None = None, spread: bool = False) -> HandScript:
        """Open the hand (fingers extended; ``spread`` = also abducted)."""
        duration = duration if duration is not None else self._dur(0.3, 0.6)
        self._segment("open", duration, (), None, self._shapes["spread" if spread else "open"], 0.0)
        return self

    def close(self, duration: float | None = None) -> HandScript:
        """Make a fist."""
        duration = duration if duration is not None else self._dur(0.4, 0.7)
        self._segment("close", duration, (), None, self._shapes["fist"], 1.0)
        return self

    def lift(self, height: float | None = None, duration: float | None = None) -> HandScript:
        """Move straight up (above the table) by ``height`` metres."""
        height = height if height is not None else self.rng.uniform(0.05, 0.15)
        target = self.pos + height * self.ws.up
        duration = duration if duration is not None else self._transport_duration(abs(height), (0.15, 0.3))
        self._segment("lift", duration, [target], None, None, None, params={"height": height})
        return self

    def move(
        self, target: np.ndarray, duration: float | None = None, anchor: str = "wrist", orient=None
    ) -> HandScript:
        """Carry the hand (shape kept) so that ``anchor`` ends at ``target``, on a low arc."""
        p = self._in(target)
        rot = self.rot if orient is None else self._resolve_rot(p, orient)
        wrist = p - rot.apply(self.anchor_offset(anchor, self.anat))
        dist = float(np.linalg.norm(wrist - self.pos))
        duration = duration if duration is not None else self._transport_duration(dist, (0.2, 0.45))
        via = self._arc_via(wrist, self.rng.uniform(0.05, 0.15) * dist, self.rng.normal(0, 0.05) * dist)
        params = {"target": np.asarray(target, float)}
        self._segment("move", duration, via, rot, None, None, params=params, keep_in_front=False)
        return self

    def place(self, target: np.ndarray, duration: float | None = None, anchor: str = "wrist") -> HandScript:
        """Bring ``anchor`` down onto ``target``: over it first, then a slower descent."""
        p = self._in(target)
        wrist = p - self.rot.apply(self.anchor_offset(anchor, self.anat))
        above = wrist + self.rng.uniform(0.03, 0.06) * self.ws.up
        dist = float(np.linalg.norm(above - self.pos)) + float(np.linalg.norm(wrist - above))
        duration = (
            duration
            if duration is not None
            else self._transport_duration(dist, (0.15, 0.35)) + 0.2 * self.tempo
        )
        self._segment(
            "place",
            duration,
            [above, wrist],
            None,
            None,
            None,
            params={"target": np.asarray(target, float)},
            keep_in_front=False,
        )
        return self

    def push(
        self,
        direction: np.ndarray | None = None,
        distance: float | None = None,
        duration: float | None = None,
    ) -> HandScript:
        """Push along the table: palm turned forward (wrist extended), a slow straight stroke."""
        ws = self.ws
        if direction is None:
            ang = self.rng.uniform(-0.6, 0.4)
            direction = math.cos(ang) * ws.forward - math.sin(ang) * ws.axes[:, 0]
            direction = direction * _MIRROR if self.side == "left" else direction
        d = self._in_dir(direction)
        d = d - (d @ ws.up) * ws.up  # along the table
        if np.linalg.norm(d) < 1e-6:
            raise InputError(
                "HandScript.push", "direction", "a direction not vertical to the table", str(direction)
            )
        d = d / np.linalg.norm(d)
        distance = distance if distance is not None else self.rng.uniform(0.08, 0.2)
        # palm faces the push direction; fingers point up-forward
        rot = rotation_from_directions(ws.up + 0.6 * d, d, "right")
        prep = self._dur(0.4, 0.7)
        self._segment(
            "push",
            prep,
            (),
            rot,
            self._shapes["open"],
            0.0,
            params={"direction": np.asarray(direction, float)},
        )
        duration = duration if duration is not None else distance / self.rng.uniform(0.1, 0.2) * self.tempo
        self._segment(
            "push", duration, [self.pos + distance * d], None, None, None, params={"distance": distance}
        )
        return self

    def idle(self, duration: float | None = None, drift: float = 0.008, name: str = "idle") -> HandScript:
        """Stay about here, drifting a few millimetres, fingers easing towards relaxed (tremor is added by
        ``build``)."""
        duration = duration if duration is not None else self._dur(0.5, 1.5)
        target = self.pos + self.rng.normal(0, drift / math.sqrt(3), 3)
        shape = None
        if name == "idle" and self.closure < 0.5:
            shape = self.anat + 0.3 * (self._shapes["relaxed"] - self.anat)
        self._segment(name, duration, [target], None, shape, None)
        return self

    def hold(self, frames: int) -> HandScript:
        """Stay for exactly ``frames`` frames (labelled idle), drifting a little: to line up two hands.
        ``frames`` = 0 does nothing."""
        if int(frames) != frames or frames < 0:
            raise InputError(
                "HandScript.hold", "frames", "a non-negative whole number of frames", repr(frames)
            )
        if frames == 0:
            return self
        target = self.pos + self.rng.normal(0, 0.001 * math.sqrt(frames), 3).clip(-0.004, 0.004)
        self._segment("idle", 0.0, [target], None, None, None, frames=int(frames))
        return self

    def go_home(self, duration: float | None = None) -> HandScript:
        """Reach back to a resting place near the body, hand relaxed."""
        home = self.ws.to_camera(
            [self.rng.uniform(0.13, 0.22), self.rng.uniform(0.14, 0.22), self.rng.uniform(0.02, 0.06)]
        )
        home = home * _MIRROR if self.side == "left" else home
        return self.reach(home, duration=duration, shape="relaxed")

    def clap_approach(self, contact: np.ndarray, opening: float, duration: float) -> HandScript:
        """First part of a clap: palm turned towards the midline, ``opening`` metres out from ``contact``
        (the wrist point at the moment of contact, camera frame)."""
        ws = self.ws
        c = self._in(contact)
        midline_in = -ws.axes[:, 0]  # the right hand's palm faces left (towards the midline)
        rot = rotation_from_directions(ws.up + 0.8 * ws.forward, midline_in, "right")
        start = c - opening * midline_in
        params = {"contact": np.asarray(contact, float)}
        self._segment(
            "clap", duration, self._arc_via(start, 0.03), rot, self._shapes["together"], 0.0, params=params
        )
        return self

    def clap_with(self, contact: np.ndarray, n_claps: int, period: float, opening: float) -> HandScript:
        """Second part of a clap: meet at ``contact`` (camera frame) ``n_claps`` times, ``period`` seconds
        each, from ``opening`` metres out. ``BimanualScript.clap`` calls both parts on both hands."""
        c = self._in(contact)
        midline_in = -self.ws.axes[:, 0]
        k = 2 * max(
            2, round(period * self.fps / 2)
        )  # frames per clap, even so that a frame hits each contact
        n = n_claps * k
        # distance from the contact: the palms meet at full speed and bounce back (|cos|), open at both ends
        gap = np.abs(np.cos(np.pi * np.arange(1, n + 1) / k))
        pos = c[None] - (opening * gap)[:, None] * midline_in[None]
        rots = Rotation.from_quat(np.repeat(self.rot.as_quat()[None], n, 0))
        anat = np.repeat(self.anat[None], n, 0)
        self._append("clap", pos, rots, anat, np.zeros(n), {"contact": np.asarray(contact, float)})
        return self

    # -- output ---------------------------------------------------------------------------------------------
    def build(self, noise: bool = True, num_frames: int | None = None) -> tuple[HandMotion, MotionLabels]:
        """The motion of this side (camera frame) and its labels; ``noise`` adds smooth tremor and drift;
        ``num_frames`` crops (or holds the last pose to reach) an exact length."""
        pos = np.concatenate(self._pos)
        quat = np.concatenate(self._quat)
        anat = np.concatenate(self._anat)
        clos = np.concatenate(self._clos)
        prim = np.concatenate(self._prim)
        T = len(pos)
        if num_frames is not None:
            idx = np.minimum(np.arange(num_frames), T - 1)
            pos, quat, anat, clos, prim = pos[idx], quat[idx], anat[idx], clos[idx], prim[idx]
            T = num_frames
        rot = Rotation.from_quat(quat)
        if noise and T > 1:
            rng = self.rng
            s = self.fps / 15.0  # noise bandwidth in seconds, not frames
            pos = (
                pos + _smooth_noise(rng, (T, 3), 1.0 * s, 0.0008) + _smooth_noise(rng, (T, 3), 8.0 * s, 0.002)
            )
            rot = Rotation.from_rotvec(_smooth_noise(rng, (T, 3), 1.5 * s, math.radians(0.8))) * rot
            anat = anat + _smooth_noise(rng, (T, 15, 3), 2.0 * s, math.radians(1.5))
        anat = clip_to_limits(anat)
        hand_pose = anatomical_to_pose(anat, self._frames)  # right-hand world
        go = rot.as_rotvec()
        if self.side == "left":
            pos, go, hand_pose = pos * _MIRROR, go * _AA_MIRROR, hand_pose * _AA_MIRROR
        motion = HandMotion(
            global_orient=go, hand_pose=hand_pose, wrist_pos=pos, betas=self.betas, side=self.side, fps=self.fps,
            hand_model=self.hand_model,
        )  # fmt: skip
        segs = self.segments
        labels = MotionLabels(prim.astype(np.int16), clos >= 0.5, clos.astype(np.float32), list(segs))
        if num_frames is not None:
            labels = labels.slice(0, num_frames)
        return motion, labels


# ---------------------------------------------------------------------------------------------------------
# Two hands
# ---------------------------------------------------------------------------------------------------------


class BimanualScript:
    """Two ``HandScript``s (``.left``, ``.right``) on one timeline. Use the hands directly for independent
    actions and ``sync()`` to line them up; the bimanual primitives (``clap``, ``together``) sync first."""

    def __init__(
        self,
        rng: np.random.Generator | None = None,
        fps: float = 15.0,
        workspace: Workspace | None = None,
        tempo: float = 1.0,
        betas: np.ndarray | None = None,
        hand_model: str = "builtin",
    ):
        self.rng = rng if rng is not None else np.random.default_rng()
        self.ws = workspace or Workspace()
        if betas is None:  # one person: the same shape for both hands
            betas = np.clip(self.rng.normal(0, 0.5, NUM_BETAS), -1.5, 1.5)
        seeds = self.rng.integers(0, 2**63, size=2)
        self.right = HandScript(
            "right", np.random.default_rng(seeds[0]), fps, betas, self.ws, tempo=tempo, hand_model=hand_model
        )
        self.left = HandScript(
            "left", np.random.default_rng(seeds[1]), fps, betas, self.ws, tempo=tempo, hand_model=hand_model
        )

    @property
    def hands(self) -> dict[str, HandScript]:
        return {"left": self.left, "right": self.right}

    def sync(self) -> BimanualScript:
        """Pad the hand that is behind with idle frames so both have the same length."""
        gap = self.left.num_frames - self.right.num_frames
        if gap != 0:
            (self.right if gap > 0 else self.left).hold(abs(gap))
        return self

    def clap(self, n_claps: int | None = None, period: float | None = None) -> BimanualScript:
        """Both palms meet in front of the body, ``n_claps`` times."""
        self.sync()
        n_claps = n_claps if n_claps is not None else int(self.rng.integers(2, 5))
        period = period if period is not None else self.rng.uniform(0.4, 0.65)
        opening = self.rng.uniform(0.06, 0.14)
        half_gap = 0.016  # the wrist joints are ~3 cm apart when the palms touch
        ws = self.ws
        c = ws.to_camera([half_gap, self.rng.uniform(0.32, 0.45), self.rng.uniform(0.1, 0.2)])
        c = self.right._in_front(c, rotation_from_directions(ws.up + 0.8 * ws.forward, -ws.axes[:, 0]))
        approach = self.rng.uniform(0.5, 0.8) * self.right.tempo
        self.right.clap_approach(c, opening, approach)
        self.left.clap_approach(c * _MIRROR, opening, approach)
        self.sync()  # a longer turn of one hand may have stretched its approach: both start together
        self.right.clap_with(c, n_claps, period, opening)
        self.left.clap_with(c * _MIRROR, n_claps, period, opening)
        return self.sync()

    def together(
        self, centre: np.ndarray | None = None, width: float | None = None, hold: float | None = None
    ) -> BimanualScript:
        """Both hands approach from the sides of a box of ``width`` metres centred at ``centre`` (camera
        frame), press it (grip closed), lift it, put it down and let go."""
        self.sync()
        ws = self.ws
        if centre is None:
            centre = ws.to_camera(
                [self.rng.uniform(-0.05, 0.05), self.rng.uniform(0.28, 0.4), self.rng.uniform(0.05, 0.1)]
            )
        width = width if width is not None else self.rng.uniform(0.12, 0.24)
        dur = self.rng.uniform(0.8, 1.2) * self.right.tempo
        lift = self.rng.uniform(0.05, 0.12)
        hold = hold if hold is not None else self.rng.uniform(0.3, 0.8)
        right_axis = ws.axes[:, 0]
        # the grasp point is 3 cm out of the palm: put it 1.5 cm inside the box side
        sides = ((self.right, 1.0), (self.left, -1.0))
        points = {
            h.side: np.asarray(centre, float) + sgn * (0.5 * width - 0.015) * right_axis for h, sgn in sides
        }
        for h, sgn in sides:
            rot = rotation_from_directions(ws.forward + 0.3 * ws.up, -sgn * right_axis, h.side)
            h.reach(points[h.side], duration=dur, orient=rot, anchor="grasp", shape="open")
        self.sync()  # each phase starts together (a longer turn stretches one hand's reach)
        phases = (
            lambda h: h.grasp(closure=0.35, duration=0.4 * h.tempo, approach=0.005),
            lambda h: h.lift(lift, duration=0.7 * h.tempo),
            lambda h: h.idle(hold, drift=0.003),
            lambda h: h.place(points[h.side], duration=0.8 * h.tempo, anchor="grasp"),
            lambda h: h.release(duration=0.45 * h.tempo),
        )
        for phase in phases:
            for h, _ in sides:
                phase(h)
            self.sync()
        return self

    def build(
        self, noise: bool = True, num_frames: int | None = None
    ) -> tuple[dict[str, HandMotion], dict[str, MotionLabels]]:
        self.sync()
        out = {side: h.build(noise, num_frames) for side, h in self.hands.items()}
        return {s: m for s, (m, _) in out.items()}, {s: lab for s, (_, lab) in out.items()}


# ---------------------------------------------------------------------------------------------------------
# Random scripts
# ---------------------------------------------------------------------------------------------------------


def _own_side_point(
    h: HandScript, rng: np.random.Generator, height=(0.02, 0.12), cross: float = 0.25
) -> np.ndarray:
    """A table point mostly on this hand's side (camera frame of the hand's side)."""
    ws = h.ws
    lat = (-0.12 if rng.random() < cross else 0.0, ws.lateral_range[1])
    p = ws.sample_point(rng, lateral=lat, height=height)
    return p * _MIRROR if h.side == "left" else p


def _activity(h: HandScript, rng: np.random.Generator, name: str) -> None:
    """One random everyday activity (a chain of primitives) for one hand."""
    if name == "pick_place":
        obj, dest = _own_side_point(h, rng, (0.02, 0.06)), _own_side_point(h, rng, (0.02, 0.06))
        h.reach(obj, anchor="grasp").grasp(rng.uniform(0.45, 0.9)).lift().move(
            dest + 0.08 * h.ws.up, anchor="grasp"
        )
        h.place(dest, anchor="grasp").release()
    elif name == "pinch_pick":
        obj, dest = _own_side_point(h, rng, (0.0, 0.02)), _own_side_point(h, rng, (0.0, 0.02))
        h.reach(obj, anchor="pinch").pinch().lift().move(dest + 0.06 * h.ws.up, anchor="pinch").place(
            dest, anchor="pinch"
        ).release()
    elif name == "inspect":
        obj = _own_side_point(h, rng, (0.02, 0.06))
        h.reach(obj, anchor="grasp").grasp(rng.uniform(0.5, 0.9)).lift(rng.uniform(0.1, 0.2))
        a = float(rng.uniform(50, 110))
        h.rotate(a).idle(rng.uniform(0.3, 0.8)).rotate(-a).place(obj, anchor="grasp").release()
    elif name == "point":
        h.point(_own_side_point(h, rng, (0.0, 0.03), cross=0.5))
    elif name == "wave":
        h.wave()
    elif name == "rotate":
        h.reach(_own_side_point(h, rng, (0.08, 0.2)), shape="relaxed")
        a = float(rng.uniform(40, 120))
        h.rotate(a).idle(rng.uniform(0.2, 0.6)).rotate(-a * rng.uniform(0.7, 1.0))
    elif name == "flex":
        h.reach(_own_side_point(h, rng, (0.08, 0.2)), shape="open").flex()
    elif name == "push":
        obj = _own_side_point(h, rng, (0.03, 0.08))
        h.reach(obj, shape="open").push()
        h.release()
    elif name == "open_close":
        for _ in range(int(rng.integers(1, 3))):
            h.close().idle(rng.uniform(0.2, 0.5)).open(spread=bool(rng.random() < 0.5))
    elif name == "idle":
        h.idle(rng.uniform(0.8, 2.0))
    else:
        raise InputError("sample_sequence", "activity", f"one of {ACTIVITIES}", repr(name))
    if rng.random() < 0.3:
        h.go_home()


#: everyday chains of primitives drawn by ``sample_sequence`` when no primitive list is given
ACTIVITIES = (
    "pick_place",
    "pinch_pick",
    "inspect",
    "point",
    "wave",
    "rotate",
    "flex",
    "push",
    "open_close",
    "idle",
)
_ACTIVITY_WEIGHTS = np.array([3, 2, 1.5, 1, 1, 1, 1, 1, 1, 0.7])


def _primitive(h: HandScript, rng: np.random.Generator, name: str) -> None:
    """One primitive with random parameters (for ``sample_sequence(primitives=...)``)."""
    if name == "reach":
        h.reach(_own_side_point(h, rng, (0.02, 0.2)), shape=str(rng.choice(["preshape", "open", "relaxed"])))
    elif name == "grasp":
        h.grasp(rng.uniform(0.4, 1.0))
    elif name == "release":
        h.release()
    elif name == "pinch":
        h.pinch()
    elif name == "point":
        h.point(_own_side_point(h, rng, (0.0, 0.03), cross=0.5))
    elif name == "wave":
        h.wave()
    elif name == "rotate":
        h.rotate()
    elif name == "flex":
        h.flex()
    elif name == "open":
        h.open(spread=bool(rng.random() < 0.5))
    elif name == "close":
        h.close()
    elif name == "lift":
        if h.ws.to_table(h.pos)[2] > 0.3:
            h.reach(_own_side_point(h, rng, (0.02, 0.06)))
        h.lift()
    elif name == "move":
        h.move(_own_side_point(h, rng, (0.04, 0.2)))
    elif name == "place":
        h.place(_own_side_point(h, rng, (0.02, 0.05)))
    elif name == "push":
        h.push()
    elif name == "idle":
        h.idle()
    else:
        raise InputError(
            "sample_sequence", "primitives", f"names from {SINGLE_PRIMITIVES} (and 'clap')", repr(name)
        )


def _check_hands(hands) -> tuple[str, ...]:
    hands = (hands,) if isinstance(hands, str) else tuple(hands)
    if not hands or len(set(hands)) != len(hands):
        raise InputError(
            "sample_sequence", "hands", "('left',), ('right',) or ('left', 'right')", repr(hands)
        )
    for s in hands:
        check_side(s)
    return hands


def sample_labelled_sequence(
    rng: np.random.Generator,
    seconds: float,
    fps: float = 15.0,
    hands: Sequence[str] = ("right",),
    primitives: Sequence[str] | None = None,
    workspace: Workspace | None = None,
    noise: bool = True,
) -> tuple[dict[str, HandMotion], dict[str, MotionLabels]]:
    """A random motion of ``seconds`` (exactly round(seconds * fps) frames) for each of ``hands``, with
    labels. ``primitives``: draw only these primitives (random parameters) instead of everyday activities.
    For two hands, scenes are symmetric (clap, lifting a box together) or each hand acts on its own, one
    sometimes resting."""
    if not (math.isfinite(seconds) and seconds > 0):
        raise InputError("sample_sequence", "seconds", "a positive duration", repr(seconds))
    hands = _check_hands(hands)
    if primitives is not None:
        primitives = tuple(primitives)
        bad = [p for p in primitives if p not in PRIMITIVES]
        if bad or not primitives:
            raise InputError(
                "sample_sequence",
                "primitives",
                f"a non-empty list of names from {PRIMITIVES}",
                repr(bad or primitives),
            )
        if primitives == ("clap",) and len(hands) == 1:
            raise InputError(
                "sample_sequence",
                "primitives",
                "a one-hand primitive for one hand ('clap' needs two)",
                "('clap',)",
            )
    T = int(round(seconds * fps))
    if T < 2:
        raise InputError("sample_sequence", "seconds", f"at least 2 frames at {fps} fps", repr(seconds))
    ws = workspace or Workspace.random(rng)
    tempo = float(rng.uniform(0.75, 1.3))
    if len(hands) == 2:
        script = BimanualScript(rng, fps, ws, tempo)
        while min(h.num_frames for h in script.hands.values()) < T:
            _bimanual_step(script, rng, primitives)
        motions, labels = script.build(noise, T)
        return motions, labels
    h = HandScript(hands[0], rng, fps, workspace=ws, tempo=tempo)
    while h.num_frames < T:
        _single_step(h, rng, primitives)
    m, lab = h.build(noise, T)
    return {hands[0]: m}, {hands[0]: lab}


def _single_step(h: HandScript, rng: np.random.Generator, primitives: tuple[str, ...] | None) -> None:
    if primitives is None:
        _activity(h, rng, str(rng.choice(ACTIVITIES, p=_ACTIVITY_WEIGHTS / _ACTIVITY_WEIGHTS.sum())))
    else:
        singles = [p for p in primitives if p != "clap"]
        _primitive(h, rng, str(rng.choice(singles)))


def _bimanual_step(
    script: BimanualScript, rng: np.random.Generator, primitives: tuple[str, ...] | None
) -> None:
    if primitives is not None:
        if "clap" in primitives and (len(primitives) == 1 or rng.random() < 1.0 / len(primitives)):
            script.clap()
            return
        singles = [p for p in primitives if p != "clap"]
        for h in script.hands.values():
            _primitive(h, rng, str(rng.choice(singles)))
        script.sync()
        return
    u = rng.random()
    if u < 0.15:
        script.clap()
    elif u < 0.3:
        script.together()
    elif u < 0.55:  # one hand works, the other rests
        active = script.hands[str(rng.choice(["left", "right"]))]
        _activity(
            active,
            rng,
            str(rng.choice(ACTIVITIES[:-1], p=_ACTIVITY_WEIGHTS[:-1] / _ACTIVITY_WEIGHTS[:-1].sum())),
        )
        script.sync()
    else:  # both busy with their own things
        for h in script.hands.values():
            _activity(h, rng, str(rng.choice(ACTIVITIES, p=_ACTIVITY_WEIGHTS / _ACTIVITY_WEIGHTS.sum())))
        script.sync()


def sample_sequence(
    rng: np.random.Generator,
    seconds: float,
    fps: float = 15.0,
    hands: Sequence[str] = ("right",),
    primitives: Sequence[str] | None = None,
    workspace: Workspace | None = None,
    noise: bool = True,
) -> dict[str, HandMotion]:
    """``sample_labelled_sequence`` without the labels: {side: HandMotion}."""
    return sample_labelled_sequence(rng, seconds, fps, hands, primitives, workspace, noise)[0]


def generate_dataset(
    n_sequences: int, seconds: float = 4.0, seed: int = 0, fps: float = 15.0, bimanual_prob: float = 0.4
) -> list[HandMotion]:
    """``n_sequences`` one-hand motions for tokenizer training, left and right, deterministic given ``seed``
    (sequence i depends only on (seed, i), so a longer dataset starts with the shorter one). A share
    ``bimanual_prob`` comes from two-hand scenes (one of the two hands is kept)."""
    if int(n_sequences) != n_sequences or n_sequences < 0:
        raise InputError("generate_dataset", "n_sequences", "a non-negative integer", repr(n_sequences))
    out = []
    for i in range(int(n_sequences)):
        rng = np.random.default_rng([int(seed), i])
        side = "right" if rng.random() < 0.5 else "left"
        if rng.random() < bimanual_prob:
            motions = sample_sequence(rng, seconds, fps, ("left", "right"))
        else:
            motions = sample_sequence(rng, seconds, fps, (side,))
        out.append(motions[side])
    return out
