"""Hand skeleton topology: joint orders, parents, names. One source of truth for every hand model.

Two orders are used:
- MANO order, 16 joints (the kinematic tree): 0 wrist, 1-3 index, 4-6 middle, 7-9 little, 10-12 ring,
  13-15 thumb (each finger base to tip: MCP, PIP, DIP; thumb CMC, MCP, IP).
- OpenPose order, 21 joints (what every model outputs, and what datasets store): wrist, thumb 1-4,
  index 1-4, middle 1-4, ring 1-4, little 1-4, where the 4th point of each finger is its tip.
"""

from __future__ import annotations

import numpy as np

from handvla.errors import InputError

NUM_MANO_JOINTS = 16
NUM_JOINTS = 21
NUM_FINGER_JOINTS = 15
NUM_BETAS = 10
SIDES = ("left", "right")

#: parent of each MANO joint (-1 for the wrist)
MANO_PARENTS = np.array([-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14])

MANO_JOINT_NAMES = (
    "wrist",
    "index1", "index2", "index3",
    "middle1", "middle2", "middle3",
    "little1", "little2", "little3",
    "ring1", "ring2", "ring3",
    "thumb1", "thumb2", "thumb3",
)

#: fingers in MANO order, each as its three MANO joint indices (base to tip)
MANO_FINGERS = {
    "index": (1, 2, 3),
    "middle": (4, 5, 6),
    "little": (7, 8, 9),
    "ring": (10, 11, 12),
    "thumb": (13, 14, 15),
}

#: index of the fingertip point (16..20 in the 21-point MANO+tips array) for each finger
TIP_INDEX = {"thumb": 16, "index": 17, "middle": 18, "ring": 19, "little": 20}

#: 21 MANO+tips points (16 MANO joints, then tips thumb, index, middle, ring, little) -> OpenPose order
MANO_TO_OPENPOSE = np.array([0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20])

OPENPOSE_JOINT_NAMES = (
    "wrist",
    "thumb1", "thumb2", "thumb3", "thumb4",
    "index1", "index2", "index3", "index4",
    "middle1", "middle2", "middle3", "middle4",
    "ring1", "ring2", "ring3", "ring4",
    "little1", "little2", "little3", "little4",
)

#: parent of each OpenPose joint (-1 for the wrist): the bones drawn by renderers
OPENPOSE_PARENTS = np.array([-1, 0, 1, 2, 3, 0, 5, 6, 7, 0, 9, 10, 11, 0, 13, 14, 15, 0, 17, 18, 19])

#: OpenPose index of each finger's 4 points, base to tip
OPENPOSE_FINGERS = {
    "thumb": (1, 2, 3, 4),
    "index": (5, 6, 7, 8),
    "middle": (9, 10, 11, 12),
    "ring": (13, 14, 15, 16),
    "little": (17, 18, 19, 20),
}


def check_side(side: str) -> str:
    """Return ``side`` if it is 'left' or 'right', else raise a clear error."""
    if side not in SIDES:

        raise InputError(None, "side", "'left' or 'right'", repr(side))
    return side
