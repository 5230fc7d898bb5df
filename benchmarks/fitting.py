"""Joint-to-hand-parameter fitting on every real recording: the fast path against the L-BFGS path.

Fits each ``*.npz`` of the real-hands folder (Leap Motion and MediaPipe, see its README) with the built-in
hand twice in the same run, ``FitConfig(method='fast')`` (the default: analytic initialisation, batched
Gauss-Newton, low-pass) and ``FitConfig(method='lbfgs')`` (the joint L-BFGS optimisation), and prints JSON:
per source (the joint scheme: ``leap21``, ``mediapipe21``) and overall, for each method, the fit error
(mean and 95th percentile over the observed frames of the per-frame mean joint error, mm, pooled over the
source's files), frames per second (wall clock and this process's CPU time) and the worst frames; then
the speed ratio fast / lbfgs. Per-file rows go to stderr as they finish.

Beside them, ``skeleton_floor_mm``: the error of the best hand of CONSTANT bone lengths and palm shape that
any per-frame pose can reach (a free rigid palm of the six palm points, then free bone directions of free
but constant lengths, fitted by Adam; no limits, no smoothing, no shape space). Every hand model with a
rigid palm and fixed bones, the fitted one included, is bound by it: the part of a source's error that is
its own bone-length and palm jitter (``--floor-iters 0`` skips it). Between the two,
``fast_without_priors``: the fast method without anatomical limits and temporal smoothing, iterated to
convergence (20 Gauss-Newton iterations; ``--no-priors-diagnostic`` skips it): the default's excess over
it is what the limits and the smoothing cost against the raw observations (not the truth, which nobody
here has), and its excess over the floor is the hand model's own (its palm, its shape space).

Speed is measured after one warm-up fit per method (the first call pays one-off costs). ``cpu_frames_per_s``
counts this process's CPU time, which is what the fit costs whatever else runs on the machine;
``frames_per_s`` is wall clock and drops when other jobs share the cores. Both methods run on the same
files in the same process, alternating per file, so their ratio is fair under a changing load. The load
average at the start and end is printed with the result.

    python benchmarks/fitting.py [--data /work/shared/data/real_hands] [--threads 1] [--methods fast,lbfgs]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from handvla.hand.fitting import PALM_POINTS, FitConfig, fit_recording
from handvla.hand.io import load_joints
from handvla.hand.topology import OPENPOSE_PARENTS


def _aggregate(rows: list[dict], errors: list[np.ndarray]) -> dict:
    e = np.concatenate(errors) if errors else np.zeros(0)
    e = e[np.isfinite(e)]
    frames = sum(r["frames"] for r in rows)
    wall = sum(r["seconds"] for r in rows)
    cpu = sum(r["cpu_seconds"] for r in rows)
    return {
        "files": len(rows),
        "frames": frames,
        "fit_mpjpe_mm": round(float(e.mean()), 3),
        "fit_mpjpe_p95_mm": round(float(np.percentile(e, 95)), 3),
        "mean_of_file_means_mm": round(float(np.mean([r["fit_mpjpe_mm"] for r in rows])), 3),
        "frames_per_s": round(frames / wall, 1),
        "cpu_frames_per_s": round(frames / cpu, 1),
    }


def skeleton_floor(x: np.ndarray, iters: int = 1500) -> np.ndarray:
    """Per-frame mean error (mm) of the best constant-bone-length hand on ``x`` (N, 21, 3) metres (see the
    module doc): per frame a palm rotation and position and 15 bone directions; per sequence the palm
    shape and 15 bone lengths."""
    X = torch.tensor(x, dtype=torch.float64)
    N = X.shape[0]
    palm_pts, parents = list(PALM_POINTS), OPENPOSE_PARENTS.tolist()
    kids = [i for i in range(21) if i not in palm_pts]
    # start: the first frame's palm as the template, each frame's palm rotation from Kabsch onto it
    P = X[:, palm_pts] - X[:, palm_pts].mean(1, keepdim=True)
    U, _, Vt = torch.linalg.svd(P[:1].transpose(-1, -2) @ P)  # H = A^T B per frame, A = frame 0
    D = torch.diag_embed(torch.ones(N, 3, dtype=X.dtype))
    D[:, 2, 2] = torch.sign(torch.linalg.det(Vt.transpose(-1, -2) @ U.transpose(-1, -2)))
    R0 = Vt.transpose(-1, -2) @ D @ U.transpose(-1, -2)  # frame 0 -> frame t
    rot = torch.tensor(Rotation.from_matrix(R0.numpy()).as_rotvec(), requires_grad=True)
    palm = (X[0, palm_pts] - X[0, 0]).clone().requires_grad_(True)
    pos = X[:, 0].clone().requires_grad_(True)
    bones = torch.stack([X[:, i] - X[:, parents[i]] for i in kids], 1)
    log_len = bones.norm(dim=-1).median(0).values.log().clone().requires_grad_(True)
    dirs = bones.clone().requires_grad_(True)
    from handvla.hand.rotations import axis_angle_to_matrix

    def points() -> torch.Tensor:
        P: list = [None] * 21
        pp = pos[:, None] + palm @ axis_angle_to_matrix(rot).transpose(-1, -2)
        for k, i in enumerate(palm_pts):
            P[i] = pp[:, k]
        d = dirs / dirs.norm(dim=-1, keepdim=True)
        for k, i in enumerate(kids):  # parents come first in OpenPose order
            P[i] = P[parents[i]] + log_len[k].exp() * d[:, k]
        return torch.stack(P, 1)

    opt = torch.optim.Adam([rot, pos, palm, log_len, dirs], lr=1e-3)
    for _ in range(iters):
        loss = (points() - X).norm(dim=-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return ((points() - X).norm(dim=-1).mean(-1) * 1000).numpy()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/real_hands"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads per fit (FitConfig.num_threads)")
    ap.add_argument("--methods", default="fast,lbfgs", help="comma-separated FitConfig.method values")
    ap.add_argument("--device", default="cpu", help="torch device of the fast method")
    ap.add_argument(
        "--floor-iters", type=int, default=1500, help="Adam steps of the skeleton floor (0: skip)"
    )
    ap.add_argument(
        "--no-priors-diagnostic",
        action="store_true",
        help="skip fast_without_priors (no limits, no smoothing, converged)",
    )
    args = ap.parse_args(argv)
    files = sorted(args.data.glob("*.npz"))
    if not files:
        print(f"no .npz files in {args.data}", file=sys.stderr)
        return 2
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    configs = {m: FitConfig(method=m, num_threads=args.threads, device=args.device) for m in methods}
    if not args.no_priors_diagnostic:
        configs["fast_without_priors"] = FitConfig(
            method="fast",
            num_threads=args.threads,
            device=args.device,
            w_limits=0.0,
            acc_hz=0.0,
            vel_hz=0.0,
            gn_iters=20,
        )
        methods.append("fast_without_priors")
    load0 = os.getloadavg()
    recs = [load_joints(f) for f in files]
    for cfg in configs.values():
        fit_recording(recs[0], config=cfg)  # warm-up

    rows: dict[str, list[dict]] = {m: [] for m in methods}
    errs: dict[str, dict[str, list[np.ndarray]]] = {m: {} for m in methods}
    floors: dict[str, list[np.ndarray]] = {}
    for f, rec in zip(files, recs):
        if args.floor_iters:
            obs = np.isfinite(rec.joints).all(axis=(1, 2))
            floors.setdefault(rec.joint_scheme, []).append(skeleton_floor(rec.joints[obs], args.floor_iters))
        for m, cfg in configs.items():
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            r = fit_recording(rec, config=cfg)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            row = {
                "method": m,
                "file": f.name,
                "source": rec.joint_scheme,
                "side": rec.side,
                "frames": len(rec),
                "fit_mpjpe_mm": round(r.fit_mpjpe_mm, 3),
                "fit_mpjpe_p95_mm": round(float(np.nanpercentile(r.per_frame_mpjpe_mm, 95)), 3),
                "worst_frames": r.worst_frames(3),
                "beyond_limits_deg": r.beyond_limits_deg,
                "seconds": wall,
                "cpu_seconds": cpu,
                "frames_per_s": round(len(rec) / wall, 1),
                "cpu_frames_per_s": round(len(rec) / cpu, 1),
            }
            rows[m].append(row)
            errs[m].setdefault(rec.joint_scheme, []).append(r.per_frame_mpjpe_mm)
            print(
                json.dumps({k: v for k, v in row.items() if k != "beyond_limits_deg"}),
                file=sys.stderr,
                flush=True,
            )

    sources = sorted({r["source"] for r in rows[methods[0]]})
    result: dict = {
        "benchmark": "fitting",
        "hand_model": "builtin",
        "threads": args.threads,
        "device": args.device,
        "cpu_count": os.cpu_count(),
        "load_average_start": [round(v, 2) for v in load0],
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
        "per_source": {},
        "all": {},
    }
    for src in sources + ["all"]:
        block = {}
        for m in methods:
            rs = [r for r in rows[m] if src == "all" or r["source"] == src]
            es = [e for s, lst in errs[m].items() if src == "all" or s == src for e in lst]
            block[m] = _aggregate(rs, es)
        if floors:
            fl = np.concatenate([e for s, lst in floors.items() if src == "all" or s == src for e in lst])
            block["skeleton_floor_mm"] = round(float(fl.mean()), 3)
        if "fast" in block and "lbfgs" in block:
            block["speed_ratio_fast_over_lbfgs"] = {
                "wall": round(block["fast"]["frames_per_s"] / block["lbfgs"]["frames_per_s"], 2),
                "cpu": round(block["fast"]["cpu_frames_per_s"] / block["lbfgs"]["cpu_frames_per_s"], 2),
            }
        (result["all"] if src == "all" else result["per_source"].setdefault(src, {})).update(block)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
