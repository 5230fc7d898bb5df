"""Does the VLA learn to follow instructions? Build HandWorld data, train the motion tokenizer and the VLA
twice (with and without weak-perspective alignment, same budget), and score both on held-out scenes of the
seen rigs and on an unseen rig, beside input-free baselines, with Wilson 95 % intervals. Prints JSON.

The recipe is the demo's (``handvla.demo.DemoConfig``; ``--set KEY=VALUE`` overrides any of its fields),
at benchmark sizes: thousands of cheap HandWorld episodes and enough held-out episodes for at least
``--min-pairs`` scored (hand, object) pairs per evaluation store. The training budget is a step count
(``--steps``) capped by the wall clock (``--minutes`` per training); the JSON states the steps each
training got, its final loss and whether it stopped early, and warns when a training got too few steps.

    python benchmarks/vla_learning.py --out runs/vla_learning --minutes 20 --steps 1500
    python benchmarks/vla_learning.py --out /tmp/vl --train-episodes 40 --heldout-episodes 12 \\
        --unseen-episodes 12 --minutes 1 --steps 10 --set tokenizer_preset=tiny --set tokenizer_minutes=0.1

Reported per training (``aligned`` / ``unaligned``): the learning curve (loss and per-kind accuracies from
``metrics.jsonl``), and per evaluation store the target accuracy with its interval, final wrist error,
MPJPE / MWTE, the baselines (constant output, per-template mean, per-template-and-camera-rig mean,
retrieval by instruction text, tokenizer floor), the model with shuffled images (input sensitivity), the
model asked for the scene's other objects (instruction following), motion translation (target object and
direction named) and contextual prediction against a constant-velocity continuation.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch


def _episodes_for_pairs(pairs: int) -> int:
    """HandWorld episodes to generate for about ``pairs`` scored (hand, object) pairs (about 0.6 per episode
    on average over the task mix), with a margin."""
    return int(pairs / 0.55) + 10


def _curve(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    keep = ("step", "loss", "token_acc", "acc/text", "acc/wrist_l0", "acc/finger_l0", "lr")
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: r[k] for k in keep if k in r} for r in recs if "loss" in r]


def main(argv: list[str] | None = None) -> dict:
    from handvla.config import load_config
    from handvla.demo import DemoConfig, build_worlds, pretrain_vla, train_tokenizer
    from handvla.vla.baselines import load_training_reference
    from handvla.vla.evaluate import evaluate_counterfactual, evaluate_handworld
    from handvla.vla.modeling import load_vla

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="working folder (data, tokenizer, runs; resumable)")
    p.add_argument("--train-episodes", type=int, default=2000)
    p.add_argument("--min-pairs", type=int, default=300, help="scored pairs wanted per evaluation store")
    p.add_argument("--heldout-episodes", type=int, default=None, help="default: enough for --min-pairs")
    p.add_argument("--unseen-episodes", type=int, default=None, help="default: enough for --min-pairs")
    p.add_argument("--steps", type=int, default=1500, help="optimiser steps per training (upper bound)")
    p.add_argument("--minutes", type=float, default=25.0, help="wall-clock budget per training")
    p.add_argument("--no-unaligned", action="store_true", help="train only with alignment")
    p.add_argument("--translation-episodes", type=int, default=100)
    p.add_argument("--prediction-episodes", type=int, default=100)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="DemoConfig field")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    held = a.heldout_episodes or _episodes_for_pairs(a.min_pairs)
    unseen = a.unseen_episodes or _episodes_for_pairs(a.min_pairs)
    base = DemoConfig(train_episodes=a.train_episodes, heldout_episodes=held,
                      unseen_rig_episodes=unseen, vla_max_steps=a.steps, vla_minutes=a.minutes)  # fmt: skip
    cfg = load_config(DemoConfig, None, a.set, base.model_dump(), "--set")
    t0 = time.perf_counter()
    worlds = build_worlds(cfg, out, progress=False)
    data_s = time.perf_counter() - t0
    tok_dir, tok_metrics = train_tokenizer(cfg, out, worlds, progress=False)
    result: dict = {
        "benchmark": "vla_learning",
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()},  # fmt: skip
        "config": cfg.model_dump(mode="json"),
        "data_seconds": data_s,
        "tokenizer": tok_metrics,
        "trainings": {},
    }
    ref = load_training_reference([worlds["train"]])  # the input-free baselines, fitted once for every evaluation
    variants = [("aligned", True)] + ([] if a.no_unaligned else [("unaligned", False)])
    for name, align in variants:
        run_out = out / name
        run_out.mkdir(exist_ok=True)
        vcfg = cfg.replace(align=align)
        t1 = time.perf_counter()
        ckpt = pretrain_vla(vcfg, run_out, worlds, tok_dir, progress=False)
        train_s = time.perf_counter() - t1
        train_res = json.loads((run_out / "vla" / "train_result.json").read_text())
        bundle = load_vla(ckpt)
        evals = {}
        for store_name, key in (("heldout_seen_rigs", "heldout"), ("unseen_rig", "unseen_rig")):
            r = evaluate_handworld(bundle, worlds[key], max_seconds=cfg.eval_seconds, batch_size=16,
                                   train_stores=ref,
                                   translation_episodes=a.translation_episodes if key == "heldout" else 0,
                                   prediction_episodes=a.prediction_episodes if key == "heldout" else 0)  # fmt: skip
            evals[store_name] = r["summary"]
        sh = evaluate_handworld(bundle, worlds["heldout"], max_seconds=cfg.eval_seconds, batch_size=16,
                                shuffle_images=True)["summary"]  # fmt: skip
        evals["heldout_images_shuffled"] = {k: sh.get(k) for k in ("target_pairs", "target_accuracy",
                                                                   "target_accuracy_ci95", "final_wrist_error_m")}
        evals["heldout_counterfactual"] = evaluate_counterfactual(bundle, worlds["heldout"], seconds=cfg.eval_seconds,
                                                                  batch_size=16)["summary"]  # fmt: skip
        result["trainings"][name] = {
            "train": {k: train_res.get(k) for k in ("steps_done", "max_steps", "final_loss", "stopped_early",
                                                     "stop_reason", "elapsed_minutes", "too_few_steps", "warning")},
            "train_wall_seconds": train_s,
            "learning_curve": _curve(run_out / "vla"),
            "eval": evals,
        }
        if train_res.get("too_few_steps"):
            print(f"WARNING: training '{name}': {train_res.get('warning')}", file=sys.stderr)
    tr = result["trainings"]
    if "unaligned" in tr:
        a_acc = tr["aligned"]["eval"]["unseen_rig"].get("target_accuracy")
        u_acc = tr["unaligned"]["eval"]["unseen_rig"].get("target_accuracy")
        if a_acc is not None and u_acc is not None:
            result["unseen_rig_alignment_gain_points"] = 100 * (a_acc - u_acc)
    result["total_seconds"] = time.perf_counter() - t0
    return result


if __name__ == "__main__":
    import contextlib

    # the pipeline's progress lines go to stderr, so stdout is exactly the JSON
    with contextlib.redirect_stdout(sys.stderr):
        res = main()
    print(json.dumps(res, indent=1, default=str))
