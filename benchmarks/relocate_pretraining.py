"""Does motion pretraining help robot post-training? Adroit Relocate, closed loop, two arms at equal budgets.

    python benchmarks/relocate_pretraining.py --pretrained runs/demo/vla/final [--demos 95] [--steps 2500]
        [--episodes 50] [--work runs/relocate_bench] [--seed 0]

(a) post-trains the handvla VLA checkpoint ``--pretrained`` (pretrained on human-hand motion, e.g. the demo's
``vla/final``, which is the tiny preset); (b) the tiny preset at random init (no motion pretraining;
``configs/posttrain_relocate.yaml`` as it is). Both read the same expert demonstrations (``--demos`` for training + 5 held out, collected
once with the scripted expert at 64x64 px into WORK/demos), train for the same ``--steps`` with the same
batch, learning rate and seed (``configs/posttrain_relocate.yaml``), and are evaluated on the same seeded
episodes (10000 ..). Finished stages are reused when the script is run again.

Prints one JSON document: per arm the success rate with its 95% Wilson interval, success at the episode's
end, training minutes and validation error; the paired comparison over the shared seeds (episodes only
one arm solved, exact two-sided McNemar p-value); and the settings. One training seed per arm: the
training-seed spread is not in the interval.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from handvla.commands._util import print_json  # noqa: E402
from handvla.policy import HandVLAPolicy  # noqa: E402
from handvla.robot.evaluate import EVAL_SEED, run_sim_eval  # noqa: E402
from handvla.robot.posttrain import load_posttrain_config, run_posttrain  # noqa: E402
from handvla.robot.sim.expert import collect_demos  # noqa: E402
from handvla.stats import mcnemar_exact  # noqa: E402

CONFIG = ROOT / "configs" / "posttrain_relocate.yaml"
VAL_EPISODES = 5


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrained", required=True, help="handvla VLA checkpoint folder (arm a)")
    ap.add_argument("--demos", type=int, default=95, help="training demonstrations (5 more are held out)")
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--episodes", type=int, default=50, help="closed-loop evaluation episodes per arm")
    ap.add_argument("--work", default="runs/relocate_bench")
    ap.add_argument("--seed", type=int, default=0, help="training seed of both arms")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()

    work = Path(args.work)
    demos = work / f"demos_{args.demos + VAL_EPISODES}"
    if not (demos / "meta" / "info.json").is_file():
        collect_demos("relocate", args.demos + VAL_EPISODES, demos, seed=0, image_size=64,
                      progress=not args.no_progress)
    arms = {"a_pretrained": ["model.init_checkpoint=" + str(args.pretrained)], "b_plain": []}
    out = {}
    per_seed = {}
    for arm, extra in arms.items():
        run = work / f"{arm}_d{args.demos}_s{args.steps}_seed{args.seed}"
        cfg = load_posttrain_config(CONFIG, [
            f"data.dataset={demos}", f"data.val_episodes={VAL_EPISODES}", f"train.output_dir={run}",
            f"train.max_steps={args.steps}", f"train.seed={args.seed}", f"model.seed={args.seed}",
            f"train.progress={'false' if args.no_progress else 'true'}", *extra,
        ])
        summary_path = run / "posttrain_summary.json"
        if summary_path.is_file():
            summary = json.loads(summary_path.read_text())
        else:
            summary = run_posttrain(cfg, progress=not args.no_progress)
        eval_path = run / "sim_eval_relocate.json"
        if eval_path.is_file():
            res = json.loads(eval_path.read_text())
        else:
            policy = HandVLAPolicy.load(run / "final", device="cpu")
            res = run_sim_eval(policy, task="relocate", episodes=args.episodes, seed=EVAL_SEED, out_dir=run,
                               progress=not args.no_progress)
        per_seed[arm] = {r["seed"]: bool(r["success"]) for r in res["per_seed"]}
        out[arm] = {
            "success_rate": res["success_rate"],
            "success_ci95": res["success_ci95"],
            "success_at_end_rate": res["success_at_end_rate"],
            "episodes": res["episodes"],
            "train_minutes": round(summary["train"]["minutes"], 2),
            "train_steps": summary["train"]["step"],
            "val_l1": summary.get("final_val", {}).get("val_l1"),
            "init": summary["init"],
        }
    a, b = per_seed["a_pretrained"], per_seed["b_plain"]
    shared = sorted(set(a) & set(b))
    only_a = sum(a[s] and not b[s] for s in shared)
    only_b = sum(b[s] and not a[s] for s in shared)
    out["paired"] = {"seeds": len(shared), "only_a_solved": only_a, "only_b_solved": only_b,
                     "mcnemar_p": round(mcnemar_exact(only_a, only_b), 4)}
    out["settings"] = {"demos": args.demos, "val_episodes": VAL_EPISODES, "steps": args.steps,
                       "seed": args.seed, "config": str(CONFIG.relative_to(ROOT)), "pretrained": str(args.pretrained)}
    print_json(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
