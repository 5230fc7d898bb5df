"""``handvla data handworld`` and ``handvla data view``: the built-in world's episodes, and an overlay video
that checks an episode's 3D hands, camera and pixels against each other.

Wired into ``handvla data`` by ``handvla/commands/data.py`` through ``add_handworld_parser(sub)`` and
``add_view_parser(sub)`` (or ``register(sub)``, which adds both). The leading underscore keeps
``handvla.cli`` from registering this module as a top-level command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from handvla.commands._util import print_json
from handvla.errors import InputError

# -- handworld -----------------------------------------------------------------------------------------------


def run_handworld(args: argparse.Namespace) -> int:
    from handvla.synth.handworld.cameras import parse_rigs, parse_size
    from handvla.synth.handworld.episodes import HandWorldConfig, generate_episodes

    width, height = parse_size(args.size)
    cfg = HandWorldConfig(
        width=width,
        height=height,
        seconds=float(args.seconds),
        rigs=tuple(parse_rigs(args.rigs)),
        shadows=not args.no_shadows,
        tasks=None if not args.tasks else tuple(t.strip() for t in args.tasks.split(",") if t.strip()),
    )
    summary = generate_episodes(
        args.episodes, args.out, seed=args.seed, workers=args.workers, config=cfg, progress=not args.quiet
    )
    print_json(summary)
    return 0


def add_handworld_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "handworld",
        help="generate episodes of the built-in tabletop world (rendered video, hands, ground truth)",
        description=(
            "Render HandWorld episodes: a table with coloured objects, one or two hands performing an "
            "instructed primitive (reach, grasp, pick up, move, place, push, point, pinch, wave, open, "
            "close, two-hand variants), seen by a camera rig (ego: head-mounted with Vision Pro "
            "intrinsics; third: across the table, narrow; phone: wide angle, off-centre). Writes a "
            "standardised episode store (hands in the camera frame, 15 fps, mp4 video, instruction, "
            "ground truth). Episode i of a seed is deterministic; an existing store is resumed."
        ),
    )
    p.add_argument(
        "--episodes", type=int, required=True, metavar="N", help="number of episodes (indices 0..N-1)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="the store folder (created or resumed)")
    p.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    p.add_argument("--rigs", default="ego,third,phone", help="comma list of rigs, used in turn (default all)")
    p.add_argument("--size", default="256x192", metavar="WxH", help="render size in pixels (default 256x192)")
    p.add_argument("--seconds", type=float, default=5.0, metavar="S", help="episode length (default 5)")
    p.add_argument("--workers", type=int, default=1, help="render processes (default 1)")
    p.add_argument(
        "--tasks",
        default=None,
        metavar="T1,T2",
        help="only these tasks (default all): reach, grasp, pick_up, move, place, push, point, pinch, wave, open, "
        "close, both_pick_up, both_push, clap, both_wave, both_open_close",
    )
    p.add_argument("--no-shadows", action="store_true", help="skip shadows on the table (faster)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_handworld)
    return p


# -- view ----------------------------------------------------------------------------------------------------


def _object_marks(ep, T: int):
    """Per frame, the pixels of the targets' centres from the ground truth (HandWorld episodes), or None."""
    import numpy as np

    gt = ep.ground_truth or {}
    if ep.source != "handworld" or "targets" not in gt or "camera" not in gt:
        return None
    from handvla.synth.handworld.cameras import RigCamera

    cam = RigCamera.from_dict(gt["camera"])
    tracks = gt.get("object_tracks", {})
    marks = []
    for tg in gt["targets"]:
        tr = tracks.get(str(tg["object_id"]))
        if tr is not None:
            p = np.asarray(tr["position_world"], np.float64)
        else:
            p = np.repeat(np.asarray(tg["initial_world"], np.float64)[None], T, 0)
        a = ep.frame_offset
        marks.append(cam.project_world(p[a : a + T]))  # (T, 2)
    return marks


