"""The ``handvla`` command. Each job lives in ``handvla/commands/<job>.py`` and defines
``register(subparsers)``, adding its subcommand with ``set_defaults(func=...)``; they are found here
automatically, so adding a job never touches this file.

Errors caused by input (``handvla.errors.HandvlaError``) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import handvla
from handvla.errors import HandvlaError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="handvla",
        description="Physical instruction tuning from human hand motion: data, motion tokenizer, VLA, robots.",
    )
    parser.add_argument("--version", action="version", version=f"handvla {handvla.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import handvla.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"handvla.commands.{info.name}")
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
