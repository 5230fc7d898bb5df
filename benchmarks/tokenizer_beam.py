"""Encoding with a beam: a trained tokenizer's reconstruction error and encoding speed for several beam widths,
side by side in one run, on the same motion (``TokenizerConfig.encode_beam``; 1 = greedy).

    python benchmarks/tokenizer_beam.py --model RUN/best [--data FILE ...] [--beams 1,2,4,8] [--threads 1]

``--model``: a tokenizer folder, e.g. the ``best`` folder of ``handvla tokenizer train --out RUN``. Without
``--data`` the files that run held out (``RUN/summary.json``, validation.files) are used, and the run's
real training files as a second, in-sample set; joint files are fitted once (``--fit-cache``, default the
run's ``fit_cache``). The decoder is the same for every width: only the codes chosen for a motion differ.

Prints one JSON document: per set, a row per beam width with MPJPE / PA-MPJPE / MWTE (mm, through the
tokenizer's hand model, as ``handvla tokenizer eval``), encoding frames per second, and each error and the
speed as a ratio to greedy's; with ``--depths``, greedy errors when only the first L residual layers of
every part are used (the later codebooks zeroed on a copy), and the error with the quantiser bypassed
(``bypass``: each part's latent goes to its decoder unquantised): where the error comes from.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from handvla.commands._util import print_json  # noqa: E402

METRICS = ("mpjpe_mm", "pa_mpjpe_mm", "mwte_mm")


def run_sets(model_dir: Path, data: list[str] | None) -> tuple[dict[str, list[str]], Path | None]:
    """The motion sets to measure and the fit cache of the run that wrote ``model_dir`` (if any)."""
    if data:
        return {"given": data}, None
    run = model_dir.parent if model_dir.name in ("best", "final") else model_dir
    summary = run / "summary.json"
    if not summary.is_file():
        raise SystemExit(f"{summary}: not found; give the motion to encode with --data")
    s = json.loads(summary.read_text())
    val = s.get("validation", {}).get("files") or []
    if not val:
        raise SystemExit(f"{summary}: field 'validation.files' is empty; give --data")
    sets = {"held_out": val}
    real = [
        str(p)
        for d in s.get("data", [])
        if d.get("role") == "train" and d.get("kind") == "joints"
        for p in sorted(
            Path(d["source"]).glob("*.npz") if Path(d["source"]).is_dir() else [Path(d["source"])]
        )
        if str(p) not in val
    ]
    if real:
        sets["train_real"] = real
    return sets, run / "fit_cache"


def bypassed(model):
    """A copy of ``model`` whose quantisers pass latents through: encoding keeps each latent (the ids it
    returns are placeholders) and decoding the next ids in turn returns it, so ``encode_motion`` followed
    by ``decode_motion`` of the same motion (as the evaluation does) reconstructs without quantisation."""
    from handvla.tokenizer.modeling import GroupedResidualQuantizer, QuantizerOutput

    model = copy.deepcopy(model)
    for q in model.modules():
        if isinstance(q, GroupedResidualQuantizer):
            kept: list[torch.Tensor] = []

            def passthrough(z, update=None, kept=kept, q=q):
                kept.append(z)
                codes = torch.zeros(*z.shape[:2], q.groups, q.layers, dtype=torch.long)
                return QuantizerOutput(z, codes, z.new_zeros(()))

            q.forward = passthrough
            q.decode_codes = lambda codes, kept=kept: kept.pop(0)
    return model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="tokenizer folder (config.json + model.safetensors)")
    ap.add_argument(
        "--data", nargs="+", default=None, help="motion to encode (default: the run's held-out files)"
    )
    ap.add_argument("--beams", default="1,2,4,8", help="beam widths, comma-separated (1 = greedy)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fit-cache", default=None)
    ap.add_argument("--depths", default="", help="residual depths to measure greedily, e.g. 1,2,4,6")
    args = ap.parse_args()
    from handvla.tokenizer.data import load_sources
    from handvla.tokenizer.evaluation import evaluate_motions
    from handvla.tokenizer.loading import load_tokenizer
    from handvla.tokenizer.modeling import GroupedResidualQuantizer

    beams = sorted({int(b) for b in args.beams.split(",")} | {1})
    torch.set_num_threads(args.threads)
    model_dir = Path(args.model)
    model = load_tokenizer(model_dir)
    quantizers = [m for m in model.modules() if isinstance(m, GroupedResidualQuantizer)]
    if not quantizers:
        raise SystemExit(f"{model_dir}: this tokenizer's quantiser has no beam search (a converted release?)")
    sets, run_cache = run_sets(model_dir, args.data)
    fit_cache = args.fit_cache or run_cache
    report = {"model": str(model_dir), "saved_encode_beam": model.config.encode_beam, "threads": args.threads}
    for name, files in sets.items():
        motions = load_sources(files, model.config.fps, fit_cache=fit_cache)
        rows = []
        for beam in beams:
            for q in quantizers:
                q.beam = beam
            ev = evaluate_motions(model, motions, check_range=False)
            rows.append({"beam": beam, **{k: ev[k] for k in METRICS}, "encode_fps": ev["encode_fps"]})
        greedy = rows[0]
        for r in rows:
            for k in (*METRICS, "encode_fps"):
                r[f"{k}_vs_greedy"] = r[k] / greedy[k] if greedy[k] else float("nan")
        report[name] = {"files": len(files), "seconds": ev["seconds"], "rows": rows}
        depth_rows = []
        for depth in sorted({int(d) for d in args.depths.split(",") if d}):
            shallow = copy.deepcopy(model)
            for q in shallow.modules():
                if isinstance(q, GroupedResidualQuantizer):
                    q.beam = 1
                    with torch.no_grad():
                        q.codebook[:, depth:] = 0.0  # every code of a zeroed layer is the zero vector
            ev = evaluate_motions(shallow, motions, check_range=False)
            depth_rows.append({"layers": depth, **{k: ev[k] for k in METRICS}})
        if depth_rows:
            report[name]["greedy_by_depth"] = depth_rows
            ev = evaluate_motions(bypassed(model), motions, check_range=False)
            report[name]["bypass"] = {k: ev[k] for k in METRICS}
    print_json(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
