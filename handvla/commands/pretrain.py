"""``handvla pretrain``: physical-instruction pretraining of the motion VLA (``handvla.vla.pretrain``).

Examples::

    handvla pretrain --config configs/pretrain_handworld.yaml --set train.max_steps=2000 --set data.align=false
    handvla pretrain --config configs/pretrain_handworld.yaml --resume     # continue the same run
    torchrun --nproc-per-node 8 -m handvla pretrain --config run.yaml     # DDP / FSDP2 (train.distributed)
"""

from __future__ import annotations

import argparse

from handvla.commands._util import add_command, add_training_run_args, print_json, run_training_job


def run_pretrain_cmd(args: argparse.Namespace) -> int:
    from handvla.vla.pretrain import load_pretrain_config, run_pretrain

    summary = run_training_job(args, load_pretrain_config, run_pretrain)
    if summary is not None:
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
    p = add_command(
        subparsers,
        "pretrain",
        run_pretrain_cmd,
        help="pretrain the motion VLA on instruction data (image + text <-> hand-motion tokens)",
        description="Physical-instruction pretraining of the motion VLA on the shared trainer. The YAML config "
        "has sections data (handvla.vla.data.VLADataConfig), model (preset/backbone/init_checkpoint, "
        "motion_tokenizer, loss options), train (handvla.train.trainer.TrainConfig) and eval. Writes "
        "checkpoints/, metrics.jsonl, final/ (the VLA with its motion tokenizer) and pretrain_summary.json "
        "under train.output_dir.",
    )
    add_training_run_args(p, "train.lr=3e-4 or data.seconds=[1,2]")
