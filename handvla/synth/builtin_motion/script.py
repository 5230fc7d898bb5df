"""One hand's script: primitives chained into a HandMotion with its labels."""


from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from handvla.errors import InputError
from handvla.hand.anatomy import anatomical_to_pose
from handvla.hand.motion import HandMotion
from handvla.hand.topology import NUM_BETAS, check_side
from handvla.synth.builtin_motion.constants import (
    AA_MIRROR,
    FINGERS,
    MEAN_WRIST_TURN_RAD_S,
    MIN_HAND_DEPTH_M,
    MIRROR_X,
    PRIMITIVE_ID,
)
from handvla.synth.builtin_motion.labels import MotionLabels, Segment
from handvla.synth.builtin_motion.profiles import min_jerk_profile, path_through, slerp, smooth_noise
from handvla.synth.builtin_motion.shapes import (
    clip_to_limits,
    flex_finger,
    forward_kinematics_local,
    key_shape,
    key_shapes,
    model_geometry,
    palm_normal,
)
from handvla.synth.builtin_motion.workspace import Workspace, rotation_from_directions

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
        self._J, self._tips, self._frames = model_geometry(hand_model, self.betas.tobytes())
        self._shapes = key_shapes(hand_model)
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
        return p * MIRROR_X if self.side == "left" else p

    def _in_rot(self, r: Rotation) -> Rotation:
        if self.side == "left":
            M = np.diag(MIRROR_X)
            return Rotation.from_matrix(M @ r.as_matrix() @ M)
        return r

    def _in_dir(self, v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, np.float64)
        return v * MIRROR_X if self.side == "left" else v

    @property
    def wrist_position(self) -> np.ndarray:
        """(3,) where the wrist is now (end of the script so far), camera frame, metres."""
        return self.pos * MIRROR_X if self.side == "left" else self.pos.copy()

    @property
    def wrist_rotation(self) -> Rotation:
        """The wrist rotation now (end of the script so far), camera frame (``global_orient``)."""
        return self._in_rot(self.rot)  # mirroring is its own inverse

    def anchor_positions(self, motion: HandMotion, anchor: str = "grasp") -> np.ndarray:
        """(T, 3) camera-frame path of an anchor point ('wrist', 'grasp', 'pinch') of a motion built by this
        script: e.g. where a held object is, frame by frame."""
        offset = self.anchor_offset(anchor)  # right-hand model frame; the left model is its mirror image
        if motion.side == "left":
            offset = offset * MIRROR_X
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
            return palm + 0.03 * palm_normal(J)
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
            n = max(self._n(duration), int(math.ceil(angle / MEAN_WRIST_TURN_RAD_S * self.fps)))
        s = min_jerk_profile(n)
        via = [np.asarray(v, np.float64) for v in via]
        if via and keep_in_front:
            via[-1] = self._in_front(via[-1], r1)
        if via:
            pos = path_through(np.vstack([self.pos[None], *[v[None] for v in via]]), s)
        else:
            pos = np.repeat(self.pos[None], n, 0)
        rots = slerp(self.rot, r1, min_jerk_profile(n, *rot_window))
        sw = min_jerk_profile(n, *shape_window)
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
        palm_dir = self.rot.apply(palm_normal(self._J))
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
        back = -self.rot.apply(palm_normal(self._J)) + self.ws.up
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
            target = target * MIRROR_X if self.side == "left" else target
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
            bump = np.sin(np.pi * min_jerk_profile(n)) ** 2  # down and back up, smooth at both ends
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
            direction = direction * MIRROR_X if self.side == "left" else direction
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
        home = home * MIRROR_X if self.side == "left" else home
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
                pos + smooth_noise(rng, (T, 3), 1.0 * s, 0.0008) + smooth_noise(rng, (T, 3), 8.0 * s, 0.002)
            )
            rot = Rotation.from_rotvec(smooth_noise(rng, (T, 3), 1.5 * s, math.radians(0.8))) * rot
            anat = anat + smooth_noise(rng, (T, 15, 3), 2.0 * s, math.radians(1.5))
        anat = clip_to_limits(anat)
        hand_pose = anatomical_to_pose(anat, self._frames)  # right-hand world
        go = rot.as_rotvec()
        if self.side == "left":
            pos, go, hand_pose = pos * MIRROR_X, go * AA_MIRROR, hand_pose * AA_MIRROR
        motion = HandMotion(
            global_orient=go, hand_pose=hand_pose, wrist_pos=pos, betas=self.betas, side=self.side, fps=self.fps,
            hand_model=self.hand_model,
        )  # fmt: skip
        segs = self.segments
        labels = MotionLabels(prim.astype(np.int16), clos >= 0.5, clos.astype(np.float32), list(segs))
        if num_frames is not None:
            labels = labels.slice(0, num_frames)
        return motion, labels
