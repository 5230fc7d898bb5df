"""Measuring a motion VLA on HandWorld ground truth.

For each held-out HandWorld episode (``handvla.data.handworld``): the VLA sees the episode's first frame
(warped to the canonical camera when the model was trained with alignment) and its instruction, and
generates ``seconds`` of motion for the acting hand(s) with the block-constrained decoder
(``handvla.vla.generation``); the motion tokenizer decodes the ids to ``HandMotion`` (camera frame) with
the episode's true hand shape (shape is not tokenized), and the tokenizer's hand model (the built-in hand by
default) gives 21 joints. Reported:

- ``valid_output_rate``: generated token sequences that parse as the requested blocks (always 1.0 with the
  constraint; ``constrained=False`` measures the unconstrained model);
- ``target_accuracy``: per (acting hand, target object) of episodes with at least two objects, whether the
  generated wrist's final position (camera frame) is nearer the instructed object than any other object
  (object positions at the last evaluated frame, ground truth: objects carried by the hand are where the
  hand left them). ``oracle_target_accuracy`` is the same with the TRUE wrist (the metric's ceiling) and
  ``chance_target_accuracy`` the mean of 1 / number of objects;
- ``mpjpe_mm`` (absolute, camera frame), ``pa_mpjpe_mm``, ``mwte_mm`` (wrist): against the true motion
  over the generated frames; ``tokenizer_mpjpe_mm``: the true motion through the motion tokenizer
  (encode + decode), the floor any VLA with this tokenizer can reach;
- ``tokens_per_s``: generated tokens per second of ``generate`` wall time (batched).

A camera rig never seen in training is simply another store: generate one with ``handvla data handworld
--rigs phone`` and evaluate models trained with and without alignment on it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from handvla.errors import ConfigError, InputError
from handvla.hand.metrics import mpjpe, mwte, pa_mpjpe
from handvla.hand.motion import HandMotion
from handvla.vla.data import default_image_size, prepare_image
from handvla.vla.generation import (
    MotionBlockConstraint,
    _generate,
    is_valid_motion_output,
    parse_motion_output,
)
from handvla.vla.processing import generation_prompt, hands_for_mode


def model_alignment(config) -> bool:
    """Whether a checkpoint was trained on canonical-camera images (``config.image_alignment``; default on)."""
    return getattr(config, "image_alignment", "canonical") != "none"


def model_image_size(config, processor) -> tuple[int, int]:
    size = getattr(config, "image_size", None)
    return tuple(int(v) for v in size) if size else default_image_size(processor)


def hand_mode_of(sides: Sequence[str]) -> str:
    s = set(sides)
    if s == {"left", "right"}:
        return "both"
    if len(s) == 1:
        return next(iter(s))
    raise InputError("episode ground truth", "acting_hands", "one or two of 'left', 'right'", str(sorted(s)))


def object_positions_camera(ep, frame: int) -> dict[int, np.ndarray]:
    """{object id: (3,) centre in the camera frame, metres} at episode frame ``frame`` (ground truth:
    the object tracks of moved objects, the scene pose of the others)."""
    gt = ep.ground_truth or {}
    if "scene" not in gt:
        raise InputError(f"episode '{ep.key}'", "ground_truth.scene", "a HandWorld episode", "missing")
    if ep.camera.extrinsics is None:
        raise InputError(f"episode '{ep.key}'", "camera.extrinsics", "world -> camera extrinsics", "None")
    tracks = gt.get("object_tracks", {})
    out = {}
    for o in gt["scene"]["objects"]:
        oid = int(o["object_id"])
        tr = tracks.get(str(oid))
        if tr is not None:
            p = np.asarray(tr["position_world"], np.float64)
            pw = p[min(frame, len(p) - 1)]
        else:
            pw = np.asarray(o["pose"], np.float64)[:3, 3]
        out[oid] = ep.camera.world_to_camera(pw)
    return out


def target_hit(wrist_cam: np.ndarray, target_id: int, objects: dict[int, np.ndarray]) -> bool:
    """True when ``wrist_cam`` (3,) is strictly nearer object ``target_id`` than every other object."""
    d = {k: float(np.linalg.norm(wrist_cam - p)) for k, p in objects.items()}
    return all(d[target_id] < v for k, v in d.items() if k != target_id)


class _NoConstraint:
    """Identity logits processor: the model's own choice at every step (to measure unconstrained output)."""

    def __call__(self, input_ids, scores):
        return scores


def _mean(xs):
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return float(np.mean(xs)) if xs else None


