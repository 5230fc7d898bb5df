"""``handvla pretrain``: physical-instruction pretraining of the motion VLA (``handvla.vla.pretrain``).

Examples::

    handvla pretrain --config configs/pretrain_handworld.yaml --set train.max_steps=2000 --set data.align=false
    handvla pretrain --config configs/pretrain_handworld.yaml --resume     # continue the same run
    torchrun --nproc-per-node 8 -m handvla pretrain --config run.yaml     # DDP / FSDP2 (train.distributed)
"""

from __future__ import annotations

import argparse

from handvla.commands._util import add_training_run_args, print_json


def run_pretrain_cmd(args: argparse.Namespace) -> int:
    import torch

    from handvla.vla.pretrain import load_pretrain_config, run_pretrain

    cfg = load_pretrain_config(args.config, args.set)
    if args.threads:
        torch.set_num_threads(int(args.threads))
    if args.quiet:
        cfg.train.progress = False
    summary = run_pretrain(cfg, resume=args.resume, progress=not args.quiet)
    from handvla.train.distributed import init_distributed

    if init_distributed(cfg.train.device).is_main:
        print_json(
            {
                "output_dir": summary["output_dir"],
                "final": summary.get("final"),
                "train": summary["train"],
                "samples": summary["data"]["train"].get("samples"),
                "final_val": summary.get("final_val"),
                "final_eval": {k: _short(v) for k, v in (summary.get("final_eval") or {}).items()},
            }
        )
    return 0


def _short(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "per_rig"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="pretrain the motion VLA on instruction data (image + text <-> hand-motion tokens)",
        description="Physical-instruction pretraining of the motion VLA on the shared trainer. The YAML config "
        "has sections data (handvla.vla.data.VLADataConfig), model (preset/backbone/init_checkpoint, "
        "motion_tokenizer, loss options), train (handvla.train.trainer.TrainConfig) and eval. Writes "
        "checkpoints/, metrics.jsonl, final/ (the VLA with its motion tokenizer) and pretrain_summary.json "
        "under train.output_dir.",
    )
    add_training_run_args(p, "train.lr=3e-4 or data.seconds=[1,2]")
    p.set_defaults(func=run_pretrain_cmd)
