"""Finger poses as anatomical angles: the model geometry they act on, joint limits, the key hand shapes (open, fist, pinch, ...) and finger flexing."""


from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from handvla.errors import InputError
from handvla.hand.anatomy import JOINT_LIMITS_RAD, anatomical_to_pose
from handvla.hand.registry import shared_hand_model
from handvla.hand.topology import MANO_PARENTS, MANO_TO_OPENPOSE, NUM_BETAS, check_side
from handvla.synth.builtin_motion.constants import (
    FINGER_ROW,
    FINGERS,
    LONG_FINGERS,
    MIRROR_X,
)

# ---------------------------------------------------------------------------------------------------------
# Anatomical angles <-> axis-angle
# ---------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def model_geometry(hand_model: str, betas_key: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-hand rest joints (16, 3), tips (5, 3) and anatomical frames (15, 3, 3) of a model, float64."""


    betas = torch.from_numpy(np.frombuffer(betas_key, np.float64).astype(np.float32)).reshape(1, NUM_BETAS)
    model = shared_hand_model(hand_model, "right")
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
    F = model_geometry(hand_model, b.tobytes())[2]
    if side == "left":  # the left model's frames are the right's mirrored: twist M t, spread M s, bend -M b
        F = MIRROR_X[None, :, None] * F * np.array([1.0, 1.0, -1.0])
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
    for k, f in enumerate(LONG_FINGERS):
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
def key_shapes(hand_model: str) -> dict[str, np.ndarray]:
    J, tips, frames = model_geometry(hand_model, np.zeros(NUM_BETAS).tobytes())
    shapes = dict(_BASE_SHAPES)
    # Pinch: the thumb tip meets the index tip.
    shapes["pinch"] = _solve_thumb(shapes["pinch"], lambda j: j[8], (20, 20, 25, 0, 20, 10), J, tips, frames)
    # Fist: the thumb tip lies across the outside of the index and middle middle phalanges.
    palm_out = palm_normal(J)

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
    shapes = key_shapes(hand_model)
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


def palm_normal(J: np.ndarray) -> np.ndarray:
    """Unit normal out of the palm of the right rest hand, (3,), model frame (the builtin's is -y)."""
    n = np.cross(J[1] - J[0], J[7] - J[0])
    return n / np.linalg.norm(n)
