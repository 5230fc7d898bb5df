"""Joint-to-hand-parameter fitting on every real recording: fit error and speed.

Fits each ``*.npz`` of the real-hands folder (Leap Motion and MediaPipe, see its README) with the default
``FitConfig`` and the built-in hand, and prints JSON: per file the fit error (mean and 95th percentile of
the per-frame mean joint error over observed frames, in mm), frames, wall-clock and CPU frames per second,
the strict joint-limit violation, then the means over files.

Speed is measured after one warm-up fit (the first call pays one-off costs). ``cpu_frames_per_s`` counts
this process's CPU time, which is what the machine spends whatever else runs on it; ``frames_per_s`` is
wall-clock and drops when other jobs share the cores. The fitter uses one thread (FitConfig.num_threads).

    python benchmarks/fitting.py [--data /work/shared/data/real_hands] [--iters N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from handvla.hand.fitting import FitConfig, fit_recording
from handvla.hand.io import load_joints


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/real_hands"))
    ap.add_argument("--iters", type=int, default=None, help="override FitConfig.iters")
    args = ap.parse_args(argv)
    files = sorted(args.data.glob("*.npz"))
    if not files:
        print(f"no .npz files in {args.data}", file=sys.stderr)
        return 2
    config = FitConfig() if args.iters is None else FitConfig(iters=args.iters)
    fit_recording(load_joints(files[0]), config=config)  # warm-up

    rows = []
    for f in files:
        rec = load_joints(f)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        r = fit_recording(rec, config=config)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        rows.append(
            {
                "file": f.name,
                "joint_scheme": rec.joint_scheme,
                "side": rec.side,
                "frames": len(rec),
                "fit_mpjpe_mm": round(r.fit_mpjpe_mm, 3),
                "fit_mpjpe_p95_mm": round(float(np.nanpercentile(r.per_frame_mpjpe_mm, 95)), 3),
                "limit_violation_deg": round(r.limit_violation_deg, 2),
                "frames_per_s": round(len(rec) / wall, 1),
                "cpu_frames_per_s": round(len(rec) / cpu, 1),
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    frames = sum(r["frames"] for r in rows)
    out = {
        "benchmark": "fitting",
        "hand_model": "builtin",
        "config": {"iters": config.iters, "global_iters": config.global_iters, "acc_hz": config.acc_hz},
        "cpu_count": os.cpu_count(),
        "files": rows,
        "mean_fit_mpjpe_mm": round(float(np.mean([r["fit_mpjpe_mm"] for r in rows])), 3),
        "mean_fit_mpjpe_mm_leap": round(
            float(np.mean([r["fit_mpjpe_mm"] for r in rows if r["joint_scheme"] == "leap21"])), 3
        ),
        "total_frames": frames,
        # frames over total time: long and short files weigh by their length
        "frames_per_s": round(frames / sum(r["frames"] / r["frames_per_s"] for r in rows), 1),
        "cpu_frames_per_s": round(frames / sum(r["frames"] / r["cpu_frames_per_s"] for r in rows), 1),
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
