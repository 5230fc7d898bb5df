"""``handvla pretrain``: physical-instruction pretraining of the motion VLA; ``handvla vla-eval``: a VLA
checkpoint measured on HandWorld ground truth (``handvla.vla.pretrain``, ``handvla.vla.evaluate``).

Examples::

    handvla pretrain --config configs/pretrain_tiny.yaml --set train.max_steps=2000 --set data.align=false
    handvla pretrain --config configs/pretrain_tiny.yaml --resume          # continue the same run
    torchrun --nproc-per-node 8 -m handvla pretrain --config run.yaml     # DDP / FSDP2 (train.distributed)
    handvla vla-eval --ckpt runs/tiny/final --store seen=data/hw_val --store unseen=data/hw_phone
"""

from __future__ import annotations

import argparse
from pathlib import Path

from handvla.commands._util import add_training_run_args, print_json
from handvla.errors import ConfigError


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


def _parse_stores(items: list[str]) -> dict[str, str]:
    out = {}
    for i, item in enumerate(items):
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).name or f"store{i}", item
        if not path:
            raise ConfigError(f"--store {item!r}: expected NAME=DIR or DIR")
        if name in out:
            raise ConfigError(f"--store {item!r}: the name {name!r} is given twice")
        out[name] = path
    return out


def run_vla_eval(args: argparse.Namespace) -> int:
    import torch

    from handvla.vla.evaluate import evaluate_handworld
    from handvla.vla.modeling import load_vla

    if args.threads:
        torch.set_num_threads(int(args.threads))
    stores = _parse_stores(args.store)
    if args.episodes is not None and args.episodes < 1:
        raise ConfigError(f"--episodes: expected a whole number >= 1, got {args.episodes}")
    bundle = load_vla(args.ckpt)
    if bundle.motion_tokenizer is None:
        from handvla.errors import CheckpointError

        raise CheckpointError(f"{args.ckpt}: no motion_tokenizer/ (needed to decode generated motion)")
    align = None if args.align == "auto" else args.align == "on"
    results = {}
    for name, path in stores.items():
        res = evaluate_handworld(
            bundle,
            path,
            max_episodes=args.episodes,
            max_seconds=args.max_seconds,
            align=align,
            constrained=not args.no_constraint,
            do_sample=args.sample,
            seed=args.seed,
            batch_size=args.batch_size,
            progress=not args.quiet,
        )
        results[name] = res
    if args.out:
        from handvla.atomic import atomic_write_json

        atomic_write_json(Path(args.out), results, default=float)
    print_json({"ckpt": args.ckpt, **{name: r["summary"] for name, r in results.items()}})
    return 0


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

    e = subparsers.add_parser(
        "vla-eval",
        help="measure a VLA checkpoint on HandWorld ground truth (target accuracy, MPJPE, MWTE, tokens/s)",
        description="Generate motion for each HandWorld episode's instruction and first frame and score it "
        "against the episode's ground truth (handvla.vla.evaluate).",
    )
    e.add_argument(
        "--ckpt", required=True, help="VLA checkpoint folder (save_vla layout, with motion_tokenizer/)"
    )
    e.add_argument(
        "--store", action="append", required=True, metavar="NAME=DIR", help="HandWorld store (repeatable)"
    )
    e.add_argument("--episodes", type=int, default=None, help="first N episodes per store (default all)")
    e.add_argument("--max-seconds", type=int, default=None, help="cap on generated seconds per episode")
    e.add_argument(
        "--align",
        choices=["auto", "on", "off"],
        default="auto",
        help="canonical-camera warp (auto: as trained)",
    )
    e.add_argument("--no-constraint", action="store_true", help="decode without the block constraint")
    e.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--batch-size", type=int, default=4)
    e.add_argument("--threads", type=int, default=None)
    e.add_argument("--out", default=None, help="write per-episode results to this JSON file")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=run_vla_eval)
