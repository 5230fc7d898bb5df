"""Anatomical joint angles and joint limits: the one definition, shared by fitting and motion synthesis.

A finger joint's rotation (axis-angle, in its parent's frame) is read in the joint's anatomical frame from
``HandModel.anatomical_frames()`` (columns twist, spread, bend): the angles are the axis-angle vector's
coordinates in that frame, ``angles = F^T aa``, and ``aa = F @ angles`` back.

Both hands share one limit table. The left hand's frames are proper rotations of the mirrored right-hand
frames with the bend axis reversed (so that a positive bend flexes towards the palm on both hands); a
mirror image reverses twist and spread, so for a left hand those two angles are negated here, and a left
pose reads with exactly the angles of its mirrored right pose.
"""

from __future__ import annotations

import numpy as np

from handvla.hand.topology import MANO_FINGERS

#: (twist, spread, bend) [min, max] degrees by joint kind (docs: datasets.md, as in manotorch's anatomy loss)
LIMITS_DEG = {
    "finger_mcp": ((0.0, 0.0), (-5.0, 5.0), (0.0, 90.0)),
    "finger_pip": ((0.0, 0.0), (0.0, 0.0), (0.0, 90.0)),
    "finger_dip": ((0.0, 0.0), (0.0, 0.0), (0.0, 90.0)),
    "thumb_cmc": ((-45.0, 45.0), (-15.0, 45.0), (0.0, 45.0)),
    "thumb_mcp": ((0.0, 0.0), (-10.0, 10.0), (0.0, 90.0)),
    "thumb_ip": ((0.0, 0.0), (0.0, 0.0), (0.0, 90.0)),
}

_LEFT_SIGN = np.array([-1.0, -1.0, 1.0])  # twist and spread change sign under the mirror


def joint_kinds() -> list[str]:
    """The limit kind of each of the 15 finger joints, MANO order (index, middle, little, ring, thumb)."""
    kinds = [""] * 15
    for finger, joints in MANO_FINGERS.items():
        names = ("thumb_cmc", "thumb_mcp", "thumb_ip") if finger == "thumb" else ("finger_mcp", "finger_pip", "finger_dip")
        for j, k in zip(joints, names):
            kinds[j - 1] = k
    return kinds


#: (15, 3, 2) [min, max] degrees of (twist, spread, bend) per hand_pose row
JOINT_LIMITS_DEG = np.array([LIMITS_DEG[k] for k in joint_kinds()], np.float64)
JOINT_LIMITS_RAD = np.deg2rad(JOINT_LIMITS_DEG)


def limits_rad(margin_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(15, 3) lower and upper limits in radians, each widened by ``margin_deg``."""
    return np.deg2rad(JOINT_LIMITS_DEG[..., 0] - margin_deg), np.deg2rad(JOINT_LIMITS_DEG[..., 1] + margin_deg)


def _einsum(spec: str, a, b):
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return np.einsum(spec, a, b)
    import torch  # only for torch inputs: the module itself stays numpy-only

    return torch.einsum(spec, torch.as_tensor(a).to(b.dtype) if isinstance(b, torch.Tensor) else a, b)


def pose_to_anatomical(hand_pose, frames, side: str = "right"):
    """(..., 15, 3) axis-angle + frames (15 or ..., 15, 3, 3) -> (..., 15, 3) radians (twist, spread, bend).
    numpy in, numpy out; torch in, torch out (differentiable)."""
    ang = _einsum("...jba,...jb->...ja", frames, hand_pose)
    if side == "left":
        ang = ang * (_LEFT_SIGN if isinstance(ang, np.ndarray) else ang.new_tensor(_LEFT_SIGN))
    return ang


def anatomical_to_pose(angles, frames, side: str = "right"):
    """Inverse of ``pose_to_anatomical``: (..., 15, 3) radians -> (..., 15, 3) axis-angle."""
    if side == "left":
        angles = angles * (_LEFT_SIGN if isinstance(angles, np.ndarray) else angles.new_tensor(_LEFT_SIGN))
    return _einsum("...jab,...jb->...ja", frames, angles)
