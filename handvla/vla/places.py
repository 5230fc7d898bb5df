"""Places said in end-point ids: where an object is, in the ids that say where a motion block ends.

A motion tokenizer with end points (``TokenizerConfig.end_point_space``, ``TokenLayout.end_point_bins``) starts
every block with three ids, one per axis of its space (``ray``: x / z, y / z, then z; ``xyz``: metres), each
the bin of the block's wrist end. A *place* is the same three ids for any camera-frame point: an object's
centre, as the camera sees it (not mirrored for left hands, so that one object has one place whichever hand
goes to it). The blocks' own end-point ids are in the tokenizer's frame (left hands mirrored) unless the
tokenizer was made with ``end_point_frame: camera``; then a place is exactly what the last block of a motion
ending there says, for either hand.

With ``HandVLAConfig.motion_answer_prefix`` "target_places" or "hand_places" (departures from the reference,
off by default) a motion answer first states the place of each acting hand's target (left, then right), then
its blocks, and a grounding question ("In <image>, where is the red cube?") is answered with the
object's place. Why: docs/vla-learning.md (18) measured that an LM told the target's place in these
ids says motion that ends there 0.84-0.95 of the time, while the VLA's own statements of a place (boxes as
digit strings) were not read by its motion; here the place is said, and asked about, in the motion's own
vocabulary.

The two prefixes differ in the frame of a motion answer's places (`place_frame`): "target_places" states
them in the camera frame, "hand_places" in the acting hand's own frame (left hands mirrored, x -> -x), the
frame of the tokenizer and so of the blocks' own end-point ids: the last block's end point is then nearly a
copy of the stated place. docs/vla-learning.md (20): an LM told the target's place in the hand's
frame follows it (0.97 at the target; told another object's place, 0.88 at that object), in the camera
frame much less (0.78; 0.48). Grounding answers (no hand) stay in the camera frame.

Text form: each id as its added token (``<motion_id_k>``, `motion_token`), so places go through the
processor's text path; `parse_places` reads them back from generated text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from handvla.camera import Camera
from handvla.errors import InputError
from handvla.vla.configuration import PLACE_FRAMES, motion_token
from handvla.vla.grounding import _ground_truth, object_name, objects_in_view, scene_objects

#: ids of one place (one per axis of the end-point space)
PLACE_IDS = 3

_PLACE_TOKEN_RE = re.compile(r"<motion_id_(\d+)>")


def object_position_world(obj: dict[str, Any], ground_truth: dict | None = None, frame: int | None = None) -> np.ndarray:
    """(3,) world position (metres) of a scene object record (``pose``: object -> world): its scene pose, or
    with ``frame`` where ``ground_truth.object_tracks`` has it at that episode frame (clipped to the track; an
    object without a track stays at its pose)."""
    track = ((ground_truth or {}).get("object_tracks") or {}).get(str(obj["object_id"])) if frame is not None else None
    if track is None:
        return np.asarray(obj["pose"], np.float64).reshape(4, 4)[:3, 3]
    p = np.asarray(track["position_world"], np.float64).reshape(-1, 3)
    return p[min(max(int(frame), 0), len(p) - 1)]


def object_centre_in_camera(
    obj: dict[str, Any], camera: Camera, ground_truth: dict | None = None, frame: int | None = None
) -> np.ndarray:
    """(3,) camera-frame centre (metres) of a scene object record at its pose, or at episode frame ``frame``
    (`object_position_world`)."""
    if camera.extrinsics is None:
        raise InputError("object_centre_in_camera", "camera.extrinsics", "a world->camera matrix", "None")
    p = object_position_world(obj, ground_truth, frame)
    E = np.asarray(camera.extrinsics, np.float64)
    return E[:3, :3] @ p + E[:3, 3]


def target_centres(
    ground_truth: str | dict | None,
    camera: Camera | None,
    align: bool,
    where: str,
    hands: Sequence[str],
    at_frame: int | None = None,
) -> list[tuple[str, str, np.ndarray]]:
    """(hand, object name, camera-frame centre) of each of ``hands``' first target (``ground_truth.targets``,
    HandWorld's record), in the order of ``hands``, for targets in the model's view (as `target_grounding`
    counts them); [] when the episode has no known scene. The centre is the object's scene pose, or with
    ``at_frame`` where it is at that episode frame (``ground_truth.object_tracks``, clipped to the track's
    end; an object without a track stays at its pose)."""
    gt = _ground_truth(ground_truth, where)
    if gt is None or camera is None:
        return []
    in_view = {obj["object_id"]: obj for obj, _box in objects_in_view(scene_objects(gt, where), camera, align)}
    out = []
    for h in hands:
        ids = [t.get("object_id") for t in gt.get("targets") or [] if isinstance(t, dict) and t.get("hand") == h]
        first = next((i for i in ids if i in in_view), None)
        if first is not None:
            obj = in_view[first]
            out.append((h, object_name(obj), object_centre_in_camera(obj, camera, gt, at_frame)))
    return out


def place_ids(points: np.ndarray, motion_tokenizer) -> np.ndarray:
    """(..., 3) camera-frame points (metres) -> (..., `PLACE_IDS`) motion ids: each axis's end-point bin
    (`MotionTokenizer.end_point_bins`; outside the span: the first / last bin) as that axis's id."""
    lay = motion_tokenizer.layout
    if not lay.end_point_bins:
        raise InputError("place_ids", "motion_tokenizer", "a tokenizer with end-point ids", "none")
    bins = motion_tokenizer.end_point_bins(torch.as_tensor(np.asarray(points, np.float64), dtype=torch.float32))
    axis = torch.arange(PLACE_IDS) * lay.end_point_bins
    return (bins + axis + lay.end_point_id_range[0]).numpy().astype(np.int64)


