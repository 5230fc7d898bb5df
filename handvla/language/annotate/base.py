"""What an annotator sees (``Clip``) and what it returns (``ClipAnnotation``), and the ``Annotator`` interface.

Text comes at two levels, each for both hands together (key ``'both'``, only when both hands are seen in
the clip) and for each hand seen (``'left'``, ``'right'``):
- clip level: an imperative ``instruction`` ("Pick up the red cube with your right hand.") and a concise
  ``summary`` (third person, what happens);
- per second, on overlapping 1 s windows: an ``instruction`` and a ``description`` (contact state, object
  properties, hand parts, trajectory relative to the camera).

Directions are always stated in the CAMERA frame (OpenCV: x right, y down, z forward): "left/right" =
image left/right, "up/down" = image up/down, "towards/away from the camera" = -z/+z.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from handvla.atomic import json_default
from handvla.camera import Camera
from handvla.errors import InputError
from handvla.hand.motion import HandMotion
from handvla.language.annotate.segments import ClipSpec

#: keys of the text entries: both hands together, then each hand
HAND_KEYS = ("both", "left", "right")
CLIP_FIELDS = ("instruction", "summary")
SECOND_FIELDS = ("instruction", "description")
#: version of the stored annotation record (bump when its meaning changes)
RECORD_VERSION = 1


def stable_hash(*parts: Any) -> int:
    """A 64-bit hash of ``parts`` that is the same in every process (Python's ``hash`` is salted)."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little")


@dataclass
class KnownObject:
    """An object whose position the source knows (synthetic worlds, mocap with object tracking).

    ``positions_m``: (T, 3) centre per clip frame, camera frame, metres (a static object repeats one row).
    ``radius_m``: radius of a sphere that covers the object (used when the shape is not known).
    ``geometry``: 'sphere', 'box' or 'cylinder' (axis = the object's local z) with ``half_extents_m`` (3,)
    and ``rotations`` (T, 3, 3) object -> camera, for exact surface distances; None = the covering sphere.
    ``properties``: words for text, e.g. {'colour': 'red', 'shape': 'cube', 'size': 'small'}.
    """

    name: str
    positions_m: np.ndarray  # (T, 3)
    radius_m: float
    properties: dict[str, str] = field(default_factory=dict)
    object_id: int | None = None
    geometry: str | None = None
    half_extents_m: np.ndarray | None = None  # (3,)
    rotations: np.ndarray | None = None  # (T, 3, 3) object -> camera

    def __post_init__(self) -> None:
        p = np.asarray(self.positions_m, np.float64)
        if p.ndim == 1:
            p = p[None]
        if p.ndim != 2 or p.shape[1] != 3:
            raise InputError("KnownObject", "positions_m", "shape (T, 3) or (3,) metres", str(p.shape))
        self.positions_m = p
        if self.geometry is not None:
            if self.geometry not in ("sphere", "box", "cylinder"):
                raise InputError(
                    "KnownObject", "geometry", "'sphere', 'box', 'cylinder' or None", repr(self.geometry)
                )
            self.half_extents_m = np.asarray(self.half_extents_m, np.float64).reshape(3)
            R = np.eye(3)[None] if self.rotations is None else np.asarray(self.rotations, np.float64)
            self.rotations = R.reshape(-1, 3, 3)

    def position_at(self, t: int) -> np.ndarray:
        return self.positions_m[min(t, len(self.positions_m) - 1)]

    def surface_distance(self, points: np.ndarray) -> np.ndarray:
        """(T, K, 3) camera-frame points, one row of K per clip frame -> (T, K) distance to the object's
        surface in metres (<= 0 inside)."""
        T = points.shape[0]
        idx = np.minimum(np.arange(T), len(self.positions_m) - 1)
        rel = points - self.positions_m[idx][:, None]  # (T, K, 3)
        if self.geometry is None:
            return np.linalg.norm(rel, axis=-1) - self.radius_m
        if self.geometry == "sphere":
            return np.linalg.norm(rel, axis=-1) - float(self.half_extents_m.max())
        R = self.rotations[np.minimum(np.arange(T), len(self.rotations) - 1)]  # (T, 3, 3)
        q = np.einsum("tji,tkj->tki", R, rel)  # object frame: R^T rel
        h = self.half_extents_m
        if self.geometry == "box":
            out = np.abs(q) - h
        else:
            radial = np.linalg.norm(q[..., :2], axis=-1) - h[0]
            out = np.stack([radial, np.abs(q[..., 2]) - h[2]], -1)
        outside = np.linalg.norm(np.maximum(out, 0.0), axis=-1)
        inside = np.minimum(out.max(-1), 0.0)
        return outside + inside


@dataclass
class Clip:
    """The data of one clip, as handed to an annotator.

    ``hands``: {side: HandMotion} of the clip frames, only the sides with a valid frame in the clip.
    ``joints``: {side: (T, 21, 3)} metres, camera frame, when the store has them (else the annotator runs
    the hand model). ``frames``: (K, H, W, 3) uint8 RGB at ``frame_times_s`` (the 2 FPS samples), or None
    when the store has no video or the annotator does not look at images. ``windows_s``: the per-second
    windows, seconds from the episode start. ``objects``: known objects, [] when the source has none.
    ``action``: the dataset's action label as a phrase (annotators make it the clip's instruction).
    """

    spec: ClipSpec
    episode_key: str
    hands: dict[str, HandMotion]
    camera: Camera
    windows_s: list[tuple[float, float]]
    joints: dict[str, np.ndarray] = field(default_factory=dict)
    frames: np.ndarray | None = None
    frame_times_s: list[float] = field(default_factory=list)
    objects: list[KnownObject] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    source: str = ""
    #: the source's own action label as a phrase (``annotations['action']['text']``, e.g. FPHA's folder
    #: 'flip_pages' -> "flip the pages"; ``handvla.ingest.sources.base.action_annotation``), "" when none
    action: str = ""
    segmentation: str = ""

    @property
    def clip_id(self) -> str:
        """Identity of the clip within its store: the episode key and the frame range."""
        return clip_id(self.episode_key, self.spec.start_frame, self.spec.end_frame)

    @property
    def hand_keys(self) -> list[str]:
        """The text entries this clip needs: 'both' when both hands are seen, then each seen hand."""
        sides = [s for s in ("left", "right") if s in self.hands]
        return (["both"] if len(sides) == 2 else []) + sides


def clip_id(episode_key: str, start_frame: int, end_frame: int) -> str:
    return f"{episode_key}@{int(start_frame)}-{int(end_frame)}"


@dataclass
class SecondText:
    """Text of one per-second window: {hand key: {'instruction': ..., 'description': ...}}."""

    start_s: float
    end_s: float
    text: dict[str, dict[str, str]]

    def to_dict(self) -> dict[str, Any]:
        return {"start_s": round(self.start_s, 6), "end_s": round(self.end_s, 6), "text": self.text}


@dataclass
class ClipAnnotation:
    """All text of one clip from one backend (times in seconds from the episode start)."""

    episode_index: int
    episode_key: str
    clip_index: int
    start_frame: int
    end_frame: int
    start_s: float
    end_s: float
    backend: str
    clip: dict[str, dict[str, str]]  # {hand key: {'instruction', 'summary'}}
    seconds: list[SecondText]
    facts: dict[str, Any] = field(default_factory=dict)  # backend-specific structured details
    segmentation: str = ""

    @classmethod
    def of_clip(
        cls,
        clip: Clip,
        backend: str,
        texts: dict[str, dict[str, str]],
        seconds: list[SecondText],
        facts: dict[str, Any],
    ) -> ClipAnnotation:
        """The annotation of ``clip`` (its episode, span and segmentation) with a backend's texts and facts."""
        sp = clip.spec
        return cls(sp.episode_index, clip.episode_key, sp.clip_index, sp.start_frame, sp.end_frame, sp.start_s,
                   sp.end_s, backend, texts, seconds, facts, clip.segmentation)  # fmt: skip

    @property
    def clip_id(self) -> str:
        return clip_id(self.episode_key, self.start_frame, self.end_frame)

    @property
    def hand_keys(self) -> list[str]:
        return [k for k in HAND_KEYS if k in self.clip]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION,
            "clip_id": self.clip_id,
            "episode_index": int(self.episode_index),
            "episode_key": self.episode_key,
            "clip_index": int(self.clip_index),
            "start_frame": int(self.start_frame),
            "end_frame": int(self.end_frame),
            "start_s": round(float(self.start_s), 6),
            "end_s": round(float(self.end_s), 6),
            "backend": self.backend,
            "segmentation": self.segmentation,
            "clip": self.clip,
            "seconds": [s.to_dict() for s in self.seconds],
            "facts": self.facts,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False, default=json_default)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "annotation") -> ClipAnnotation:
        try:
            ann = cls(
                episode_index=int(d["episode_index"]),
                episode_key=str(d["episode_key"]),
                clip_index=int(d["clip_index"]),
                start_frame=int(d["start_frame"]),
                end_frame=int(d["end_frame"]),
                start_s=float(d["start_s"]),
                end_s=float(d["end_s"]),
                backend=str(d["backend"]),
                clip=d["clip"],
                seconds=[SecondText(float(s["start_s"]), float(s["end_s"]), s["text"]) for s in d["seconds"]],
                facts=d.get("facts") or {},
                segmentation=str(d.get("segmentation", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(
                where, None, "an annotation record (see handvla.language.annotate.base)", repr(e)
            ) from None
        check_text(ann.clip, ann.seconds, ann.hand_keys, where)
        return ann


def check_text(
    clip: Any, seconds: list[SecondText], hand_keys: list[str], where: str, num_windows: int | None = None
) -> None:
    """Raise InputError unless every hand key has non-empty clip and per-second text."""
    if not isinstance(clip, dict) or not hand_keys:
        raise InputError(where, "clip", f"text for the hand keys {HAND_KEYS}", repr(clip)[:200])
    for k in hand_keys:
        entry = clip.get(k)
        for f in CLIP_FIELDS:
            if not isinstance(entry, dict) or not isinstance(entry.get(f), str) or not entry[f].strip():
                raise InputError(where, f"clip.{k}.{f}", "a non-empty string", repr(entry)[:200])
    if num_windows is not None and len(seconds) != num_windows:
        raise InputError(where, "seconds", f"{num_windows} per-second entries", str(len(seconds)))
    for i, s in enumerate(seconds):
        for k in hand_keys:
            entry = s.text.get(k) if isinstance(s.text, dict) else None
            for f in SECOND_FIELDS:
                if not isinstance(entry, dict) or not isinstance(entry.get(f), str) or not entry[f].strip():
                    raise InputError(where, f"seconds[{i}].{k}.{f}", "a non-empty string", repr(entry)[:200])


class Annotator:
    """Turns a clip into text. Subclasses set ``name`` (the backend name: the annotation table is
    ``meta/annotations/<name>.jsonl``), ``needs_frames`` (whether clips must carry 2 FPS images) and
    implement ``annotate``. ``annotate`` may be called from several threads at once."""

    name: str = "annotator"
    needs_frames: bool = False

    def annotate(self, clip: Clip) -> ClipAnnotation:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        """Counters for the run report (requests, cache hits, retries, ...)."""
        return {}

    def close(self) -> None:
        """Release resources (connections, thread pools)."""


class AnnotationFailure(Exception):
    """An annotator gave up on a clip (e.g. the endpoint kept answering garbage): recorded and skipped."""

    def __init__(self, message: str, attempts: int = 0, kind: str = "error"):
        super().__init__(message)
        self.attempts, self.kind = attempts, kind
