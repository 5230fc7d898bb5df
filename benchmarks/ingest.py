"""UniHand ingestion numbers on real data: fitting, swap repair, gap interpolation, outliers, alignment.

    python benchmarks/ingest.py [--real-hands DIR] [--quick] [--workers 2]

Prints one JSON document:
- ``fit``: every real recording of ``real_hands`` (joints21 adapter) standardised to 15 fps: fit error (mm,
  mean over observed frames and the 21 points), fitted frames per second (wall clock, this machine);
- ``swap_repair``: the real two-hand clips, fitted, with injected label swaps (runs of 1-4 frames where the
  two hands' labels are exchanged, 15 % of frames, and single frames where only the right hand is seen and
  labelled left): fraction of swapped frames put back, false moves, and the joint error (mm) of those frames
  with ``swap_refill='keep'``, with ``'interpolate'`` (what a real pseudo-label needs) and without repair;
- ``gaps``: gaps of 1-5 frames at 15 fps cut out of real sequences and interpolated: (a) in parameter space
  (slerp / linear) against the removed fitted frames, (b) in the raw tracker joints before fitting, against
  the removed real measurements (Leap: the 20 finger points; point 0 is the palm centre);
- ``outliers``: recall on injected one-frame spikes (8 cm wrist jumps, ~70 deg wrist turns, random finger
  poses) and false rejections on the clean real sequences;
- ``alignment``: reprojection error (pixels) of 3D points onto aligned frames for cameras with different
  intrinsics (HandWorld rigs ego / third / phone, FPHA, DexYCB, ARCTIC ego, HaMeR's assumed camera): a
  spot is drawn where each point projects in the source image, the frame is warped, and the spot's
  centroid is compared with the projection through the aligned camera; ``before`` = the same with the
  frame only resized to the output size (no alignment).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from handvla.camera import Camera  # noqa: E402
from handvla.data.schema import Episode  # noqa: E402
from handvla.hand import rotations as R  # noqa: E402
from handvla.hand.fitting import fit_joints  # noqa: E402
from handvla.hand.model import BuiltinHand  # noqa: E402
from handvla.hand.motion import interp_points  # noqa: E402
from handvla.hand.registry import motion_joints  # noqa: E402
from handvla.ingest.align import AlignConfig, align_episode  # noqa: E402
from handvla.ingest.sources import get_source  # noqa: E402
from handvla.ingest.standardize import (  # noqa: E402
    ParamTrack,
    StandardizeConfig,
    fill_gaps,
    outlier_frames,
    repair_swaps,
    standardize_episode,
)

PAIRS = ("leap_three-claps", "leap_flapping", "leap_confidence2")


def _stats(x) -> dict:
    x = np.asarray(x, np.float64)
    if x.size == 0:
        return {"n": 0}
    return {
        "n": int(x.size),
        "mean": round(float(x.mean()), 3),
        "p95": round(float(np.percentile(x, 95)), 3),
        "max": round(float(x.max()), 3),
    }


def bench_fit(root: Path, cfg: StandardizeConfig, quick: bool) -> tuple[dict, dict]:
    src = get_source("joints21")
    keys = src.list_episodes(root)
    if quick:
        keys = keys[:4]
    out, fitted = {}, {}
    frames = seconds = 0.0
    for key in keys:
        ep = src.read_episode(root, key)
        t0 = time.perf_counter()
        res = standardize_episode(ep, cfg, kind="vr", params="joints", has_video=False)
        dt = time.perf_counter() - t0
        n = res.times_s.size * len(res.episode.hands)
        frames += n
        seconds += dt
        out[key] = {
            side: {
                "fit_error_mm": h["fit_error_mm"],
                "fit_error_p95_mm": h["fit_error_p95_mm"],
                "frames": h["frames_fitted"],
            }
            for side, h in res.report["hands"].items()
        }
        out[key]["source_fps"] = round(ep.fps, 1)
        out[key]["seconds"] = round(dt, 3)
        fitted[key] = (ep, res)
    errs = [h["fit_error_mm"] for v in out.values() for k, h in v.items() if isinstance(h, dict)]
    return {
        "recordings": len(out),
        "hands": len(errs),
        "fit_error_mm": _stats(errs),
        "frames_per_s": round(frames / seconds, 2),
        "per_recording": out,
    }, fitted


def _tracks(res) -> dict[str, ParamTrack]:
    return {s: ParamTrack.from_motion(m, res.times_s) for s, m in res.episode.hands.items()}


def bench_swaps(fitted: dict, cfg: StandardizeConfig, seeds: int) -> dict:
    per, moved_ok, moved_all, false_moves, frames = {}, 0, 0, 0, 0
    err_keep, err_interp, err_none = [], [], []
    for key in PAIRS:
        if key not in fitted:
            continue
        _, res = fitted[key]
        tr = _tracks(res)
        L, R = tr["left"], tr["right"]
        T = len(L)
        models = {"left": BuiltinHand("left"), "right": BuiltinHand("right")}
        truth = {s: motion_joints(t.to_motion(15.0), models[s]) for s, t in tr.items()}
        rec_ok = rec_all = fm = 0
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            ex = np.zeros(T, bool)
            while ex.mean() < 0.15:
                a = int(rng.integers(2, T - 6))
                ex[a : a + int(rng.integers(1, 5))] = True
            one = np.zeros(T, bool)
            one[rng.choice(np.flatnonzero(~ex[2:-2]) + 2, max(2, T // 25), replace=False)] = True
            Li, Ri = L.copy(), R.copy()
            for name in ("go", "pose", "wrist"):
                getattr(Li, name)[ex], getattr(Ri, name)[ex] = getattr(R, name)[ex], getattr(L, name)[ex]
                getattr(Li, name)[one] = getattr(R, name)[one]
            Li.valid[one], Ri.valid[one] = True, False
            sw = repair_swaps(Li, Ri, cfg.model_copy(update={"swap_refill": "keep"}))
            ol, orr = sw.tracks["left"], sw.tracks["right"]
            back = (np.abs(ol.wrist - L.wrist).max(1) < 1e-9) & (np.abs(orr.wrist - R.wrist).max(1) < 1e-9)
            back_one = (np.abs(orr.wrist - R.wrist).max(1) < 1e-9) & ~ol.valid
            rec_ok += int(back[ex].sum() + back_one[one].sum())
            rec_all += int(ex.sum() + one.sum())
            fm += int((~back[~(ex | one)]).sum())
            # joint error on the swapped frames: repaired and kept / repaired and re-interpolated / not repaired
            for mode, sink in (("keep", err_keep), ("interpolate", err_interp)):
                tracks = {"left": ol.copy(), "right": orr.copy()}
                if mode == "interpolate":
                    for s in tracks:
                        tracks[s].valid &= ~sw.moved[s]
                        tracks[s] = fill_gaps(tracks[s], cfg.max_gap_frames)[0]
                for s, frames_sel in (("left", ex), ("right", ex | one)):
                    j = motion_joints(tracks[s].to_motion(15.0), models[s])
                    ok = tracks[s].valid & frames_sel
                    sink.extend((1000 * np.linalg.norm(j - truth[s], axis=-1).mean(-1))[ok].tolist())
            jl = motion_joints(Li.to_motion(15.0), models["left"])
            err_none.extend((1000 * np.linalg.norm(jl - truth["left"], axis=-1).mean(-1))[ex].tolist())
        per[key] = {"frames": T, "swapped_frames": rec_all, "repaired": rec_ok, "false_moves": fm}
        moved_ok += rec_ok
        moved_all += rec_all
        false_moves += fm
        frames += T * seeds
    return {
        "clips": per,
        "fraction_repaired": round(moved_ok / max(moved_all, 1), 4),
        "false_moves_per_frame": round(false_moves / max(frames, 1), 5),
        "joint_error_mm_repaired_keep": _stats(err_keep),
        "joint_error_mm_repaired_interpolate": _stats(err_interp),
        "joint_error_mm_without_repair": _stats(err_none),
    }


def _gap_mask(T: int, rng: np.random.Generator, lo: int = 1, hi: int = 5) -> np.ndarray:
    gap = np.zeros(T, bool)
    pos = 3
    while pos < T - hi - 3:
        n = int(rng.integers(lo, hi + 1))
        gap[pos : pos + n] = True
        pos += n + int(rng.integers(4, 10))
    return gap


def bench_gaps(fitted: dict, cfg: StandardizeConfig) -> dict:
    param_err, joint_err, by_len = [], [], {}
    for key, (ep, res) in fitted.items():
        for side, tr in _tracks(res).items():
            model = BuiltinHand(side)
            truth = motion_joints(tr.to_motion(15.0), model)
            gap = _gap_mask(len(tr), np.random.default_rng(len(key)))
            holed = tr.copy()
            holed.valid[gap] = False
            filled, _ = fill_gaps(holed, cfg.max_gap_frames)
            e = 1000 * np.linalg.norm(motion_joints(filled.to_motion(15.0), model) - truth, axis=-1).mean(-1)
            param_err.extend(e[gap].tolist())
            for a, b in _runs(gap):
                by_len.setdefault(b - a, []).extend(e[a:b].tolist())
            # joint level: remove tracker frames before the fit, compare with the removed measurements
            obs = interp_points(ep.joints[side], np.arange(ep.num_frames) / ep.fps, res.times_s)
            jgap = _gap_mask(len(obs), np.random.default_rng(len(key) + 1))
            holed_j = obs.copy()
            holed_j[jgap] = np.nan
            palm = ep.joint_order.startswith("leap")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = fit_joints(
                    holed_j.astype(np.float32),
                    side=side,
                    fps=15.0,
                    t=res.times_s,
                    root_is_palm=palm,
                    config=cfg.fit_config(),
                )
            pts = slice(1, 21) if palm else slice(0, 21)
            je = 1000 * np.linalg.norm(fit.joints[:, pts] - obs[:, pts], axis=-1).mean(-1)
            joint_err.extend(je[jgap].tolist())
    return {
        "max_gap_frames": cfg.max_gap_frames,
        "param_space_error_mm": _stats(param_err),
        "param_space_error_mm_by_gap_length": {int(k): _stats(v)["mean"] for k, v in sorted(by_len.items())},
        "joint_space_error_mm_vs_real_measurements": _stats(joint_err),
    }


def _runs(mask):
    m = np.concatenate([[False], mask, [False]]).astype(np.int8)
    d = np.diff(m)
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


def bench_outliers(fitted: dict, cfg: StandardizeConfig) -> dict:
    clean_frames = clean_flags = hit = injected = extra = 0
    for key, (_, res) in fitted.items():
        for side, tr in _tracks(res).items():
            flags = outlier_frames(tr, cfg)
            clean_flags += int(flags.sum())
            clean_frames += len(tr)
            rng = np.random.default_rng(len(key) + (side == "left"))
            if len(tr) < 12:
                continue
            spikes = rng.choice(np.arange(4, len(tr) - 4), max(2, len(tr) // 15), replace=False)
            bad = tr.copy()
            for n, s in enumerate(spikes):
                d = rng.normal(size=3)
                d /= np.linalg.norm(d)
                if n % 3 == 0:
                    bad.wrist[s] += 0.08 * d
                elif n % 3 == 1:
                    bad.go[s] = R.axis_angle_to_quaternion(R.quaternion_to_axis_angle(bad.go[s]) + 1.2 * d)
                else:
                    bad.pose[s] = R.axis_angle_to_quaternion(rng.normal(0, 0.8, (15, 3)))
            f = outlier_frames(bad, cfg)
            hit += int(f[spikes].sum())
            injected += len(spikes)
            extra += int(f.sum() - f[spikes].sum())
    return {
        "injected": injected,
        "recall": round(hit / max(injected, 1), 4),
        "false_rejections_with_spikes": extra,
        "false_rejection_rate_clean": round(clean_flags / max(clean_frames, 1), 5),
        "clean_frames": clean_frames,
    }


def _blob(width, height, uv, sigma):
    y, x = np.mgrid[0:height, 0:width] + 0.5
    g = np.exp(-((x - uv[0]) ** 2 + (y - uv[1]) ** 2) / (2 * sigma**2))
    return np.repeat((255 * g).round().astype(np.uint8)[..., None], 3, -1)


def _centre(img, near, radius):
    g = img[..., 0].astype(np.float64)
    y, x = np.mgrid[0 : g.shape[0], 0 : g.shape[1]] + 0.5
    w = g * (((x - near[0]) ** 2 + (y - near[1]) ** 2) < radius**2)
    return np.array([(w * x).sum() / w.sum(), (w * y).sum() / w.sum()]) if w.sum() > 0 else near + np.inf


def bench_alignment(n_points: int) -> dict:
    from PIL import Image

    from handvla.synth.handworld.episodes import HandWorldConfig, make_episode

    cfg = AlignConfig(out_size=(320, 180))
    cams: dict[str, tuple[Camera, np.ndarray]] = {}
    for i, rig in enumerate(("ego", "third", "phone")):
        r = make_episode(
            i, 0, HandWorldConfig(width=256, height=192, seconds=2.0, rigs=(rig,), shadows=False)
        )
        pts = np.concatenate([j.reshape(-1, 3) for j in r.episode.joints.values()])
        cams[f"handworld_{rig}"] = (r.episode.camera, pts)
    rng = np.random.default_rng(0)
    generic = rng.normal(0, 1, (400, 3)) * [0.12, 0.08, 0.1] + [0, 0, 0.55]
    cams["fpha_colour"] = (Camera(1395.749023, 1395.749268, 935.732544, 540.681030, 1920, 1080), generic)
    cams["dexycb_640x480"] = (Camera(613.07, 611.99, 313.03, 245.01, 640, 480), generic)
    cams["arctic_ego"] = (Camera(800.0, 800.0, 1400.0, 1000.0, 2800, 2000), generic)
    f = 640 / np.tan(np.radians(65 / 2))  # a phone video, 65 degrees across
    cams["phone_1280x720_hfov65"] = (Camera(f, f, 640, 360, 1280, 720), generic)
    out_cam = cfg.camera()
    res = {}
    for name, (cam, pts) in cams.items():
        after, before = [], []
        sigma = 1.2 * max(1.0, cam.width / cfg.out_size[0])
        for p in pts[rng.permutation(len(pts))]:
            uv_src, uv = cam.project(p), out_cam.project(p)
            if not (
                np.isfinite(uv_src).all() and 6 < uv_src[0] < cam.width - 6 and 6 < uv_src[1] < cam.height - 6
            ):
                continue
            if not (5 < uv[0] < cfg.out_size[0] - 5 and 5 < uv[1] < cfg.out_size[1] - 5):
                continue
            frame = _blob(cam.width, cam.height, uv_src, sigma)
            _, warped = align_episode(Episode(hands={}, camera=cam, fps=15.0, key="k"), [frame], cfg)
            after.append(np.linalg.norm(_centre(warped[0], uv, 6.0) - uv))
            scale = np.array(cfg.out_size) / [cam.width, cam.height]
            resized = np.asarray(Image.fromarray(frame).resize(cfg.out_size, Image.BILINEAR))
            before.append(np.linalg.norm(_centre(resized, uv_src * scale, 6.0) - uv))
            if len(after) >= n_points:
                break
        res[name] = {
            "K": [round(cam.fx, 2), round(cam.fy, 2), round(cam.cx, 2), round(cam.cy, 2)],
            "size": [cam.width, cam.height],
            "after_px": _stats(after),
            "before_px": _stats(before),
        }
    # HaMeR's assumed camera (F = 5000 / 256 * max(W, H)) is a 3 degree telephoto: aligned as it is, a
    # 1280x720 frame shrinks to a few pixels; pseudo-labelled video needs real or EXIF intrinsics
    # (IntrinsicsConfig, mode weak_perspective) before alignment.
    f = 5000 / 256 * 1280
    s = cfg.output_K()[0, 0] / f
    res["hamer_assumed_camera_note"] = {
        "K": [f, f, 640, 360],
        "scale_to_output": round(float(s), 5),
        "aligned_image_px": [round(1280 * s, 1), round(720 * s, 1)],
    }
    return {"out_size": list(cfg.out_size), "fit": cfg.fit, "cameras": res}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real-hands", default=str(ROOT.parent / "shared" / "data" / "real_hands"))
    ap.add_argument("--quick", action="store_true", help="fewer recordings and points")
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = Path(args.real_hands)
    cfg = StandardizeConfig()
    t0 = time.perf_counter()
    fit, fitted = bench_fit(root, cfg, args.quick)
    if args.quick:
        src = get_source("joints21")
        for key in PAIRS[:1]:
            ep = src.read_episode(root, key)
            fitted[key] = (ep, standardize_episode(ep, cfg, kind="vr", params="joints", has_video=False))
    out = {
        "machine": {"torch_threads": torch.get_num_threads()},
        "config": {"fps": cfg.fps, "fit_iters": cfg.fit_iters, "max_gap_frames": cfg.max_gap_frames},
        "fit": fit,
        "swap_repair": bench_swaps(fitted, cfg, seeds=2 if args.quick else 5),
        "gaps": bench_gaps(fitted, cfg),
        "outliers": bench_outliers(fitted, cfg),
        "alignment": bench_alignment(10 if args.quick else 40),
    }
    out["seconds"] = round(time.perf_counter() - t0, 1)
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
