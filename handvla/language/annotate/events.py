"""Movement events of a clip: phases cut at speed valleys, each with its facts (what the hand did, to which object)."""


from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from handvla.language.annotate.base import (
    KnownObject,
)
from handvla.language.annotate.kinematics import (
    SHAPE_ID,
    SHAPES,
    HandTrack,
    RuleConfig,
    direction_terms,
    pointing_target,
    rotation_facts,
)


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
        rf = rotation_facts(track, s, e, cfg)
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
        if rotation_facts(track, a, min(T, a + win), cfg)["wave"]:
            wave[a : min(T, a + win)] = True
    for s, e in _runs(wave):
        if e - s >= win:
            events.append(Event("wave", s, e))
    # wrist turns while (mostly) still: in 1 s steps outside movement phases
    still_runs = _runs(~moving & ~wave & track.valid)
    for s, e in still_runs:
        if e - s < min_len:
            continue
        rf = rotation_facts(track, s, e, cfg)
        if rf["rotation_deg"] >= cfg.rotation_deg:
            events.append(Event("rotate", s, e, angle_deg=rf["rotation_deg"], sense=rf["rotation_sense"]))
    events.sort(key=lambda ev: (ev.start, ev.end))
    # a movement inside a wave is part of the wave
    events = [ev for ev in events if not (ev.kind == "move" and wave[ev.start : ev.end].mean() > 0.5)]
    return events


# ---------------------------------------------------------------------------------------------------------
