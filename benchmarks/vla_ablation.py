"""One VLA training of an ablation: pretrain on a HandWorld store with `handvla pretrain`'s config (any field
through ``--set``), then score it on held-out stores beside the input-free baselines. Prints one JSON line
prefixed ``RESULT``. The README's ablation table (token order, layer weights, model size, image tile) was
made with it, two trainings at a time, one thread each.

    handvla data handworld --episodes 480 --out hw_train --rigs ego,third --size 96x72 --seconds 3
    handvla data handworld --episodes 100 --seed 1 --out hw_heldout --rigs ego,third --size 96x72 --seconds 3
    handvla data handworld --episodes 100 --seed 2 --out hw_phone --rigs phone --size 96x72 --seconds 3
    python benchmarks/vla_ablation.py --train hw_train --eval heldout=hw_heldout --eval unseen=hw_phone \\
        --tokenizer TOK --out runs/abl_b --steps 500 --set 'model.preset_overrides={vision_config: {image_size: 112}}'
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", required=True, nargs="+", help="training HandWorld store(s)")
    p.add_argument("--eval", action="append", required=True, metavar="NAME=DIR", help="held-out store(s)")
    p.add_argument("--tokenizer", required=True, help="motion tokenizer folder")
    p.add_argument("--out", required=True, help="run folder (replaced)")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--minutes", type=float, default=None)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seconds", type=int, default=2, help="window length of the samples and of generation")
    p.add_argument("--align", type=int, default=1)
    p.add_argument("--eval-episodes", type=int, default=100)
    p.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", "1")))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="pretrain config override")
    p.add_argument("--counterfactual", action="append", default=[], metavar="NAME",
                   help="also ask for another object of the same scene on this --eval store (instruction following)")
    p.add_argument("--grounding", action="append", default=[], metavar="NAME",
                   help="also ask where each object is on this --eval store (handvla.vla.grounding)")
    p.add_argument("--rerank", action="append", default=[], metavar="NAME",
                   help="also decode best of --rerank-samples by the model's own grounding boxes on this --eval "
                   "store (handvla.vla.rerank)")
    p.add_argument("--rerank-samples", type=int, default=8)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from handvla.vla.evaluate import evaluate_counterfactual, evaluate_handworld
    from handvla.vla.grounding import evaluate_grounding
    from handvla.vla.modeling import load_vla
    from handvla.vla.pretrain import load_pretrain_config, run_pretrain

    shutil.rmtree(a.out, ignore_errors=True)
    base = dict(
        data=dict(stores=list(a.train), seconds=[a.seconds], align=bool(a.align)),
        model=dict(preset="tiny", motion_tokenizer=a.tokenizer),
        train=dict(output_dir=a.out, max_steps=a.steps, max_minutes=a.minutes, batch_size=a.batch_size, lr=a.lr,
                   warmup_steps=30, save_every=100_000, log_every=25, progress=False, tensorboard=False),
    )
    cfg = load_pretrain_config(None, a.set, base)
    t = time.time()
    s = run_pretrain(cfg, progress=False)
    res: dict = {
        "train": {k: s["train"].get(k) for k in ("steps_done", "final_loss", "stop_reason", "too_few_steps",
                                                 "elapsed_minutes")},
        "samples": s["data"]["train"].get("task_types"),
        "overrides": a.set,
    }
    bundle = load_vla(Path(a.out) / "final")
    keys = ("target_pairs", "target_accuracy", "target_accuracy_ci95", "final_wrist_error_m", "mpjpe_mm", "mwte_mm",
            "tokenizer_mpjpe_mm", "prefix_target_accuracy", "prefix_target_accuracy_ci95",
            "motion_follows_prefix_rate", "motion_follows_prefix_rate_ci95")  # the last four: answer-prefix models
    for item in a.eval:
        name, path = item.split("=", 1)
        full = evaluate_handworld(bundle, path, max_episodes=a.eval_episodes, max_seconds=a.seconds, batch_size=8,
                                  train_stores=list(a.train))  # fmt: skip
        (Path(a.out) / f"eval_{name}.json").write_text(json.dumps(full, default=str))
        r = full["summary"]
        res[name] = {k: r[k] for k in keys if k in r}
        res[name]["baselines"] = {
            k: {kk: v.get(kk) for kk in ("target_accuracy", "target_accuracy_ci95", "final_wrist_error_m")}
            for k, v in (r.get("baselines") or {}).items()
        }
    stores = dict(item.split("=", 1) for item in a.eval)
    for name in a.counterfactual:
        cf = evaluate_counterfactual(bundle, stores[name], max_episodes=a.eval_episodes, seconds=a.seconds,
                                     batch_size=8)  # fmt: skip
        (Path(a.out) / f"counterfactual_{name}.json").write_text(json.dumps(cf["rows"], default=str))
        res[f"{name}_counterfactual"] = cf["summary"]
    for name in a.rerank:
        full = evaluate_handworld(bundle, stores[name], max_episodes=a.eval_episodes, max_seconds=a.seconds,
                                  batch_size=4, rerank_samples=a.rerank_samples)  # fmt: skip
        (Path(a.out) / f"eval_{name}_reranked.json").write_text(json.dumps(full, default=str))
        r = full["summary"]
        res[f"{name}_reranked"] = {k: r.get(k) for k in ("target_pairs", "target_accuracy", "target_accuracy_ci95",
                                                         "final_wrist_error_m", "rerank")}  # fmt: skip
    for name in a.grounding:
        g = evaluate_grounding(bundle, stores[name], max_episodes=a.eval_episodes, batch_size=16)
        g.pop("examples")
        res[f"{name}_grounding"] = g
    res["minutes"] = (time.time() - t) / 60
    print("RESULT", json.dumps(res, default=str))
    return res


if __name__ == "__main__":
    main()
