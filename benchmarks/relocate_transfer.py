"""Does human-hand data help a robot learn? Adroit Relocate, closed loop, four arms at equal budget, several
demonstration counts and training seeds, paired tests.

    python benchmarks/relocate_transfer.py --pretrained runs/demo/vla/final --human runs/human_relocate
        [--demos 10,30,100] [--seeds 0,1,2] [--steps 2500] [--episodes 100] [--arms plain,scratch,pretrained,human]
        [--jobs 2] [--work runs/relocate_transfer]

Arms (all: the tiny preset, ``configs/posttrain_relocate_human.yaml``: image 64 px + 39-d state, chunk 16,
batch 32, the same steps, learning rate and seed, the Adroit embodiment map of that config):
    plain       random init, the robot demonstrations only
    scratch     ``--pretrained``'s architecture (its config and tokenizers) with weights drawn afresh
                (`handvla.vla.fresh_weights`, seed 0, written once to WORK/scratch_init): what the
                pretrained checkpoint's architecture does without its training
    pretrained  ``--pretrained``: a handvla VLA pretrained on human-hand motion (e.g. the demo's vla/final)
    human       random init, the robot demonstrations plus ``--human``: human carries retargeted to the
                Adroit hand and replayed (``handvla data retarget``) as a second embodiment, drawn for
                ``--human-weight`` of the samples (default 0.5; 0: by frames, which with 10 robot
                demonstrations and 139 replays is 93 % human)
Robot demonstrations come from the scripted expert (seeds 0 ..; ``max(--demos)`` + 5 held out for
validation, collected once); ``--demos N`` uses the first N. Every run is evaluated on the same seeded
episodes (10000 ..). Finished runs and evaluations are reused when the script is run again.

Prints one JSON document: per demonstration count and arm, success per training seed and pooled over seeds
(Wilson 95 % interval), training steps done, final loss and minutes; per count, each arm against ``plain``
(and ``pretrained`` against ``scratch``: what pretraining adds to the same architecture): the mean difference
over training seeds with the per-seed differences, and the exact McNemar test pooled over the seeds' paired
episodes (the same evaluation episode, the same training seed); the input-blind
baseline (the demonstrations' mean action at every step).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from handvla.atomic import atomic_write_json  # noqa: E402
from handvla.commands._util import print_json  # noqa: E402
from handvla.stats import mcnemar_exact, rate_summary  # noqa: E402

CONFIG = ROOT / "configs" / "posttrain_relocate_human.yaml"
VAL_EPISODES = 5
ARMS = ("plain", "scratch", "pretrained", "human")


def run_cell(arm: str, demos: int, seed: int, args: dict, demos_dir: str) -> dict:
    """Train (or reuse) and evaluate (or reuse) one arm at one demonstration count and training seed."""
    import torch
    import yaml

    torch.set_num_threads(1)
    from handvla.policy import HandVLAPolicy
    from handvla.robot.evaluate import EVAL_SEED, run_sim_eval
    from handvla.robot.posttrain import load_posttrain_config, run_posttrain

    w = args["human_weight"]
    name = f"{arm}_w{w:g}" if arm == "human" and w else f"{arm}_wframes" if arm == "human" else arm
    if arm == "human" and args["human_task"]:
        name += "_task"
    run = Path(args["work"]) / f"{name}_d{demos}_s{args['steps']}_seed{seed}"
    sets = [
        f"data.dataset={demos_dir}", f"data.max_episodes={demos + VAL_EPISODES}",
        f"data.val_episodes={VAL_EPISODES}", f"train.output_dir={run}", f"train.max_steps={args['steps']}",
        f"train.seed={seed}", f"model.seed={seed}", "train.progress=false", "train.device=cpu",
        f"train.save_every={args['steps']}",
    ]  # fmt: skip
    if arm == "pretrained":
        sets.append(f"model.init_checkpoint={args['pretrained']}")
    if arm == "scratch":
        sets.append(f"model.init_checkpoint={Path(args['work']) / 'scratch_init'}")
    base = yaml.safe_load(CONFIG.read_text())  # (resolves the config's YAML anchors)
    extra = base["data"].pop("extra_datasets")
    if arm == "human":
        base["data"]["extra_datasets"] = [
            extra[0] | {"dataset": args["human"], "weight": w or None, "task": args["human_task"]}
        ]
    summary_path = run / "posttrain_summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
    else:
        summary = run_posttrain(load_posttrain_config(overrides=sets, base=base), progress=False)
    eval_path = run / f"sim_eval_relocate_{args['episodes']}.json"
    if eval_path.is_file():
        res = json.loads(eval_path.read_text())
    else:
        policy = HandVLAPolicy.load(run / "final", device="cpu")
        res = run_sim_eval(policy, task="relocate", episodes=args["episodes"], seed=EVAL_SEED, progress=False)
        atomic_write_json(eval_path, res)
    tr = summary["train"]
    return {
        "arm": arm, "demos": demos, "seed": seed,
        "success": {int(r["seed"]): bool(r["success"]) for r in res["per_seed"]},
        "success_rate": res["success_rate"],
        "train_steps": tr.get("step"), "final_loss": tr.get("final_loss"),
        "stopped_early": tr.get("stopped_early"), "train_minutes": round(summary.get("minutes", 0.0), 2),
        "human_episodes": sum(e["episodes"] for e in summary.get("extra_datasets", [])),
        "human_sample_share": sum(e.get("sample_share", 0.0) for e in summary.get("extra_datasets", [])),
    }  # fmt: skip


def _write_scratch_init(pretrained: Path, out: Path) -> None:
    """Arm 'scratch': ``pretrained``'s architecture with fresh weights, written once to ``out`` (again when
    ``--pretrained`` names another checkpoint)."""
    from handvla.vla import fresh_weights, load_vla, save_vla

    source = out / "source.json"
    want = {"pretrained": str(pretrained.resolve()), "seed": 0}
    if source.is_file() and json.loads(source.read_text()) == want:
        return
    save_vla(out, fresh_weights(load_vla(pretrained), seed=0))
    atomic_write_json(source, want)


def _paired(by: dict, a: str, b: str, d: int, seeds: list[int]) -> dict:
    """Arm ``a`` against arm ``b`` at ``d`` demonstrations: the mean and per-seed differences in success, the
    episodes only one of them solved (the same evaluation episode, the same training seed) and the exact
    McNemar test over them."""
    won = lost = 0
    diffs = []
    for s in seeds:
        x, p = by[(a, d, s)]["success"], by[(b, d, s)]["success"]
        common = sorted(set(x) & set(p))
        won += sum(x[e] and not p[e] for e in common)
        lost += sum(p[e] and not x[e] for e in common)
        diffs.append(by[(a, d, s)]["success_rate"] - by[(b, d, s)]["success_rate"])
    return {
        "mean_difference": round(float(np.mean(diffs)), 4),
        "per_seed_difference": [round(x, 4) for x in diffs],
        "episodes_only_this_arm": won, f"episodes_only_{b}": lost,
        "mcnemar_p": float(f"{mcnemar_exact(won, lost):.3g}"),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrained", default=None, help="handvla VLA checkpoint folder (arm 'pretrained')")
    ap.add_argument("--human", default=None, help="retargeted human demonstrations (arm 'human')")
    ap.add_argument("--human-weight", type=float, default=0.5,
                    help="arm 'human': the share of samples from the human replays (0: by frames)")  # fmt: skip
    ap.add_argument("--human-task", default=None,
                    help="arm 'human': the replays' instruction instead of the task's own (tells the policy "
                    "which data it is, as the two embodiments share every dimension)")  # fmt: skip
    ap.add_argument("--demos", default="10,30,100", help="robot demonstration counts (comma-separated)")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds (comma-separated)")
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--episodes", type=int, default=100, help="closed-loop evaluation episodes per run")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (one thread each)")
    ap.add_argument("--work", default="runs/relocate_transfer")
    args = ap.parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]
    bad = [a for a in arms if a not in ARMS]
    need = (("pretrained" in arms or "scratch" in arms) and not args.pretrained) or ("human" in arms and not args.human)
    if bad or need:
        ap.error(f"--arms from {ARMS}; 'pretrained' and 'scratch' need --pretrained, 'human' needs --human (got {arms})")
    counts = sorted(int(d) for d in args.demos.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.work)
    demos_dir = work / f"demos_{max(counts) + VAL_EPISODES}"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if not (demos_dir / "meta" / "info.json").is_file():
        from handvla.robot.sim.expert import collect_demos

        collect_demos("relocate", max(counts) + VAL_EPISODES, demos_dir, seed=0, image_size=64, progress=False)
    if "scratch" in arms:
        _write_scratch_init(Path(args.pretrained), work / "scratch_init")
    shared = {"work": str(work), "steps": args.steps, "episodes": args.episodes,
              "pretrained": args.pretrained, "human": args.human, "human_weight": args.human_weight,
              "human_task": args.human_task}  # fmt: skip
    cells = [(a, d, s) for d in counts for s in seeds for a in arms]
    if args.jobs <= 1:
        results = [run_cell(a, d, s, shared, str(demos_dir)) for a, d, s in cells]
    else:  # spawn: the parent may hold a GL context (the demonstrations' renderer) a fork must not share
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(run_cell, a, d, s, shared, str(demos_dir)) for a, d, s in cells]
            results = [f.result() for f in futures]
    by = {(r["arm"], r["demos"], r["seed"]): r for r in results}

    out: dict = {"settings": vars(args) | {"config": str(CONFIG.relative_to(ROOT)), "demos_dir": str(demos_dir)}}
    baseline = work / f"mean_action_eval_{args.episodes}.json"
    if not baseline.is_file():
        from handvla.robot.evaluate import EVAL_SEED, MeanActionPolicy, run_sim_eval
        from handvla.robot.lerobot_format import RobotDataset

        actions = RobotDataset(demos_dir, columns=["action"]).column("action")
        res = run_sim_eval(MeanActionPolicy(actions.mean(0), 39), task="relocate", episodes=args.episodes,
                           seed=EVAL_SEED, progress=False)  # fmt: skip
        atomic_write_json(baseline, rate_summary(r["success"] for r in res["per_seed"]))
    out["mean_action_baseline"] = json.loads(baseline.read_text())
    for d in counts:
        row: dict = {}
        for a in arms:
            rs = [by[(a, d, s)] for s in seeds]
            hits = [h for r in rs for h in r["success"].values()]
            row[a] = rate_summary(hits, "success") | {
                "per_seed": {r["seed"]: r["success_rate"] for r in rs},
                "train_steps": [r["train_steps"] for r in rs],
                "final_loss": [r["final_loss"] for r in rs],
                "stopped_early": any(bool(r["stopped_early"]) for r in rs),
                "train_minutes": [r["train_minutes"] for r in rs],
            }
            if a == "human":
                row[a]["human_episodes"] = rs[0]["human_episodes"]
                row[a]["human_sample_share"] = rs[0]["human_sample_share"]
        pairs = [(a, "plain") for a in arms if a != "plain" and "plain" in arms]
        if "pretrained" in arms and "scratch" in arms:
            pairs.append(("pretrained", "scratch"))
        for a, b in pairs:
            row[f"{a}_vs_{b}"] = _paired(by, a, b, d, seeds)
        out[f"demos_{d}"] = row
    print_json(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
