"""The ``handvla`` command.

Every command lives in one module of ``handvla/commands/`` (``handvla data ...`` in ``data.py``,
``handvla vla-eval`` in ``vla_eval.py``, ...), which defines ``register(subparsers)``: it adds its
command (``_util.add_command``) or, for a command with subcommands, the group (``_util.add_group``) with
the functions ``add_<name>(sub)`` listed in help order in the module's ``SUBCOMMANDS``, each adding one
subcommand. A command's ``run_<name>(args)`` does the work and returns the exit code; it imports the job's
modules when it runs, so that ``--help`` does not load torch. The options several commands share (--set,
--threads, the training-run options) and the JSON result on stdout are in ``_util`` too. ``COMMANDS``
below lists the modules once, in help order.

Errors caused by input (``handvla.errors.HandvlaError``) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

import handvla
from handvla.commands import (
    convert,
    data,
    demo,
    generate,
    hand,
    posttrain,
    pretrain,
    serve,
    tokenizer,
    vla_eval,
)
from handvla.commands import eval as eval_policy
from handvla.errors import HandvlaError

#: the command modules, in help order
COMMANDS = (convert, data, demo, eval_policy, generate, hand, posttrain, pretrain, vla_eval, serve, tokenizer)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="handvla",
        description="Physical instruction tuning from human hand motion: data, motion tokenizer, VLA, robots.",
    )
    parser.add_argument("--version", action="version", version=f"handvla {handvla.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 1
    try:
        rc = args.func(args)
    except HandvlaError as e:
        print(f"handvla: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("handvla: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
