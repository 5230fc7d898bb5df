"""``handvla data ...``: every job on standardised episode stores (``handvla.data.store``), from making them
to checking them.

    handvla data stats DIR [--json]                   episodes, hours, per-source counts, size on disk
    handvla data validate DIR [--deep] [--json]       every problem, one line each (exit status 2 if any)
    handvla data annotate DIR [--backend rules|openai] [--url URL --model NAME] [--workers N]
    handvla data instructions DIR [DIR ...] --out MANIFEST [--size N] [--seed S]
    handvla data build --config configs/build_unihand.yaml --out stores/unihand [--workers 4] [--shard i/n]
                      [--ray local|auto|HOST:PORT] (exit status 2 when nothing or too little was built)
    handvla data merge stores/unihand stores/shard_0 stores/shard_1 ...
    handvla data handworld --episodes N --out DIR     the built-in world's episodes
    handvla data view DIR --episode K --out F.mp4     an episode's stored hands drawn over its video
    handvla data sim-demos --episodes N --out DIR     Adroit expert demonstrations (needs the robot extra)
    handvla data retarget --store DIR --out DIR       human carries retargeted to Adroit relocate demos

Subcommands are registered as ``handvla/cli.py`` describes. Results are one JSON document on stdout
(progress bars go to stderr). Reruns resume: annotate skips clips already annotated by that backend (and
the openai backend answers repeated requests from its reply cache), instructions rewrites its manifest
atomically, build, merge and handworld skip the episodes already in the store.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from handvla.commands._util import add_command, add_group, print_json
from handvla.errors import ConfigError, InputError


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{n} B"


# -- stats ---------------------------------------------------------------------------------------------------


def run_stats(args: argparse.Namespace) -> int:
    from handvla.data.store import EpisodeStore

    summary = EpisodeStore(args.dir).summary()
    if args.json:
        print_json(summary)
        return 0
    s = summary
    lines = [
        f"store      {s['dir']}",
        f"episodes   {s['episodes']}",
        f"frames     {s['frames']} at {s['fps']} fps",
        f"hours      {s['hours']:.3f}",
        f"tasks      {s['tasks']}",
        f"hands      left {s['hands']['left']}, right {s['hands']['right']}, both {s['hands']['both']}, "
        f"none {s['hands']['none']} (episodes with a valid frame of that hand)",
        f"hand model {s['hand_model']}, joints {'yes' if s['joints'] else 'no'}, video {s['video'] or 'none'}",
        f"on disk    {_human_bytes(s['size_bytes'])}"
        + ("" if s["compacted"] else " (writer running or killed)"),
    ]
    for title, table in (("source", s["sources"]), ("rig", s["rigs"])):
        lines.append(f"per {title}:")
        width = max([len(k) for k in table] + [4])
        for name, d in table.items():
            lines.append(
                f"  {name:<{width}}  {d['episodes']:>7} episodes  {d['frames']:>9} frames  {d['hours']:8.3f} h"
            )
    print("\n".join(lines))
    return 0


def add_stats(sub) -> argparse.ArgumentParser:
    p = add_command(
        sub,
        "stats",
        run_stats,
        help="episodes, hours, frames, per-source and per-rig counts, hands present, size on disk",
        description="Summarise an episode store (committed episodes only, also while a writer is running).",
    )
    p.add_argument("dir", help="the store folder (LeRobot v3-style layout)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    return p


# -- validate ------------------------------------------------------------------------------------------------


def run_validate(args: argparse.Namespace) -> int:
    from handvla.data.store import EpisodeStore

    store = EpisodeStore(args.dir)
    problems = store.validate(deep=args.deep, progress=not args.json)
    if args.json:
        print_json({"dir": str(store.root), "episodes": len(store), "deep": args.deep, "problems": problems})
    else:
        for p in problems:
            print(p)
        print(
            f"{len(store)} episodes checked{' (deep)' if args.deep else ''}: {len(problems)} problem(s)",
            file=sys.stderr,
        )
    return 0 if not problems else 2


def add_validate(sub) -> argparse.ArgumentParser:
    p = add_command(
        sub,
        "validate",
        run_validate,
        help="check files, row and frame counts (and with --deep every value) of an episode store",
        description="Report every problem found, one line each naming the file, episode and field. "
        "Exit status 2 when there is any.",
    )
    p.add_argument("dir", help="the store folder")
    p.add_argument(
        "--deep", action="store_true", help="also load every episode: shapes, NaN, decodable video"
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    return p


# -- annotate ------------------------------------------------------------------------------------------------


def _positive(cast: type, number: str, positive: str):
    """An argparse type: ``cast(text)`` when it is > 0 (``number`` / ``positive`` name what is expected)."""

    def parse(text: str):
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {number}, got {text!r}") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"expected {positive}, got {v}")
        return v

    return parse


_positive_int = _positive(int, "a whole number", "a whole number >= 1")
_positive_float = _positive(float, "a number", "a positive number")


def run_annotate(args: argparse.Namespace) -> int:
    import torch

    from handvla.language.annotate.run import annotate_store
    from handvla.language.annotate.segments import SegmentConfig
    from handvla.language.annotate.table import ANNOTATIONS_DIR

    # clips run in parallel threads; torch's own threads would only fight them for the cores
    torch.set_num_threads(1)
    if not Path(args.dir).is_dir():
        raise InputError(args.dir, None, "an episode store folder", "missing")
    seg = SegmentConfig(
        max_clip_s=args.max_clip_s,
        window_s=args.window_s,
        stride_s=args.stride_s,
        frame_rate_hz=args.frame_rate,
    )
    if args.backend == "rules":
        from handvla.language.annotate.rules import RuleAnnotator

        annotator = RuleAnnotator(mano_dir=args.mano_dir)
    else:
        from handvla.language.annotate.openai_backend import OpenAIAnnotator, OpenAIConfig

        cfg = OpenAIConfig.from_env(
            url=args.url,
            model=args.model,
            api_key=None,  # keys come from the environment only, never from the command line (shell history)
            timeout_s=args.timeout,
            max_retries=args.retries,
            rate_per_s=args.rate,
            max_image_side=args.image_side,
            json_mode=not args.no_json_mode,
            include_kinematics=not args.no_hints,
        )
        cache = (
            Path(args.cache_dir) if args.cache_dir else Path(args.dir) / ANNOTATIONS_DIR / "cache" / "openai"
        )
        annotator = OpenAIAnnotator(cfg, cache_dir=cache)
    report = annotate_store(
        args.dir,
        annotator,
        config=seg,
        workers=args.workers,
        limit=args.limit,
        retry_failed=not args.skip_failed,
        progress=not args.quiet,
    )
    print_json(report)
    return 0 if report["failed"] == 0 else 3


def add_annotate(sub) -> argparse.ArgumentParser:
    p = add_command(
        sub,
        "annotate",
        run_annotate,
        help="write clip-level and per-second text for every clip of a store (rule-based or a VLM endpoint)",
        description="Cut episodes into clips of at most 10 s, annotate each (clip instruction and summary, "
        "per-second instruction and description, for both hands and each hand) and append the result to "
        "DIR/meta/annotations/<backend>.jsonl. Reruns skip clips already annotated by that backend. Exit "
        "status 3 when some clips failed (they are listed in <backend>.failures.jsonl and retried next time).",
    )
    p.add_argument("dir", help="the episode store folder")
    p.add_argument(
        "--backend",
        choices=("rules", "openai"),
        default="rules",
        help="rules (default, no model) or openai (a VLM endpoint)",
    )
    p.add_argument(
        "--url",
        default=None,
        help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1 (default $HANDVLA_VLM_URL)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="model name at the endpoint (default $HANDVLA_VLM_MODEL); the key is read from $HANDVLA_VLM_API_KEY",
    )
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="clips annotated at the same time (concurrent requests for openai)",
    )
    p.add_argument(
        "--rate", type=_positive_float, default=None, help="openai: at most this many requests per second"
    )
    p.add_argument(
        "--timeout", type=_positive_float, default=120.0, help="openai: seconds to wait for one reply"
    )
    p.add_argument(
        "--retries",
        type=int,
        default=4,
        help="openai: retries per clip (timeouts, 429/5xx, replies that are not the JSON asked for)",
    )
    p.add_argument(
        "--image-side",
        type=_positive_int,
        default=448,
        help="openai: frames are downscaled to this longer side (pixels)",
    )
    p.add_argument(
        "--no-json-mode",
        action="store_true",
        help="openai: do not send response_format=json_object (for servers without it)",
    )
    p.add_argument(
        "--no-hints",
        action="store_true",
        help="openai: do not add the rule-based motion measurements to the prompt",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="openai: reply cache folder (default DIR/meta/annotations/cache/openai)",
    )
    p.add_argument(
        "--skip-failed", action="store_true", help="do not retry clips that failed in an earlier run"
    )
    p.add_argument(
        "--limit", type=int, default=None, help="annotate at most this many clips (for a trial run)"
    )
    p.add_argument(
        "--max-clip-s", type=_positive_float, default=10.0, help="longest clip, seconds (default 10)"
    )
    p.add_argument(
        "--window-s", type=_positive_float, default=1.0, help="per-second window length, seconds (default 1)"
    )
    p.add_argument(
        "--stride-s",
        type=_positive_float,
        default=0.5,
        help="per-second window stride, seconds (default 0.5)",
    )
    p.add_argument(
        "--frame-rate", type=_positive_float, default=2.0, help="frames per second shown to a VLM (default 2)"
    )
    p.add_argument(
        "--mano-dir", default=None, help="rules: MANO folder, for stores with hand_model 'mano' and no joints"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


# -- instructions --------------------------------------------------------------------------------------------


def run_instructions(args: argparse.Namespace) -> int:
    from handvla.language.instructions.build import InstructionBuildConfig, build_instructions
    from handvla.language.instructions.sampling import (
        DEFAULT_TASK_WEIGHTS,
        InstructionBalanceConfig,
        parse_task_weights,
    )

    weights = parse_task_weights(args.proportions) if args.proportions else dict(DEFAULT_TASK_WEIGHTS)
    source_weights = None
    if args.source_weights:
        try:
            source_weights = {
                k.strip(): float(v) for k, v in (p.split("=", 1) for p in args.source_weights.split(","))
            }
        except ValueError:
            raise ConfigError(
                f"--source-weights: expected name=weight pairs separated by commas, got {args.source_weights!r}"
            ) from None
    balance = None
    if args.size is not None:
        balance = InstructionBalanceConfig(
            size=args.size,
            seed=args.seed,
            task_weights=weights,
            source_balance=args.source_balance,
            source_weights=source_weights,
        )
    backends = tuple(args.backend.split(",")) if args.backend != "auto" else None
    cfg = InstructionBuildConfig(backends=backends)
    report = build_instructions(
        args.dirs,
        args.out,
        size=args.size,
        seed=args.seed,
        balance=balance,
        config=cfg,
        progress=not args.quiet,
    )
    print_json(report)
    return 0


def add_instructions(sub) -> argparse.ArgumentParser:
    p = add_command(
        sub,
        "instructions",
        run_instructions,
        help="instruction samples (generation, translation, prediction) from annotated stores, balanced",
        description="Make samples of the three task types from the annotations of one or more stores, fill "
        "~20 templates per type (each stating the duration and the hands), pick a subset of --size balanced "
        "over sources and task types (default proportions 1.6/0.4/0.5 like UniHand-2.5M) and write the "
        "manifest (.jsonl or .parquet) atomically. Without --size every candidate is written once.",
    )
    p.add_argument(
        "dirs",
        nargs="+",
        metavar="DIR",
        help="episode store folder(s), annotated with `handvla data annotate`",
    )
    p.add_argument("--out", required=True, help="manifest file (.jsonl or .parquet)")
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="number of samples in the balanced subset (default: every candidate once)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the subset and of the template choice")
    p.add_argument(
        "--proportions",
        default=None,
        help="task-type weights generation,translation,prediction (default 1.6,0.4,0.5)",
    )
    p.add_argument(
        "--source-balance",
        choices=("uniform", "sqrt", "proportional"),
        default="uniform",
        help="how sources share each task type (default uniform)",
    )
    p.add_argument(
        "--source-weights",
        default=None,
        help="explicit source shares, e.g. handworld=1,egodex=3 (overrides --source-balance)",
    )
    p.add_argument(
        "--backend",
        default="auto",
        help="annotation tables to use, in order of preference, e.g. openai,rules (default: all present, openai first)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


# -- build ---------------------------------------------------------------------------------------------------


def run_build(args: argparse.Namespace) -> int:
    from handvla.ingest.build import build, check_outcome, load_build_config, parse_shard

    if not 0 <= args.max_failed_fraction <= 1:
        raise ConfigError(
            f"--max-failed-fraction: expected a number from 0 to 1, got {args.max_failed_fraction}"
        )
    cfg = load_build_config(args.config)
    summary = build(
        cfg,
        args.out,
        workers=args.workers,
        shard=parse_shard(args.shard),
        limit=args.limit,
        progress=not args.no_progress,
        ray=args.ray,
        max_retries=args.max_retries,
    )
    print_json(summary)
    check_outcome(summary, args.max_failed_fraction)  # exit 2 when nothing (or too little) was built
    return 0


def add_build(sub) -> argparse.ArgumentParser:
    p = add_command(
        sub,
        "build",
        run_build,
        help="source datasets -> one standardised, aligned, balanced episode store (resumable, parallel)",
        description="Read every enabled source of the config, standardise (fit joints, clean pseudo-labels, "
        "15 fps), align to the canonical camera, add balancing copies and write the store. Episodes "
        "already in the store are skipped; failures are reported in OUT/build_report.jsonl and skipped. "
        "The config is checked before any work. Exit status 2 (with the summary printed) when nothing was "
        "written or more than --max-failed-fraction of the episodes failed or were skipped.",
    )
    p.add_argument("--config", required=True, help="build config (YAML): see handvla.ingest.build")
    p.add_argument("--out", required=True, help="the store folder (created or resumed)")
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        help="worker processes (default: the config's); with --ray: tasks at once (default: the cluster's CPUs)",
    )
    p.add_argument("--shard", default=None, help="i/n: build only shard i of n (by a stable key hash)")
    p.add_argument(
        "--limit", type=_positive_int, default=None, help="at most N episodes per source (a quick trial)"
    )
    p.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="build on a Ray cluster (needs handvla[cluster]): 'local' starts a local instance, 'auto' uses "
        "the running one (or starts one), or host:port / ray://host:port; every node must read the sources",
    )
    p.add_argument(
        "--max-retries",
        type=int,
        default=3,
        help="with --ray: retries of an episode whose worker process or node died (default 3)",
    )
    p.add_argument(
        "--max-failed-fraction",
        type=float,
        default=0.5,
        help="exit status 2 when more than this fraction of the episodes tried failed or were skipped "
        "(default 0.5; 1 never)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


# -- merge ---------------------------------------------------------------------------------------------------


def run_merge(args: argparse.Namespace) -> int:
    from handvla.ingest.build import merge_stores

    print_json(merge_stores(args.out, args.inputs, progress=not args.no_progress))
    return 0


def add_merge(sub) -> argparse.ArgumentParser:
    p = add_command(
        sub,
        "merge",
        run_merge,
        help="merge shard stores into one (single-build order, mp4 files copied)",
        description="Merge stores built with --shard into OUT, in the order a single build writes.",
    )
    p.add_argument("out", help="the merged store (created or resumed)")
    p.add_argument("inputs", nargs="+", help="shard stores")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


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
        scene_repeats=args.scene_repeats,
    )
    summary = generate_episodes(
        args.episodes, args.out, seed=args.seed, workers=args.workers, config=cfg, progress=not args.quiet
    )
    print_json(summary)
    return 0


def add_handworld(sub) -> argparse.ArgumentParser:
    p = add_command(
        sub,
        "handworld",
        run_handworld,
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
    p.add_argument(
        "--scene-repeats",
        type=int,
        default=1,
        metavar="K",
        help="K consecutive episodes share one scene, camera and body (the same first image) with their own "
        "tasks and targets (default 1: a scene per episode)",
    )
    p.add_argument("--no-shadows", action="store_true", help="skip shadows on the table (faster)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


# -- view ----------------------------------------------------------------------------------------------------


def _object_marks(ep, T: int):
    """Per frame, the pixels of the targets' centres from the ground truth (HandWorld episodes), or None."""
    import numpy as np

    gt = ep.ground_truth or {}
    if ep.source != "handworld" or "targets" not in gt or "camera" not in gt:
        return None
    from handvla.synth.handworld.cameras import camera_from_record

    cam = camera_from_record(gt["camera"])
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
    from handvla.hand import render as HR
    from handvla.video import VideoWriter

    store = EpisodeStore(args.dir)
    if store.camera is None:
        raise InputError(store.root, "video", "a store with video to draw on", "a store without video")
    ep = store.load_episode(args.episode, args.start, args.end)
    T = ep.num_frames
    if T == 0:
        raise InputError(f"{store.root} episode {args.episode}", "window", "at least one frame", "0 frames")
    video = np.asarray(ep.video)
    cam = ep.camera
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
            hands, camera=cam, background=video, title=text if not args.no_text else None, side_tags=True
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
            "camera": cam.intrinsics_dict(),
        }
    )
    return 0


