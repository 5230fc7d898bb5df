"""Object-grounding questions: an auxiliary pretraining task for episodes whose scene is known.

"In <image>, where is the red cube?" -> "<ref>the red cube</ref><box>[[x1, y1, x2, y2]]</box>", the box of the
object in the image the model sees (after the canonical warp when alignment is on), corners in InternVL's
grounding convention: whole numbers 0..1000 across the image's width and height.

Why: a pretrained InternVL3 already grounds referring expressions; a randomly initialised backbone does not,
and measured on HandWorld it does not learn to from motion answers at CPU budgets (docs/vla-learning.md).
These short text answers ask for the colour/shape words -> image location binding that
instructed motion needs, at a small fraction of a motion sample's cost, and measure it directly
(`evaluate_grounding`). Measured so far: the tiny preset learns to point at an object but not at the named
one at CPU budgets, mixed into pretraining or alone (docs/vla-learning.md (5)). Off by default (``data.grounding: 0``):
the reference's three task types only.

Truth: HandWorld episodes carry their scene (``ground_truth.scene``: objects with pose and extents) and a
world -> camera extrinsic; the box is the projection of the object's eight bounding-box corners at the
episode's first frame.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from handvla.camera import CANONICAL_IMAGE_SIZE, Camera, canonical_homography
from handvla.data.schema import camera_from_row
from handvla.errors import InputError
from handvla.synth.handworld.scene import PALETTE, SHAPE_NOUNS, SceneObject
from handvla.vla.processing import IMAGE_PLACEHOLDER

#: the extent of InternVL's normalised box coordinates
BOX_SCALE = 1000
#: the fields of a scene object record (``SceneObject.to_dict``) that the questions use
OBJECT_FIELDS = ("object_id", "shape", "colour", "size_m", "pose")
#: objects whose visible box covers less than this share of their projected box are not asked about
MIN_VISIBLE_SHARE = 0.5


def grounding_prompt(name: str) -> str:
    """The question about object ``name`` ("red cube")."""
    return f"In {IMAGE_PLACEHOLDER}, where is the {name}?"


_QUESTION_NAME_RE = re.compile(r"where is the (.+?)\?$")


def grounding_question_name(prompt: str) -> str | None:
    """The object a `grounding_prompt` asks about ("red cube"), or None when ``prompt`` is not one."""
    m = _QUESTION_NAME_RE.search(prompt)
    return None if m is None else m.group(1)


def grounding_answer(name: str, box: tuple[int, int, int, int]) -> str:
    """InternVL's referring-expression answer: "<ref>the red cube</ref><box>[[x1, y1, x2, y2]]</box>"."""
    x1, y1, x2, y2 = (int(v) for v in box)
    return f"<ref>the {name}</ref><box>[[{x1}, {y1}, {x2}, {y2}]]</box>"


_BOX_RE = re.compile(r"\[\[\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]\]")


def parse_grounding_answer(text: str) -> tuple[int, int, int, int] | None:
    """The first box "[[x1, y1, x2, y2]]" of a generated answer (the ``<ref>``/``<box>`` tags may have been
    stripped as special tokens), or None when there is none."""
    m = _BOX_RE.search(text)
    return None if m is None else tuple(int(v) for v in m.groups())  # type: ignore[return-value]


def pointed_object(text: str, name: str, boxes: dict[int, Sequence[float]]) -> int | None:
    """Which object a text's grounding statement points at: of ``boxes`` ({object id: box}, 0..1000), the one
    whose centre is nearest the centre of the first box ``text`` states under ``name`` ("red cube",
    `parse_grounding_prefix`); None when it states none for that name or ``boxes`` is empty."""
    return nearest_box(next((b for n, b in parse_grounding_prefix(text) if n == name), None), boxes)


def nearest_box(box: Sequence[float] | None, boxes: dict[int, Sequence[float]]) -> int | None:
    """Of ``boxes`` ({object id: box}, 0..1000), the one whose centre is nearest ``box``'s centre; None when
    ``box`` is None or ``boxes`` is empty."""
    if box is None or not boxes:
        return None
    return min(boxes, key=lambda i: float(np.linalg.norm(box_centre(boxes[i]) - box_centre(box))))


