"""Names the built-in motion shares: primitives, fingers, depth limits, mirrors."""


from __future__ import annotations

import numpy as np

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
LONG_FINGERS = ("index", "middle", "ring", "little")
#: the generator keeps every joint at least this far in front of the camera (except at explicit targets)
MIN_HAND_DEPTH_M = 0.22
#: average wrist turning speed (rad/s) that sets the least duration of a turn (its min-jerk peak is 1.875x)
MEAN_WRIST_TURN_RAD_S = 3.0
MIRROR_X = np.array([-1.0, 1.0, 1.0])  # x -> -x: the camera-frame mirror that turns a right hand into a left
AA_MIRROR = np.array([1.0, -1.0, -1.0])  # the same mirror acting on an axis-angle vector



