"""Small helpers shared by the command modules."""

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
