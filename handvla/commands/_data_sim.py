"""``handvla data sim-demos``: demonstrations of the scripted expert in the Adroit simulator, written as a
LeRobot v3 robot dataset (state, action, reward, success, one camera video) for ``handvla posttrain``.

Found by ``handvla/commands/data.py`` through ``register(sub)``; needs the ``robot`` extra (MuJoCo,
gymnasium-robotics).
"""

from __future__ import annotations

import argparse

from handvla.commands._util import print_json


def run_sim_demos(args: argparse.Namespace) -> int:
    from handvla.robot.sim.expert import collect_demos

    size = None if args.image_size == 0 else int(args.image_size)
    summary = collect_demos(
        args.task,
        args.episodes,
        args.out,
        seed=args.seed,
        image_size=size,
        camera=args.camera,
        only_successful=not args.keep_failures,
        progress=not args.quiet,
    )
    print_json(summary)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "sim-demos",
        help="expert demonstrations in the Adroit simulator as a LeRobot v3 dataset",
        description=(
            "Run the scripted expert of an Adroit task on seeds SEED, SEED+1, ... and write the episodes "
            "(by default only the solved ones) to a LeRobot v3 dataset: observation.state, action, "
            "next.reward, next.success and the video observation.images.<camera>."
        ),
    )
    p.add_argument("--task", default="relocate", help="sim task with a scripted expert (default relocate)")
    p.add_argument("--episodes", type=int, required=True, metavar="N", help="demonstrations to write")
    p.add_argument("--out", required=True, metavar="DIR", help="dataset folder (created, or appended to)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0; evaluation starts at 10000)")
    p.add_argument("--image-size", type=int, default=128, metavar="PX", help="square frames (0: no video)")
    p.add_argument("--camera", default=None, help="camera name (default: the wrapper's 'front')")
    p.add_argument("--keep-failures", action="store_true", help="also write episodes the expert failed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_sim_demos)
