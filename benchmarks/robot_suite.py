"""The robot benchmark suite, both action heads side by side at equal budget.

    python benchmarks/robot_suite.py [--suite metaworld-mt10] [--tasks reach-v3,push-v3] [--demos 20]
        [--steps 1000] [--episodes 20] [--heads regression,flow] [--image-size 0] [--seed 0]
        [--work runs/robot_suite]

1. Scripted-expert demonstrations of every task (``--demos`` per task, seeds 0 ..) into one multi-task
   LeRobot v3 dataset (``handvla data sim-demos --suite``), state only unless ``--image-size``.
2. Per head (``model.head``: ``regression``, Being-H0's, or ``flow``, the flow-matching expert), one
   post-training run from the tiny preset: same data, steps, batch, learning rate and seed.
3. Closed loop on the same seeded episodes (10000 ..) of every task: success per task with its 95 %
   Wilson interval, the mean over tasks with the pooled interval; beside them the scripted experts (the
   ceiling) and an input-blind baseline (the training set's mean action, every step).

Prints one JSON document: per arm the per-task table, training steps done, final loss and minutes (a run
that stopped early says so), and per task the paired comparison flow vs regression over the shared seeds
(episodes only one of them solved; exact two-sided McNemar p). Finished stages are reused when run again.
One training seed per head: the training-seed spread is not in the intervals.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from handvla.atomic import atomic_write_json  # noqa: E402
from handvla.commands._util import print_json  # noqa: E402
from handvla.policy import HandVLAPolicy  # noqa: E402
from handvla.robot.evaluate import EVAL_SEED, MeanActionPolicy, evaluate_suite  # noqa: E402
from handvla.robot.lerobot_format import RobotDataset  # noqa: E402
from handvla.robot.posttrain import load_posttrain_config, run_posttrain  # noqa: E402
from handvla.robot.sim.expert import collect_demos  # noqa: E402
from handvla.robot.sim.metaworld import MetaWorldScriptedPolicy  # noqa: E402
from handvla.robot.sim.suites import suite_tasks  # noqa: E402
from handvla.stats import mcnemar_exact  # noqa: E402


def table(res: dict) -> dict:
    return {
        "mean_success": res["mean_success"],
        "pooled_success_ci95": res["pooled_success_ci95"],
        "tasks": {
            t: {
                "success_rate": r["success_rate"],
                "success_ci95": r["success_ci95"],
                "episodes": r["episodes"],
            }
            for t, r in res["tasks"].items()
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="metaworld-mt10")
    ap.add_argument("--tasks", default=None, help="a subset of the suite (comma-separated)")
    ap.add_argument("--demos", type=int, default=20, help="demonstrations per task")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--episodes", type=int, default=20, help="evaluation episodes per task and arm")
    ap.add_argument("--heads", default="regression,flow")
    ap.add_argument("--image-size", type=int, default=0, help="camera frames (0: state only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="runs/robot_suite")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="posttrain config override for the trained arms, e.g. model.flow.train_samples=4 (repeatable)",
    )
    ap.add_argument("--tag", default="", help="suffix of the run folders (to keep ablations apart)")
    args = ap.parse_args()
    tasks = suite_tasks(args.suite)
    if args.tasks:
        tasks = [t for t in args.tasks.split(",") if t]
    work = Path(args.work)
    tag = f"{args.suite}_{len(tasks)}t_d{args.demos}_px{args.image_size}"
    demos = work / f"demos_{tag}"
    if not (demos / "meta" / "info.json").is_file():
        collect_demos(
            tasks,
            args.demos,
            demos,
            seed=0,
            image_size=args.image_size or None,
            progress=not args.no_progress,
        )
    actions = RobotDataset(demos, columns=["action"]).column("action")
    eval_kw = dict(episodes=args.episodes, seed=EVAL_SEED, progress=not args.no_progress)
    out: dict = {"settings": vars(args) | {"tasks": tasks, "dataset": str(demos), "eval_seed": EVAL_SEED}}

    def cached(name: str, make_policy) -> dict:
        """A baseline's evaluation, kept in the work folder (the same tasks, seeds and episodes)."""
        path = work / f"{name}_{tag}_eval_{args.episodes}.json"
        if path.is_file():
            return json.loads(path.read_text())
        res = table(evaluate_suite(make_policy(), tasks, **eval_kw))
        atomic_write_json(path, res)
        return res

    out["scripted_experts"] = (
        cached("scripted", MetaWorldScriptedPolicy) if args.suite == "metaworld-mt10" else None
    )
    out["mean_action_baseline"] = cached("mean_action", lambda: MeanActionPolicy(actions.mean(0), 39))
    per_seed: dict[str, dict] = {}
    for head in [h for h in args.heads.split(",") if h]:
        run = work / f"{tag}_{head}_s{args.steps}_seed{args.seed}{args.tag and '_' + args.tag}"
        base = {
            "data": {"dataset": str(demos), "chunk_size": args.chunk, "stats": "compute"},
            "model": {"preset": "tiny", "head": head, "seed": args.seed},
            "train": {
                "output_dir": str(run),
                "max_steps": args.steps,
                "batch_size": args.batch_size,
                "lr": args.lr,
                "warmup_steps": min(100, args.steps // 10),
                "seed": args.seed,
                "device": "cpu",
                "progress": not args.no_progress,
                "tensorboard": False,
                "save_every": max(args.steps, 1),
                "log_every": 50,
            },
            "eval": {"val_samples": 0, "open_loop_samples": 0},
        }
        summary_path = run / "posttrain_summary.json"
        if summary_path.is_file():
            summary = json.loads(summary_path.read_text())
        else:
            summary = run_posttrain(load_posttrain_config(overrides=args.set, base=base), progress=not args.no_progress)
        eval_path = run / f"suite_eval_{args.episodes}.json"
        if eval_path.is_file():
            res = json.loads(eval_path.read_text())
        else:
            res = evaluate_suite(HandVLAPolicy.load(run / "final", device="cpu"), tasks, **eval_kw)
            atomic_write_json(eval_path, res)
        per_seed[head] = {
            t: {r["seed"]: bool(r["success"]) for r in res["tasks"][t]["per_seed"]} for t in tasks
        }
        tr = summary["train"]
        out[head] = table(res) | {
            "train_steps": tr.get("step"),
            "planned_steps": args.steps,
            "final_loss": tr.get("final_loss"),
            "stopped_early": tr.get("stopped_early"),
            "train_minutes": round(summary.get("minutes", 0.0), 2),
        }
    if {"regression", "flow"} <= set(per_seed):
        paired = {}
        for t in tasks:
            a, b = per_seed["flow"][t], per_seed["regression"][t]
            shared = sorted(set(a) & set(b))
            only_f = sum(a[s] and not b[s] for s in shared)
            only_r = sum(b[s] and not a[s] for s in shared)
            paired[t] = {
                "only_flow": only_f,
                "only_regression": only_r,
                "mcnemar_p": round(mcnemar_exact(only_f, only_r), 4),
            }
        out["paired_flow_vs_regression"] = paired
    print_json(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
