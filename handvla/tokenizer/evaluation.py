"""Reconstruction quality of a motion tokenizer: motion -> ids -> motion, measured on joints.

For each clip: ``encode_motion`` -> ``decode_motion`` (with the clip's side and betas) -> 21 joints through
the tokenizer's hand model, compared with the joints of the input motion through the same model:
- ``mpjpe_mm``: absolute mean per-joint error (wrist position included), millimetres;
- ``pa_mpjpe_mm``: after per-frame similarity Procrustes alignment;
- ``mwte_mm``: mean wrist translation error.
Joint files are fitted first (``handvla.tokenizer.data.load_joint_file``); for them
``observed_mpjpe_mm`` also compares the decoded joints with the OBSERVED points (the palm landmarks placed
from the fit's landmark offsets: the palm-centre point 0 of Leap files, an RGB detector's knuckles), next
to ``fit_mpjpe_mm``, the fit's own error. Means are over all valid frames of all clips (frame-weighted). Metrics come from ``handvla.hand.metrics``.

Inputs outside the tokenizer's range (features far from its normalisation stats: a world frame,
millimetres) are listed in ``warnings`` (file and field; ``handvla.tokenizer.data.stats_range_warnings``)
and printed to stderr.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from handvla.hand import metrics as M
from handvla.hand.fitting import with_landmark_offsets
from handvla.hand.motion import HandMotion
from handvla.hand.rotations import axis_angle_to_matrix
from handvla.tokenizer.data import FeatureClip, LoadedMotion, load_sources, stats_range_warnings, warn
from handvla.tokenizer.modeling import MotionTokenizer


def reconstruct(model: MotionTokenizer, motion: HandMotion) -> HandMotion:
    """Encode then decode one motion (same side, betas and length)."""
    return model.decode_motion(model.encode_motion(motion), betas=motion.betas)


def _observed_points(lm: LoadedMotion, motion: HandMotion, joints: np.ndarray) -> np.ndarray:
    """Model joints as the tracker reports them: the palm landmarks moved by the fit's offsets (point 0 =
    palm centre for Leap-style files)."""
    if lm.landmark_offsets is None:
        return joints.copy()
    Rw = axis_angle_to_matrix(torch.tensor(motion.global_orient))  # (T, 3, 3)
    return with_landmark_offsets(torch.from_numpy(joints), Rw, torch.from_numpy(lm.landmark_offsets)).numpy()


def evaluate_motions(
    model: MotionTokenizer, motions: list[LoadedMotion], progress: bool = False, check_range: bool = True
) -> dict[str, Any]:
    """Metrics over ``motions`` (see the module doc); also tokens per hand-second, codebook usage of
    the produced ids, encode / decode speed in frames per second and, with ``check_range``, ``warnings``
    for motions outside the tokenizer's normalisation stats (and those the loader found)."""

    model.eval()
    warnings = [w for lm in motions for w in lm.warnings]
    if check_range and motions:
        cfg = model.config
        clips = [  # the model's own features (its hand model: a converted MANO tokenizer's too)
            FeatureClip(
                model.motion_features(lm.motion),
                torch.zeros(10),
                torch.from_numpy(lm.motion.valid.copy()),
                lm.name,
            )
            for lm in motions
        ]
        where = {c.name: lm.group or lm.name for c, lm in zip(clips, motions)}
        found = stats_range_warnings(cfg.spec, model.normalizer, cfg.field_weights, clips, where)
        warn(found)
        warnings += found
    layout = model.layout
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    per_clip = []
    all_ids = []
    enc_s = dec_s = 0.0
    frames = 0
    for lm in tqdm(motions, desc="evaluating", disable=not progress, leave=False):
        m = lm.motion
        t0 = time.perf_counter()
        tokens = model.encode_motion(m)
        t1 = time.perf_counter()
        rec = model.decode_motion(tokens, betas=m.betas)
        t2 = time.perf_counter()
        enc_s, dec_s, frames = enc_s + t1 - t0, dec_s + t2 - t1, frames + len(m)
        all_ids.append(tokens.ids)
        gt, pred = model.motion_joints(m), model.motion_joints(rec)
        valid = np.asarray(m.valid, bool)
        row: dict[str, Any] = {
            "name": lm.name,
            "side": m.side,
            "frames": len(m),
            "valid_frames": int(valid.sum()),
            "mpjpe_mm": M.mpjpe(pred, gt, valid),
            "pa_mpjpe_mm": M.pa_mpjpe(pred, gt, valid),
            "mwte_mm": M.mwte(pred, gt, valid),
            "rr_mpjpe_mm": M.rr_mpjpe(pred, gt, valid),
        }
        if lm.observed is not None and len(lm.observed) == len(m):
            row["observed_mpjpe_mm"] = M.mpjpe(_observed_points(lm, rec, pred), lm.observed, valid)
            row["fit_mpjpe_mm"] = lm.fit_mpjpe_mm
        per_clip.append(row)
        for k, v in row.items():
            if k.endswith("_mm") and v is not None and np.isfinite(v):
                sums[k] = sums.get(k, 0.0) + v * row["valid_frames"]
                weights[k] = weights.get(k, 0.0) + row["valid_frames"]
    ids = np.concatenate(all_ids) if all_ids else np.zeros((0, layout.tokens_per_block), np.int64)
    usage = {}
    for part in layout.parts:
        codes = ids[:, layout.part_positions(part)] - layout.part_offset(part)
        codes = codes.reshape(-1, layout.groups, layout.latent_steps, layout.layers)
        fr = [
            len(np.unique(codes[:, g, :, layer])) / layout.codebook_size
            for g in range(layout.groups)
            for layer in range(layout.layers)
        ]
        usage[part] = float(np.mean(fr)) if len(ids) else 0.0
    cfg = model.config
    result: dict[str, Any] = {k: sums[k] / weights[k] for k in sums}
    result.update(
        {
            "clips": len(motions),
            "frames": frames,
            "seconds": frames / cfg.fps,
            "tokens_per_hand_second": layout.tokens_per_block / cfg.seconds_per_block,
            "vocab_size": layout.vocab_size,
            "codebook_usage": usage,
            "live_codes": {p: model.parts[p].quantizer.usage_stats()["live_codes"] for p in layout.parts},
            "encode_fps": frames / enc_s if enc_s > 0 else float("nan"),
            "decode_fps": frames / dec_s if dec_s > 0 else float("nan"),
            "warnings": warnings,
            "per_clip": per_clip,
        }
    )
    return result


def evaluate_files(
    model: MotionTokenizer,
    sources: list[str],
    fit_cache: str | Path | None = None,
    progress: bool = False,
    builtin_sequences: int = 32,
    builtin_seconds: float = 10.0,
    seed: int = 1000,
) -> dict[str, Any]:
    """Load ``sources`` (joint files are fitted; ``builtin`` uses a seed different from training's
    default) and evaluate."""
    motions = load_sources(
        sources, model.config.fps, builtin_sequences, builtin_seconds, seed, fit_cache, progress=progress
    )
    return evaluate_motions(model, motions, progress=progress)


__all__ = ["evaluate_files", "evaluate_motions", "reconstruct"]
