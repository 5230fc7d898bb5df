"""``handvla eval``: measure a post-trained policy (``handvla.robot.evaluate``).

    handvla eval sim --ckpt runs/relocate/final --task relocate --episodes 50 [--seed 10000] [--json]
    handvla eval sim --url ws://127.0.0.1:8765 --task relocate --episodes 50     # a running policy server
    handvla eval open-loop --ckpt runs/relocate/final --data data/relocate_demos [--plot err.png] [--json]

``sim``: closed loop in a simulator on seeds seed .. seed+N-1 (default 10000 on, away from the
demonstration seeds); success rate with its 95 % Wilson interval. ``--suite adroit|metaworld-mt10``: every
task of the suite on the same seeds, a per-task table and the mean over tasks (``--scripted``: Meta-World's
scripted experts, the suite's ceiling). ``open-loop``: predicted vs recorded
action chunks on a dataset's frames, error by horizon step (action units) and a PNG plot.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from handvla.atomic import atomic_write_json
from handvla.commands._util import add_command, add_group, add_threads_option, print_json, set_threads
from handvla.errors import ConfigError, InputError


def _load_policy(args: argparse.Namespace):
    from handvla.policy import HandVLAPolicy

    set_threads(args)
    return HandVLAPolicy.load(args.ckpt, device=args.device, task=getattr(args, "instruction", None))


def _episodes(text: str | None) -> list[int] | None:
    """'0,3,5-9' -> [0, 3, 5, 6, 7, 8, 9]."""
    if text is None:
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            a, sep, b = part.strip().partition("-")
            out += list(range(int(a), int(b) + 1)) if sep else [int(a)]
    except ValueError:
        raise ConfigError(f"--episodes {text!r}: expected indices like 0,3,5-9") from None
    return out


def _run_eval_suite(args: argparse.Namespace, seed: int) -> int:
    """``eval sim --suite``: every task of the suite (or ``--tasks``) on the same seeds, a per-task table."""
    from handvla.robot.client import PolicyClient
    from handvla.robot.evaluate import evaluate_suite, suite_table
    from handvla.robot.sim.metaworld import MetaWorldScriptedPolicy
    from handvla.robot.sim.suites import select_tasks

    tasks = select_tasks(args.suite, args.tasks)
    kwargs = dict(
        episodes=args.episodes, seed=seed, replan_every=args.replan_every, max_steps=args.max_steps,
        progress=not args.quiet,
    )  # fmt: skip
    if args.url:
        with PolicyClient(args.url) as client:
            res = evaluate_suite(client, tasks, **kwargs)
    else:
        policy = MetaWorldScriptedPolicy() if args.scripted else _load_policy(args)
        res = evaluate_suite(policy, tasks, **kwargs)
    res["suite"] = args.suite
    res["policy"] = "scripted experts" if args.scripted else (args.ckpt or args.url)
    if args.out:
        atomic_write_json(Path(args.out) / f"sim_eval_{args.suite}.json", res)
    if args.json:
        if not args.per_seed:
            res["tasks"] = {t: {k: v for k, v in r.items() if k != "per_seed"} for t, r in res["tasks"].items()}
        print_json(res)
    else:
        print(f"{args.suite}: {res['policy']}, {args.episodes} episodes per task from seed {seed}")
        print(suite_table(res))
    return 0


def run_eval_sim(args: argparse.Namespace) -> int:
    from handvla.robot.evaluate import EVAL_SEED, evaluate_remote, run_sim_eval

    if args.scripted and (args.ckpt or args.url or args.suite != "metaworld-mt10"):
        raise ConfigError("eval sim --scripted: the Meta-World scripted experts (--suite metaworld-mt10, no --ckpt/--url)")
    if not args.scripted and (args.ckpt is None) == (args.url is None):
        raise ConfigError("eval sim: give exactly one of --ckpt DIR and --url ws://HOST:PORT")
    if args.episodes < 1:
        raise ConfigError(f"--episodes: expected >= 1, got {args.episodes}")
    seed = EVAL_SEED if args.seed is None else args.seed
    if args.suite:
        return _run_eval_suite(args, seed)
    kwargs = dict(
        task=args.task,
        episodes=args.episodes,
        seed=seed,
        replan_every=args.replan_every,
        max_steps=args.max_steps,
        video_dir=args.video_dir,
        video_episodes=args.video_episodes,
        progress=not args.quiet,
    )
    if args.url:
        res = evaluate_remote(args.url, **kwargs).to_dict()
        if args.out:
            atomic_write_json(Path(args.out) / f"sim_eval_{args.task}.json", res)
    else:
        policy = _load_policy(args)
        res = run_sim_eval(policy, out_dir=args.out, **kwargs)
    res["policy"] = args.ckpt or args.url
    if args.json:
        print_json(res if args.per_seed else {k: v for k, v in res.items() if k != "per_seed"})
    else:
        lo, hi = res["success_ci95"]
        print(
            f"{res['task']}: success {res['success_rate']:.3f} (95% CI {lo:.3f}-{hi:.3f}) over {res['episodes']} "
            f"episodes, seeds {res['seeds'][0]}..{res['seeds'][-1]}; success at end {res['success_at_end_rate']:.3f}; "
            f"mean return {res['mean_return']:.2f}; chunk {res['chunk_size']}, replan every {res['replan_every']}; "
            f"{res['steps_per_s']:.1f} steps/s"
        )
    return 0


def run_eval_open_loop(args: argparse.Namespace) -> int:
    from handvla.robot.evaluate import evaluate_open_loop
    from handvla.robot.lerobot_format import RobotDataset

    for opt, f in (("--out", args.out), ("--plot", None if args.no_plot else args.plot)):
        if f and Path(f).is_dir():  # checked before the evaluation runs (the writers would refuse it after)
            raise InputError(f, opt, "a file path to write", "an existing folder")
    policy = _load_policy(args)
    c = policy.config
    ds = RobotDataset(args.data, columns=[c.state_key, c.action_key])
    plot = None if args.no_plot else Path(args.plot)
    res = evaluate_open_loop(
        policy,
        ds,
        episodes=_episodes(args.episodes),
        stride=args.stride,
        max_samples=args.max_samples,
        image_key=args.image_key or (c.image_keys[0] if c.image_keys else None),
        state_key=c.state_key,
        action_key=c.action_key,
        plot_path=plot,
        progress=not args.quiet,
        instruction=args.instruction,
    ).to_dict()
    res["policy"], res["data"] = str(args.ckpt), str(args.data)
    if args.out:
        atomic_write_json(Path(args.out), res)
    if args.json:
        print_json(res)
    else:
        steps = " ".join(f"{v:.3g}" for v in res["l1_by_step"])
        print(
            f"open loop on {res['samples']} frames of {args.data}: L1 {res['l1']:.4g}, L2 {res['l2']:.4g} "
            f"(action units); L1 by horizon step: {steps}"
            + (f"; plot {res['plot']}" if res.get("plot") else "")
        )
    return 0


def add_sim(sub) -> argparse.ArgumentParser:
    s = add_command(
        sub, "sim", run_eval_sim, help="closed loop in a simulator (a task or a suite): success rate with 95%% CI"
    )
    s.add_argument("--ckpt", default=None, help="policy checkpoint folder (handvla posttrain's final/)")
    s.add_argument("--url", default=None, help="or a running policy server, ws://HOST:PORT")
    s.add_argument("--task", default="relocate", help="sim task: relocate, door, hammer, pen or a Meta-World MT10 task")
    s.add_argument("--suite", default=None, help="a suite instead: adroit or metaworld-mt10 (a per-task table)")
    s.add_argument("--tasks", default=None, help="with --suite: only these tasks (comma-separated)")
    s.add_argument("--scripted", action="store_true", help="with --suite metaworld-mt10: the scripted experts")
    s.add_argument("--episodes", type=int, default=50)
    s.add_argument("--seed", type=int, default=None, help="first seed (default 10000, away from demo seeds)")
    s.add_argument("--replan-every", type=int, default=None, help="actions executed per chunk (default: all)")
    s.add_argument("--max-steps", type=int, default=None, help="steps per episode (default: the task's)")
    s.add_argument("--instruction", default=None, help="instruction text (default: the checkpoint's)")
    s.add_argument("--device", default="auto")
    add_threads_option(s, help=None)
    s.add_argument("--out", default=None, help="folder for sim_eval_<task>.json")
    s.add_argument("--video-dir", default=None, help="save the first --video-episodes episodes as mp4 here")
    s.add_argument("--video-episodes", type=int, default=0)
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.add_argument("--per-seed", action="store_true", help="with --json: include per-episode rows")
    s.add_argument("--quiet", action="store_true")
    return s


def add_open_loop(sub) -> argparse.ArgumentParser:
    o = add_command(
        sub,
        "open-loop",
        run_eval_open_loop,
        help="predicted vs recorded action chunks on a dataset, error by horizon step",
    )
    o.add_argument("--ckpt", required=True, help="policy checkpoint folder")
    o.add_argument("--data", required=True, help="LeRobot v3 dataset folder")
    o.add_argument("--episodes", default=None, help="episode indices, e.g. 0,3,5-9 (default all)")
    o.add_argument("--stride", type=int, default=1, help="every k-th frame of each episode")
    o.add_argument("--max-samples", type=int, default=500, help="at most this many frames, evenly spread")
    o.add_argument("--image-key", default=None, help="camera feature (default: the policy's)")
    o.add_argument(
        "--instruction",
        default=None,
        help="instruction for every frame (default: each frame's task in the dataset)",
    )
    o.add_argument("--plot", default="open_loop_error.png", help="PNG of error against horizon step")
    o.add_argument("--no-plot", action="store_true")
    o.add_argument("--out", default=None, help="write the result as JSON to this file")
    o.add_argument("--device", default="auto")
    add_threads_option(o, help=None)
    o.add_argument("--json", action="store_true", help="print the result as JSON")
    o.add_argument("--quiet", action="store_true")
    return o


#: the ``handvla eval`` kinds, in help order
SUBCOMMANDS = (add_sim, add_open_loop)


def register(subparsers) -> None:
    add_group(
        subparsers,
        "eval",
        SUBCOMMANDS,
        dest="eval_kind",
        metavar="KIND",
        required=True,
        help="evaluate a post-trained policy: closed loop in simulation or open loop on a dataset",
        description="Closed-loop success rate in the Adroit simulator (sim) or open-loop action error on a "
        "recorded LeRobot v3 dataset (open-loop).",
    )
