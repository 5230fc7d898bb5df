"""What the rule annotator measures in the motion itself (camera frame): finger flexion and hand shape, grip, wrist
direction, speed and rotation, contacts with known objects, per-window and two-hand facts; and its thresholds (`RuleConfig`)."""


from __future__ import annotations

import math
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
    KnownObject,
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


def rotation_facts(track: HandTrack, a: int, b: int, cfg: RuleConfig) -> dict[str, Any]:
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
    facts.update(rotation_facts(track, a, b, cfg))
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
