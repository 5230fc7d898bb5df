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

When the source labels the episode's action (``Clip.action``: FPHA's action folders, EgoDex's task
descriptions), that label is the clip's instruction (the high-level task) and the kinematic instruction is
kept in the facts; summaries and the per-second texts still come from the motion.

Text is composed from these facts with varied phrasings chosen by a hash of the clip (the same clip always
gets the same text). Thresholds were set on the built-in hand's key shapes (``handvla.synth.builtin_motion``)
and checked against its per-frame labels; ``benchmarks/annotate.py`` measures the accuracy on HandWorld.

The measuring is in ``kinematics`` (tracks, facts, `RuleConfig`), the cutting into movement events in
``events``, the wording in ``phrasing``; this module puts them together as the `RuleAnnotator`.
"""

from __future__ import annotations

import random
import threading
from typing import Any

from handvla.language.annotate.base import (
    Annotator,
    Clip,
    ClipAnnotation,
    SecondText,
    stable_hash,
)
from handvla.language.annotate.events import Event, clip_events
from handvla.language.annotate.kinematics import (
    RuleConfig,
    compute_track,
    held_objects,
    object_gaps,
    pair_facts,
    window_facts,
)
from handvla.language.annotate.phrasing import (
    clip_text,
    pair_clip_text,
    pair_window_text,
    window_text,
)


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
        kinematic = None
        if clip.action:  # the dataset's own label is the clip's task; the motion still gives the summary
            kinematic = {k: t["instruction"] for k, t in clip_txt.items()}
            task = clip.action.strip().rstrip(".")
            task = task[:1].upper() + task[1:] + "."
            clip_txt = {k: {**t, "instruction": task} for k, t in clip_txt.items()}
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
            **({"action": clip.action, "kinematic_instruction": kinematic} if kinematic else {}),
            "config": f"{stable_hash(sorted(self.config.model_dump().items())):016x}",  # which thresholds made it
        }
        with self._lock:
            self._n += 1
        return ClipAnnotation.of_clip(clip, self.name, clip_txt, seconds, facts)

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
