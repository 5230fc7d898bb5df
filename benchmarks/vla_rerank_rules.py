"""Score other best-of-k choice rules offline, on the samples a `handvla vla-eval --rerank-samples K --out
OUT.json` run kept (its ``reranked_episodes``: every sample's final wrists and the model's boxes), against
the HandWorld store it evaluated. No model runs: each rule picks one of the same samples.

Rules, per scored (hand, target) pair, each choosing among that hand's final wrists:
- ``3d_h{cm}``: nearest in 3-D to the model's box centre placed on the table with the object's centre
  {cm} cm above it; ``table_h{cm}``: the same point, distance along the table (the evaluation's rule at 3 cm);
- ``table_first_k{k}``: the table rule among the first k samples only (best of k from one run of K),
  beside ``any_first_k{k}`` (some of the first k reaches the target);
- ``true_box_table``: the table rule with the TRUE target box; ``true_start_table``: nearest the target's
  true centre in the first frame (where the box saw it), along the table; ``true_end_table``: nearest its
  centre at the end (where a carried object went);
- ``kept``: the run's own kept sample; ``any``: some sample reaches the target; ``greedy``: the run's greedy
  answer (its ``episodes`` rows).
Also the distance along the table from the placed box centre to the target's first-frame centre (cm), for
the model's box and the true box, and the rates per instruction template.

    python benchmarks/vla_rerank_rules.py --eval-json OUT.json --name heldout --store H400 [--align 1]

``--align``: whether the evaluated model saw views warped to the canonical camera (the boxes are in its
view). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np

HEIGHTS_CM = (0, 3, 6)
FIRST_K = (1, 2, 4, 8, 16, 32)


def _along(diff: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Norm of ``diff`` (..., 3) along the plane of unit ``normal`` (its normal component removed)."""
    return np.linalg.norm(diff - (diff @ normal)[..., None] * normal, axis=-1)


