"""Small helpers shared by the command modules: JSON output, command groups, training-run arguments."""

from __future__ import annotations

import json
import sys
from typing import Any


def print_json(obj: Any) -> None:
    """Print a result as one JSON document on stdout (numbers rounded for reading)."""

    def conv(x):
        if hasattr(x, "item"):
            x = x.item()
        if isinstance(x, float):
            return round(x, 4)
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [conv(v) for v in x]
        return x

    json.dump(conv(obj), sys.stdout, indent=2)
    sys.stdout.write("\n")
    sys.stdout.flush()


def add_group(subparsers, name: str, dest: str, metavar: str = "SUBCOMMAND", required: bool = False, **kwargs):
    """Add the command ``name`` that has subcommands (``handvla data stats``, ...) and return the subparsers
    to add them to. ``kwargs`` (help, description) go to its parser; given alone, the command prints its
    help and exits with status 1 (with ``required``, argparse asks for a subcommand instead)."""
    parser = subparsers.add_parser(name, **kwargs)

    def show_help(_args) -> int:
        parser.print_help()
        return 1

    parser.set_defaults(func=show_help)
    return parser.add_subparsers(dest=dest, metavar=metavar, required=required)


def add_training_run_args(p, set_example: str) -> None:
    """The arguments every config-driven training command takes: --config, --set (``set_example`` shows
    a typical override), --resume, --threads, --quiet."""
    p.add_argument("--config", required=True, help="YAML (or JSON) config file")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a field, e.g. {set_example} (YAML values; repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
