"""Best-of-k motion chosen by the model's own grounding (a decoding option; the reference decodes greedily).

Why: told exactly where to go, a small LM over the motion ids still ends the wrist at the place only 0.68-0.79
of the time, while some of its samples do end there (docs/vla-learning.md (12), (13)). The same
VLA answers "where is the red cube?" right far more often than its motion goes there ((10)). This decoder
uses the one to pick the other:

1. for every (hand, object) the caller names, the model is asked the grounding question about the object
   (`handvla.vla.grounding.grounding_prompt`) on the same image; the answer's box centre is where, in the
   model's view, that hand should end;
2. ``samples`` motion answers are sampled under the block constraint (`generate_motion`);
3. each is decoded by the motion tokenizer; the answer whose named hands' final wrists lie nearest the
   objects is kept (mean over the named hands). Where the objects are is read off the boxes one of two
   ways:
   - in the image (no support plane given): each final wrist is projected into the model's view (the
     camera's intrinsics; the canonical camera's image when the model aligns views) and compared with the
     box centre (box units 0..1000). A wrist on the line of sight to an object looks as near as one at it,
     so this choice cannot tell depth apart;
   - on the table (``support_planes``: the table the objects rest on, in the camera frame, e.g. from
     calibrated extrinsics, `handvla.vla.grounding.support_plane_in_camera`): the box centre's ray meets the
     table raised by ``object_centre_height_m`` (objects a hand grasps are 4-8 cm tall), which places the
     object in 3-D, and the wrists are compared with that point in metres along the table (the height above
     it left out: how high the wrist ends over an object depends on the grasp, not on which object it is;
     measured, docs/vla-learning.md (14)).

With ``motion_from="places"`` step 2 draws the answers from the boxes instead of the image: each prompt's
image is replaced by the named objects' boxes in InternVL's grounding format (`generate_motion`'s
``places``), so the motion is made from where the model says the objects are ("where, then how"; for models
trained with ``VLADataConfig.place_motion``; docs/vla-learning.md (15)).

A request that names no object is sampled once; one whose answers give no box keeps its first sample. The choice
uses nothing the model did not say itself besides the camera (needed to relate a 3-D end point and the
image; in 3-D also where the table is) and the object names (which the caller reads off the instruction,
e.g. `instruction_object_names` for HandWorld's instruction grammar).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from handvla.camera import Camera
from handvla.errors import InputError
from handvla.vla.generation import MotionGeneration, _broadcast, answer_questions, generate_motion
from handvla.vla.grounding import (
    as_plane,
    box_centre,
    grounding_prompt,
    model_place_view,
    parse_grounding_answer,
    points_in_view,
    stated_box,
    stated_places,
    view_points_on_plane,
)
from handvla.vla.processing import hands_for_mode

#: where `generate_motion_grounded` compares final wrists with the objects: 3-D on the table, or the image
RERANK_SPACES = ("table", "view")
#: what `generate_motion_grounded`'s motion answers are made from: the image, or the model's stated places
MOTION_SOURCES = ("image", "places")


@dataclass
class GroundedMotion(MotionGeneration):
    """`MotionGeneration` of the kept samples, and how they were chosen. Per request: ``boxes[i]``: hand ->
    the box the model answered for the hand's named object (None: no box in its answer); ``chosen[i]``: the
    kept sample's index; ``view_distance[i]``: (its samples,) mean distance, in box units, from each sample's
    named hands' final wrists to their boxes' centres (NaN when nothing was grounded); ``object_points[i]``:
    hand -> where its object stands (camera frame, metres; the box centre's ray on the raised table) or None
    (no box, no table, or the ray misses it); ``object_distance_m[i]``: (its samples,) mean distance,
    metres, along the table, from the named hands' final wrists to those points (NaN without them);
    ``space[i]``: where the kept sample was chosen, "table" or "view"; ``candidate_ends[i]``: (its samples,
    hands, 3) every sample's final wrist per hand, camera frame, metres; ``places[i]``: the stated places its
    motion was made from (``motion_from="places"``; "" when it was made from the image)."""

    boxes: list[dict[str, tuple[int, int, int, int] | None]] = field(default_factory=list)
    chosen: list[int] = field(default_factory=list)
    view_distance: list[np.ndarray] = field(default_factory=list)
    object_points: list[dict[str, np.ndarray | None]] = field(default_factory=list)
    object_distance_m: list[np.ndarray] = field(default_factory=list)
    space: list[str] = field(default_factory=list)
    candidate_ends: list[np.ndarray] = field(default_factory=list)
    places: list[str] = field(default_factory=list)


def motion_final_wrists(motion_tokenizer, motions: Sequence[np.ndarray], hands: Sequence[str]) -> np.ndarray:
    """(len(motions), hands, 3) final wrist (camera frame, metres) of each hand of each motion's ids
    (seconds, hands, ids_per_block), as decoded by ``motion_tokenizer`` (one batch of last blocks)."""
    if not len(motions):
        return np.zeros((0, len(hands), 3))
    last = np.stack([np.asarray(m)[-1] for m in motions])  # (N, hands, ids_per_block)
    ends = motion_tokenizer.final_wrist_positions(last.reshape(-1, last.shape[-1]), list(hands) * len(motions))
    return ends.reshape(len(motions), len(hands), 3)


def choose_by_boxes(
    ends_view: np.ndarray, hands: Sequence[str], boxes: dict[str, tuple[int, int, int, int] | None]
) -> tuple[int, np.ndarray]:
    """``ends_view``: (samples, hands, 2) final wrists in the model's view (box units). Returns (index of the
    sample whose named hands end nearest their boxes' centres, the (samples,) mean distances); index 0 and
    NaN distances when no hand has a box."""
    cols = [j for j, h in enumerate(hands) if boxes.get(h) is not None]
    if not cols:
        return 0, np.full(len(ends_view), np.nan)
    centres = np.stack([box_centre(boxes[hands[j]]) for j in cols])
    d = np.linalg.norm(ends_view[:, cols] - centres[None], axis=-1).mean(1)
    d = np.where(np.isfinite(d), d, np.inf)  # an end behind the camera is never chosen over one in front
    return int(np.argmin(d)), np.where(np.isfinite(d), d, np.nan)


def choose_by_points(
    ends_cam: np.ndarray,
    hands: Sequence[str],
    points: dict[str, np.ndarray | None],
    along_plane: np.ndarray | None = None,
) -> tuple[int, np.ndarray]:
    """``ends_cam``: (samples, hands, 3) final wrists, camera frame (metres). Returns (index of the sample
    whose named hands end nearest their objects' ``points`` (3,), the (samples,) mean distances in metres);
    index 0 and NaN distances when no hand has a point. ``along_plane``: a plane's normal (3,) (or its (4,)
    form): distances are measured along the plane, the offset along its normal left out (the wrist's height
    above an object depends on the grasp, not on which object it is)."""
    cols = [j for j, h in enumerate(hands) if points.get(h) is not None and np.isfinite(points[h]).all()]
    if not cols:
        return 0, np.full(len(ends_cam), np.nan)
    targets = np.stack([np.asarray(points[hands[j]], np.float64) for j in cols])
    diff = np.asarray(ends_cam, np.float64)[:, cols] - targets[None]
    if along_plane is not None:
        n = np.asarray(along_plane, np.float64)[:3]
        n = n / np.linalg.norm(n)
        diff = diff - (diff @ n)[..., None] * n
    d = np.linalg.norm(diff, axis=-1).mean(1)
    d = np.where(np.isfinite(d), d, np.inf)
    return int(np.argmin(d)), np.where(np.isfinite(d), d, np.nan)


def choose_sample(
    ends_cam: np.ndarray,
    ends_view: np.ndarray,
    hands: Sequence[str],
    boxes: dict[str, tuple[int, int, int, int] | None],
    points: dict[str, np.ndarray | None],
    plane: np.ndarray | None,
) -> tuple[int, str, np.ndarray, np.ndarray]:
    """The kept sample of one request: chosen on the table (`choose_by_points` along ``plane``) when some
    named hand's object is placed on it (``points``), else in the image (`choose_by_boxes` on ``ends_view``).
    Returns (its index, "table" or "view", the (samples,) image distances, the (samples,) table distances)."""
    k_view, d_view = choose_by_boxes(ends_view, hands, boxes)
    k_table, d_table = choose_by_points(ends_cam, hands, points, along_plane=plane)
    on_table = bool(np.isfinite(d_table).any())
    return (k_table, "table", d_view, d_table) if on_table else (k_view, "view", d_view, d_table)


def object_points_from_boxes(
    boxes: dict[str, tuple[int, int, int, int] | None],
    camera: Camera,
    align: bool,
    plane: np.ndarray | None,
    centre_height_m: float,
) -> dict[str, np.ndarray | None]:
    """Hand -> where the object of its box stands (camera frame, metres): the box centre's ray met with
    ``plane`` raised by ``centre_height_m`` (`view_points_on_plane`); None for a hand without a box, for
    every hand when ``plane`` is None, and where the ray misses the plane."""
    out: dict[str, np.ndarray | None] = {}
    for h, box in boxes.items():
        p = None
        if box is not None and plane is not None:
            p = view_points_on_plane(box_centre(box)[None], camera, align, plane, centre_height_m)[0]
            p = p if np.isfinite(p).all() else None
        out[h] = p
    return out


def generate_motion_grounded(
    model,
    processor,
    motion_tokenizer,
    images,
    tasks: str | Sequence[str],
    seconds: int | Sequence[int] = 1,
    hand_mode: str | Sequence[str] = "both",
    *,
    objects: dict[str, str] | Sequence[dict[str, str]],
    cameras: Camera | Sequence[Camera],
    align: bool,
    samples: int = 8,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    seed: int | None = 0,
    max_answer_tokens: int = 48,
    support_planes: np.ndarray | Sequence[np.ndarray | None] | None = None,
    object_centre_height_m: float = 0.03,
    motion_from: str = "image",
) -> GroundedMotion:
    """Instructed motion, best of ``samples`` by the model's grounding answers (module doc). ``objects``: per
    request (or one for all), acting hand -> the name of the object it goes to ("red cube"; hands not named
    do not count in the choice; {}: one sample, no question); ``cameras``: per request (or one), the camera
    the image was taken with (intrinsics and image size); ``align``: the model sees views warped to the
    canonical camera. Sampling: ``temperature`` / ``top_k`` / ``top_p`` as `generate_motion`'s, seeded with
    ``seed``; ``max_answer_tokens``: cap on each grounding answer. ``support_planes``: per request (or one
    (4,) for all; None: none) the table the objects rest on, camera frame, (nx, ny, nz, d) with the normal
    pointing up (`handvla.vla.grounding.support_plane_in_camera`): the choice is made on the table, objects
    placed on it with their centres ``object_centre_height_m`` above it (module doc); a request
    without a plane, or whose boxes' rays miss it, is chosen in the image.

    ``motion_from``: "image" (the motion answers see the image) or "places": they see, instead of the image,
    where the model's own grounding answers put the named objects (`generate_motion`'s ``places``; "where,
    then how", for models trained with ``VLADataConfig.place_motion``), in the view its config names
    (`grounding.model_place_view`; the canonical camera's: each box moved there with the request's camera);
    a request with no named object or no box in its answers keeps the image. ``samples`` 1 with "places" is the greedy answer from the places."""
    if motion_from not in MOTION_SOURCES:
        raise InputError("generate_motion_grounded", "motion_from", f"one of {MOTION_SOURCES}", repr(motion_from))
    if isinstance(samples, bool) or int(samples) != samples or samples < 1:
        raise InputError("generate_motion_grounded", "samples", "a whole number >= 1", repr(samples))
    if motion_tokenizer is None:
        raise InputError("generate_motion_grounded", "motion_tokenizer", "a MotionTokenizer", "None")
    tasks_l = list(tasks) if isinstance(tasks, (list, tuple)) else [tasks]
    n = len(tasks_l)
    images_l = _broadcast(images, n, "images") if isinstance(images, (list, tuple)) else [images] * n
    objs = _broadcast(objects, n, "objects") if isinstance(objects, (list, tuple)) else [objects] * n
    cams = _broadcast(cameras, n, "cameras") if isinstance(cameras, (list, tuple)) else [cameras] * n
    for i, (o, c) in enumerate(zip(objs, cams)):
        if not isinstance(o, dict) or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in o.items()):
            raise InputError("generate_motion_grounded", f"objects[{i}]", "a dict hand -> object name", repr(o))
        if not isinstance(c, Camera):
            raise InputError("generate_motion_grounded", f"cameras[{i}]", "a handvla.camera.Camera", type(c).__name__)
    if support_planes is None:
        planes: list = [None] * n
    elif isinstance(support_planes, (list, tuple)):
        planes = _broadcast(support_planes, n, "support_planes")
    else:
        planes = [support_planes] * n
    planes = [None if p is None else as_plane(p, "generate_motion_grounded", f"support_planes[{i}]")
              for i, p in enumerate(planes)]  # fmt: skip
    if not np.isfinite(object_centre_height_m) or object_centre_height_m < 0:
        raise InputError("generate_motion_grounded", "object_centre_height_m", "metres >= 0", repr(object_centre_height_m))
    secs = _broadcast(seconds, n, "seconds") if isinstance(seconds, (list, tuple)) else [seconds] * n
    modes = _broadcast(hand_mode, n, "hand_mode") if isinstance(hand_mode, (list, tuple)) else [hand_mode] * n
    for i, (o, m) in enumerate(zip(objs, modes)):
        if not set(o) <= set(hands_for_mode(m)):
            raise InputError("generate_motion_grounded", f"objects[{i}]", f"hands of mode {m!r}", repr(sorted(o)))

    # 1. where the model says each named object is
    questions = [(i, h, name) for i, o in enumerate(objs) for h, name in o.items()]
    boxes: list[dict[str, tuple[int, int, int, int] | None]] = [{} for _ in range(n)]
    if questions:
        answers = answer_questions(
            model, processor, [images_l[i] for i, _, _ in questions], [grounding_prompt(name) for _, _, name in questions],
            max_new_tokens=max_answer_tokens,
        )  # fmt: skip
        for (i, h, _name), text in zip(questions, answers):
            boxes[i][h] = parse_grounding_answer(text)

    # the stated places, written as training writes them (`stated_places`, `stated_box`)
    view = model_place_view(model.config)
    places = [
        stated_places({h: (name, stated_box(boxes[i][h], cams[i], align, view)) for h, name in o.items()
                       if boxes[i].get(h) is not None})
        if motion_from == "places" else ""
        for i, o in enumerate(objs)
    ]  # fmt: skip

    # 2. samples of every request, side by side (one for a request that names no object: nothing to choose by)
    counts = [int(samples) if objs[i] else 1 for i in range(n)]
    start = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    rep = [i for i in range(n) for _ in range(counts[i])]
    gen = generate_motion(
        model, processor, [images_l[i] for i in rep], [tasks_l[i] for i in rep], [secs[i] for i in rep],
        [modes[i] for i in rep], do_sample=samples > 1, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
        places=[places[i] or None for i in rep],
    )  # fmt: skip

    # 3. decode, project, keep the nearest
    chosen, dists, points, dists_m, spaces, ends_all = [], [], [], [], [], []
    for i in range(n):
        hands, rows = gen.hands[start[i]], range(start[i], start[i + 1])
        ends = motion_final_wrists(motion_tokenizer, [gen.motion[j] for j in rows], hands)
        view = points_in_view(ends.reshape(-1, 3), cams[i], align).reshape(len(rows), len(hands), 2)
        pts = object_points_from_boxes(boxes[i], cams[i], align, planes[i], object_centre_height_m)
        k, space, d, d3 = choose_sample(ends, view, hands, boxes[i], pts, planes[i])
        chosen.append(k)
        spaces.append(space)
        dists.append(d)
        points.append(pts)
        dists_m.append(d3)
        ends_all.append(ends)
    keep = [int(start[i]) + k for i, k in enumerate(chosen)]
    return GroundedMotion(
        motion=[gen.motion[j] for j in keep],
        hands=[gen.hands[j] for j in keep],
        sequences=gen.sequences[keep],
        prompt_length=gen.prompt_length,
        prefix_texts=[gen.prefix_texts[j] for j in keep],
        boxes=boxes,
        chosen=chosen,
        view_distance=dists,
        object_points=points,
        object_distance_m=dists_m,
        space=spaces,
        candidate_ends=ends_all,
        places=places,
    )


__all__ = [
    "MOTION_SOURCES",
    "RERANK_SPACES",
    "GroundedMotion",
    "choose_by_boxes",
    "choose_by_points",
    "choose_sample",
    "generate_motion_grounded",
    "motion_final_wrists",
    "object_points_from_boxes",
]