def _box_corners(obj: dict[str, Any]) -> np.ndarray:
    """(8, 3) world-frame corners of an object's bounding box (``pose`` object -> world, ``size_m`` extents)."""
    half = np.asarray(obj["size_m"], np.float64).reshape(3) / 2
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], np.float64)
    pose = np.asarray(obj["pose"], np.float64).reshape(4, 4)
    return (signs * half) @ pose[:3, :3].T + pose[:3, 3]


def pixels_to_view(uv: np.ndarray, camera: Camera, align: bool) -> np.ndarray:
    """(N, 2) pixels of the camera's own image -> where they lie in the model's view, as fractions (0..1
    across its width and height): the canonical camera's image when ``align`` (the warp is affine), else the
    camera's image resized."""
    uv = np.asarray(uv, np.float64).reshape(-1, 2)
    if align:
        H = canonical_homography(camera.K)
        return (uv @ H[:2, :2].T + H[:2, 2]) / np.asarray(CANONICAL_IMAGE_SIZE, np.float64)
    return uv / np.array([camera.width, camera.height], np.float64)


def points_in_view(points_cam: np.ndarray, camera: Camera, align: bool) -> np.ndarray:
    """(N, 3) points in the camera frame (metres) -> (N, 2) their place in the model's view in box units
    (0..``BOX_SCALE`` across the width and down the height; outside that range when out of view; NaN
    behind the camera)."""
    return pixels_to_view(camera.project(np.asarray(points_cam, np.float64).reshape(-1, 3)), camera, align) * BOX_SCALE


def view_to_pixels(view: np.ndarray, camera: Camera, align: bool) -> np.ndarray:
    """(N, 2) places in the model's view (box units, as `points_in_view` gives them) -> (N, 2) pixels of the
    camera's own image (the inverse of `pixels_to_view`)."""
    frac = np.asarray(view, np.float64).reshape(-1, 2) / BOX_SCALE
    if align:
        H = canonical_homography(camera.K)
        return (frac * np.asarray(CANONICAL_IMAGE_SIZE, np.float64) - H[:2, 2]) @ np.linalg.inv(H[:2, :2]).T
    return frac * np.array([camera.width, camera.height], np.float64)


def support_plane_in_camera(camera: Camera, height_m: float = 0.0) -> np.ndarray:
    """(4,) the horizontal world plane z = ``height_m`` (HandWorld's table top is z = 0) in the camera frame:
    (nx, ny, nz, d) with n . p + d = 0 for its points p (metres) and n the unit normal pointing up (world
    +z). Needs the camera's world -> camera extrinsics."""
    if camera.extrinsics is None:
        raise InputError("support_plane_in_camera", "camera.extrinsics", "a world->camera matrix", "None")
    R, t = camera.extrinsics[:3, :3], camera.extrinsics[:3, 3]
    n = R[:, 2]
    return np.array([*n, -float(n @ (R @ np.array([0.0, 0.0, float(height_m)]) + t))])


def as_plane(values, where: str, field: str | None) -> np.ndarray:
    """A plane (nx, ny, nz, d) (n . p + d = 0) as (4,) float64 with a unit normal, or an error naming
    ``where`` / ``field`` when it is not four finite numbers with a nonzero normal."""
    a = np.asarray(values, np.float64)
    if a.shape != (4,) or not np.isfinite(a).all() or np.linalg.norm(a[:3]) < 1e-9:
        raise InputError(where, field, "four finite numbers (nx, ny, nz, d) with a nonzero normal", repr(values))
    return a / np.linalg.norm(a[:3])