def _summarise(rows: list[dict[str, Any]], tokens: int, gen_s: float) -> dict[str, Any]:
    hits = [h for r in rows for h in r["target_hits"]]
    oracle = [h for r in rows for h in r["oracle_hits"]]
    chance = [1.0 / r["n_objects"] for r in rows for _ in r["target_hits"]]
    return {
        "episodes": len(rows),
        "valid_output_rate": _mean([float(r["valid"]) for r in rows]),
        "target_pairs": len(hits),
        "target_accuracy": _mean([float(h) for h in hits]),
        "oracle_target_accuracy": _mean([float(h) for h in oracle]),
        "chance_target_accuracy": _mean(chance),
        "mpjpe_mm": _mean([r["mpjpe_mm"] for r in rows]),
        "pa_mpjpe_mm": _mean([r["pa_mpjpe_mm"] for r in rows]),
        "mwte_mm": _mean([r["mwte_mm"] for r in rows]),
        "tokenizer_mpjpe_mm": _mean([r["tokenizer_mpjpe_mm"] for r in rows]),
        "generated_tokens": int(tokens),
        "generate_seconds": float(gen_s),
        "tokens_per_s": tokens / gen_s if gen_s > 0 else None,
    }


@torch.no_grad()
def evaluate_handworld(
    bundle,
    store,
    episodes: Sequence[int] | None = None,
    max_episodes: int | None = None,
    max_seconds: int | None = None,
    align: bool | None = None,
    image_size: tuple[int, int] | None = None,
    constrained: bool = True,
    do_sample: bool = False,
    seed: int | None = 0,
    batch_size: int = 4,
    progress: bool = False,
) -> dict[str, Any]:
    """Generate and score motion on HandWorld episodes of ``store`` (a folder or an ``EpisodeStore``).

    ``episodes``: indices (default all, the first ``max_episodes``); ``max_seconds`` caps the generated
    length (default: the episode's whole seconds). ``align`` / ``image_size`` default to the checkpoint's
    training settings. Returns {"summary": overall + ``per_rig``, "episodes": one row per episode}.
    """
    from tqdm.auto import tqdm

    from handvla.data.store import EpisodeStore

    model, processor, mt = bundle.model, bundle.processor, bundle.motion_tokenizer
    if mt is None:
        raise ConfigError("evaluate_handworld: the VLA bundle has no motion tokenizer to decode motion with")
    st = store if isinstance(store, EpisodeStore) else EpisodeStore(store)
    fps = float(processor.config.motion_fps)
    if abs(st.fps - fps) > 1e-6:
        raise ConfigError(f"{st.root}: episodes at {st.fps:g} fps, the VLA generates {fps:g} fps")
    align = model_alignment(model.config) if align is None else bool(align)
    size = tuple(image_size) if image_size else model_image_size(model.config, processor)
    idx = list(range(len(st))) if episodes is None else [int(k) for k in episodes]
    if max_episodes is not None:
        idx = idx[: int(max_episodes)]
    vocab = processor.vocab
    F = int(mt.config.frames_per_block)

    # Requests: one per episode with ground truth and a whole second of motion.
    reqs = []
    for k in idx:
        ep = st.load_episode(k, with_video=True)
        gt = ep.ground_truth or {}
        if not gt.get("acting_hands") or not ep.tasks:
            raise InputError(
                f"{st.root} episode {k}",
                "ground_truth",
                "a HandWorld episode (acting hands, task)",
                "missing",
            )
        mode = hand_mode_of(gt["acting_hands"])
        seconds = int(ep.num_frames // F)
        if max_seconds is not None:
            seconds = min(seconds, int(max_seconds))
        if seconds < 1:
            continue
        image = prepare_image(ep.video[0], ep.camera.K, align, size)
        reqs.append((k, ep, mode, seconds, image))

    rows: list[dict[str, Any]] = []
    tokens, gen_s = 0, 0.0
    was = model.training
    model.eval()
    bar = tqdm(total=len(reqs), desc="evaluate", unit="ep", disable=not progress)
    for b0 in range(0, len(reqs), batch_size):
        batch = reqs[b0 : b0 + batch_size]
        samples, blocks = [], []
        for _k, ep, mode, seconds, image in batch:
            prompt = generation_prompt(ep.tasks[0], seconds, mode, int(fps))
            samples.append(processor.encode(prompt, images=[image]))
            blocks.append(seconds * len(hands_for_mode(mode)))

        def head(prompt_length: int, blocks=blocks):
            if constrained:
                return MotionBlockConstraint(vocab, prompt_length, blocks)
            return _NoConstraint()

        max_new = max(blocks) * vocab.block_length + 1
        t0 = time.perf_counter()
        seqs, plen = _generate(model, processor, samples, head, max_new, do_sample, 1.0, 50, 1.0, seed)
        gen_s += time.perf_counter() - t0
        new = seqs[:, plen:].cpu()
        for i, (k, ep, mode, seconds, _image) in enumerate(batch):
            hands = hands_for_mode(mode)
            row_tokens = new[i]
            eos = (row_tokens == vocab.eos_id).nonzero()
            tokens += int(eos[0, 0]) + 1 if len(eos) else len(row_tokens)
            rows.append(_score(ep, k, mode, hands, seconds, row_tokens, vocab, mt, fps))
        bar.update(len(batch))
    bar.close()
    model.train(was)

    summary = _summarise(rows, tokens, gen_s)
    summary.update(store=str(st.root), align=align, image_size=list(size), constrained=constrained)
    summary["per_rig"] = {
        rig: _summarise([r for r in rows if r["rig"] == rig], 0, 0.0)
        for rig in sorted({r["rig"] for r in rows})
    }
    for v in summary["per_rig"].values():
        for key in ("generated_tokens", "generate_seconds", "tokens_per_s"):
            v.pop(key)
    return {"summary": summary, "episodes": rows}


def _score(ep, k: int, mode: str, hands, seconds: int, new_tokens, vocab, mt, fps: float) -> dict[str, Any]:
    """Metrics of one episode's generated tokens against its ground truth."""
    n = seconds * int(round(fps))
    n = min(n, ep.num_frames)
    row: dict[str, Any] = {
        "episode": k,
        "key": ep.key,
        "rig": ep.rig,
        "task": ep.tasks[0],
        "hands": mode,
        "seconds": seconds,
        "valid": bool(is_valid_motion_output(new_tokens, vocab, seconds, len(hands))),
        "target_hits": [],
        "oracle_hits": [],
        "n_objects": 0,
        "mpjpe_mm": None,
        "pa_mpjpe_mm": None,
        "mwte_mm": None,
        "tokenizer_mpjpe_mm": None,
    }
    gt = ep.ground_truth
    objects = object_positions_camera(ep, n - 1)
    row["n_objects"] = len(objects)
    true = {h: ep.hands[h].slice(0, n) for h in hands}
    true_joints = {h: mt.motion_joints(true[h]) for h in hands}
    # the tokenizer's floor: the true motion through encode + decode
    rec = [mt.motion_joints(mt.decode_motion(mt.encode_motion(true[h]), betas=true[h].betas)) for h in hands]
    row["tokenizer_mpjpe_mm"] = float(
        np.mean([mpjpe(r, true_joints[h], true[h].valid) for r, h in zip(rec, hands)])
    )
    # (hand, target object) pairs: scored for every episode with two or more objects; an invalid output
    # misses them all, the oracle (true wrist at its last valid frame) is scored regardless
    pairs = [
        (h, int(tg["object_id"]))
        for h in hands
        for tg in gt.get("targets", [])
        if len(objects) >= 2 and tg.get("hand") == h and int(tg["object_id"]) in objects
    ]
    for h, oid in pairs:
        last_valid = np.flatnonzero(true[h].valid)
        t_true = int(last_valid[-1]) if len(last_valid) else n - 1
        row["oracle_hits"].append(target_hit(true[h].wrist_pos[t_true], oid, objects))
    if not row["valid"]:
        row["target_hits"] = [False] * len(pairs)
        return row
    ids = parse_motion_output(new_tokens, vocab, seconds, len(hands))  # (seconds, hands, ids_per_block)
    m1, m2, m3, final_wrist = [], [], [], {}
    for j, h in enumerate(hands):
        motion: HandMotion = mt.decode_motion(ids[:, j], side=h, betas=true[h].betas, num_frames=n)
        joints = mt.motion_joints(motion)  # (n, 21, 3) camera frame, metres
        valid = true[h].valid
        m1.append(mpjpe(joints, true_joints[h], valid))
        m2.append(pa_mpjpe(joints, true_joints[h], valid))
        m3.append(mwte(joints, true_joints[h], valid))
        final_wrist[h] = motion.wrist_pos[-1]
    row["target_hits"] = [target_hit(final_wrist[h], oid, objects) for h, oid in pairs]
    row["mpjpe_mm"], row["pa_mpjpe_mm"], row["mwte_mm"] = _mean(m1), _mean(m2), _mean(m3)
    return row


def evaluate_checkpoint(ckpt: str | Path, stores: dict[str, str | Path], **kwargs) -> dict[str, Any]:
    """Load a VLA checkpoint and `evaluate_handworld` it on each named store."""
    from handvla.vla.modeling import load_vla

    bundle = load_vla(ckpt)
    return {name: evaluate_handworld(bundle, path, **kwargs) for name, path in stores.items()}


__all__ = [
    "evaluate_checkpoint",
    "evaluate_handworld",
    "hand_mode_of",
    "model_alignment",
    "object_positions_camera",
    "target_hit",
]
