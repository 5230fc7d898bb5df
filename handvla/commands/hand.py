"""``handvla hand ...``: hand-motion tools.

handvla hand fit --joints IN.npz --out OUT.npz [--hand-model builtin|mano] [--units m|cm|mm]
    joints -> hand parameters, with a fit-quality report (error, worst frames, limits per finger)
handvla hand render --motion M.npz [--motion L.npz] [--compare ...] --out OUT.mp4
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from handvla.commands._util import add_command, add_group, print_json
from handvla.errors import ConfigError, InputError, MissingResourceError


def add_fit(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(
        sub,
        "fit",
        run_fit,
        help="fit 3D joints (T, 21, 3) to hand parameters",
        description=(
            "Fit a joints file (keys joints (T, 21, 3) metres with NaN for missing, t, side, fps, joint_order) "
            "to hand parameters (global_orient, hand_pose, wrist_pos, betas) and write them as a .npz "
            "parameter file. Prints a JSON summary: the fit error (mm, mean and 95th percentile over frames), "
            "the worst frames, and per finger how far the fitted angles go past the anatomical limits "
            "(beyond_limits_deg: mean and max over frames of the largest excess, degrees)."
        ),
    )
    p.add_argument("--joints", required=True, type=Path, help="input joints .npz")
    p.add_argument("--out", required=True, type=Path, help="output hand-parameter .npz (written atomically)")
    p.add_argument("--hand-model", default="builtin", choices=("builtin", "mano"), help="default: builtin")
    p.add_argument("--mano-dir", type=Path, default=None, help="folder with MANO_RIGHT.pkl / MANO_LEFT.pkl")
    p.add_argument("--fps", type=float, default=None, help="resample the joints to this rate first")
    p.add_argument(
        "--units",
        default="m",
        choices=("m", "cm", "mm"),
        help="unit of the joints file (default m); joints whose bone lengths say mm or cm are refused unless given",
    )
    p.add_argument(
        "--method",
        default="fast",
        choices=("fast", "lbfgs"),
        help="fast: analytic IK + batched Gauss-Newton (default); lbfgs: the slower joint optimisation",
    )
    p.add_argument("--device", default="cpu", help="torch device of the fast method (default cpu; e.g. cuda)")
    p.add_argument(
        "--iters",
        type=int,
        default=None,
        help="iterations: Gauss-Newton (fast, default 3) or L-BFGS (lbfgs, 50)",
    )
    p.add_argument(
        "--acc-hz", type=float, default=None, help="smoothness cutoff in Hz (default 8, 0 = no smoothing)"
    )
    p.add_argument(
        "--landmark-offset-mm",
        type=float,
        default=None,
        help="prior scale (mm) of the per-sequence offsets of the palm landmarks (wrist, thumb CMC, MCPs) "
        "from the model's joints, for trackers that put them elsewhere (default 10; 0 = no offsets: the "
        "model's own joints)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run_fit(args: argparse.Namespace) -> int:
    from handvla.hand.fitting import FitConfig, fit_recording
    from handvla.hand.io import JointsRecording, load_any, save_motion
    from handvla.hand.registry import load_hand_model

    config = FitConfig(method=args.method, device=args.device)
    if args.iters is not None:
        if args.iters < 1:
            raise ConfigError(f"--iters must be a positive integer, got {args.iters}")
        if args.method == "fast":
            config.gn_iters = args.iters
        else:
            config.iters = args.iters
    if args.acc_hz is not None:
        if not args.acc_hz >= 0:
            raise ConfigError(f"--acc-hz must be >= 0, got {args.acc_hz}")
        config.acc_hz = args.acc_hz
    if args.landmark_offset_mm is not None:
        if not args.landmark_offset_mm >= 0:
            raise ConfigError(f"--landmark-offset-mm must be >= 0, got {args.landmark_offset_mm}")
        config.landmark_offsets = args.landmark_offset_mm > 0
        if config.landmark_offsets:
            config.landmark_offset_mm = args.landmark_offset_mm
    if args.hand_model == "mano" and args.mano_dir is None:
        raise ConfigError(
            "--hand-model mano needs --mano-dir (the folder with MANO_RIGHT.pkl / MANO_LEFT.pkl)"
        )
    if args.fps is not None and not args.fps > 0:
        raise ConfigError(f"--fps must be a positive frame rate, got {args.fps}")

    rec = load_any(args.joints)
    if not isinstance(rec, JointsRecording):
        raise InputError(args.joints, None, "a joints file (key 'joints')", "a hand-parameter file")
    if args.units != "m":
        rec = replace(rec, joints=rec.joints * {"cm": 0.01, "mm": 0.001}[args.units])
    if args.fps is not None:
        rec = rec.resample(args.fps)
    try:
        model = load_hand_model(
            args.hand_model, rec.side, None if args.mano_dir is None else str(args.mano_dir)
        )
    except ModuleNotFoundError as e:
        raise MissingResourceError(f"hand model '{args.hand_model}' is not available here ({e})") from None

    result = fit_recording(rec, hand_model=model, config=config, progress=not args.quiet)
    save_motion(args.out, result.motion)
    summary = result.summary()
    print_json(
        {
            "joints": str(args.joints),
            "out": str(args.out),
            "hand_model": args.hand_model,
            "side": rec.side,
            "fps": rec.fps,
            "joint_scheme": rec.joint_scheme,
            "units": args.units,
            **summary,
        }
    )
    return 0


def add_render(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(
        sub,
        "render",
        run_render,
        help="render hand motion (parameter or joints files) to MP4/GIF",
        description="Render one or two hands' motion through a hand model to a video (skeleton for the built-in "
        "hand, mesh with MANO). --compare draws a second motion beside it under the same virtual camera.",
    )
    p.add_argument(
        "--motion", action="append", required=True, help="parameter .npz (HandMotion); repeat for two hands"
    )
    p.add_argument("--compare", action="append", help="second set of parameter files, shown on the right")
    p.add_argument("--out", required=True, help="output .mp4 or .gif")
    p.add_argument("--hand-model", default=None, help="builtin or mano (default: each file's own)")
    p.add_argument("--mano-dir", default=None, help="folder with MANO_RIGHT.pkl / MANO_LEFT.pkl")
    p.add_argument("--title", default=None)
    return p


def run_render(args: argparse.Namespace) -> int:
    from handvla.hand.io import load_motion
    from handvla.hand.render import render_motions

    motions = [load_motion(m) for m in args.motion]
    compare = [load_motion(m) for m in args.compare] if args.compare else None
    kwargs = {"title": args.title} if args.title and compare is None else {}
    if compare is not None:
        kwargs["titles"] = ("motion", "compare")
    path = render_motions(
        args.out, motions, compare=compare, hand_model=args.hand_model, mano_dir=args.mano_dir, **kwargs
    )
    print_json({"out": str(path), "frames": max(len(m) for m in motions), "hands": [m.side for m in motions]})
    return 0


#: the ``handvla hand`` subcommands, in help order
SUBCOMMANDS = (add_fit, add_render)


def register(subparsers: argparse._SubParsersAction) -> None:
    add_group(
        subparsers,
        "hand",
        SUBCOMMANDS,
        dest="hand_command",
        help="hand-motion tools: fit joints to hand parameters, render motion to video",
    )
