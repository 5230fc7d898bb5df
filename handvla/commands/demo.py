"""``handvla demo``: the whole pipeline on the built-in world (see ``handvla.demo``)."""

from __future__ import annotations

import argparse

from handvla.commands._util import print_json


def apply_overrides(cfg, items: list[str]):
    """``KEY=VALUE`` overrides of DemoConfig fields (VALUE as JSON, else a string; tuples from lists or
    comma-separated text), checked against the field's type."""
    import dataclasses
    import json

    from handvla.errors import ConfigError

    fields = {f.name: f for f in dataclasses.fields(cfg)}
    changes = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or key not in fields:
            raise ConfigError(
                f"demo --set {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(fields))}"
            )
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        current = getattr(cfg, key)
        if value is None and "None" in str(fields[key].type):
            changes[key] = None  # an optional field switched off
            continue
        if isinstance(current, tuple):
            value = tuple(value) if isinstance(value, list) else tuple(v.strip() for v in str(value).split(","))
            try:
                if current and isinstance(current[0], bool):
                    pass
                elif current and isinstance(current[0], int):
                    value = tuple(int(v) for v in value)
                elif current and isinstance(current[0], float):
                    value = tuple(float(v) for v in value)
            except ValueError:
                raise ConfigError(f"demo --set {key}: expected numbers, got {raw!r}") from None
        elif isinstance(current, bool) or not isinstance(value, type(current)):
            ok = isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool)
            if not ok and not (isinstance(current, bool) and isinstance(value, bool)):
                raise ConfigError(f"demo --set {key}: expected {type(current).__name__}, got {raw!r}")
            value = float(value) if ok else value
        changes[key] = value
    return dataclasses.replace(cfg, **changes)


def _run(args: argparse.Namespace) -> int:
    from handvla.demo import DemoConfig, run_demo

    cfg = DemoConfig.quick() if args.quick else DemoConfig()
    cfg = apply_overrides(cfg, args.set)
    if args.seed is not None:
        cfg.seed = args.seed
    if args.workers is not None:
        cfg.workers = args.workers
    metrics = run_demo(args.out, cfg, progress=not args.no_progress)
    summary = {"report": f"{args.out}/report.html", "metrics": f"{args.out}/metrics.json",
               "minutes": metrics["minutes"], "tokenizer": metrics["tokenizer"],
               "vla": {k: {m: v for m, v in s.items() if not isinstance(v, (dict, list))} for k, s in metrics["vla"].items()}}
    print_json(summary)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the built-in demo: HandWorld data -> motion tokenizer -> VLA pretraining -> generation, with a report",
        description="Builds HandWorld stores, trains the motion tokenizer, pretrains the tiny VLA, generates motion "
        "for held-out scenes (seen rigs and an unseen rig) and writes report.html + metrics.json. About 10 minutes "
        "on 2 CPU cores; rerunning resumes finished stages.",
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--workers", type=int, default=None, help="processes for data generation (default 2)")
    p.add_argument("--quick", action="store_true", help="a one-minute smoke run with tiny sizes")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a demo size, e.g. --set train_episodes=240 --set vla_minutes=20 (use a fresh --out: "
        "finished stages are reused)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run)
