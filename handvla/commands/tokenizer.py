"""``handvla tokenizer``: train and evaluate the part-level GRQ-VAE motion tokenizer.

handvla tokenizer train [--config YAML] [--preset default|tiny] [--data builtin] [--data PATH ...]
                        [--features D162] [--max-minutes M] [--steps N] --out DIR [--resume]
handvla tokenizer eval --ckpt DIR --data PATH ... [--json]
"""

from __future__ import annotations

import argparse
import sys

from handvla.commands._util import add_group, print_json


def add_train(sub) -> argparse.ArgumentParser:
    t = sub.add_parser("train", help="train a tokenizer (resumable)")
    t.add_argument("--config", help="YAML/JSON with model and training fields (flat or model:/train:)")
    t.add_argument("--preset", default="default", help="model + training preset: default or tiny")
    t.add_argument(
        "--data",
        action="append",
        help="'builtin', a joints or parameter .npz, or a folder of them; repeatable (default: builtin)",
    )
    t.add_argument("--features", help="feature set: D51, D99, D109, D114 or D162")
    t.add_argument("--max-minutes", type=float, help="training-time budget (all sessions of the run)")
    t.add_argument("--steps", type=int, help="optimiser steps (the LR schedule length)")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--threads", type=int, help="torch CPU threads (1 is faster on a busy shared CPU)")
    t.add_argument("--seed", type=int)
    t.add_argument("--fit-cache", help="folder for fitted joint files (default: OUT/fit_cache)")
    t.add_argument("--out", required=True, help="output folder (model, checkpoint, log)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=run_train)
    return t


def add_eval(sub) -> argparse.ArgumentParser:
    e = sub.add_parser("eval", help="reconstruction error of a trained tokenizer")
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
    e.set_defaults(func=run_eval)
    return e


def run_train(args: argparse.Namespace) -> int:
    from handvla.tokenizer.configuration import load_config_file, preset
    from handvla.tokenizer.training import train

    model_cfg, train_cfg = preset(args.preset)
    if args.config:
        model_cfg, train_cfg = load_config_file(args.config, base=(model_cfg, train_cfg))
    if args.features:
        model_cfg = model_cfg.replace(features=args.features)
    names = ("max_minutes", "steps", "batch_size", "lr", "threads", "seed")
    train_cfg = train_cfg.replace(**{n: getattr(args, n) for n in names if getattr(args, n) is not None})
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
            "out": str(result.out_dir),
            "step": result.step,
            "schedule_steps": result.schedule_steps,
            "stopped_by": result.stopped_by,
            "elapsed_s": result.elapsed_s,
            "last": {k: v for k, v in result.last_log.items() if not k.startswith("_")},
        }
    )
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from handvla.tokenizer.evaluation import evaluate_files
    from handvla.tokenizer.modeling import MotionTokenizer

    model = MotionTokenizer.from_pretrained(args.ckpt)
    res = evaluate_files(model, args.data, fit_cache=args.fit_cache, progress=not args.no_progress)
    if not args.per_clip:
        res.pop("per_clip", None)
    print_json(res)
    sys.stdout.flush()
    return 0


#: the ``handvla tokenizer`` actions, in help order
SUBCOMMANDS = (add_train, add_eval)


def register(subparsers) -> None:
    sub = add_group(
        subparsers,
        "tokenizer",
        dest="tokenizer_command",
        metavar="ACTION",
        help="train / evaluate the motion tokenizer (motion <-> ids)",
    )
    for add in SUBCOMMANDS:
        add(sub)
