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

Modules, along the flow: ``constants`` (primitives, fingers, mirrors) -> ``shapes`` (anatomical finger poses,
key shapes) -> ``workspace`` (the table in the camera frame) -> ``labels`` -> ``profiles`` (min-jerk paths,
slerp, noise) -> ``script`` (one hand) -> ``bimanual`` (two hands) -> ``sampling`` (random scripts, datasets).
"""

from handvla.synth.builtin_motion.bimanual import BimanualScript
from handvla.synth.builtin_motion.constants import (
    FINGER_ROW,
    FINGERS,
    MIN_HAND_DEPTH_M,
    PRIMITIVE_ID,
    PRIMITIVES,
    SINGLE_PRIMITIVES,
)
from handvla.synth.builtin_motion.labels import MotionLabels, Segment
from handvla.synth.builtin_motion.profiles import min_jerk
from handvla.synth.builtin_motion.sampling import (
    ACTIVITIES,
    generate_dataset,
    sample_labelled_sequence,
    sample_sequence,
)
from handvla.synth.builtin_motion.script import HandScript
from handvla.synth.builtin_motion.shapes import (
    anatomical_frames,
    clip_to_limits,
    flex_finger,
    forward_kinematics_local,
    key_shape,
)
from handvla.synth.builtin_motion.workspace import Workspace, rotation_from_directions

__all__ = [
    "ACTIVITIES",
    "FINGERS",
    "FINGER_ROW",
    "MIN_HAND_DEPTH_M",
    "PRIMITIVES",
    "PRIMITIVE_ID",
    "SINGLE_PRIMITIVES",
    "BimanualScript",
    "HandScript",
    "MotionLabels",
    "Segment",
    "Workspace",
    "anatomical_frames",
    "clip_to_limits",
    "flex_finger",
    "forward_kinematics_local",
    "generate_dataset",
    "key_shape",
    "min_jerk",
    "rotation_from_directions",
    "sample_labelled_sequence",
    "sample_sequence",
]
