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
