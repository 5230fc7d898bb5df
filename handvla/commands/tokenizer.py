"""``handvla tokenizer``: train and evaluate the part-level GRQ-VAE motion tokenizer.

handvla tokenizer train [--config YAML] [--preset default|tiny] [--data builtin PATH|GLOB|STORE ...]
                        [--val-data PATH ...] [--features D162] [--max-minutes M] [--steps N] --out DIR [--resume]
handvla tokenizer eval --ckpt DIR --data PATH ... [--json]
handvla tokenizer convert --from being-h0 --src WRIST_DIR+FINGER_DIR --out DIR [--fps 15]
handvla tokenizer encode --ckpt DIR (--motion PARAMS.npz | --features FEATS.npy) --out IDS.npy [--mano-dir D]
handvla tokenizer decode --ckpt DIR --ids IDS.npy --out PARAMS.npz [--side right] [--num-frames N]
                         [--features-out FEATS.npy]
handvla tokenizer end-points --ckpt DIR [--space ray|xyz] [--bins 64] [--data PATH|STORE ...] --out DIR
encode / decode take any tokenizer checkpoint (handvla's own or a converted one).
"""

from __future__ import annotations

import argparse
import sys

from handvla.commands._util import add_command, add_group, print_json

#: the training budget of ``tokenizer train`` when neither --max-minutes nor --steps is given
DEFAULT_TRAIN_MINUTES = 20.0