def score_rules(rows: list[dict], store, align: bool, greedy_rows: list[dict] | None = None) -> dict:
    """The rates of every rule over ``rows`` (``reranked_episodes``); ``greedy_rows`` (the same run's
    ``episodes``) add the greedy answer's hits (``greedy``) and each episode's instruction template."""
    from handvla.stats import rate_summary
    from handvla.vla.evaluate import object_positions_camera, target_hit
    from handvla.vla.grounding import (
        box_centre,
        objects_in_view,
        scene_objects,
        support_plane_in_camera,
        view_points_on_plane,
    )
    from handvla.vla.processing import hands_for_mode

    hits: dict[str, list[bool]] = defaultdict(list)
    by_template: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    err_cm: dict[str, list[float]] = defaultdict(list)
    fps = int(round(store.fps))
    greedy = {g["episode"]: g for g in greedy_rows or []}
    for r in rows:
        if "rerank" not in r or not r["target_hits"]:
            continue
        ep = store.load_episode(r["episode"], with_video=False)
        n = min(int(r["seconds"]) * fps, ep.num_frames)
        end_pos, start_pos = object_positions_camera(ep, n - 1), object_positions_camera(ep, 0)
        hands = list(hands_for_mode(r["hands"]))
        gt = ep.ground_truth
        pairs = [(h, int(t["object_id"])) for h in hands for t in gt.get("targets", [])
                 if len(end_pos) >= 2 and t.get("hand") == h and int(t["object_id"]) in end_pos]  # fmt: skip
        if len(pairs) != len(r["target_hits"]):
            raise ValueError(f"episode {r['episode']}: {len(pairs)} pairs, the row scored {len(r['target_hits'])}")
        ends = np.asarray(r["rerank"]["final_wrists_m"], np.float64)
        plane = support_plane_in_camera(ep.camera)
        normal = plane[:3]
        true_boxes = {int(o["object_id"]): b for o, b in objects_in_view(scene_objects(gt, "x"), ep.camera, align)}
        g = greedy.get(r["episode"], {})
        template = str(g.get("template", "?")).split(":")[0]
        for i, ((h, oid), kept) in enumerate(zip(pairs, r["target_hits"])):
            j = hands.index(h)
            reach = np.array([target_hit(e[j], oid, end_pos) for e in ends])
            got = {"kept": kept, "any": bool(reach.any())}
            if g:
                got["greedy"] = bool(g["target_hits"][i])
            for k in FIRST_K:
                if k <= len(ends):
                    got[f"any_first_k{k}"] = bool(reach[:k].any())
            box = r["rerank"]["boxes"].get(h)
            centre = None if box is None else box_centre(box)[None]
            for cm in HEIGHTS_CM:
                p = None if centre is None else view_points_on_plane(centre, ep.camera, align, plane, cm / 100)[0]
                ok = p is not None and np.isfinite(p).all()
                got[f"3d_h{cm}"] = bool(reach[np.argmin(np.linalg.norm(ends[:, j] - p, axis=1))] if ok else reach[0])
                d = _along(ends[:, j] - p, normal) if ok else None
                got[f"table_h{cm}"] = bool(reach[np.argmin(d)] if ok else reach[0])
                if cm == 3:
                    for k in FIRST_K:
                        if k <= len(ends):
                            got[f"table_first_k{k}"] = bool(reach[np.argmin(d[:k])] if ok else reach[0])
                    if ok:
                        err_cm["model_box"].append(100 * float(_along(p - start_pos[oid], normal)))
            tb = true_boxes.get(oid)
            got["true_box_table"] = False
            if tb is not None:
                p = view_points_on_plane(box_centre(tb)[None], ep.camera, align, plane, 0.03)[0]
                if np.isfinite(p).all():
                    got["true_box_table"] = bool(reach[np.argmin(_along(ends[:, j] - p, normal))])
                    err_cm["true_box"].append(100 * float(_along(p - start_pos[oid], normal)))
            got["true_start_table"] = bool(reach[np.argmin(_along(ends[:, j] - start_pos[oid], normal))])
            got["true_end_table"] = bool(reach[np.argmin(_along(ends[:, j] - end_pos[oid], normal))])
            for key, v in got.items():
                hits[key].append(v)
                by_template[template][key].append(v)
    if not hits:
        raise ValueError("no reranked rows with scored pairs: was vla-eval run with --rerank-samples and --out?")
    rates = {}
    for key, v in hits.items():
        s = rate_summary(v, key)
        rates[key] = {"rate": round(s[key], 4), "ci95": [round(x, 4) for x in s[f"{key}_ci95"]], "n": len(v)}
    return {
        "pairs": len(hits["kept"]),
        "rules": rates,
        "placement_error_cm": {k: {"median": round(float(np.median(v)), 2), "p90": round(float(np.percentile(v, 90)), 2),
                                   "n": len(v)} for k, v in err_cm.items()},  # fmt: skip
        "by_template": {t: {"pairs": len(d["kept"]), **{k: round(float(np.mean(d[k])), 3) for k in
                            ("greedy", "kept", "table_h3", "true_box_table", "true_end_table", "any") if d[k]}}
                        for t, d in sorted(by_template.items(), key=lambda x: -len(x[1]["kept"]))},  # fmt: skip
    }


def main(argv: list[str] | None = None) -> dict:
    from handvla.data.store import EpisodeStore

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eval-json", required=True, help="the --out JSON of handvla vla-eval --rerank-samples K")
    p.add_argument("--name", required=True, help="the store's name in that JSON (vla-eval --store NAME=DIR)")
    p.add_argument("--store", required=True, help="the HandWorld store it evaluated")
    p.add_argument("--align", type=int, default=0, choices=(0, 1), help="the model saw canonical-camera views")
    a = p.parse_args(argv)
    with open(a.eval_json) as f:
        doc = json.load(f)
    if a.name not in doc or "reranked_episodes" not in doc[a.name]:
        raise SystemExit(f"{a.eval_json}: no '{a.name}.reranked_episodes' (vla-eval --rerank-samples K --out)")
    out = score_rules(doc[a.name]["reranked_episodes"], EpisodeStore(a.store), bool(a.align), doc[a.name].get("episodes"))
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
