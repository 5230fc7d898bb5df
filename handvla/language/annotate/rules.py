"""The rule-based kinematic annotator: text from the hand motion itself, no model needed.

What is measured (all in the CAMERA frame, OpenCV axes: x right, y down, z forward):
- wrist trajectory: net displacement and speed per window; movement phases from the smoothed speed;
  directions named along the camera axes (left/right, up/down, towards/away from the camera);
- finger state from the hand model's 21 joints: per finger the flexion = sum of the three joint angles
  between consecutive bones (degrees; 0 = straight), the thumb-index tip gap relative to the palm length;
  from these the shape (open, relaxed, grip, fist, pinch, point) and the grip state (closed = grip, fist or
  pinch), median-filtered over 1/3 s so that one noisy frame does not flip it;
- wrist rotation (angle between the first and last orientation of a window, sense as seen from the camera)
  and waving (the angular velocity about its main axis reversing repeatedly);
- the two hands: the distance between the wrists (approaching, moving apart, touching, clapping);
- known objects (where the source has them): contact = a hand point (palm centre, grasp point 3 cm out of
  the palm, fingertips) within ``contact_margin_m`` of the object's covering sphere; an object is *held*
  from the frame the grip closes in contact with it until the grip opens (it moves with the hand, so
  contact with its initial position is not required meanwhile); pointing targets from the index ray.

Text is composed from these facts with varied phrasings chosen by a hash of the clip (the same clip always
gets the same text). Thresholds were set on the built-in hand's key shapes (``handvla.synth.builtin_motion``)
and checked against its per-frame labels; ``benchmarks/annotate.py`` measures the accuracy on HandWorld.
"""

from __future__ import annotations

import dataclasses
import math
import random
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ConfigDict
from scipy.ndimage import gaussian_filter1d, median_filter
from scipy.spatial.transform import Rotation

from handvla.config import ConfigModel
from handvla.hand.motion import HandMotion
from handvla.hand.registry import motion_joints
from handvla.hand.topology import OPENPOSE_FINGERS
from handvla.language.annotate.base import (
    Annotator,
    Clip,
    ClipAnnotation,
    KnownObject,
    SecondText,
    stable_hash,
)

#: finger-shape classes, in the order of the integer codes of ``HandTrack.shape``
SHAPES = ("open", "relaxed", "grip", "fist", "pinch", "point")
SHAPE_ID = {s: i for i, s in enumerate(SHAPES)}
CLOSED_SHAPES = ("grip", "fist", "pinch")
#: camera-frame axis terms: (axis, sign) -> term
AXIS_TERMS = {
    (0, 1): "right",
    (0, -1): "left",
    (1, 1): "down",
    (1, -1): "up",
    (2, 1): "away",
    (2, -1): "towards",
}
FINGER_ORDER = ("thumb", "index", "middle", "ring", "little")


class RuleConfig(ConfigModel):
    """Thresholds of the kinematic annotator (metres, seconds, degrees)."""

    model_config = ConfigDict(frozen=True)

    still_m: float = 0.025  # net wrist displacement over a window below which the hand "stays"
    secondary_ratio: float = 0.5  # a second (third) axis is named when >= this share of the main one
    move_speed_m_s: float = 0.06  # movement phases: smoothed wrist speed above this ...
    min_phase_s: float = 0.3  # ... for at least this long
    min_phase_m: float = 0.03  # and covering at least this net distance
    closed_flex_deg: float = 100.0  # mean flexion of index..little for a closed (power) grip
    fist_flex_deg: float = 190.0
    open_flex_deg: float = 30.0
    point_index_deg: float = 50.0  # pointing: index nearly straight ...
    point_others_deg: float = 150.0  # ... middle, ring and little curled
    pinch_gap_ratio: float = 0.25  # thumb tip - index tip gap / palm length for a pinch ...
    pinch_index_max_deg: float = 117.0  # ... with the index flexed less than a power grip closing as far
    state_filter_s: float = 0.33  # median filter on the shape / grip state
    rotation_deg: float = 30.0  # a wrist turn worth naming
    wave_min_legs: int = 3  # back-and-forth legs of the wrist angle within a window for a wave
    wave_min_swing_deg: float = 12.0
    contact_margin_m: float = 0.02
    approach_gain_m: float = 0.05  # "towards the X": the distance to X shrinks by this much ...
    approach_end_m: float = 0.08  # ... and ends within this of its surface
    pointing_max_deg: float = 15.0
    together_m: float = 0.10  # wrists closer than this: the hands touch / meet
    hands_approach_m: float = 0.04  # change of the wrist distance worth naming


# ---------------------------------------------------------------------------------------------------------
# Per-frame kinematics of one hand
# ---------------------------------------------------------------------------------------------------------


@dataclass
class HandTrack:
    """Per-frame quantities of one hand over a clip (T frames)."""

    side: str
    fps: float
    valid: np.ndarray  # (T,) bool
    wrist: np.ndarray  # (T, 3) metres, camera frame (gaps filled by interpolation)
    wrist_smooth: np.ndarray  # (T, 3)
    joints: np.ndarray  # (T, 21, 3)
    rotation: Rotation  # (T,) wrist orientation, camera frame
    flex_deg: np.ndarray  # (T, 5) per finger (thumb, index, middle, ring, little), sum of joint angles
    pinch_gap: np.ndarray  # (T,) thumb-index tip gap / palm length
    shape: np.ndarray  # (T,) int codes into SHAPES (filtered)
    closed: np.ndarray  # (T,) bool, grip closed (filtered)
    contact_points: np.ndarray  # (T, 7, 3): palm centre, grasp point, 5 fingertips
    speed: np.ndarray  # (T,) m/s of the smoothed wrist
    rot_step: np.ndarray  # (T-1, 3) rotation vector from each frame to the next, camera frame

    def __len__(self) -> int:
        return len(self.valid)


def finger_flexion_deg(joints: np.ndarray) -> np.ndarray:
    """(..., 21, 3) OpenPose joints -> (..., 5) flexion per finger (thumb, index, middle, ring, little):
    the sum of the angles between consecutive bones from the wrist to the tip, degrees (0 = straight)."""
    out = []
    for f in FINGER_ORDER:
        chain = (0, *OPENPOSE_FINGERS[f])
        bones = [joints[..., chain[i + 1], :] - joints[..., chain[i], :] for i in range(4)]
        bones = [b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-9) for b in bones]
        total = 0.0
        for i in range(3):
            c = np.clip(np.sum(bones[i] * bones[i + 1], axis=-1), -1.0, 1.0)
            total = total + np.degrees(np.arccos(c))
        out.append(total)
    return np.stack(out, -1)


