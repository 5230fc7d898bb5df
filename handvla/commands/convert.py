"""``handvla convert``: released checkpoints of other projects -> handvla checkpoints.

handvla convert being-h0 --src DIR --tokenizer DIR --out DIR

``being-h0``: a Being-H0 VLA checkpoint (the InternVL chat-model layout of the release's Being-H0-1B/8B/14B)
with its motion tokenizer (a folder written by ``handvla tokenizer convert --from being-h0``, or the
release's ``wrist/`` + ``finger/`` folders, converted on the way) -> a handvla VLA checkpoint that
``load_vla``, ``model.init_checkpoint`` of ``handvla pretrain`` / ``posttrain`` and ``handvla generate`` read.
"""

from __future__ import annotations

import argparse
import sys

from handvla.commands._util import add_command, add_group, print_json


def add_being_h0(sub) -> argparse.ArgumentParser:
    c = add_command(
        sub, "being-h0", run_being_h0, help="a Being-H0 VLA checkpoint -> a handvla VLA checkpoint"
    )
    c.add_argument(
        "--src", required=True, help="the release's model folder (config.json, safetensors shards, tokenizer)"
    )
    c.add_argument(
        "--tokenizer",
        required=True,
        help="motion tokenizer: a folder from 'handvla tokenizer convert --from being-h0', or the release's "
        "WRIST_DIR+FINGER_DIR (or a folder holding wrist/ and finger/)",
    )
    c.add_argument("--out", required=True, help="output folder (a handvla VLA checkpoint)")
    c.add_argument(
        "--max-shard-mb",
        type=float,
        default=512,
        help="output shard size in MiB (default 512)",
    )
    c.add_argument("--quiet", action="store_true", help="no per-shard progress on stderr")
    return c


def run_being_h0(args: argparse.Namespace) -> int:
    from handvla.errors import InputError
    from handvla.vla.being_h0 import convert_being_h0

    if not args.max_shard_mb > 0:
        raise InputError("--max-shard-mb", None, "a positive size in MiB", str(args.max_shard_mb))
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    print_json(
        convert_being_h0(
            args.src, args.tokenizer, args.out, log=log, max_shard_bytes=int(args.max_shard_mb * 2**20)
        )
    )
    return 0


SUBCOMMANDS = (add_being_h0,)


def register(subparsers) -> None:
    add_group(
        subparsers,
        "convert",
        SUBCOMMANDS,
        dest="convert_command",
        metavar="FORMAT",
        help="convert another project's released checkpoint into a handvla checkpoint",
    )
