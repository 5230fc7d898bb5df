"""VLA pretraining throughput on the CPU: tokens per second of the shared trainer on HandWorld samples.

Builds a small HandWorld store, a tiny motion tokenizer (normaliser and k-means codebooks fitted to the
store's motion: the speed does not depend on its quality), the instruction dataset of ``handvla.vla.data``
and a VLA preset (default ``tiny``), then runs ``Trainer`` for ``--steps`` optimiser steps per batching
mode and prints JSON: per mode the tokens/s (every non-padding token through forward + backward), answer
tokens/s (the ones scored), samples/s and the mean step time, skipping ``--warmup`` steps.

    python benchmarks/vla_train.py --steps 20 --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch


def calibrated_tokenizer(store_dir: Path):
    """The library's untrained, calibrated tiny tokenizer on the store's hand tracks (speed does not depend on
    its quality)."""
    from handvla.data.store import EpisodeStore
    from handvla.tokenizer.configuration import PRESETS, TokenizerConfig
    from handvla.tokenizer.modeling import calibrated_tokenizer as calibrate

    store = EpisodeStore(store_dir)
    motions = [m for k in range(len(store)) for m in store.load_episode(k, with_video=False).hands.values()]
    return calibrate(motions, TokenizerConfig(**PRESETS["tiny"]))


def run_mode(args, store: Path, mt, work: Path, pack: bool) -> dict:
    from handvla.train.trainer import TrainConfig, Trainer
    from handvla.vla import build_vla
    from handvla.vla.data import VLADataConfig, VLAInstructionDataset, collect_samples, sample_texts
    from handvla.vla.pretrain import vla_loss
    from handvla.vla.text_tokenizer import DEFAULT_CORPUS, build_text_tokenizer

    cfg = VLADataConfig(stores=[str(store)], seconds=[1, 2], max_length=args.max_length, pack=pack)
    specs, dirs, _ = collect_samples(cfg, "all")
    tok = build_text_tokenizer(list(DEFAULT_CORPUS) + sample_texts(specs), vocab_size=1024)
    bundle = build_vla(args.preset, tokenizer=tok, motion_tokenizer=mt, seed=0)
    bundle.model.config.motion_logit_mask_prob = 0.5
    ds = VLAInstructionDataset(specs, dirs, bundle.processor, mt, max_length=args.max_length, pack=pack)
    counts: list[tuple[int, int, int]] = []  # per batch: (non-pad tokens, answer tokens, samples)

    def collate(items):
        batch = ds.collate(items)
        if "attention_mask" in batch:
            n = int(batch["attention_mask"].sum())
        else:  # packed rows: every token up to the padding run is a real one
            n = sum(len(s.input_ids) for pack_ in items for s in pack_)
        samples = sum(len(p) for p in items) if pack else len(items)
        counts.append((n, int((batch["labels"] != -100).sum()), samples))
        return batch

    tc = TrainConfig(
        output_dir=str(work / ("packed" if pack else "padded")),
        max_steps=args.steps + args.warmup,
        batch_size=args.batch_size,
        lr=1e-3,
        warmup_steps=2,
        log_every=1,
        save_every=10**9,
        tensorboard=False,
        progress=False,
        precision=args.precision,
        device="cpu",
    )
    trainer = Trainer(bundle.model, ds, tc, collate_fn=collate, loss_fn=lambda m, b: vla_loss(m, b))
    trainer.train()
    recs = [json.loads(line) for line in (Path(tc.output_dir) / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_time_s"] for r in recs if "step_time_s" in r][args.warmup :]
    used = counts[args.warmup : args.warmup + len(times)]
    secs = sum(times)
    tokens, answer, samples = (sum(c[i] for c in used) for i in range(3))
    return {
        "rows_per_step": args.batch_size,
        "dataset_items": len(ds),
        "mean_sample_length": round(float(ds.lengths.mean()), 1),
        "steps_timed": len(times),
        "tokens_per_s": round(tokens / secs, 1),
        "answer_tokens_per_s": round(answer / secs, 1),
        "samples_per_s": round(samples / secs, 2),
        "step_time_s": round(secs / max(1, len(times)), 4),
        "final_loss": round([r for r in recs if "loss" in r][-1]["loss"], 4),  # the last record is the run's summary
        "parameters": sum(p.numel() for p in bundle.model.parameters()),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=3.0, help="HandWorld episode length")
    ap.add_argument("--steps", type=int, default=20, help="timed optimiser steps per mode")
    ap.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    ap.add_argument("--batch-size", type=int, default=4, help="rows per step (samples, or packs of samples)")
    ap.add_argument("--max-length", type=int, default=1024, help="pack length (and sample length cap)")
    ap.add_argument("--modes", default="padded,packed")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from handvla.synth.handworld.episodes import HandWorldConfig, generate_episodes

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    out = {
        "benchmark": "vla_train",
        "preset": args.preset,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "precision": args.precision,
        "modes": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        generate_episodes(args.episodes, work / "hw", seed=0, progress=False,
                          config=HandWorldConfig(width=96, height=72, seconds=args.seconds, shadows=False))  # fmt: skip
        mt = calibrated_tokenizer(work / "hw")
        out["setup_s"] = round(time.perf_counter() - t0, 2)
        for mode in modes:
            if mode not in ("padded", "packed"):
                ap.error(f"--modes: expected padded and/or packed, got {mode!r}")
            out["modes"][mode] = run_mode(args, work / "hw", mt, work, mode == "packed")
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
