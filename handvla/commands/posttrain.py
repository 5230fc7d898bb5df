"""``handvla posttrain``: robot post-training of the VLA on a LeRobot v3 dataset (``handvla.robot.posttrain``).

Examples::

    handvla posttrain --config relocate.yaml --set train.max_steps=2000 --set model.backbone_mode=lora
    handvla posttrain --config relocate.yaml --resume               # continue the same run
    torchrun --nproc-per-node 8 -m handvla posttrain --config relocate.yaml   # DDP / FSDP2
"""

from __future__ import annotations

import argparse

from handvla.commands._util import add_command, add_training_run_args, print_json, run_training_job


def run_posttrain_cmd(args: argparse.Namespace) -> int:
    from handvla.robot.posttrain import load_posttrain_config, run_posttrain

    summary = run_training_job(args, load_posttrain_config, run_posttrain)
    if summary is not None:
        keep = (
            "output_dir",
            "final",
            "train",
            "episodes",
            "frames",
            "state_dim",
            "action_dim",
            "chunk_size",
            "cameras",
            "backbone_mode",
            "init",
            "parameters",
            "final_val",
        )
        out = {k: summary[k] for k in keep if k in summary}
        ol = summary.get("open_loop_val")
        if ol:
            out["open_loop_val"] = {k: ol[k] for k in ("samples", "l1", "l2", "l1_by_step", "plot")}
        print_json(out)
    return 0


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "posttrain",
        run_posttrain_cmd,
        help="post-train the VLA into a robot policy (action chunks) on a LeRobot v3 dataset",
        description="Being-H0 post-training on the shared trainer: <PROP_CONTEXT> = fp(state), learned action "
        "queries, regression head fr, L1 on normalised action chunks. The YAML config has sections data "
        "(dataset, chunk_size, image_keys, state/action keys, stats), model (init_checkpoint | backbone | "
        "preset, backbone_mode full/frozen/lora), train (TrainConfig) and eval. Writes checkpoints/, "
        "metrics.jsonl, normalization/, final/ (the policy checkpoint) and posttrain_summary.json under "
        "train.output_dir.",
    )
    add_training_run_args(p, "train.lr=3e-4 or model.backbone_mode=frozen")
