"""``handvla generate``: hand motion from one image and an instruction with a VLA checkpoint.

Writes ``OUT.npz`` (the motion of each hand, camera frame of the input image) and ``OUT.mp4`` (the motion
drawn over the input image under its camera) and prints a JSON summary.

Camera: with ``--intrinsics fx,fy,cx,cy`` (pixels of the given image) the image is warped to the
canonical camera before the model sees it (when the checkpoint was trained with alignment, see
``handvla.vla.data``) and the video is drawn with those intrinsics. Without them the image is taken to be
a canonical-camera image (``handvla.camera``: focal 736.6339 px at 1920 x 1080, scaled to the image size).
Weak-perspective alignment leaves 3D unchanged, so the generated motion is in the input camera's frame.

``OUT.npz`` keys: ``hands`` (the sides), per side ``{side}.global_orient`` (T, 3), ``{side}.hand_pose``
(T, 15, 3), ``{side}.wrist_pos`` (T, 3, metres), ``{side}.betas``, ``{side}.valid``, ``{side}.fps``,
``{side}.joints`` (T, 21, 3, metres, camera frame), ``{side}.motion_ids`` (seconds, ids_per_block); and
``instruction``, ``seconds``, ``camera`` (fx, fy, cx, cy, width, height). `load_generated` reads it back.

``--rerank-samples K``: K sampled answers, the one kept whose final wrists project nearest the boxes the model
itself answers for the objects the hands go to (``--objects``, or read off the instruction); the JSON's
``rerank`` gives the objects, the boxes, the kept sample and every sample's distance (``handvla.vla.rerank``).
With ``--table-plane nx,ny,nz,d`` (the table the objects rest on, camera frame, metres, normal pointing up)
the choice is made on the table: each box centre's ray meets the table, which places the object in 3-D,
and the sample whose wrists end nearest those points along the table is kept (``rerank.object_points_m``,
``rerank.object_distance_m``). ``--motion-from places`` (with ``--rerank-samples K``; 1 = greedy): the motion
is made from the model's boxes for the named objects instead of from the image ("where, then how"; models
trained with ``data.place_motion``); the JSON's ``rerank.places`` is the text it was made from.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from handvla.atomic import atomic_savez
from handvla.commands._util import add_command, add_threads_option, print_json, set_threads
from handvla.errors import CheckpointError, InputError, MissingResourceError


def parse_intrinsics(text: str | None) -> tuple[float, float, float, float] | None:
    """'fx,fy,cx,cy' in pixels -> a tuple (None passes through)."""
    if text is None:
        return None
    parts = [p.strip() for p in str(text).split(",")]
    try:
        vals = tuple(float(p) for p in parts)
    except ValueError:
        raise InputError("--intrinsics", None, "four numbers fx,fy,cx,cy in pixels", repr(text)) from None
    if len(vals) != 4 or not all(np.isfinite(vals)):
        raise InputError("--intrinsics", None, "four finite numbers fx,fy,cx,cy in pixels", repr(text))
    if vals[0] <= 0 or vals[1] <= 0:
        raise InputError("--intrinsics", "fx/fy", "positive focal lengths in pixels", f"{vals[0]}, {vals[1]}")
    return vals  # type: ignore[return-value]


def parse_objects(text: str | None, hands: tuple[str, ...]) -> dict[str, str] | None:
    """'--objects': "red cube" (the one acting hand's object) or "left=red cube,right=blue ball" -> hand ->
    object name (None passes through)."""
    if text is None:
        return None
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if len(items) == 1 and "=" not in items[0]:
        if len(hands) != 1:
            raise InputError("--objects", None, "hand=name for each hand when both hands act", repr(text))
        return {hands[0]: items[0]}
    out = {}
    for item in items:
        hand, sep, name = (v.strip() for v in item.partition("="))
        if not sep or hand not in hands or not name:
            raise InputError("--objects", None, f"items hand=name with hand in {list(hands)}", repr(item))
        out[hand] = name
    return out


def parse_plane(text: str | None) -> np.ndarray | None:
    """'--table-plane': "nx,ny,nz,d" (camera frame, metres: n . p + d = 0 on the table, n pointing up from it)
    -> (4,) with a unit normal (None passes through)."""
    if text is None:
        return None
    from handvla.vla.grounding import as_plane

    try:
        vals = [float(v) for v in str(text).split(",")]
    except ValueError:
        raise InputError("--table-plane", None, "four numbers nx,ny,nz,d (camera frame, metres)", repr(text)) from None
    return as_plane(vals, "--table-plane", None)


def read_image(path: str | Path):
    """An RGB PIL image, or a clear error for a missing or undecodable file."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise MissingResourceError(f"{p}: image file not found")
    try:
        with Image.open(p) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(
            p, None, "an image file that decodes (PNG, JPEG, ...)", f"{type(e).__name__}: {e}"
        ) from None


def _out_base(out: str) -> Path:
    p = Path(out)
    if p.suffix in (".npz", ".mp4"):
        p = p.with_suffix("")
    if not p.parent.is_dir():
        raise InputError("--out", None, "a path in an existing folder", f"missing folder {p.parent}")
    for f in (p.with_suffix(".npz"), p.with_suffix(".mp4")):
        if f.is_dir():  # checked before the model runs (the writers would refuse it after)
            raise InputError(f, "--out", "a file path to write", "an existing folder")
    return p


def load_generated(path: str | Path) -> dict:
    """Read ``OUT.npz``: {side: HandMotion} (plus the joints under ``joints``)."""
    from handvla.hand.motion import HandMotion

    with np.load(path, allow_pickle=False) as d:
        sides = [str(s) for s in d["hands"]]
        out = {}
        for s in sides:
            fields = {k.split(".", 1)[1]: d[k] for k in d.files if k.startswith(f"{s}.")}
            out[s] = HandMotion.from_dict(fields, where=f"{path} ({s})")
        out["joints"] = {s: d[f"{s}.joints"] for s in sides}
    return out


def canonical_camera_for(width: int, height: int) -> tuple[float, float, float, float]:
    """The canonical camera's intrinsics scaled to an image of ``width`` x ``height`` pixels."""
    from handvla.camera import CANONICAL_IMAGE_SIZE, CANONICAL_K

    sx, sy = width / CANONICAL_IMAGE_SIZE[0], height / CANONICAL_IMAGE_SIZE[1]
    return (CANONICAL_K[0, 0] * sx, CANONICAL_K[1, 1] * sy, CANONICAL_K[0, 2] * sx, CANONICAL_K[1, 2] * sy)


def run_generate(args: argparse.Namespace) -> int:
    # Cheap checks first: a bad request fails before the model loads.
    from handvla.vla.processing import hands_for_mode

    hands = hands_for_mode(args.hands)
    if args.seconds <= 0:
        raise InputError("--seconds", None, "a positive whole number of seconds", str(args.seconds))
    if not args.instruction or not args.instruction.strip():
        raise InputError("--instruction", None, "a non-empty instruction", repr(args.instruction))
    if args.temperature <= 0:
        raise InputError("--temperature", None, "a positive number", str(args.temperature))
    K = parse_intrinsics(args.intrinsics)
    if args.rerank_samples < 0:
        raise InputError("--rerank-samples", None, "a whole number >= 0", str(args.rerank_samples))
    objects_arg = parse_objects(args.objects, hands)
    plane = parse_plane(args.table_plane)
    if args.motion_from != "image" and not args.rerank_samples:
        raise InputError("--motion-from", None, "--rerank-samples K as well (1: greedy from the places)", "alone")
    if args.ground_then_act and args.rerank_samples:
        raise InputError("--ground-then-act", None, "greedy or --sample decoding, not --rerank-samples", "both")
    if plane is not None and not args.rerank_samples:
        raise InputError("--table-plane", None, "--rerank-samples K as well (it places the objects of the choice)", "alone")
    image = read_image(args.image)
    base = _out_base(args.out)
    if not Path(args.ckpt).is_dir():
        raise MissingResourceError(f"{args.ckpt}: VLA checkpoint folder not found")

    from transformers.utils import logging as hf_logging

    from handvla.camera import Camera
    from handvla.hand.render import render_motions
    from handvla.vla.data import prepare_image
    from handvla.vla.evaluate import model_alignment, model_image_size
    from handvla.vla.generation import generate_motion
    from handvla.vla.modeling import load_vla
    from handvla.vla.places import (
        in_place_frame,
        names_places,
        parse_named_places,
        place_frame,
        place_point,
        split_end_places,
        states_end_places,
    )

    set_threads(args)
    hf_logging.disable_progress_bar()  # one JSON document on stdout, one error line on stderr
    bundle = load_vla(args.ckpt)
    mt = bundle.motion_tokenizer
    if mt is None:
        raise CheckpointError(
            f"{args.ckpt}: the checkpoint has no motion tokenizer (motion_tokenizer/), so generated ids cannot "
            "be decoded to hand motion; save it with save_vla(..., motion_tokenizer=...)"
        )
    if args.mano_dir:  # e.g. Being-H0's tokenizer, whose motion is MANO's
        from handvla.hand.registry import load_hand_model

        for side in hands:
            mt.set_hand_model(load_hand_model(mt.config.hand_model, side, args.mano_dir))
    align = model_alignment(bundle.model.config)
    size = model_image_size(bundle.model.config, bundle.processor)
    W, H = image.size
    cam = K if K is not None else canonical_camera_for(W, H)
    view = prepare_image(image, K if align else None, align, size)

    frame = place_frame(bundle.model.config)
    t0 = time.perf_counter()
    rerank, grounded, starts = None, None, None
    if args.rerank_samples:  # best of K by the model's own boxes for the named objects (handvla.vla.rerank)
        from handvla.vla.grounding import instruction_object_names
        from handvla.vla.rerank import generate_motion_grounded

        objects = objects_arg if objects_arg is not None else instruction_object_names(args.instruction, hands)
        out = generate_motion_grounded(
            bundle.model, bundle.processor, mt, view, args.instruction, int(args.seconds), args.hands,
            objects=objects, cameras=Camera(*map(float, cam), W, H), align=align, samples=args.rerank_samples,
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed, support_planes=plane,
            motion_from=args.motion_from,
        )  # fmt: skip
        rerank = {
            "samples": int(len(out.candidate_ends[0])),
            "objects": objects,
            "boxes": out.boxes[0],
            "chosen": out.chosen[0],
            "chosen_in": out.space[0],
            "view_distance": [None if not np.isfinite(d) else round(float(d), 1) for d in out.view_distance[0]],
            "motion_from": args.motion_from,
            "places": out.places[0],
        }
        if plane is not None:
            rerank["object_points_m"] = {
                h: None if q is None else [round(float(v), 4) for v in q] for h, q in out.object_points[0].items()
            }
            rerank["object_distance_m"] = [None if not np.isfinite(d) else round(float(d), 4)
                                           for d in out.object_distance_m[0]]  # fmt: skip
    else:
        if args.ground_then_act:  # each hand's place: the model's grounding answer for its named object
            from handvla.vla.grounding import instruction_object_names
            from handvla.vla.places import grounded_place_prefixes

            if frame is None:
                raise InputError("--ground-then-act", None, "a checkpoint whose motion answers state places "
                                 "(motion_answer_prefix target_places / hand_places)",
                                 bundle.model.config.motion_answer_prefix)  # fmt: skip
            objects = objects_arg if objects_arg is not None else instruction_object_names(args.instruction, hands)
            starts, points = grounded_place_prefixes(bundle.model, bundle.processor, mt, [view], [objects], [args.hands])
            grounded = {"objects": objects, "places_m": {h: p.round(4).tolist() for h, p in points[0].items()},
                        "stated": starts[0] is not None}  # fmt: skip
        out = generate_motion(
            bundle.model,
            bundle.processor,
            view,
            args.instruction,
            int(args.seconds),
            args.hands,
            do_sample=args.sample,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
            prefixes=starts,
        )
    gen_s = time.perf_counter() - t0
    ids = out.motion[0]  # (seconds, hands, ids_per_block)
    new_tokens = int((out.sequences[0, out.prompt_length :] != bundle.processor.vocab.pad_id).sum())

    arrays: dict[str, np.ndarray] = {
        "hands": np.array(list(hands)),
        "instruction": np.array(args.instruction),
        "seconds": np.array(int(args.seconds)),
        "camera": np.array([*cam, W, H], np.float64),
        # what the answer said before its motion (motion_answer_prefix; boxes 0..1000 of the model's view)
        "answer_prefix": np.array(out.prefix_texts[0]),
    }
    stated = []  # places a model with motion_answer_prefix target_places / hand_places stated (camera frame, m)
    stated_names = None  # and with place_names, the object names it said before them
    stated_ends = None  # and with end_places, where it says each target ends (after the targets' places)
    if frame is not None:
        # the j-th place is the j-th hand's (left, then right; with end places, then their ends in the same
        # order); hand-frame places are mirrored back for left hands
        named = parse_named_places(out.prefix_texts[0], mt.layout)
        stated = [in_place_frame(place_point(b, mt.config), hands[j % len(hands)], frame).round(4).tolist()
                  for j, (_name, b) in enumerate(named)]  # fmt: skip
        if states_end_places(bundle.model.config):  # given (ground, then act): the grounded places
            stated, stated_ends = split_end_places(stated, None if starts is None or starts[0] is None else len(hands))
            arrays["stated_end_places_m"] = np.asarray(stated_ends, np.float64).reshape(-1, 3)
        arrays["stated_places_m"] = np.asarray(stated, np.float64).reshape(-1, 3)
        if names_places(bundle.model.config):  # the object each place was said for
            stated_names = [name for name, _b in named]
    motions, info = {}, {}
    for j, side in enumerate(hands):
        m = mt.decode_motion(ids[:, j], side=side)
        joints = mt.motion_joints(m)  # (T, 21, 3) camera frame, metres
        motions[side] = m
        for k, v in m.to_dict().items():
            arrays[f"{side}.{k}"] = v
        arrays[f"{side}.joints"] = joints.astype(np.float32)
        arrays[f"{side}.motion_ids"] = ids[:, j]
        info[side] = {
            "frames": len(m),
            "wrist_start_m": m.wrist_pos[0].round(4).tolist(),
            "wrist_end_m": m.wrist_pos[-1].round(4).tolist(),
        }
    npz = base.with_suffix(".npz")
    atomic_savez(npz, arrays)
    mp4 = None
    if not args.no_video:
        mp4 = base.with_suffix(".mp4")
        render_motions(
            mp4,
            motions,
            camera=Camera(*map(float, cam), W, H),
            background=np.asarray(image),
            side_tags=True,
            title=args.instruction[:60],
        )
    print_json(
        {
            "npz": str(npz),
            "mp4": None if mp4 is None else str(mp4),
            "hands": list(hands),
            "seconds": int(args.seconds),
            "fps": float(mt.config.fps),
            "aligned": bool(align and K is not None),
            "image_assumed_canonical": K is None,
            "generated_tokens": new_tokens,
            "generate_seconds": gen_s,
            "tokens_per_s": new_tokens / gen_s if gen_s > 0 else None,
            "answer_prefix": out.prefix_texts[0],
            **({"stated_places_m": stated} if stated else {}),
            **({"stated_place_names": stated_names} if stated_names is not None else {}),
            **({"stated_end_places_m": stated_ends} if stated_ends is not None else {}),
            **({"rerank": rerank} if rerank is not None else {}),
            **({"ground_then_act": grounded} if grounded is not None else {}),
            "motion": info,
        }
    )
    return 0


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "generate",
        run_generate,
        help="generate hand motion for an image + instruction with a VLA checkpoint (npz + overlay mp4)",
        description="Instructed motion generation with constrained decoding; writes OUT.npz (HandMotion per "
        "hand, camera frame) and OUT.mp4 (the motion over the input image).",
    )
    p.add_argument("--ckpt", required=True, help="VLA checkpoint folder (with motion_tokenizer/)")
    p.add_argument("--image", required=True, help="input image (PNG, JPEG, ...)")
    p.add_argument(
        "--intrinsics", default=None, help="fx,fy,cx,cy of the image in pixels (default: canonical)"
    )
    p.add_argument("--instruction", required=True, help='e.g. "pick up the red cube"')
    p.add_argument("--hands", default="right", help="left, right or both (default right)")
    p.add_argument("--seconds", type=int, default=2, help="seconds of motion (whole number, default 2)")
    p.add_argument("--out", required=True, help="output path without extension (OUT.npz, OUT.mp4)")
    p.add_argument("--sample", action="store_true", help="sample (default: greedy)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument(
        "--rerank-samples",
        type=int,
        default=0,
        metavar="K",
        help="best of K (handvla.vla.rerank): sample K motions and keep the one whose final wrists lie nearest the "
        "boxes the model itself answers for the objects the hands go to (0: off; sampled with --temperature, "
        "--top-k, --top-p)",
    )
    p.add_argument(
        "--objects",
        default=None,
        help='with --rerank-samples or --ground-then-act: the object each hand goes to, "red cube" or "left=red cube,right=blue ball" '
        "(default: read off the instruction in HandWorld's grammar, colour + shape)",
    )
    p.add_argument(
        "--table-plane",
        default=None,
        metavar="NX,NY,NZ,D",
        help="with --rerank-samples: the table the objects rest on, camera frame (n . p + d = 0, metres, n pointing "
        "up): the choice is made on the table, each box centre's ray met with it (default: in the image)",
    )
    p.add_argument(
        "--motion-from",
        choices=("image", "places"),
        default="image",
        help="with --rerank-samples: make the motion from the image (default) or from the boxes the model answers "
        "for the named objects ('places': the image is only used to ask where they are; models trained with "
        "data.place_motion; --rerank-samples 1 is the greedy answer)",
    )
    p.add_argument(
        "--ground-then-act",
        action="store_true",
        help="a checkpoint whose answers state places: ask it first where the object each hand goes to is (the "
        "grounding question; objects from --objects or the instruction) and state those places before its "
        "motion (handvla.vla.places.grounded_place_prefixes; docs/vla-learning.md (21))",
    )
    p.add_argument("--no-video", action="store_true", help="write only the npz")
    p.add_argument("--mano-dir", help="MANO model folder, for a motion tokenizer whose hand model is MANO")
    add_threads_option(p)
