"""HandWorld throughput, storage and geometric consistency on this machine.

Generates episodes with ``make_episode`` (the code path of ``handvla data handworld``), writes them with
the store's ``EpisodeWriter``, reads them back and prints one JSON document:
- episodes/s and frames/s (wall clock and CPU time of this process; the CPU numbers are steadier on a
  shared machine), split into generation (motion + rendering) and writing (parquet + mp4 encode);
- size on disk per hour of data (the whole store: video, parquet, metadata);
- reprojection error: the stored 3D joints, and the hand model run again on the stored parameters, projected
  with the stored intrinsics, against the renderer's own 2D joint centres (pixels; mean and max);
- the share of joints the renderer drew visibly (in the image and not hidden by objects).

Usage: python benchmarks/handworld.py [--episodes 9] [--size 256x192] [--seconds 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=9)
    ap.add_argument("--size", default="256x192")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from handvla.data.store import EpisodeStore, EpisodeWriter
    from handvla.hand.registry import motion_joints
    from handvla.synth.handworld.cameras import parse_size
    from handvla.synth.handworld.episodes import HandWorldConfig, make_episode

    w, h = parse_size(args.size)
    cfg = HandWorldConfig(width=w, height=h, seconds=args.seconds)
    make_episode(10**6, args.seed, HandWorldConfig(width=32, height=24, seconds=2.0))  # warm caches, imports

    gen_wall = gen_cpu = write_wall = write_cpu = 0.0
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "store"
        with EpisodeWriter(root, fps=cfg.fps, hand_model="builtin", joints=True) as writer:
            for i in range(args.episodes):
                t0, c0 = time.perf_counter(), time.process_time()
                res = make_episode(i, args.seed, cfg)
                t1, c1 = time.perf_counter(), time.process_time()
                writer.add_episode(res.episode)
                t2, c2 = time.perf_counter(), time.process_time()
                gen_wall += t1 - t0
                gen_cpu += c1 - c0
                write_wall += t2 - t1
                write_cpu += c2 - c1
                res.episode.video = None  # keep memory small; the store has it
                results.append(res)
        size = _du(root)
        store = EpisodeStore(root)
        frames = store.total_frames
        err_joints, err_params, visible, tasks, rigs = [], [], [], {}, {}
        for k, res in enumerate(results):
            ep = store.load_episode(k, with_video=False)
            for side, uv in res.joints_2d.items():
                e1 = np.linalg.norm(ep.camera.project(ep.joints[side]) - uv, axis=-1)
                e2 = np.linalg.norm(ep.camera.project(motion_joints(ep.hands[side])) - uv, axis=-1)
                err_joints.append(e1[np.isfinite(e1)])
                err_params.append(e2[np.isfinite(e2)])
                visible.append(res.joints_visible[side].mean())
            gt = ep.ground_truth
            tasks[gt["task"]] = tasks.get(gt["task"], 0) + 1
            rigs[ep.rig] = rigs.get(ep.rig, 0) + 1
    ej, ep_ = np.concatenate(err_joints), np.concatenate(err_params)
    hours = frames / cfg.fps / 3600
    n = args.episodes
    out = {
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_1min": round(os.getloadavg()[0], 2),
            "python": sys.version.split()[0],
        },
        "config": {
            "episodes": n,
            "size": f"{w}x{h}",
            "seconds": cfg.seconds,
            "fps": cfg.fps,
            "rigs": list(cfg.rigs),
        },
        "episodes_per_s_wall": round(n / (gen_wall + write_wall), 3),
        "frames_per_s_wall": round(frames / (gen_wall + write_wall), 1),
        "episodes_per_s_cpu": round(n / (gen_cpu + write_cpu), 3),
        "frames_per_s_cpu": round(frames / (gen_cpu + write_cpu), 1),
        "generate_ms_per_frame_cpu": round(1000 * gen_cpu / frames, 2),
        "write_ms_per_frame_cpu": round(1000 * write_cpu / frames, 2),
        "disk_bytes": size,
        "disk_mb_per_hour": round(size / 1e6 / hours, 1),
        "reprojection_px_stored_joints": {"mean": float(ej.mean()), "max": float(ej.max())},
        "reprojection_px_from_params": {"mean": float(ep_.mean()), "max": float(ep_.max())},
        "joints_visible_fraction": round(float(np.mean(visible)), 3),
        "tasks": tasks,
        "rigs": rigs,
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