def add_train(sub) -> argparse.ArgumentParser:
    t = add_command(sub, "train", run_train, help="train a tokenizer (resumable)")
    t.add_argument("--config", help="YAML/JSON with model and training fields (flat or model:/train:)")
    t.add_argument("--preset", default="default", help="model + training preset: default or tiny")
    t.add_argument(
        "--data",
        nargs="+",
        action="extend",
        help="training data, one or more: 'builtin' (the built-in procedural motion), joints or parameter "
        ".npz files, folders of them, globs, episode stores (handvla data build); repeatable. Default: "
        "builtin; with --data, built-in motion is used only if 'builtin' is among them",
    )
    t.add_argument(
        "--val-data",
        nargs="+",
        action="extend",
        help="held-out validation data (same forms as --data; taken out of training); default: "
        "--val-fraction of the real training files",
    )
    t.add_argument(
        "--val-fraction", type=float, help="share of the real files held out (default 0.2; 0 = none)"
    )
    t.add_argument("--eval-minutes", type=float, help="training minutes between validations (default 1)")
    t.add_argument("--features", help="feature set: D51, D99, D109, D114 or D162")
    t.add_argument(
        "--max-minutes",
        type=float,
        help=f"training-time budget (all sessions of the run; the LR schedule follows the clock); default "
        f"{DEFAULT_TRAIN_MINUTES:g} when neither this nor --steps is given. Set-up and validation not counted",
    )
    t.add_argument("--steps", type=int, help="optimiser steps (the LR schedule length)")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--threads", type=int, help="torch CPU threads (1 is faster on a busy shared CPU)")
    t.add_argument("--seed", type=int)
    t.add_argument("--fit-cache", help="folder for fitted joint files (default: OUT/fit_cache)")
    t.add_argument("--out", required=True, help="output folder (model, checkpoint, log)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    t.add_argument("--no-progress", action="store_true")
    return t


def add_eval(sub) -> argparse.ArgumentParser:
    e = add_command(sub, "eval", run_eval, help="reconstruction error of a trained tokenizer")
    e.add_argument(
        "--ckpt", required=True, help="folder written by 'tokenizer train' (config.json + weights)"
    )
    e.add_argument(
        "--data", action="append", required=True, help="joints / parameter .npz, folder or 'builtin'"
    )
    e.add_argument("--fit-cache", help="folder to cache fits of joint files")
    e.add_argument("--per-clip", action="store_true", help="include one row per clip")
    e.add_argument("--json", action="store_true", help="print JSON only (the default output is JSON too)")
    e.add_argument("--no-progress", action="store_true")
    return e


def run_train(args: argparse.Namespace) -> int:
    from handvla.tokenizer.configuration import load_config_file, preset
    from handvla.tokenizer.training import train

    model_cfg, train_cfg = preset(args.preset)
    if args.config:
        model_cfg, train_cfg = load_config_file(args.config, base=(model_cfg, train_cfg))
    if args.features:
        model_cfg = model_cfg.replace(features=args.features)
    names = ("max_minutes", "steps", "batch_size", "lr", "threads", "seed", "val_fraction", "eval_minutes")
    train_cfg = train_cfg.replace(**{n: getattr(args, n) for n in names if getattr(args, n) is not None})
    if args.val_data:
        train_cfg = train_cfg.replace(val_sources=list(args.val_data))
    if train_cfg.steps is None and train_cfg.max_minutes is None and not args.resume:
        train_cfg = train_cfg.replace(max_minutes=DEFAULT_TRAIN_MINUTES)
        print(f"training budget: {DEFAULT_TRAIN_MINUTES:g} minutes (the default; --max-minutes or --steps)",
              file=sys.stderr)  # fmt: skip
    result = train(
        model_cfg,
        train_cfg,
        args.data or ["builtin"],
        args.out,
        resume=args.resume,
        fit_cache=args.fit_cache,
        progress=not args.no_progress,
    )
    print_json(
        {
            **result.summary,
            "step": result.step,
            "schedule_steps": result.schedule_steps,
            "elapsed_s": result.elapsed_s,
            "last": {k: v for k, v in result.last_log.items() if not k.startswith("_")},
        }
    )
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from handvla.tokenizer.evaluation import evaluate_files
    from handvla.tokenizer.loading import load_tokenizer

    model = load_tokenizer(args.ckpt)
    res = evaluate_files(model, args.data, fit_cache=args.fit_cache, progress=not args.no_progress)
    if not args.per_clip:
        res.pop("per_clip", None)
    print_json(res)
    sys.stdout.flush()
    return 0


def add_convert(sub) -> argparse.ArgumentParser:
    c = add_command(
        sub, "convert", run_convert, help="a released tokenizer -> a handvla tokenizer checkpoint"
    )
    c.add_argument("--from", dest="source_format", required=True, choices=["being-h0"], help="release format")
    c.add_argument(
        "--src",
        required=True,
        help="WRIST_DIR+FINGER_DIR (the release's part folders), or a folder holding wrist/ and finger/",
    )
    c.add_argument("--out", required=True, help="output folder (config.json + model.safetensors)")
    c.add_argument("--fps", type=float, help="motion rate in frames per second (default: the release's 15)")
    return c


def add_encode(sub) -> argparse.ArgumentParser:
    e = add_command(sub, "encode", run_encode, help="hand motion or features -> motion ids")
    e.add_argument("--ckpt", required=True, help="tokenizer checkpoint folder (trained or converted)")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--motion", help="hand-parameter .npz (handvla.hand.io) at the tokenizer's fps")
    src.add_argument("--features", help=".npy of raw features (T, D) in the tokenizer's feature set and fps")
    e.add_argument("--side", choices=["right", "left"], default="right",
                   help="with --features: the hand they are of (they are in the tokenizer's frame, left hands "
                   "mirrored); it changes only end-point ids in the camera frame. --motion files carry their side")  # fmt: skip
    e.add_argument("--out", required=True, help=".npy of ids (blocks, ids per block), int64")
    e.add_argument(
        "--mano-dir", help="MANO model folder, for --motion with a tokenizer whose hand model is MANO"
    )
    return e


def add_decode(sub) -> argparse.ArgumentParser:
    d = add_command(sub, "decode", run_decode, help="motion ids -> hand motion")
    d.add_argument("--ckpt", required=True, help="tokenizer checkpoint folder (trained or converted)")
    d.add_argument("--ids", required=True, help=".npy of ids (blocks, ids per block), or flat")
    d.add_argument("--out", required=True, help="hand-parameter .npz to write")
    d.add_argument("--side", choices=["right", "left"], default="right", help="the hand the ids are of")
    d.add_argument("--num-frames", type=int, help="frames to keep (default: blocks x frames per block)")
    d.add_argument("--features-out", help="also write the decoded raw features (T, D) as .npy")
    return d


def _read_npy(path: str, what: str):
    """A plain (unpickled) array from ``path``, or a one-line InputError naming the file."""
    import numpy as np

    from handvla.errors import InputError

    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(path, None, f"an existing .npy file of {what}", "no such file") from None
    except (OSError, ValueError) as e:
        raise InputError(
            path, None, f"a .npy array of {what} (no pickled objects)", f"{type(e).__name__}: {e}"
        ) from None


def _write_npy(path: str, array) -> None:
    import io

    import numpy as np

    from handvla.atomic import atomic_write_bytes

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def run_convert(args: argparse.Namespace) -> int:
    from handvla.tokenizer.being_h0 import convert_release, release_folders

    tok = convert_release(args.src, fps=args.fps)
    tok.save_pretrained(args.out)
    layout = tok.layout
    print_json(
        {
            "out": args.out,
            "from": args.source_format,
            "parts": {p: str(f) for p, f in release_folders(args.src).items()},
            "model_type": tok.config.model_type,
            "ids_per_block": layout.tokens_per_block,
            "vocab_size": layout.vocab_size,
            "id_ranges": {p: list(layout.id_range(p)) for p in layout.parts},
        }
    )
    return 0


def run_encode(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from handvla.errors import InputError
    from handvla.hand.io import load_motion
    from handvla.hand.registry import load_hand_model
    from handvla.tokenizer.loading import load_tokenizer

    tok = load_tokenizer(args.ckpt)
    info: dict = {}
    if args.motion:
        motion = load_motion(args.motion)
        if args.mano_dir and tok.config.hand_model == "mano":
            for side in dict.fromkeys(("right", motion.side)):
                tok.set_hand_model(load_hand_model("mano", side, args.mano_dir))
        tokens = tok.encode_motion(motion)
        ids = tokens.ids
        info = {"num_frames": tokens.num_frames, "side": tokens.side}
    else:
        feats = _read_npy(args.features, f"{tok.spec.name} features")
        D = tok.spec.dim
        if feats.ndim != 2 or feats.shape[1] != D or feats.shape[0] == 0 or feats.dtype.kind not in "fiu":
            raise InputError(
                args.features,
                None,
                f"numbers of shape (T, {D}) ({tok.spec.name})",
                f"{feats.dtype} {feats.shape}",
            )
        if not np.isfinite(feats).all():
            raise InputError(args.features, None, "finite values", "NaN or inf")
        ids = tok.encode_sequence(torch.from_numpy(feats.astype(np.float32)), side=args.side).numpy()
        info = {"num_frames": int(feats.shape[0]), "side": args.side}
    _write_npy(args.out, np.asarray(ids, np.int64))
    print_json({"out": args.out, "blocks": int(ids.shape[0]), "ids_per_block": int(ids.shape[1]), **info})
    return 0


def run_decode(args: argparse.Namespace) -> int:
    import numpy as np

    from handvla.hand.io import save_motion
    from handvla.tokenizer.loading import load_tokenizer

    tok = load_tokenizer(args.ckpt)
    ids = tok.layout.validate(_read_npy(args.ids, "motion ids"), args.ids)
    motion = tok.decode_motion(ids, side=args.side, num_frames=args.num_frames)
    save_motion(args.out, motion)
    if args.features_out:
        _write_npy(args.features_out, tok.decode_sequence(ids, args.num_frames, side=args.side).numpy().astype(np.float32))
    print_json({"out": args.out, "blocks": int(ids.shape[0]), "num_frames": len(motion), "side": motion.side})
    return 0


def add_end_points(sub) -> argparse.ArgumentParser:
    e = add_command(sub, "end-points", run_end_points,
                    help="a copy of a tokenizer whose blocks also state where they end (end-point ids)")  # fmt: skip
    e.add_argument("--ckpt", required=True, help="tokenizer checkpoint folder")
    e.add_argument("--space", choices=["ray", "xyz"], default="ray",
                   help="'ray': x / z, y / z, z (the place in the image, then depth); 'xyz': metres")  # fmt: skip
    e.add_argument("--bins", type=int, default=64, help="bins per axis (default 64)")
    e.add_argument("--frame", choices=["hand", "camera"], default="hand",
                   help="'hand': the tokenizer's frame (left hands mirrored, as the codes); 'camera': not mirrored, "
                   "so a place has the same ids whichever hand ends there (TokenizerConfig.end_point_frame)")  # fmt: skip
    e.add_argument("--data", nargs="+", action="extend",
                   help="motion whose block ends set the bins' span (parameter or joint .npz files, folders, globs, "
                   "episode stores); default: the space's fixed span (TokenizerConfig.end_point_range)")  # fmt: skip
    e.add_argument("--max-motions", type=int, default=2000, help="at most this many hands of --data (default 2000)")
    e.add_argument("--out", required=True, help="output folder (config.json + model.safetensors)")
    return e


def run_end_points(args: argparse.Namespace) -> int:
    from handvla.errors import InputError
    from handvla.tokenizer.data import load_sources
    from handvla.tokenizer.loading import load_tokenizer
    from handvla.tokenizer.modeling import with_end_points

    if args.bins < 2:
        raise InputError("--bins", None, "a whole number >= 2", str(args.bins))
    tok = load_tokenizer(args.ckpt)
    if tok.config.end_point_space != "none":
        raise InputError(args.ckpt, "end_point_space", "a tokenizer without end-point ids", tok.config.end_point_space)
    motions = []
    if args.data:
        motions = [lm.motion for lm in load_sources(list(args.data), tok.config.fps, max_motions=args.max_motions)]
    out = with_end_points(tok, args.space, args.bins, motions=motions, frame=args.frame)
    out.save_pretrained(args.out)
    lo, hi = out.config.end_point_span
    print_json({"out": args.out, "space": args.space, "frame": args.frame, "bins": args.bins, "span": {"lo": lo, "hi": hi},
                "span_from": f"{len(motions)} motions" if motions else "the space's default",
                "ids_per_block": out.layout.tokens_per_block, "vocab_size": out.layout.vocab_size})  # fmt: skip
    return 0


#: the ``handvla tokenizer`` actions, in help order
SUBCOMMANDS = (add_train, add_eval, add_convert, add_encode, add_decode, add_end_points)


def register(subparsers) -> None:
    add_group(
        subparsers,
        "tokenizer",
        SUBCOMMANDS,
        dest="tokenizer_command",
        metavar="ACTION",
        help="train / evaluate the motion tokenizer (motion <-> ids)",
    )