def place_frame(config) -> str | None:
    """The frame a model's motion answers state places in ('camera' or 'hand', `PLACE_FRAMES`), None when its
    ``motion_answer_prefix`` states none."""
    return PLACE_FRAMES.get(getattr(config, "motion_answer_prefix", "none"))


def names_places(config) -> bool:
    """Whether a model of ``config`` says each stated place after its object's name (``place_names``, for a model
    whose ``motion_answer_prefix`` states places)."""
    return bool(getattr(config, "place_names", False)) and place_frame(config) is not None


def states_end_places(config) -> bool:
    """Whether a model of ``config`` states, after its targets' places, where each target is when the motion
    ends (``HandVLAConfig.end_places``, for a model whose ``motion_answer_prefix`` states places)."""
    return bool(getattr(config, "end_places", False)) and place_frame(config) is not None


def split_end_places(places: Sequence, given: int | None = None) -> tuple[list, list]:
    """The places an answer of a model with ``end_places`` stated, split into (its targets' places, where they
    end): it says as many ends as targets, so the first half (rounded up, for an answer cut short) are the
    targets'; ``given``: how many target places were given to it (ground, then act), the rest its ends.
    Why not one per hand: a two-hand request may act on one target (a one-hand task with both hands in view)."""
    k = (len(places) + 1) // 2 if given is None else min(int(given), len(places))
    return list(places[:k]), list(places[k:])


def in_place_frame(points: np.ndarray, hand: str, frame: str | None) -> np.ndarray:
    """(..., 3) camera-frame points -> the frame a motion answer states ``hand``'s place in (and back: the map
    is its own inverse): in the 'hand' frame a left hand's x is negated, as the tokenizer mirrors left hands;
    otherwise unchanged."""
    p = np.array(points, np.float64)
    if frame == "hand" and hand == "left":
        p[..., 0] = -p[..., 0]
    return p


def place_text(ids: Sequence[int]) -> str:
    """Motion ids of one or more places as their added tokens, e.g. "<motion_id_2100><motion_id_2170>..."."""
    return "".join(motion_token(int(i)) for i in np.asarray(ids).reshape(-1))


def stated_places_text(ids: Sequence[np.ndarray], names: Sequence[str] | None = None) -> str:
    """The start of a motion answer that states places: each place's ids (`place_text`), after its object's
    name when ``names`` is given (one per place; ``HandVLAConfig.place_names``), e.g. " red cube<motion_id_..>".

    A name is said after a space, as it stands inside the instruction ("... the red cube ..."), so that a
    byte-level BPE gives it the instruction's very tokens ("Ġred", "Ġcube") and saying it can be a copy (at
    the start of the answer without the space "red" is other tokens, "r" "ed"). Measured either way at CPU
    budgets, the models copied the shape and not the colour (docs/vla-learning.md (22))."""
    if names is not None and len(names) != len(ids):
        raise InputError("stated_places_text", "names", f"one name per place ({len(ids)})", str(len(names)))
    return "".join((f" {names[j]}" if names is not None else "") + place_text(p) for j, p in enumerate(ids))


def parse_named_places(text: str, layout) -> list[tuple[str, np.ndarray]]:
    """The places a generated text states, each with the text said before it (its object's name for a model
    with ``place_names``; "" when nothing was): end-point-id tokens in runs of `PLACE_IDS` (axis 0, 1, 2 in
    turn), each as (3,) bins; a run broken off or out of axis order ends the list."""
    lo, hi = layout.end_point_id_range
    text = text or ""
    out, cur, said, pos = [], [], [], 0
    for m in _PLACE_TOKEN_RE.finditer(text):
        if not cur:
            said.append(text[pos : m.start()])
        pos = m.end()
        i = int(m.group(1))
        if not lo <= i < hi:
            continue
        axis, b = divmod(i - lo, layout.end_point_bins)
        if axis != len(cur):
            break
        cur.append(b)
        if len(cur) == PLACE_IDS:
            out.append(("".join(said).strip(), np.asarray(cur, np.int64)))
            cur, said = [], []
    return out