def add_view(sub) -> argparse.ArgumentParser:
    p = add_command(
        sub,
        "view",
        run_view,
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
    return p


# -- sim-demos -----------------------------------------------------------------------------------------------


def run_sim_demos(args: argparse.Namespace) -> int:
    from handvla.robot.sim.expert import collect_demos
    from handvla.robot.sim.suites import select_tasks

    size = None if args.image_size == 0 else int(args.image_size)
    task = select_tasks(args.suite, args.tasks) if args.suite else args.task
    summary = collect_demos(
        task,
        args.episodes,
        args.out,
        seed=args.seed,
        image_size=size,
        camera=args.camera,
        only_successful=not args.keep_failures,
        progress=not args.quiet,
    )
    print_json(summary)
    return 0


def add_sim_demos(sub) -> argparse.ArgumentParser:
    p = add_command(
        sub,
        "sim-demos",
        run_sim_demos,
        help="expert demonstrations in a simulator (a task or a suite) as a LeRobot v3 dataset",
        description=(
            "Run the scripted expert of a task (or of every task of a suite) on seeds SEED, SEED+1, ... and "
            "write the episodes (by default only the solved ones) to one LeRobot v3 dataset: "
            "observation.state, action, next.reward, next.success and the video observation.images.<camera>; "
            "each episode's task text is its instruction."
        ),
    )
    p.add_argument("--task", default="relocate", help="sim task with a scripted expert (default relocate)")
    p.add_argument("--suite", default=None, help="instead: every task of a suite (metaworld-mt10)")
    p.add_argument("--tasks", default=None, help="with --suite: only these tasks (comma-separated)")
    p.add_argument("--episodes", type=int, required=True, metavar="N", help="demonstrations to write (per task)")
    p.add_argument("--out", required=True, metavar="DIR", help="dataset folder (created, or appended to)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0; evaluation starts at 10000)")
    p.add_argument("--image-size", type=int, default=128, metavar="PX", help="square frames (0: no video)")
    p.add_argument("--camera", default=None, help="camera name (default: the wrapper's 'front')")
    p.add_argument("--keep-failures", action="store_true", help="also write episodes the expert failed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


# -- retarget ------------------------------------------------------------------------------------------------


def run_retarget(args: argparse.Namespace) -> int:
    from handvla.robot.sim.human_demos import collect_human_demos

    summary = collect_human_demos(
        args.store,
        args.out,
        max_episodes=args.episodes,
        seed=args.seed,
        image_size=None if args.image_size == 0 else int(args.image_size),
        camera=args.camera,
        only_successful=not args.keep_failures,
        play_seconds=args.play_seconds,
        clearance=args.clearance,
        progress=not args.quiet,
    )
    summary.pop("per_episode")  # in OUT/human_demos.json
    print_json(summary)
    return 0


def add_retarget(sub) -> argparse.ArgumentParser:
    from handvla.robot.sim.human_demos import HUMAN_SEED_FROM

    p = add_command(
        sub,
        "retarget",
        run_retarget,
        help="human pick-and-carry episodes retargeted to the Adroit hand and replayed: relocate demos",
        description=(
            "Retarget the human hands of an episode store's pick-and-carry episodes (ground truth naming the "
            "grasped object, e.g. HandWorld pick_up / move) to the Adroit hand, replay them in the relocate "
            "task (the ball where the human's object was, the target where it ended) and write the replays "
            "that relocated the ball as a LeRobot v3 dataset with the scripted expert's features: a second "
            "embodiment for post-training (data.extra_datasets). OUT/human_demos.json lists every replay."
        ),
    )
    p.add_argument("--store", required=True, metavar="DIR", help="episode store with hand joints")
    p.add_argument("--out", required=True, metavar="DIR", help="dataset folder (created, or appended to)")
    p.add_argument("--episodes", type=int, default=None, metavar="N", help="stop after writing N (default all)")
    p.add_argument("--seed", type=int, default=HUMAN_SEED_FROM,
                   help=f"simulator placement of store episode i: SEED + i (default {HUMAN_SEED_FROM})")  # fmt: skip
    p.add_argument("--image-size", type=int, default=64, metavar="PX", help="square frames (0: no video)")
    p.add_argument("--camera", default=None, help="camera name (default: the wrapper's 'front')")
    p.add_argument("--play-seconds", type=float, default=1.5, help="longest replay of a carry (faster if longer)")
    p.add_argument("--clearance", type=float, default=0.1, help="reach raised by this (m), gone at the grasp")
    p.add_argument("--keep-failures", action="store_true", help="also write replays that did not relocate")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


#: the ``handvla data`` subcommands, in help order
SUBCOMMANDS = (
    add_stats,
    add_validate,
    add_annotate,
    add_instructions,
    add_build,
    add_merge,
    add_handworld,
    add_view,
    add_sim_demos,
    add_retarget,
)


def register(subparsers) -> None:
    add_group(
        subparsers,
        "data",
        SUBCOMMANDS,
        dest="data_command",
        help="episode stores: stats, validate, ...",
        description="Jobs on standardised episode stores (LeRobot v3-style: parquet + mp4 + meta).",
    )