def view_points_on_plane(
    view: np.ndarray, camera: Camera, align: bool, plane: np.ndarray, above_m: float = 0.0
) -> np.ndarray:
    """(N, 2) places in the model's view (box units) -> (N, 3) camera-frame points (metres) where their rays
    meet ``plane`` (`support_plane_in_camera`'s (4,) form) raised by ``above_m`` along its normal: where an
    object seen there stands when it rests on the plane with its centre ``above_m`` high. NaN where a ray
    is parallel to the plane or meets it behind the camera."""
    plane = np.asarray(plane, np.float64).reshape(4)
    n, d = plane[:3], plane[3] - float(above_m) * float(np.linalg.norm(plane[:3]))
    uv = view_to_pixels(view, camera, align)
    rays = np.column_stack([uv, np.ones(len(uv))]) @ np.linalg.inv(camera.K).T  # (N, 3), z = 1
    denom = rays @ n
    with np.errstate(divide="ignore", invalid="ignore"):
        s = -d / denom
    ok = np.isfinite(s) & (s > 0) & (np.abs(denom) > 1e-9)
    return np.where(ok[:, None], rays * s[:, None], np.nan)


def object_box_in_view(obj: dict[str, Any], camera: Camera, align: bool) -> tuple[int, int, int, int] | None:
    """The object's box in the model's view, 0..1000 (x across the width, y down the height), or None when
    less than ``MIN_VISIBLE_SHARE`` of its projected box is inside the view (or any corner is behind the
    camera). ``align``: the view is the canonical camera's image (``handvla.camera.warp_to_canonical``);
    else the camera's own image, resized."""
    uv = camera.project_world(_box_corners(obj))
    if not np.isfinite(uv).all():
        return None
    view = pixels_to_view(uv, camera, align)
    lo, hi = view.min(0), view.max(0)
    area = float(np.prod(hi - lo))
    clo, chi = np.clip(lo, 0, 1), np.clip(hi, 0, 1)
    if area <= 0 or float(np.prod(np.maximum(chi - clo, 0))) < MIN_VISIBLE_SHARE * area:
        return None
    x1, y1 = np.rint(clo * BOX_SCALE).astype(int)
    x2, y2 = np.rint(chi * BOX_SCALE).astype(int)
    return int(x1), int(y1), int(x2), int(y2)


def _ground_truth(ground_truth: str | dict | None, where: str) -> dict | None:
    """An episode's ground truth record (JSON text or dict) as a dict, or None when there is none."""
    if ground_truth is None:
        return None
    try:
        gt = json.loads(ground_truth) if isinstance(ground_truth, str) else ground_truth
    except json.JSONDecodeError as e:
        raise InputError(where, "ground_truth", "JSON text", f"unreadable ({e})") from None
    return gt if isinstance(gt, dict) else None


def scene_objects(ground_truth: str | dict | None, where: str) -> list[dict[str, Any]]:
    """The scene objects of an episode's ground truth (JSON text or dict); [] when it has no scene."""
    gt = _ground_truth(ground_truth, where)
    scene = gt.get("scene") if gt is not None else None
    if not scene:
        return []
    objs = scene.get("objects")
    if not isinstance(objs, list):
        raise InputError(where, "ground_truth.scene.objects", "a list of objects", type(objs).__name__)
    for i, o in enumerate(objs):
        missing = [k for k in OBJECT_FIELDS if not isinstance(o, dict) or k not in o]
        if missing:
            raise InputError(
                where, f"ground_truth.scene.objects[{i}]", ", ".join(OBJECT_FIELDS), f"no {missing}"
            )
    return objs


def object_name(obj: dict[str, Any]) -> str:
    """'red cube', as instructions name it (`SceneObject.name` of the record)."""
    return SceneObject.from_dict(obj).name


def objects_in_view(
    objects: Sequence[dict[str, Any]], camera: Camera | None, align: bool
) -> list[tuple[dict[str, Any], tuple[int, int, int, int]]]:
    """(object record, its box in the model's view, ``object_box_in_view``) for each of ``objects`` in view;
    none without a posed camera."""
    if camera is None or camera.extrinsics is None:
        return []
    boxes = [(obj, object_box_in_view(obj, camera, align)) for obj in objects]
    return [(obj, box) for obj, box in boxes if box is not None]


