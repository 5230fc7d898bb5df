"""Rule-based annotation accuracy against HandWorld ground truth, template coverage, balanced proportions
and throughput. Prints one JSON document.

    python benchmarks/annotate.py [--dir HANDWORLD_STORE] [--episodes 60] [--size 5000] [--seed 0]

Without --dir, HandWorld episodes are generated into a temporary folder (small renders: the annotator does
not look at images), plus a second, video-free store of built-in procedural motion (source
'builtin_motion') so that balancing has two sources to balance.

Accuracy (each against HandWorld's own ground truth, never against the annotator's inputs):
- grasp state: per frame, the annotator's closed/open grip vs ``ground_truth.grip_closed``; per 1 s window,
  the grip the window's text states (its end) vs the ground truth's majority over the window's last frames;
- direction of motion: for each scripted lift (world up), place (world down), move and push (the task's
  world direction, e.g. 'left'), the main camera-frame axis of that world direction (via the episode's
  extrinsics) vs the first direction word of the annotation event overlapping it most;
- target object: per target of the task (hand, object), the object the annotation names as that hand's
  target (first grasp, else reach/push/point) and whether the clip instruction mentions it;
- extras: pinch vs power grip on pinch/grasp tasks, waves found on wave tasks, clap counts.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _make_builtin_store(root: Path, n: int, seed: int) -> None:
    from handvla.camera import Camera
    from handvla.data.schema import Episode
    from handvla.data.store import EpisodeWriter
    from handvla.synth.builtin_motion import sample_labelled_sequence

    cam = Camera(736.6, 736.6, 960.0, 540.0, 1920, 1080)
    with EpisodeWriter(root, fps=15.0, hand_model="builtin", joints=False, camera=None) as w:
        for i in range(n):
            rng = np.random.default_rng([seed, i])
            hands = ("left", "right") if i % 3 == 0 else (("right",) if i % 2 else ("left",))
            m, _ = sample_labelled_sequence(rng, float(rng.uniform(6, 14)), 15.0, hands)
            w.add_episode(
                Episode(hands=m, camera=cam, fps=15.0, key=f"builtin/{seed}/{i}", source="builtin_motion")
            )


def _main_term(v_cam: np.ndarray) -> str:
    from handvla.language.annotate.kinematics import AXIS_TERMS

    ax = int(np.argmax(np.abs(v_cam)))
    return AXIS_TERMS[(ax, 1 if v_cam[ax] > 0 else -1)]


def accuracy(store_dir: Path, annotations: dict) -> dict:
    """Per-attribute accuracy of the rule annotations of a HandWorld store against its ground truth."""
    from handvla.data.store import EpisodeStore
    from handvla.language.annotate import rules as R
    from handvla.language.annotate.run import load_clip, store_clips
    from handvla.language.annotate.segments import SegmentConfig
    from handvla.synth.handworld.episodes import DIRECTIONS

    store = EpisodeStore(store_dir)
    seg = SegmentConfig()
    ann_r = R.RuleAnnotator()
    c = Counter()
    confusion: Counter = Counter()
    per_task: dict[str, Counter] = {}
    for spec, _ in store_clips(store, seg):
        clip = load_clip(store, spec, seg, with_frames=False)
        ep = store.load_episode(spec.episode_index, spec.start_s, spec.end_s, with_video=False)
        gt = ep.ground_truth
        a = annotations[clip.clip_id]
        info = ann_r.analyse(clip)
        R_cw = ep.camera.extrinsics[:3, :3]
        task = gt["task"]
        pt = per_task.setdefault(task, Counter())
        a0 = spec.start_frame
        # grasp state per frame and per window (all hands seen)
        for side in clip.hands:
            g = np.asarray(gt["grip_closed"][side], bool)[a0 : spec.end_frame]
            closed = info["tracks"][side].closed
            c["grip_frames"] += len(g)
            c["grip_frames_ok"] += int((closed == g).sum())
            pt["grip_frames"] += len(g)
            pt["grip_frames_ok"] += int((closed == g).sum())
            for (ws, we), wf in zip(clip.windows_s, a.facts["windows"]):
                f = wf[side]
                if not f.get("visible"):
                    continue
                lo, hi = round(ws * spec.fps) - a0, round(we * spec.fps) - a0
                k = max(1, min((hi - lo) // 4, 2))
                truth = g[hi - k : hi].mean() > 0.5
                c["grip_windows"] += 1
                c["grip_windows_ok"] += int((f["grip"] == "closed") == truth)
        # direction of motion per scripted transport segment
        params = gt.get("task_params") or {}
        for side, segs in gt["primitives"].items():
            if side not in clip.hands:
                continue
            events = [
                e for e in a.facts["events"].get(side, []) if e["kind"] in ("move", "carry", "push", "reach")
            ]
            for j, sg in enumerate(segs):
                name = sg["name"]
                if name == "push" and (j == 0 or segs[j - 1]["name"] != "push"):
                    continue  # a push is scripted as a turn towards the object, then the stroke: only the stroke moves
                s0, s1 = max(sg["start"], a0), min(sg["stop"], spec.end_frame)
                if s1 - s0 < 6:
                    continue
                if name == "lift":
                    v_w = np.array([0.0, 0.0, 1.0])
                elif name == "place":
                    v_w = np.array([0.0, 0.0, -1.0])
                elif name in ("move", "push") and params.get("direction") in DIRECTIONS:
                    d = DIRECTIONS[params["direction"]][0]
                    v_w = np.array([d[0], d[1], 0.0])
                else:
                    continue
                truth = _main_term(R_cw @ v_w)
                t0, t1 = s0 / spec.fps, s1 / spec.fps
                best, best_ov = None, 0.0
                for e in events:
                    ov = min(t1, e["end_s"]) - max(t0, e["start_s"])
                    if ov > best_ov:
                        best, best_ov = e, ov
                pred = best["direction"][0] if best and best["direction"] else "none"
                c["dir_segments"] += 1
                c["dir_ok"] += int(pred == truth)
                c[f"dir_segments_{name}"] += 1
                c[f"dir_ok_{name}"] += int(pred == truth)
                confusion[(truth, pred)] += 1
        # target object (first clip of the episode holds the whole task in these short episodes)
        if spec.clip_index == 0:
            for tg in gt.get("targets", []):
                side = tg["hand"]
                name = f"{tg['colour']} {tg['noun']}"
                pred = a.facts["targets"].get(side)
                c["targets"] += 1
                c["targets_ok"] += int(pred == name)
                text = a.clip.get(side, {}).get("instruction", "")
                c["targets_in_instruction"] += int(name in text)
            if task in ("pinch", "grasp", "pick_up", "move", "place"):
                side = gt["targets"][0]["hand"]
                shapes = [e["shape"] for e in a.facts["events"].get(side, []) if e["kind"] == "grasp"]
                c[f"grip_kind_{'pinch' if task == 'pinch' else 'power'}"] += 1
                ok = bool(shapes) and ((shapes[0] == "pinch") == (task == "pinch"))
                c[f"grip_kind_{'pinch' if task == 'pinch' else 'power'}_ok"] += int(ok)
            if task in ("wave", "both_wave"):
                for side in gt["acting_hands"]:
                    c["wave_hands"] += 1
                    c["wave_found"] += int(any(e["kind"] == "wave" for e in a.facts["events"].get(side, [])))
            if task == "clap":
                c["claps"] += 1
                txt = a.clip.get("both", {}).get("instruction", "")
                c["clap_found"] += int("Clap" in txt)
                c["clap_count_ok"] += int(f"{params.get('claps')} times" in txt)

    def rate(ok: str, n: str) -> float | None:
        return round(c[ok] / c[n], 4) if c[n] else None

    return {
        "grasp_state": {
            "frame_accuracy": rate("grip_frames_ok", "grip_frames"),
            "frames": c["grip_frames"],
            "window_accuracy": rate("grip_windows_ok", "grip_windows"),
            "windows": c["grip_windows"],
            "frame_accuracy_by_task": {
                t: round(v["grip_frames_ok"] / v["grip_frames"], 4)
                for t, v in sorted(per_task.items())
                if v["grip_frames"]
            },
        },
        "direction": {
            "accuracy": rate("dir_ok", "dir_segments"),
            "segments": c["dir_segments"],
            "by_primitive": {
                n: {"accuracy": rate(f"dir_ok_{n}", f"dir_segments_{n}"), "segments": c[f"dir_segments_{n}"]}
                for n in ("lift", "move", "place", "push")
            },
            "confusions": {f"{t}->{p}": k for (t, p), k in confusion.most_common() if t != p},
        },
        "target_object": {
            "accuracy": rate("targets_ok", "targets"),
            "targets": c["targets"],
            "named_in_clip_instruction": rate("targets_in_instruction", "targets"),
        },
        "grip_kind": {
            "pinch_tasks_called_pinch": rate("grip_kind_pinch_ok", "grip_kind_pinch"),
            "pinch_tasks": c["grip_kind_pinch"],
            "power_tasks_called_power": rate("grip_kind_power_ok", "grip_kind_power"),
            "power_tasks": c["grip_kind_power"],
        },
        "wave": {"found": rate("wave_found", "wave_hands"), "hands": c["wave_hands"]},
        "clap": {
            "found": rate("clap_found", "claps"),
            "count_right": rate("clap_count_ok", "claps"),
            "episodes": c["claps"],
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=None, help="an existing HandWorld store (default: generate one)")
    ap.add_argument("--episodes", type=int, default=60, help="HandWorld episodes to generate")
    ap.add_argument(
        "--builtin-episodes", type=int, default=30, help="episodes of the second (builtin_motion) source"
    )
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--size", type=int, default=5000, help="balanced subset size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--keep", default=None, help="generate into this folder instead of a temporary one")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from handvla.language.annotate.rules import RuleAnnotator
    from handvla.language.annotate.run import annotate_store
    from handvla.language.annotate.table import AnnotationTable
    from handvla.language.instructions.build import build_instructions
    from handvla.language.instructions.templates import TEMPLATES, fill
    from handvla.synth.handworld.episodes import HandWorldConfig, generate_episodes

    tmp = tempfile.TemporaryDirectory() if args.keep is None else None
    work = Path(args.keep or tmp.name)
    out: dict = {"command": " ".join(["python", "benchmarks/annotate.py", *sys.argv[1:]])}
    if args.dir is None:
        hw = work / "handworld"
        t0 = time.perf_counter()
        gen = generate_episodes(
            args.episodes,
            hw,
            seed=args.seed,
            config=HandWorldConfig(width=96, height=72, seconds=args.seconds),
            progress=False,
        )
        out["handworld"] = {
            "episodes": gen["written"] + gen["skipped"],
            "seconds_per_episode": args.seconds,
            "generate_s": round(time.perf_counter() - t0, 2),
        }
    else:
        hw = Path(args.dir)
        out["handworld"] = {"dir": str(hw)}
    bm = work / "builtin"
    if args.builtin_episodes and not (bm / "meta" / "info.json").exists():
        _make_builtin_store(bm, args.builtin_episodes, args.seed)

    # annotate (rules): throughput on the HandWorld store, then the second source
    rep = annotate_store(hw, RuleAnnotator(), workers=args.workers, progress=False)
    out["annotate_rules"] = {
        k: rep[k] for k in ("clips", "annotated", "already_done", "failed", "seconds", "clips_per_s")
    }
    dirs = [hw]
    if args.builtin_episodes:
        rep_b = annotate_store(bm, RuleAnnotator(), workers=args.workers, progress=False)
        out["annotate_rules_builtin"] = {
            k: rep_b[k] for k in ("clips", "annotated", "seconds", "clips_per_s")
        }
        dirs.append(bm)

    t0 = time.perf_counter()
    anns = AnnotationTable(hw, "rules").load()
    out["accuracy_vs_ground_truth"] = accuracy(hw, anns)
    out["accuracy_seconds"] = round(time.perf_counter() - t0, 2)

    # templates: counts, every one states a duration in every hand mode
    cov = {}
    for t, ts in TEMPLATES.items():
        ok = 0
        for tpl in ts:
            good = True
            for mode in ("both", "left", "right"):
                p = fill(tpl, mode, 2.0, 15.0, task="Do it.", goal="Do it.", history_s=1.0)
                good &= ("30" in p) or ("2 seconds" in p)
            ok += good
        cov[t] = {"templates": len(ts), "state_duration": ok}
    out["templates"] = cov

    # instructions: the balanced subset over both sources, and throughput
    manifest = work / "instructions.jsonl"
    rep_i = build_instructions(dirs, manifest, size=args.size, seed=args.seed, progress=False)
    out["instructions"] = {
        "pool": rep_i["pool"],
        "samples": rep_i["samples"],
        "task_types": {
            t: {"target": v["target_share"], "got": v["share"]}
            for t, v in rep_i["balance"]["task_types"].items()
        },
        "sources": rep_i["balance"]["sources"],
        "strata_with_replacement": rep_i["balance"]["strata_with_replacement"],
        "templates_used": rep_i["templates_used"],
        "hands": rep_i["hands"],
        "seconds": rep_i["seconds"],
        "samples_per_s_fill": rep_i["samples_per_s"],
        "samples_per_s_end_to_end": round(rep_i["samples"] / max(sum(rep_i["seconds"].values()), 1e-9), 1),
    }
    print(json.dumps(out, indent=2))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