def classify_shape(flex_deg: np.ndarray, pinch_gap: np.ndarray, cfg: RuleConfig) -> np.ndarray:
    """(T, 5) flexion, (T,) pinch gap -> (T,) shape codes (unfiltered)."""
    idx = flex_deg[:, 1]
    four = flex_deg[:, 1:].mean(1)
    others = flex_deg[:, 2:].mean(1)
    out = np.full(len(idx), SHAPE_ID["relaxed"], np.int64)
    out[four < cfg.open_flex_deg] = SHAPE_ID["open"]
    out[four >= cfg.closed_flex_deg] = SHAPE_ID["grip"]
    out[four >= cfg.fist_flex_deg] = SHAPE_ID["fist"]
    # a pinch bends the index less than a power grip that closes as far (the thumb meets the index tip
    # in both for mid-sized objects)
    pinch = (pinch_gap < cfg.pinch_gap_ratio) & (idx > 40.0) & (idx < cfg.pinch_index_max_deg)
    out[pinch] = SHAPE_ID["pinch"]
    point = (idx < cfg.point_index_deg) & (others > cfg.point_others_deg)
    out[point] = SHAPE_ID["point"]
    return out


def _fill_invalid(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Linear interpolation over invalid frames along axis 0 (ends held)."""
    if valid.all() or not valid.any():
        return x
    t = np.arange(len(valid))
    flat = x.reshape(len(valid), -1).copy()
    for c in range(flat.shape[1]):
        flat[~valid, c] = np.interp(t[~valid], t[valid], flat[valid, c])
    return flat.reshape(x.shape)


def _mode_filter(codes: np.ndarray, size: int) -> np.ndarray:
    """Most frequent code in a centred window (ties -> the lower code), for small integer codes."""
    if size <= 1 or len(codes) < 2:
        return codes
    onehot = np.eye(len(SHAPES))[codes]  # (T, S)
    counts = np.stack([np.convolve(onehot[:, s], np.ones(size), mode="same") for s in range(len(SHAPES))], 1)
    return counts.argmax(1)


def compute_track(
    motion: HandMotion,
    joints: np.ndarray | None = None,
    cfg: RuleConfig | None = None,
    mano_dir: str | None = None,
) -> HandTrack:
    """Everything the rules need about one hand, per frame."""
    cfg = cfg or RuleConfig()
    fps = float(motion.fps)
    valid = np.asarray(motion.valid, bool)
    j = np.asarray(motion_joints(motion, None, mano_dir) if joints is None else joints, np.float64)
    j = _fill_invalid(j, valid)
    wrist = _fill_invalid(motion.wrist_pos.astype(np.float64), valid)
    rotvec = _fill_invalid(motion.global_orient.astype(np.float64), valid)
    sigma = max(0.5, 0.1 * fps)  # ~0.1 s: removes tremor, keeps reaches
    ws = gaussian_filter1d(wrist, sigma, axis=0, mode="nearest") if len(wrist) > 1 else wrist
    speed = np.zeros(len(wrist))
    if len(wrist) > 1:
        speed = np.linalg.norm(np.gradient(ws, axis=0), axis=1) * fps
    R = Rotation.from_rotvec(rotvec)
    rot_step = (R[1:] * R[:-1].inv()).as_rotvec() if len(rotvec) > 1 else np.zeros((0, 3))
    flex = finger_flexion_deg(j)
    palm_len = np.maximum(np.linalg.norm(j[:, 9] - j[:, 0], axis=-1), 1e-6)
    gap = np.linalg.norm(j[:, 4] - j[:, 8], axis=-1) / palm_len
    size = max(1, int(round(cfg.state_filter_s * fps)) | 1)
    shape = _mode_filter(classify_shape(flex, gap, cfg), size)
    closed_raw = np.isin(shape, [SHAPE_ID[s] for s in CLOSED_SHAPES])
    closed = (
        median_filter(closed_raw.astype(np.uint8), size=size, mode="nearest").astype(bool)
        if len(shape) > 2
        else closed_raw
    )
    palm = j[:, [0, 5, 9, 13, 17]].mean(1)
    n = np.cross(j[:, 5] - j[:, 0], j[:, 17] - j[:, 0])
    n = n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-9)
    if motion.side == "left":  # mirrored hand: the same cross product points into the palm
        n = -n
    grasp_pt = palm + 0.03 * n
    tips = j[:, [4, 8, 12, 16, 20]]
    contact_points = np.concatenate([palm[:, None], grasp_pt[:, None], tips], 1)
    return HandTrack(
        side=motion.side,
        fps=fps,
        valid=valid,
        wrist=wrist,
        wrist_smooth=ws,
        joints=j,
        rotation=R,
        flex_deg=flex,
        pinch_gap=gap,
        shape=shape,
        closed=closed,
        contact_points=contact_points,
        speed=speed,
        rot_step=rot_step,
    )


# ---------------------------------------------------------------------------------------------------------
# Objects
# ---------------------------------------------------------------------------------------------------------


def object_gaps(track: HandTrack, objects: list[KnownObject]) -> np.ndarray:
    """(T, n_objects) smallest distance from a hand point (palm centre, grasp point, fingertips) to each
    object's surface, metres (<= 0 inside)."""
    T = len(track)
    out = np.full((T, len(objects)), np.inf)
    for k, o in enumerate(objects):
        out[:, k] = o.surface_distance(track.contact_points).min(1)
    return out


def held_objects(track: HandTrack, gaps: np.ndarray, cfg: RuleConfig) -> np.ndarray:
    """(T,) index of the object held in each frame, -1 for none: an object becomes held when the grip is
    closed while touching it and stays held until the grip opens (it travels with the hand)."""
    T = len(track)
    held = np.full(T, -1, np.int64)
    cur = -1
    for t in range(T):
        if not track.closed[t]:
            cur = -1
        elif cur < 0 and gaps.shape[1] and track.valid[t]:
            k = int(np.argmin(gaps[t]))
            if gaps[t, k] < cfg.contact_margin_m:
                cur = k
        held[t] = cur
    return held


def pointing_target(track: HandTrack, t: int, objects: list[KnownObject], cfg: RuleConfig) -> int:
    """Object the index finger points at in frame ``t`` (ray from the index base through its tip), -1 for none."""
    if not objects:
        return -1
    base, tip = track.joints[t, 5], track.joints[t, 8]
    d = tip - base
    d = d / max(np.linalg.norm(d), 1e-9)
    best, best_ang = -1, cfg.pointing_max_deg
    for k, o in enumerate(objects):
        v = o.position_at(t) - tip
        dist = np.linalg.norm(v)
        if dist < 1e-6:
            continue
        ang = math.degrees(math.acos(float(np.clip(v @ d / dist, -1, 1))))
        # allow for the object's size: an angle within its apparent radius counts
        ang -= math.degrees(math.atan2(o.radius_m, dist))
        if ang < best_ang:
            best, best_ang = k, ang
    return best


# ---------------------------------------------------------------------------------------------------------
# Facts: per window and per clip
# ---------------------------------------------------------------------------------------------------------


def direction_terms(disp: np.ndarray, cfg: RuleConfig) -> list[str]:
    """Camera-frame displacement (3,) -> axis terms, largest first, e.g. ['left', 'up']; [] when still."""
    mag = float(np.linalg.norm(disp))
    if mag < cfg.still_m:
        return []
    a = np.abs(disp)
    order = np.argsort(-a)
    terms = []
    for ax in order:
        if a[ax] >= cfg.secondary_ratio * a[order[0]] and a[ax] > 0.4 * cfg.still_m:
            terms.append(AXIS_TERMS[(int(ax), 1 if disp[ax] > 0 else -1)])
    return terms


def _rotation_facts(track: HandTrack, a: int, b: int, cfg: RuleConfig) -> dict[str, Any]:
    """Angle (degrees) and sense of the wrist turn over frames [a, b); waving from the wrist angle swinging."""
    if b - a < 2:
        return {"rotation_deg": 0.0, "rotation_sense": None, "wave": False}
    rv = (track.rotation[b - 1] * track.rotation[a].inv()).as_rotvec()  # camera frame, first -> last
    ang = math.degrees(float(np.linalg.norm(rv)))
    sense = None
    if ang >= cfg.rotation_deg and abs(rv[2]) >= 0.6 * np.linalg.norm(rv):
        # seen from the camera (looking along +z, x right, y down) a positive turn about +z is clockwise
        sense = "clockwise" if rv[2] > 0 else "counter-clockwise"
    # waving: the wrist angle about its main turning axis swings back and forth: count the legs of its
    # zig-zag whose swing is at least wave_min_swing_deg (tremor makes many tiny reversals, a turn-and-back
    # makes two legs, a wave three or more within a second)
    step = track.rot_step[a : b - 1]  # (n-1, 3) radians per frame, camera frame
    wave = False
    if len(step) >= 4:
        _, _, vt = np.linalg.svd(step, full_matrices=False)
        theta = np.degrees(np.r_[0.0, np.cumsum(step @ vt[0])])  # signed angle about the main axis
        wave = zigzag_legs(theta, cfg.wave_min_swing_deg) >= cfg.wave_min_legs
    return {"rotation_deg": round(ang, 1), "rotation_sense": sense, "wave": bool(wave)}


def zigzag_legs(x: np.ndarray, min_swing: float) -> int:
    """Number of monotone legs of ``x`` that each swing by at least ``min_swing`` (a hysteresis zig-zag:
    tremor makes many small reversals and no leg; a turn and back makes two legs; a wave many)."""
    if len(x) < 2:
        return 0
    legs, direction = 0, 0
    lo = hi = ext = float(x[0])
    for v in map(float, x[1:]):
        if direction == 0:
            lo, hi = min(lo, v), max(hi, v)
            if v - lo >= min_swing:
                direction, ext = 1, v
            elif hi - v >= min_swing:
                direction, ext = -1, v
        elif direction == 1:
            if v > ext:
                ext = v
            elif ext - v >= min_swing:
                legs, direction, ext = legs + 1, -1, v
        else:
            if v < ext:
                ext = v
            elif v - ext >= min_swing:
                legs, direction, ext = legs + 1, 1, v
    return legs + (direction != 0)  # the leg in progress has already swung far enough


def _majority(x: np.ndarray) -> bool:
    return bool(np.mean(x) > 0.5) if len(x) else False


def window_facts(
    track: HandTrack,
    a: int,
    b: int,
    objects: list[KnownObject],
    gaps: np.ndarray,
    held: np.ndarray,
    cfg: RuleConfig,
) -> dict[str, Any]:
    """Facts of one hand over clip frames [a, b)."""
    v = track.valid[a:b]
    if b <= a or v.mean() < 0.5:
        return {"visible": False}
    fps = track.fps
    k = max(1, min((b - a) // 4, int(round(0.15 * fps))))  # ends averaged over ~0.15 s against tremor
    p0 = track.wrist_smooth[a : a + k].mean(0)
    p1 = track.wrist_smooth[b - k : b].mean(0)
    disp = p1 - p0
    dur = max((b - a) / fps, 1e-9)
    path = float(np.linalg.norm(np.diff(track.wrist_smooth[a:b], axis=0), axis=1).sum()) if b - a > 1 else 0.0
    closed0, closed1 = _majority(track.closed[a : a + k]), _majority(track.closed[b - k : b])
    shape_end = SHAPES[
        int(np.bincount(track.shape[max(a, b - max(k, (b - a) // 2)) : b], minlength=len(SHAPES)).argmax())
    ]
    flex4 = track.flex_deg[:, 1:].mean(1)
    flex_change = float(flex4[b - k : b].mean() - flex4[a : a + k].mean())
    grip_change = None
    if closed1 and not closed0:
        grip_change = "closing"
    elif closed0 and not closed1:
        grip_change = "opening"
    facts: dict[str, Any] = {
        "visible": True,
        "direction": direction_terms(disp, cfg),
        "displacement_m": [round(float(x), 4) for x in disp],
        "distance_m": round(float(np.linalg.norm(disp)), 4),
        "speed_m_s": round(path / dur, 4),
        "grip": "closed" if closed1 else "open",
        "grip_change": grip_change,
        "flex_change_deg": round(flex_change, 1),
        "shape": shape_end,
    }
    facts.update(_rotation_facts(track, a, b, cfg))
    held_w = held[a:b]
    h_end = int(held_w[-1]) if len(held_w) else -1
    h_any = [int(x) for x in np.unique(held_w) if x >= 0]
    facts["holding"] = objects[h_end].name if h_end >= 0 else None
    facts["held_during"] = [objects[i].name for i in h_any]
    contact, approaching, near = None, None, None
    if objects:
        g = gaps[a:b]
        touching = (g < cfg.contact_margin_m).sum(0)
        if touching.max() >= 2:
            contact = objects[int(np.argmax(touching))].name
        g0, g1 = g[:k].mean(0), g[-k:].mean(0)
        gain = g0 - g1
        cand = np.flatnonzero((gain > cfg.approach_gain_m) & (g1 < cfg.approach_end_m))
        if len(cand) and h_end < 0:
            approaching = objects[int(cand[np.argmin(g1[cand])])].name
        kn = int(np.argmin(g1))
        near = {"object": objects[kn].name, "gap_m": round(float(g1[kn]), 4)}
    facts["contact"] = contact
    facts["approaching"] = approaching
    facts["nearest"] = near
    pt = -1
    if shape_end == "point":
        pt = pointing_target(track, b - 1, objects, cfg)
    facts["pointing_at"] = objects[pt].name if pt >= 0 else None
    return facts


def pair_facts(left: HandTrack, right: HandTrack, a: int, b: int, cfg: RuleConfig) -> dict[str, Any]:
    """Facts about the two hands together over frames [a, b)."""
    v = left.valid[a:b] & right.valid[a:b]
    if b <= a or v.mean() < 0.5:
        return {"visible": False}
    # raw wrists: smoothing would blunt the brief touches of a clap
    d = np.linalg.norm(left.wrist[a:b] - right.wrist[a:b], axis=1)
    k = max(1, min((b - a) // 4, int(round(0.15 * left.fps))))
    change = float(d[-k:].mean() - d[:k].mean())
    rel = None
    if change <= -cfg.hands_approach_m:
        rel = "approach"
    elif change >= cfg.hands_approach_m:
        rel = "apart"
    # each time the wrists come within touching distance after having been clearly apart is a meeting
    close = d < cfg.together_m
    meetings, armed = 0, True
    for x in d:
        if armed and x < cfg.together_m:
            meetings, armed = meetings + 1, False
        elif x > cfg.together_m + 0.03:
            armed = True
    return {
        "visible": True,
        "distance_m": round(float(d[-1]), 4),
        "distance_change_m": round(change, 4),
        "relation": rel,
        "touching": bool(close[-k:].any()),
        "meetings": meetings,
    }


@dataclass
class Event:
    """One thing a hand does in a clip (frames relative to the clip start)."""

    kind: str  # move, carry, reach, grasp, release, close, open, rotate, point, wave, push, hold
    start: int
    end: int
    direction: tuple[str, ...] = ()
    distance_m: float = 0.0
    obj: str | None = None
    shape: str | None = None
    angle_deg: float = 0.0
    sense: str | None = None


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) runs of True."""
    if not len(mask):
        return []
    m = np.r_[False, mask, False].astype(np.int8)
    d = np.diff(m)
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def split_at_valleys(speed: np.ndarray, s: int, e: int, min_len: int) -> list[tuple[int, int]]:
    """Split [s, e) at speed minima lower than half the smaller of the peaks on either side (each piece
    at least ``min_len`` frames)."""
    v = speed[s:e]
    if len(v) < 2 * min_len:
        return [(s, e)]
    cuts = []
    for i in range(min_len, len(v) - min_len):
        if v[i] <= v[i - 1] and v[i] < v[i + 1]:
            start = cuts[-1] if cuts else 0
            left, right = v[start : i + 1].max(), v[i:].max()  # peaks since the last cut and after
            if v[i] < 0.5 * min(left, right) and i - start >= min_len:
                cuts.append(i)
    bounds = [0, *cuts, len(v)]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < min_len:
        bounds.pop(-2)
    return [(s + bounds[j], s + bounds[j + 1]) for j in range(len(bounds) - 1)]


def clip_events(
    track: HandTrack, objects: list[KnownObject], gaps: np.ndarray, held: np.ndarray, cfg: RuleConfig
) -> list[Event]:
    """The hand's clip as a time-ordered list of events (movement phases, grip changes, turns, ...)."""
    fps, T = track.fps, len(track)
    events: list[Event] = []
    min_len = max(2, int(round(cfg.min_phase_s * fps)))
    gap_merge = int(round(0.25 * fps))
    # movement phases: smoothed speed above threshold, short pauses merged, then split where the speed
    # dips between two strokes (a lift, a carry and a put-down chained without a full stop)
    runs = _runs((track.speed > cfg.move_speed_m_s) & track.valid)
    merged: list[list[int]] = []
    for s, e in runs:
        if merged and s - merged[-1][1] <= gap_merge:
            merged[-1][1] = e
        else:
            merged.append([s, e])
    phases: list[tuple[int, int]] = []
    for s, e in merged:
        phases.extend(split_at_valleys(track.speed, s, e, min_len))
    moving = np.zeros(T, bool)
    for s, e in phases:
        if e - s < min_len:
            continue
        disp = track.wrist_smooth[min(e, T - 1)] - track.wrist_smooth[s]
        if np.linalg.norm(disp) < cfg.min_phase_m:
            continue
        moving[s:e] = True
        mid = (s + e) // 2
        hold_idx = int(held[mid])
        ev = Event("move", s, e, tuple(direction_terms(disp, cfg)), float(np.linalg.norm(disp)))
        if hold_idx >= 0:
            ev.kind, ev.obj = "carry", objects[hold_idx].name
        elif objects:
            g = gaps[s:e]
            touch = (g < cfg.contact_margin_m).sum(0)
            end_gap = g[-1]
            k = int(np.argmin(end_gap))
            kt = int(np.argmax(touch))
            moved = float(np.linalg.norm(objects[kt].position_at(e - 1) - objects[kt].position_at(s)))
            if touch[kt] >= 2 and moved >= cfg.min_phase_m and not track.closed[mid]:
                ev.kind, ev.obj = "push", objects[kt].name  # the touched object slides along
            elif end_gap[k] < cfg.approach_end_m and g[0, k] - end_gap[k] > cfg.approach_gain_m:
                ev.kind, ev.obj = "reach", objects[k].name
        rf = _rotation_facts(track, s, e, cfg)
        ev.angle_deg, ev.sense = rf["rotation_deg"], rf["rotation_sense"]
        events.append(ev)
    # grip changes
    min_state = max(1, int(round(0.2 * fps)))
    state_runs = _runs(track.closed)
    for s, e in state_runs:
        if e - s < min_state:
            continue
        shape = SHAPES[int(np.bincount(track.shape[s:e], minlength=len(SHAPES)).argmax())]
        obj = (
            objects[int(held[min(e - 1, s + min_state)])].name
            if held[min(e - 1, s + min_state)] >= 0
            else None
        )
        if s > 0:
            events.append(Event("grasp" if obj else "close", s, s + 1, obj=obj, shape=shape))
        if e < T:
            events.append(Event("release" if obj else "open", e - 1, e, obj=obj, shape=shape))
    # pointing holds
    for s, e in _runs(track.shape == SHAPE_ID["point"]):
        if e - s >= int(round(0.4 * fps)):
            k = pointing_target(track, (s + e) // 2, objects, cfg)
            events.append(Event("point", s, e, obj=objects[k].name if k >= 0 else None))
    # waving: 1 s windows every 0.2 s flagged as waves, merged
    win, stride = int(round(fps)), max(1, int(round(0.2 * fps)))
    wave = np.zeros(T, bool)
    for a in range(0, max(1, T - win + 1), stride):
        if _rotation_facts(track, a, min(T, a + win), cfg)["wave"]:
            wave[a : min(T, a + win)] = True
    for s, e in _runs(wave):
        if e - s >= win:
            events.append(Event("wave", s, e))
    # wrist turns while (mostly) still: in 1 s steps outside movement phases
    still_runs = _runs(~moving & ~wave & track.valid)
    for s, e in still_runs:
        if e - s < min_len:
            continue
        rf = _rotation_facts(track, s, e, cfg)
        if rf["rotation_deg"] >= cfg.rotation_deg:
            events.append(Event("rotate", s, e, angle_deg=rf["rotation_deg"], sense=rf["rotation_sense"]))
    events.sort(key=lambda ev: (ev.start, ev.end))
    # a movement inside a wave is part of the wave
    events = [ev for ev in events if not (ev.kind == "move" and wave[ev.start : ev.end].mean() > 0.5)]
    return events


# ---------------------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------------------

_DIR_WORDS = {
    "left": ("to the left", "leftwards", "towards the left"),
    "right": ("to the right", "rightwards", "towards the right"),
    "up": ("up", "upwards"),
    "down": ("down", "downwards"),
    "towards": ("towards the camera", "closer to the camera"),
    "away": ("away from the camera", "further from the camera"),
}
_SHAPE_WORDS = {
    "open": ("open, fingers extended", "open with the fingers straight"),
    "relaxed": ("relaxed, fingers slightly bent", "loosely curled"),
    "grip": ("closed in a grip", "curled into a grip"),
    "fist": ("clenched in a fist", "closed into a fist"),
    "pinch": ("pinching with thumb and index finger", "in a thumb-index pinch"),
    "point": ("pointing with the index finger", "extending only the index finger"),
}
_PARTS = {
    "open": "all five fingers extended",
    "relaxed": "the fingers gently bent",
    "grip": "the palm and all fingers wrapped around",
    "fist": "all fingers folded into the palm",
    "pinch": "the thumb and index fingertips",
    "point": "the index finger",
}


def _choice(rng: random.Random, options) -> str:
    return options[rng.randrange(len(options))]


def direction_phrase(terms: list[str] | tuple[str, ...], rng: random.Random) -> str:
    """['left', 'up'] -> 'to the left and up' (first term is the main one)."""
    words = [_choice(rng, _DIR_WORDS[t]) for t in terms]
    if not words:
        return ""
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " and " + words[-1]


def _cm(m: float) -> str:
    return f"{max(1, round(m * 100))} cm"


def _obj_phrase(objects_by_name: dict[str, KnownObject], name: str, detailed: bool) -> str:
    """'the red cube' or with properties, 'the small red cube'."""
    o = objects_by_name.get(name)
    if not detailed or o is None:
        return f"the {name}"
    size = o.properties.get("size")
    return f"the {size} {name}" if size and size not in name else f"the {name}"


@dataclass
class _Voice:
    """How to name a hand: possessive for instructions, third person for descriptions."""

    own: str  # 'your right hand'
    third: str  # 'the right hand'
    plural: bool = False


def _voice(hand_key: str) -> _Voice:
    if hand_key == "both":
        return _Voice("both hands", "both hands", True)
    return _Voice(f"your {hand_key} hand", f"the {hand_key} hand")


def _s(v: _Voice, verb: str) -> str:
    """Third-person agreement of the first word: 'moves', 'lets go of' / 'move' for both hands."""
    if v.plural:
        return verb
    head, _, rest = verb.partition(" ")
    if head.endswith(("s", "sh", "ch", "x")):
        head += "es"
    elif head.endswith("y") and head[-2:] not in ("ay", "ey", "oy", "uy"):
        head = head[:-1] + "ies"
    else:
        head += "s"
    return f"{head} {rest}" if rest else head


def _event_clause(ev: Event, mood: str, v: _Voice, rng: random.Random, last_obj: list, objs: dict) -> str:
    """One event as a clause: mood 'imp' (imperative, no subject) or 'third' (verb agreeing with v)."""

    def verb(base: str) -> str:
        return base if mood == "imp" else _s(v, base)

    def obj_ref(name: str) -> str:
        if last_obj and last_obj[0] == name:
            return "it"
        last_obj[:] = [name]
        return _obj_phrase(objs, name, detailed=mood == "third")

    d = direction_phrase(ev.direction, rng)
    dist = f" about {_cm(ev.distance_m)}" if mood == "third" and ev.distance_m > 0 else ""
    if ev.kind == "reach":
        return (
            f"{verb(_choice(rng, ('reach', 'move')))} {('for' if rng.random() < 0.5 else 'towards')} {obj_ref(ev.obj)}"
            + (f" ({d})" if mood == "third" and d else "")
        )
    if ev.kind == "carry":
        if ev.direction and ev.direction[0] == "up":
            return f"{verb(_choice(rng, ('lift', 'raise')))} {obj_ref(ev.obj)}{dist}"
        if ev.direction and ev.direction[0] == "down":
            return f"{verb(_choice(rng, ('lower', 'put down')))} {obj_ref(ev.obj)}{dist}"
        return f"{verb(_choice(rng, ('carry', 'move')))} {obj_ref(ev.obj)}{dist} {d}".rstrip()
    if ev.kind == "push":
        return f"{verb('push')} {obj_ref(ev.obj)}{dist} {d}".rstrip()
    if ev.kind == "move":
        if mood == "imp":
            hand = "your hands" if v.plural else "the hand"
            return f"{verb(_choice(rng, ('move', 'shift', 'bring')))} {hand} {d}".rstrip()
        return f"{verb(_choice(rng, ('move', 'travel')))}{dist} {d}".rstrip()
    if ev.kind == "grasp":
        if ev.shape == "pinch":
            return f"{verb('pinch')} {obj_ref(ev.obj)} between thumb and index finger"
        return f"{verb(_choice(rng, ('grasp', 'grab', 'take hold of')))} {obj_ref(ev.obj)}"
    if ev.kind == "release":
        return f"{verb(_choice(rng, ('release', 'let go of')))} {obj_ref(ev.obj)}"
    if ev.kind == "close":
        if ev.shape == "pinch":
            return f"{verb('pinch')} the thumb and index finger together"
        if ev.shape == "fist":
            return f"{verb(_choice(rng, ('make', 'form')))} a fist"
        return f"{verb('close')} the fingers into a grip"
    if ev.kind == "open":
        return f"{verb(_choice(rng, ('open', 'spread')))} the fingers"
    if ev.kind == "rotate":
        sense = f" {ev.sense}" if ev.sense else ""
        deg = f" by about {int(round(ev.angle_deg / 10.0) * 10)} degrees" if mood == "third" else ""
        return f"{verb(_choice(rng, ('turn', 'rotate')))} the wrist{sense}{deg}"
    if ev.kind == "point":
        if ev.obj:
            return f"{verb('point')} at {obj_ref(ev.obj)} with the index finger"
        return f"{verb('point')} with the index finger"
    if ev.kind == "wave":
        return f"{verb('wave')}" + (" the hand" if mood == "imp" else "")
    return f"{verb('hold')} still"


def _join(clauses: list[str]) -> str:
    if not clauses:
        return ""
    if len(clauses) == 1:
        return clauses[0]
    return (
        ", ".join(clauses[:-1]) + ", then " + clauses[-1]
        if len(clauses) > 2
        else f"{clauses[0]} and then {clauses[1]}"
    )


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:] if s else s


def _compress(events: list[Event], limit: int) -> list[Event]:
    """Keep the events worth naming: merge repeats, prefer grasps / carries over plain moves."""
    out: list[Event] = []
    for ev in events:
        if (
            out
            and ev.kind == out[-1].kind
            and ev.obj == out[-1].obj
            and ev.kind in ("move", "wave", "rotate", "point")
        ):
            out[-1].end = ev.end
            continue
        out.append(ev)
    if len(out) <= limit:
        return out
    rank = {
        "grasp": 0,
        "release": 1,
        "carry": 2,
        "reach": 3,
        "push": 3,
        "point": 3,
        "wave": 3,
        "close": 4,
        "open": 4,
        "rotate": 5,
        "move": 6,
    }

    def score(i: int) -> tuple[float, int]:
        r = rank.get(out[i].kind, 9)
        if out[i].kind == "move" and out[i].distance_m >= 0.1:
            r = 3.5  # a long movement is part of the story
        return (r, i)

    keep = sorted(sorted(range(len(out)), key=score)[:limit])
    return [out[i] for i in keep]


def clip_text(
    events: list[Event],
    hand_key: str,
    rng: random.Random,
    objs: dict[str, KnownObject],
    limit: int = 4,
    summary_limit: int = 6,
) -> dict[str, str]:
    """Clip-level imperative instruction (the ``limit`` main events) and third-person summary (up to
    ``summary_limit`` events) for one hand."""
    v = _voice(hand_key)
    evs = _compress([dataclasses.replace(e) for e in events], limit)
    evs_sum = _compress([dataclasses.replace(e) for e in events], summary_limit)
    if not evs:
        inst = _choice(
            rng, ("Keep {own} still.", "Hold {own} steady in place.", "Rest {own} without moving it.")
        )
        summ = _choice(rng, ("{Third} stays almost still.", "{Third} barely moves during the clip."))
        return {"instruction": inst.format(own=v.own), "summary": summ.format(Third=_cap(v.third))}
    last: list = []
    imp = [_event_clause(ev, "imp", v, rng, last, objs) for ev in evs]
    last = []
    third = [_event_clause(ev, "third", v, rng, last, objs) for ev in evs_sum]
    lead = _choice(rng, ("With {own}, {x}.", "Using {own}, {x}.", "{X} with {own}."))
    inst = lead.format(own=v.own, x=_join(imp), X=_cap(_join(imp)))
    summ = f"{_cap(v.third)} {_join(third)}."
    return {"instruction": inst, "summary": summ}


def window_text(
    f: dict[str, Any], hand_key: str, rng: random.Random, objs: dict[str, KnownObject]
) -> dict[str, str]:
    """Per-second instruction and description for one hand from ``window_facts``."""
    v = _voice(hand_key)
    third = _cap(v.third)
    if not f.get("visible"):
        return {
            "instruction": f"Keep {v.own} out of view.",
            "description": f"{third} is not visible in this second.",
        }
    d = direction_phrase(f["direction"], rng)
    held = f.get("holding")
    # instruction: the main action of the second
    if f.get("wave"):
        inst = _choice(rng, ("Wave {own}.", "Wave {own} from side to side."))
    elif f["grip_change"] == "closing":
        if held:
            inst = (
                "Pinch the {o} with {own}." if f["shape"] == "pinch" else "Grasp the {o} with {own}."
            ).replace("{o}", held)
        elif f["shape"] == "pinch":
            inst = "Pinch the thumb and index finger of {own} together."
        else:
            inst = _choice(rng, ("Close {own}.", "Curl the fingers of {own} into a grip."))
    elif f["grip_change"] == "opening":
        gone = f["held_during"]
        inst = (
            f"Release the {gone[0]} from {{own}}."
            if gone
            else _choice(rng, ("Open {own}.", "Extend the fingers of {own}."))
        )
    elif f["direction"]:
        if held:
            inst = f"Move the {held} {d} with {{own}}."
        elif f.get("approaching"):
            inst = f"Move {{own}} {d} towards the {f['approaching']}."
        else:
            inst = _choice(rng, (f"Move {{own}} {d}.", f"Bring {{own}} {d}.", f"Shift {{own}} {d}."))
    elif f["rotation_deg"] >= 30.0:
        sense = f" {f['rotation_sense']}" if f["rotation_sense"] else ""
        inst = f"Turn the wrist of {{own}}{sense}."
    elif f.get("pointing_at"):
        inst = f"Point at the {f['pointing_at']} with {{own}}."
    elif held:
        inst = f"Keep holding the {held} with {{own}}."
    else:
        inst = _choice(rng, ("Keep {own} still.", "Hold {own} in place."))
    inst = inst.replace("{own}", v.own)
    # description: trajectory, fingers, contact, object properties, hand parts
    parts = []
    if f["direction"]:
        parts.append(f"{third} {_s(v, 'move')} {d} at about {_cm(f['speed_m_s'])} per second")
    else:
        parts.append(
            f"{third} {_choice(rng, (_s(v, 'stay') + ' nearly still', _s(v, 'hold') + ' its position'))}"
        )
    if f.get("wave"):
        parts[-1] += ", waving from side to side"
    elif f["rotation_deg"] >= 30.0:
        sense = f" {f['rotation_sense']}" if f["rotation_sense"] else ""
        parts[-1] += (
            f" while the wrist turns{sense} by about {int(round(f['rotation_deg'] / 10.0) * 10)} degrees"
        )
    fingers = _choice(rng, _SHAPE_WORDS[f["shape"]])
    if f["grip_change"] == "closing":
        parts.append(f"the fingers close until the hand is {fingers}")
    elif f["grip_change"] == "opening":
        parts.append(f"the fingers open until the hand is {fingers}")
    else:
        parts.append(f"the hand is {fingers}")
    if held:
        o = objs.get(held)
        props = _props_text(o) if o else ""
        parts.append(
            f"it holds the {held}{props} with {_PARTS[f['shape']]}" + (" it" if f["shape"] == "grip" else "")
        )
    elif f.get("contact"):
        o = objs.get(f["contact"])
        parts.append(f"it touches the {f['contact']}{_props_text(o) if o else ''} with {_PARTS[f['shape']]}")
    elif f.get("pointing_at"):
        parts.append(f"the index finger points at the {f['pointing_at']}")
    elif f.get("approaching"):
        parts.append(f"it gets closer to the {f['approaching']}")
    elif f.get("nearest") is not None:
        parts.append(
            f"it is not touching anything (nearest object: the {f['nearest']['object']}, {_cm(max(f['nearest']['gap_m'], 0.01))} away)"
        )
    else:
        parts.append("it is not touching anything")
    desc = parts[0] + "; " + "; ".join(parts[1:]) + "."
    return {"instruction": inst, "description": _cap(desc)}


def _props_text(o: KnownObject) -> str:
    bits = [o.properties[k] for k in ("size", "material") if o.properties.get(k)]
    return f" ({', '.join(bits)})" if bits else ""


def pair_window_text(
    fl: dict[str, Any],
    fr: dict[str, Any],
    fp: dict[str, Any],
    rng: random.Random,
    objs: dict[str, KnownObject],
) -> dict[str, str]:
    """Per-second text for both hands together."""
    left = window_text(fl, "left", random.Random(rng.random()), objs)
    right = window_text(fr, "right", random.Random(rng.random()), objs)
    rel = fp.get("relation") if fp.get("visible") else None
    if rel == "approach":
        inst = _choice(rng, ("Bring both hands towards each other.", "Move your hands closer together."))
        lead = "The hands move towards each other"
    elif rel == "apart":
        inst = _choice(rng, ("Move both hands apart.", "Pull your hands away from each other."))
        lead = "The hands move apart"
    else:
        li, ri = left["instruction"].rstrip("."), right["instruction"].rstrip(".")
        inst = f"{li}, and {ri[:1].lower() + ri[1:]}."
        lead = None
    if fp.get("visible"):
        dist = f"the wrists are {_cm(fp['distance_m'])} apart" + (
            " and the hands touch" if fp.get("touching") else ""
        )
    else:
        dist = "one hand is not visible"
    desc = (
        (f"{lead}; {dist}. " if lead else f"{_cap(dist)}. ")
        + left["description"]
        + " "
        + right["description"]
    )
    return {"instruction": inst, "description": desc}


def pair_clip_text(
    ev_l: list[Event],
    ev_r: list[Event],
    pair_clip: dict[str, Any],
    rng: random.Random,
    objs: dict[str, KnownObject],
) -> dict[str, str]:
    """Clip-level text for both hands: claps and joint grasps as one action, otherwise each hand's part."""
    meetings = pair_clip.get("meetings", 0)
    grasped_l = {e.obj for e in ev_l if e.kind == "grasp"}
    grasped_r = {e.obj for e in ev_r if e.kind == "grasp"}
    shared = sorted(grasped_l & grasped_r)
    if meetings >= 2 and not grasped_l and not grasped_r:
        inst = _choice(rng, ("Clap your hands {n} times.", "Clap both hands together {n} times."))
        return {
            "instruction": inst.format(n=meetings),
            "summary": f"Both hands meet in front of the camera {meetings} times, palms facing each other, as in clapping.",
        }
    if shared:
        o = shared[0]
        lifted = any(e.kind == "carry" and e.direction and e.direction[0] == "up" for e in ev_l + ev_r)
        verb = "lift" if lifted else "hold"
        return {
            "instruction": _choice(
                rng, (f"Use both hands to {verb} the {o}.", f"{_cap(verb)} the {o} with both hands.")
            ),
            "summary": f"Both hands close on the {o} from either side and {verb} it together.",
        }
    tl = clip_text(ev_l, "left", random.Random(rng.random()), objs)
    tr = clip_text(ev_r, "right", random.Random(rng.random()), objs)
    li, ri = tl["instruction"].rstrip("."), tr["instruction"].rstrip(".")
    return {
        "instruction": f"{li}; {_choice(rng, ('meanwhile', 'at the same time'))}, {ri[:1].lower() + ri[1:]}.",
        "summary": f"{tl['summary']} {_choice(rng, ('Meanwhile, ', 'At the same time, '))}{tr['summary'][:1].lower() + tr['summary'][1:]}",
    }


# ---------------------------------------------------------------------------------------------------------
# The annotator
# ---------------------------------------------------------------------------------------------------------


class RuleAnnotator(Annotator):
    """Kinematic annotator (backend name 'rules'): no model, deterministic, a few ms per clip."""

    name = "rules"
    needs_frames = False

    def __init__(self, config: RuleConfig | None = None, mano_dir: str | None = None):
        self.config = config or RuleConfig()
        self.mano_dir = mano_dir
        self._n = 0
        self._lock = threading.Lock()

    def analyse(self, clip: Clip) -> dict[str, Any]:
        """Tracks, per-window and clip facts and events (what the text is made from)."""
        cfg = self.config
        a0 = clip.spec.start_frame
        tracks = {s: compute_track(m, clip.joints.get(s), cfg, self.mano_dir) for s, m in clip.hands.items()}
        gaps = {s: object_gaps(t, clip.objects) for s, t in tracks.items()}
        held = {s: held_objects(t, gaps[s], cfg) for s, t in tracks.items()}
        windows = []
        for ws, we in clip.windows_s:
            a = max(0, round(ws * clip.spec.fps) - a0)
            b = min(clip.spec.num_frames, round(we * clip.spec.fps) - a0)
            wf = {s: window_facts(t, a, b, clip.objects, gaps[s], held[s], cfg) for s, t in tracks.items()}
            if len(tracks) == 2:
                wf["both"] = pair_facts(tracks["left"], tracks["right"], a, b, cfg)
            windows.append(wf)
        events = {s: clip_events(t, clip.objects, gaps[s], held[s], cfg) for s, t in tracks.items()}
        T = clip.spec.num_frames
        pair = pair_facts(tracks["left"], tracks["right"], 0, T, cfg) if len(tracks) == 2 else None
        targets = {}
        for s in tracks:
            grabbed = [e.obj for e in events[s] if e.kind == "grasp" and e.obj]
            aimed = [e.obj for e in events[s] if e.kind in ("reach", "push", "point") and e.obj]
            targets[s] = (grabbed or aimed or [None])[0]
        return {
            "tracks": tracks,
            "windows": windows,
            "events": events,
            "pair": pair,
            "targets": targets,
            "held": held,
        }

    def annotate(self, clip: Clip) -> ClipAnnotation:
        info = self.analyse(clip)
        objs = {o.name: o for o in clip.objects}
        base = stable_hash("rules", clip.clip_id)
        keys = clip.hand_keys
        clip_txt: dict[str, dict[str, str]] = {}
        for k in keys:
            rng = random.Random(stable_hash(base, "clip", k))
            if k == "both":
                clip_txt[k] = pair_clip_text(
                    info["events"]["left"], info["events"]["right"], info["pair"], rng, objs
                )
            else:
                clip_txt[k] = clip_text(info["events"][k], k, rng, objs)
        seconds = []
        for i, ((ws, we), wf) in enumerate(zip(clip.windows_s, info["windows"])):
            text = {}
            for k in keys:
                rng = random.Random(stable_hash(base, "win", i, k))
                if k == "both":
                    text[k] = pair_window_text(wf["left"], wf["right"], wf["both"], rng, objs)
                else:
                    text[k] = window_text(wf[k], k, rng, objs)
            seconds.append(SecondText(ws, we, text))
        facts = {
            "windows": [{k: _compact(v) for k, v in wf.items()} for wf in info["windows"]],
            "events": {
                s: [_event_dict(e, clip.spec.fps, clip.spec.start_s) for e in evs]
                for s, evs in info["events"].items()
            },
            "targets": info["targets"],
            "config": f"{stable_hash(sorted(self.config.model_dump().items())):016x}",  # which thresholds made it
        }
        with self._lock:
            self._n += 1
        return ClipAnnotation(
            episode_index=clip.spec.episode_index,
            episode_key=clip.episode_key,
            clip_index=clip.spec.clip_index,
            start_frame=clip.spec.start_frame,
            end_frame=clip.spec.end_frame,
            start_s=clip.spec.start_s,
            end_s=clip.spec.end_s,
            backend=self.name,
            clip=clip_txt,
            seconds=seconds,
            facts=facts,
            segmentation=clip.segmentation,
        )

    def stats(self) -> dict[str, Any]:
        return {"clips": self._n}


#: per-window facts kept in the stored record (the rest is recomputed by ``RuleAnnotator.analyse``)
_STORED_FACTS = (
    "visible", "direction", "distance_m", "speed_m_s", "grip", "grip_change", "shape", "rotation_deg",
    "rotation_sense", "wave", "holding", "contact", "pointing_at", "relation", "touching", "meetings",
)  # fmt: skip


def _compact(f: dict[str, Any]) -> dict[str, Any]:
    """The stored subset of a window's facts, without empty values (None, [], False)."""
    return {
        k: v
        for k, v in f.items()
        if k in _STORED_FACTS and not (v is None or v is False or v == []) or k == "visible"
    }


def _event_dict(e: Event, fps: float, t0: float) -> dict[str, Any]:
    return {
        "kind": e.kind,
        "start_s": round(t0 + e.start / fps, 3),
        "end_s": round(t0 + e.end / fps, 3),
        "direction": list(e.direction),
        "distance_m": round(e.distance_m, 4),
        "object": e.obj,
        "shape": e.shape,
        "angle_deg": e.angle_deg,
        "sense": e.sense,
    }