def grounding_questions(
    ground_truth: str | dict | None, camera: Camera | None, align: bool, where: str
) -> list[tuple[str, str]]:
    """(prompt, answer) for every object of the episode's scene in the model's view."""
    in_view = objects_in_view(scene_objects(ground_truth, where), camera, align)
    return [(grounding_prompt(object_name(o)), grounding_answer(object_name(o), box)) for o, box in in_view]


def target_grounding(
    ground_truth: str | dict | None,
    camera: Camera | None,
    align: bool,
    where: str,
    hands: Sequence[str] | None = None,
) -> list[tuple[str, tuple[int, int, int, int]]]:
    """(name, box) of each object an episode's instruction acts on (``ground_truth.targets``, HandWorld's
    record; in the record's order), its box 0..1000 in the model's view (`object_box_in_view`) at the scene's
    initial poses; ``hands``: only the targets of these hands. [] when the episode has no known scene or
    none of them is in view."""
    gt = _ground_truth(ground_truth, where)
    if gt is None:
        return []
    ids = [
        t.get("object_id")
        for t in gt.get("targets") or []
        if isinstance(t, dict) and (hands is None or t.get("hand") in hands)
    ]
    boxes = {obj["object_id"]: (obj, box) for obj, box in objects_in_view(scene_objects(gt, where), camera, align)}
    return [(object_name(boxes[i][0]), boxes[i][1]) for i in dict.fromkeys(ids) if i in boxes]


_OBJECT_PHRASE_RE = re.compile(
    r"\b(" + "|".join(PALETTE) + r")\s+(" + "|".join(sorted(set(SHAPE_NOUNS.values()))) + r")\b", re.IGNORECASE
)


def instruction_object_names(instruction: str, hands: Sequence[str]) -> dict[str, str]:
    """Hand -> the object it goes to, read off an instruction in HandWorld's grammar (objects are "<colour>
    <shape noun>", e.g. "red cube"): one hand acting takes the first object named (the one a "put the X
    behind the Y" picks up); both hands take the first and second named, left then right, as HandWorld's
    two-hand instructions name them; {} when the instruction names fewer objects than that (a wave, a
    clap). Text only: the scene is not consulted."""
    names = [f"{c.lower()} {s.lower()}" for c, s in _OBJECT_PHRASE_RE.findall(instruction)]
    hands = list(hands)
    if len(hands) == 1 and names:
        return {hands[0]: names[0]}
    if len(hands) == 2 and len(names) >= 2:
        return {"left": names[0], "right": names[1]}
    return {}


def grounding_prefix(targets: Sequence[tuple[str, tuple[int, int, int, int]]]) -> str:
    """The text a motion answer starts with when ``HandVLAConfig.motion_answer_prefix`` is "target_boxes":
    `grounding_answer` of each (name, box) of `target_grounding`, in order ("" when there is none)."""
    return "".join(grounding_answer(name, box) for name, box in targets)


#: where the boxes of a motion-from-places prompt are measured (``VLADataConfig.place_view``): "model" = the
#: model's own view (the camera's image, or the canonical camera's when the model sees aligned images);
#: "canonical" = the canonical camera's image whatever the model sees, so that one box means one ray from
#: the camera on every rig (a text prompt without the image does not say which camera took it)
PLACE_VIEWS = ("model", "canonical")


def model_place_view(config) -> str:
    """The view a checkpoint's motion-from-places prompts state boxes in (``config.place_view``, written by
    pretraining; "model" for checkpoints from before the option)."""
    return getattr(config, "place_view", "model")


def box_to_view(
    box: tuple[int, int, int, int], camera: Camera, from_align: bool, to_align: bool
) -> tuple[int, int, int, int]:
    """A box (0..1000) in one view of ``camera``'s image -> the box of the same pixels in another view (the
    canonical camera's image when ``*_align``, else the camera's own, resized). Both maps are affine without
    rotation, so corners go to corners; the result is clipped to the view."""
    if bool(from_align) == bool(to_align):
        return tuple(int(v) for v in box)  # type: ignore[return-value]
    corners = np.array([[box[0], box[1]], [box[2], box[3]]], np.float64)
    view = pixels_to_view(view_to_pixels(corners, camera, from_align), camera, to_align) * BOX_SCALE
    lo = np.clip(np.rint(view.min(0)), 0, BOX_SCALE).astype(int)
    hi = np.clip(np.rint(view.max(0)), 0, BOX_SCALE).astype(int)
    return int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1])