def run_view(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image, ImageDraw

    from handvla.data.store import EpisodeStore
    from handvla.video import VideoWriter
    from handvla.hand import render as HR

    store = EpisodeStore(args.dir)
    if store.camera is None:
        raise InputError(store.root, "video", "a store with video to draw on", "a store without video")
    ep = store.load_episode(args.episode, args.start, args.end)
    T = ep.num_frames
    if T == 0:
        raise InputError(f"{store.root} episode {args.episode}", "window", "at least one frame", "0 frames")
    video = np.asarray(ep.video)
    cam = ep.camera
    rcam = HR.Camera(cam.fx, cam.fy, cam.cx, cam.cy, cam.width, cam.height)
    hands = []
    for side in ep.hands_present():
        m = ep.hands[side]
        if ep.joints.get(side) is not None and not args.from_params:
            hands.append(HR.HandTrack(joints=ep.joints[side], side=side, valid=m.valid))
        else:
            hands.append(HR.track_from_motion(m))
    text = ep.tasks[0] if ep.tasks else ""
    marks = None if args.no_objects else _object_marks(ep, T)
    out = Path(args.out)
    if not out.parent.is_dir():
        raise InputError(out, "path", "a file in an existing folder", f"missing folder {out.parent}")
    frames = (
        HR.iter_frames(
            hands, camera=rcam, background=video, title=text if not args.no_text else None, side_tags=True
        )
        if hands
        else iter(video)
    )
    n = 0
    with VideoWriter(out, fps=store.fps) as w:
        for t, frame in enumerate(frames):
            if marks:
                img = Image.fromarray(np.asarray(frame))
                draw = ImageDraw.Draw(img)
                rad = max(3, cam.width // 60)
                for uv in marks:
                    u, v = uv[t]
                    if np.isfinite(u) and np.isfinite(v):
                        draw.ellipse([u - rad, v - rad, u + rad, v + rad], outline=(255, 255, 255), width=1)
                frame = np.asarray(img)
            w.write(np.asarray(frame))
            n += 1
    print_json(
        {
            "out": str(out),
            "episode": int(args.episode),
            "key": ep.key,
            "frames": n,
            "fps": store.fps,
            "hands": [h.side for h in hands],
            "instruction": text,
            "rig": ep.rig,
            "camera": {
                "fx": cam.fx,
                "fy": cam.fy,
                "cx": cam.cx,
                "cy": cam.cy,
                "width": cam.width,
                "height": cam.height,
            },
        }
    )
    return 0


def add_view_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "view",
        help="an episode's video with its stored hand joints drawn over it under the stored camera",
        description=(
            "Write an MP4 (or GIF) of one episode: its video with the stored 21 joints per hand (or, with "
            "--from-params, joints computed from the stored hand parameters) projected through the stored "
            "intrinsics and drawn over each frame; HandWorld episodes also get rings at the target "
            "objects' ground-truth positions. Where the skeleton sits on the rendered hand, 3D, camera "
            "and pixels agree."
        ),
    )
    p.add_argument("dir", help="the store folder")
    p.add_argument("--episode", type=int, required=True, metavar="K", help="episode index")
    p.add_argument("--out", required=True, metavar="FILE.mp4", help="output video (.mp4 or .gif)")
    p.add_argument("--start", type=float, default=None, metavar="S", help="first second (default: start)")
    p.add_argument(
        "--end", type=float, default=None, metavar="S", help="last second, exclusive (default: end)"
    )
    p.add_argument(
        "--from-params", action="store_true", help="joints from the hand parameters, not stored joints"
    )
    p.add_argument("--no-objects", action="store_true", help="no rings at the target objects")
    p.add_argument("--no-text", action="store_true", help="no instruction text")
    p.set_defaults(func=run_view)
    return p


def register(data_subparsers) -> None:
    """Both subcommands (for a ``handvla data`` that discovers modules with ``register``)."""
    add_handworld_parser(data_subparsers)
    add_view_parser(data_subparsers)


__all__ = ["add_handworld_parser", "add_view_parser", "register", "run_handworld", "run_view"]
