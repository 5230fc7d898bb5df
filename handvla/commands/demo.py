"""``handvla demo``: the whole pipeline on the built-in world (see ``handvla.demo``)."""

from __future__ import annotations

import argparse

from handvla.commands._util import add_command, add_set_option, print_json
from handvla.config import load_config


def run_demo_cmd(args: argparse.Namespace) -> int:
    from handvla.demo import DemoConfig, run_demo

    cfg = DemoConfig.quick() if args.quick else DemoConfig()
    cfg = load_config(DemoConfig, None, args.set, cfg.model_dump(), "demo --set")
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
    p = add_command(
        subparsers,
        "demo",
        run_demo_cmd,
        help="the built-in demo: HandWorld data -> motion tokenizer -> VLA pretraining -> generation, with a report",
        description="Builds HandWorld stores, trains the motion tokenizer, pretrains the tiny VLA, generates motion "
        "for held-out scenes (seen rigs and an unseen rig) and writes report.html + metrics.json. About 10 minutes "
        "on 2 CPU cores; rerunning resumes finished stages.",
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--workers", type=int, default=None, help="processes for data generation (default 2)")
    p.add_argument("--quick", action="store_true", help="a one-minute smoke run with tiny sizes")
    add_set_option(
        p,
        "change a demo size, e.g. --set train_episodes=240 --set vla_minutes=20 (use a fresh --out: "
        "finished stages are reused)",
    )
    p.add_argument("--no-progress", action="store_true")