def stated_box(
    box: tuple[int, int, int, int], camera: Camera, align: bool, place_view: str
) -> tuple[int, int, int, int]:
    """A box of the model's view (``align``) as a motion-from-places prompt states it: moved to the canonical
    camera's view when ``place_view`` is "canonical" (`box_to_view`), else as it is. One home for training's
    true boxes (`handvla.vla.data.target_places`) and inference's own boxes (`generate_motion_grounded`)."""
    return box_to_view(box, camera, align, align or place_view == "canonical")


def stated_places(by_hand: dict[str, tuple[str, tuple[int, int, int, int]] | None]) -> str:
    """The places a motion-from-places prompt states (``VLADataConfig.place_motion`` in training,
    ``generate_motion_grounded(motion_from="places")`` at inference: one home, so both write them alike):
    each hand's (object name, box), left hand first, in InternVL's grounding format; hands without one (absent
    or None) are left out; "" when none has one."""
    return grounding_prefix([by_hand[h] for h in ("left", "right") if by_hand.get(h) is not None])


_NAMED_BOX_RE = re.compile(
    r"(?:<ref>\s*(?:the\s+)?(.*?)\s*</ref>)?\s*(?:<box>)?\s*\[\[\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]\]"
)


def parse_grounding_prefix(text: str) -> list[tuple[str | None, tuple[int, int, int, int]]]:
    """Every (name, box) of a generated text in `grounding_prefix`'s format, in order: the name without its
    "the" ("red cube"; None for a box without a ``<ref>`` before it)."""
    return [(m.group(1), tuple(int(v) for v in m.groups()[1:])) for m in _NAMED_BOX_RE.finditer(text)]  # type: ignore[misc]


def box_token_map(boxes: Sequence[Sequence[float]], grid: int) -> np.ndarray:
    """(grid * grid,) float32, row-major over a tile's visual tokens: 1 where a token's cell of the view
    overlaps one of ``boxes`` (0..1000, x1 y1 x2 y2), else 0."""
    edges = np.arange(grid + 1) * BOX_SCALE / grid
    out = np.zeros((grid, grid), np.float32)
    for x1, y1, x2, y2 in boxes:
        rows = (y1 < edges[1:]) & (y2 > edges[:-1])
        cols = (x1 < edges[1:]) & (x2 > edges[:-1])
        out[np.ix_(rows, cols)] = 1.0
    return out.reshape(-1)


def box_centre(box) -> np.ndarray:
    """(2,) float64 centre of a box (x1, y1, x2, y2)."""
    b = np.asarray(box, np.float64)
    return (b[:2] + b[2:]) / 2


def score_boxes(
    answered: Sequence[tuple[int, int, int, int] | None],
    truth: Sequence[tuple[int, int, int, int]],
    others: Sequence[Sequence[tuple[int, int, int, int]]],
) -> dict[str, Any]:
    """Score answered boxes (None: no box in the answer) against the true ones: ``centre_in_box`` (the
    answered centre inside the true box), ``right_object`` (over questions whose scene has ``others``: the
    answered centre nearer the named object's centre than any other object's) with Wilson 95 % intervals,
    and the mean ``centre_error`` (0..1000 units, answered boxes only)."""
    from handvla.stats import rate_summary

    inside, right, err = [], [], []
    for pred, box, rest in zip(answered, truth, others, strict=True):
        c = None if pred is None else box_centre(pred)
        inside.append(c is not None and bool(box[0] <= c[0] <= box[2] and box[1] <= c[1] <= box[3]))
        if c is not None:
            err.append(float(np.linalg.norm(c - box_centre(box))))
        if rest:
            d = None if c is None else np.linalg.norm(c - box_centre(box))
            right.append(d is not None and all(d < np.linalg.norm(c - box_centre(b)) for b in rest))
    return {
        **rate_summary(inside, "centre_in_box"),
        **rate_summary(right, "right_object"),
        "centre_error": float(np.mean(err)) if err else None,
    }


