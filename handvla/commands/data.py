"""``handvla data ...``: jobs on standardised episode stores (``handvla.data.store``).

One function ``_add_<name>(sub)`` per subcommand adds its parser and handler; ``SUBCOMMANDS`` lists them.
To add a subcommand, either add such a function here and list it, or put a module
``handvla/commands/_data_<name>.py`` defining ``register(data_subparsers)``: it is found automatically
(the leading underscore keeps ``handvla.cli`` from registering it as a top-level command).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from handvla.commands._util import print_json


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


def _add_stats(sub) -> None:
    p = sub.add_parser(
        "stats",
        help="episodes, hours, frames, per-source and per-rig counts, hands present, size on disk",
        description="Summarise an episode store (committed episodes only, also while a writer is running).",
    )
    p.add_argument("dir", help="the store folder (LeRobot v3-style layout)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    p.set_defaults(func=run_stats)


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


def _add_validate(sub) -> None:
    p = sub.add_parser(
        "validate",
        help="check files, row and frame counts (and with --deep every value) of an episode store",
        description="Report every problem found, one line each naming the file, episode and field. "
        "Exit status 2 when there is any.",
    )
    p.add_argument("dir", help="the store folder")
    p.add_argument(
        "--deep", action="store_true", help="also load every episode: shapes, NaN, decodable video"
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=run_validate)


SUBCOMMANDS = [_add_stats, _add_validate]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "data",
        help="episode stores: stats, validate, ...",
        description="Jobs on standardised episode stores (LeRobot v3-style: parquet + mp4 + meta).",
    )
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    import handvla.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_data_"):
            importlib.import_module(f"handvla.commands.{info.name}").register(sub)

    def _help(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 1

    parser.set_defaults(func=_help)