def parse_places(text: str, layout) -> list[np.ndarray]:
    """The places a generated text states, as (3,) bins each (`parse_named_places` without the names)."""
    return [bins for _name, bins in parse_named_places(text, layout)]


def place_point(bins: np.ndarray, tokenizer_config) -> np.ndarray:
    """(3,) bins -> the camera-frame point (metres) at the centre of their cell (the first / last bin: its
    inner edge's cell width inward, as for the others)."""
    from handvla.tokenizer.modeling import end_point_uncoded

    lo, hi = (np.asarray(v, np.float64) for v in tokenizer_config.end_point_span)
    n = tokenizer_config.end_point_bins
    coded = lo + (np.asarray(bins, np.float64) + 0.5) * (hi - lo) / n
    return end_point_uncoded(tokenizer_config.end_point_space, torch.as_tensor(coded)).numpy()


def nearest_object_by_ray(point: np.ndarray, centres: dict[int, np.ndarray]) -> int | None:
    """Of ``centres`` ({object id: camera-frame centre}), the one whose image place (x / z, y / z) is nearest
    ``point``'s; None when there is none. The image place, not 3-D distance: depth is the least certain
    axis of a place stated from an image."""
    if not centres:
        return None
    p = np.asarray(point, np.float64)
    ray = p[:2] / max(p[2], 1e-3)
    return min(centres, key=lambda k: float(np.linalg.norm(centres[k][:2] / max(centres[k][2], 1e-3) - ray)))


def grounded_place_prefixes(
    model, processor, motion_tokenizer, images: Sequence, objects: Sequence[dict[str, str]], hand_modes: Sequence[str]
) -> tuple[list[str | None], list[dict[str, np.ndarray]]]:
    """Ground, then act: per request, the start of a motion answer that states each acting hand's place as the
    model's own answer to the grounding question about the object named for that hand (``objects[i]``: hand ->
    name, e.g. from `handvla.vla.grounding.instruction_object_names`; `handvla.vla.generation.answer_places`),
    in the model's place frame (`in_place_frame`), hands in the request's order, each after the object's name
    when the model names its places (``place_names``); None for a request that does
    not name an object for every acting hand (its answer then starts as the model says). Also returns, per
    request, hand -> the grounded place's point (camera frame, metres, `place_point`).

    Why: a model that states places answers "where is the red cube?" right far more often than the place its
    motion answers state, and its motion follows a stated place (docs/vla-learning.md (21))."""
    from handvla.vla.generation import answer_places
    from handvla.vla.grounding import grounding_prompt
    from handvla.vla.processing import hands_for_mode

    if len(objects) != len(images) or len(hand_modes) != len(images):
        raise InputError("grounded_place_prefixes", "objects", f"one dict per image ({len(images)})", str(len(objects)))
    frame = place_frame(model.config)
    if frame is None:
        raise InputError("grounded_place_prefixes", "model", "a model that states places (motion_answer_prefix "
                         "target_places / hand_places)", getattr(model.config, "motion_answer_prefix", "none"))  # fmt: skip
    hands = [hands_for_mode(m) for m in hand_modes]
    asked = [(i, h) for i, o in enumerate(objects) if o and set(o) == set(hands[i]) for h in hands[i]]
    bins = answer_places(model, processor, [images[i] for i, _ in asked],
                         [grounding_prompt(objects[i][h]) for i, h in asked]) if asked else []  # fmt: skip
    points: list[dict[str, np.ndarray]] = [{} for _ in images]
    for (i, h), b in zip(asked, bins):
        points[i][h] = place_point(b, motion_tokenizer.config)
    prefixes: list[str | None] = []
    for i, pts in enumerate(points):
        if not pts:
            prefixes.append(None)
            continue
        ids = [place_ids(in_place_frame(pts[h], h, frame), motion_tokenizer) for h in hands[i]]
        names = [objects[i][h] for h in hands[i]] if names_places(model.config) else None
        prefixes.append(stated_places_text(ids, names))
    return prefixes, points


__all__ = [
    "PLACE_FRAMES",
    "PLACE_IDS",
    "grounded_place_prefixes",
    "in_place_frame",
    "names_places",
    "place_frame",
    "nearest_object_by_ray",
    "object_centre_in_camera",
    "object_position_world",
    "parse_named_places",
    "parse_places",
    "place_ids",
    "place_point",
    "place_text",
    "stated_places_text",
    "split_end_places",
    "states_end_places",
    "target_centres",
]