def evaluate_grounding(
    bundle, store, max_episodes: int | None = None, batch_size: int = 16, align: bool | None = None
) -> dict[str, Any]:
    """Ask every in-view object of the first ``max_episodes`` episodes of ``store`` (HandWorld) where it is.

    Per question: ``well_formed`` (the answer has a box), ``centre_in_box`` (the answered box's centre lies
    in the true box), ``right_object`` (for scenes of two or more objects in view: the answered centre is
    nearer the named object's true centre than any other object's; chance 1 / objects), the centre error
    (0..1000 units). Beside them the input-free baseline: one constant box (the mean true box of these
    questions) scored the same way. Wilson 95 % intervals on every rate."""
    from handvla.data.store import EpisodeStore
    from handvla.vla.data import prepare_image
    from handvla.vla.evaluate import model_alignment, model_image_size
    from handvla.vla.generation import answer_questions

    model, processor = bundle.model, bundle.processor
    st = store if isinstance(store, EpisodeStore) else EpisodeStore(store)
    align = model_alignment(model.config) if align is None else bool(align)
    size = model_image_size(model.config, processor)
    n_ep = len(st) if max_episodes is None else min(len(st), int(max_episodes))
    qs: list[dict[str, Any]] = []
    for k in range(n_ep):
        row = st.meta(k)
        where = f"{st.root} episode {k}"
        objs = objects_in_view(scene_objects(row["ground_truth"], where), camera_from_row(row), align)
        if not objs:
            continue
        ep = st.load_episode(k, 0.0, 1.0 / st.fps, with_video=True)
        image = prepare_image(ep.video[0], ep.camera.K, align, size)
        for o, b in objs:
            qs.append({"episode": k, "image": image, "prompt": grounding_prompt(object_name(o)), "box": b,
                       "others": [ob for oo, ob in objs if oo is not o]})  # fmt: skip
    if not qs:
        raise InputError(str(st.root), "ground_truth.scene", "episodes with objects in view", "none")
    model.eval()
    for i in range(0, len(qs), batch_size):
        part = qs[i : i + batch_size]
        texts = answer_questions(model, processor, [q["image"] for q in part], [q["prompt"] for q in part])
        for q, t in zip(part, texts):
            q["answer"], q["pred"] = t, parse_grounding_answer(t)
    const = tuple(np.mean([q["box"] for q in qs], axis=0))
    truth, others = [q["box"] for q in qs], [q["others"] for q in qs]
    multi = [q for q in qs if q["others"]]
    return {
        "episodes": n_ep,
        "questions": len(qs),
        "align": align,
        "well_formed": sum(q["pred"] is not None for q in qs) / len(qs),
        "model": score_boxes([q["pred"] for q in qs], truth, others),
        "constant_box": score_boxes([const] * len(qs), truth, others),
        "right_object_chance": float(np.mean([1.0 / (1 + len(q["others"])) for q in multi]))
        if multi
        else None,
        "examples": [{"prompt": q["prompt"], "answer": q["answer"], "box": list(q["box"])} for q in qs[:5]],
    }


__all__ = [
    "BOX_SCALE",
    "PLACE_VIEWS",
    "as_plane",
    "box_to_view",
    "model_place_view",
    "evaluate_grounding",
    "grounding_answer",
    "grounding_prefix",
    "grounding_question_name",
    "stated_box",
    "stated_places",
    "grounding_prompt",
    "grounding_questions",
    "object_box_in_view",
    "objects_in_view",
    "parse_grounding_answer",
    "parse_grounding_prefix",
    "pointed_object",
    "score_boxes",
    "support_plane_in_camera",
    "target_grounding",
    "view_points_on_plane",
    "view_to_pixels",
]
