"""Measuring a motion VLA on HandWorld ground truth.

For each held-out HandWorld episode (``handvla.synth.handworld``): the VLA sees the episode's first frame
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
- ``tokens_per_s``: generated tokens per second of ``generate`` wall time (batched);
- ``final_wrist_error_m``: mean distance (metres) of the generated final wrist to the true one (its last
  valid frame of the evaluated span), per (episode, acting hand).

Every rate comes with its Wilson 95 % score interval (``handvla.stats.wilson_interval``) as
``<rate>_ci95: [lo, hi]``; the intervals treat the (hand, target) pairs as independent trials.

``baselines`` (``handvla.vla.baselines``) are scored on the same pairs as the model, each with
``target_accuracy`` (+ interval) and ``final_wrist_error_m``: ``constant`` (the mean training final wrist
of that hand side), ``template`` (the same per instruction template, no image), ``rig_template`` (the same
per instruction template and camera rig: what an image says about the camera, nothing of the scene's
layout; the template's mean for a rig training never saw), ``retrieval`` (the final
wrist of the training episode with the nearest instruction text, no image), fitted on TRAINING stores
(``train_stores``; skipped, with ``baselines_skipped`` saying why, without them), and ``tokenizer_floor``
(the true motion encoded + decoded: what a perfect VLA with this tokenizer would score, with its MPJPE /
MWTE). A model that does not beat ``constant`` and ``template`` has not learnt to use the image.

Optionally (``translation_episodes``, ``prediction_episodes``):

- ``translation``: motion -> text from the TRUE motion ids (greedy); ``translation_target_accuracy``: the
  text names each target object's colour and noun, ``translation_direction_accuracy``: it names the task's
  direction (left / right / forward / back) and no other; against a ``constant_text`` (the training set's
  most frequent target object and direction);
- ``prediction``: the true first second as history, the next second generated; MPJPE / MWTE (mm) of the
  ``model``, a ``constant_velocity`` continuation of the true history (last wrist velocity, pose held),
  ``hold_last`` (the last pose held still) and the ``tokenizer_floor``.

A camera rig never seen in training is simply another store: generate one with ``handvla data handworld
--rigs phone`` and evaluate models trained with and without alignment on it.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from handvla.data.store import EpisodeStore
from handvla.errors import ConfigError, InputError
from handvla.hand.metrics import mpjpe, mwte, pa_mpjpe
from handvla.hand.motion import HandMotion
from handvla.stats import paired_comparison, rate_summary
from handvla.vla.baselines import (
    INPUT_FREE_BASELINES,
    TrainingReference,
    checkpoint_training_stores,
    constant_velocity,
    direction_hit,
    final_wrist_at,
    instruction_template,
    load_training_reference,
    names_object,
)
from handvla.vla.data import default_image_size, prepare_image
from handvla.vla.diagnostics import final_wrist_positions, final_wrists_and_texts
from handvla.vla.generation import (
    MotionBlockConstraint,
    _generate,
    is_valid_motion_output,
    parse_motion_output,
    place_prefix_places,
    predict_motion,
    split_text_prefix,
    text_prefix_tokens,
    translate_motion,
)
from handvla.vla.grounding import (
    grounding_prefix,
    instruction_object_names,
    nearest_box,
    object_name,
    objects_in_view,
    pointed_object,
    points_in_view,
    scene_objects,
    support_plane_in_camera,
)
from handvla.vla.modeling import load_vla
from handvla.vla.places import (
    grounded_place_prefixes,
    in_place_frame,
    names_places,
    nearest_object_by_ray,
    object_centre_in_camera,
    object_position_world,
    parse_named_places,
    parse_places,
    place_frame,
    place_ids,
    place_point,
    split_end_places,
    stated_places_text,
    states_end_places,
)
from handvla.vla.processing import generation_prompt, hands_for_mode
from handvla.vla.rerank import (
    MOTION_SOURCES,
    RERANK_SPACES,
    choose_by_boxes,
    choose_by_points,
    choose_sample,
    generate_motion_grounded,
    object_points_from_boxes,
)


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
    return {int(o["object_id"]): ep.camera.world_to_camera(object_position_world(o, gt, frame))
            for o in gt["scene"]["objects"]}  # fmt: skip


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


def _rate(hits: Sequence[bool], name: str) -> dict[str, Any]:
    """{name: the rate (None without trials), name_ci95: its Wilson 95 % interval [lo, hi] (None)}."""
    r = rate_summary(hits, name)
    return {name: r[name], f"{name}_ci95": r[f"{name}_ci95"]}


def _dist(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    """Euclidean distance in metres, None when either point is missing."""
    if a is None or b is None:
        return None
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))


def _summarise_baselines(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per baseline (in the rows' order): target accuracy with its interval over the same (hand, target)
    pairs as the model, and the mean final-wrist error (metres)."""
    names: list[str] = []
    for r in rows:
        names += [n for n in r.get("baselines", {}) if n not in names]
    out: dict[str, Any] = {}
    for name in names:
        bl = [r["baselines"][name] for r in rows if name in r.get("baselines", {})]
        hits = [h for b in bl for h in b["target_hits"]]
        d: dict[str, Any] = {"target_pairs": len(hits), "target_hits": int(sum(hits))}
        d.update(_rate(hits, "target_accuracy"))
        d["final_wrist_error_m"] = _mean([b["final_wrist_error_m"] for b in bl])
        if name == "tokenizer_floor":
            d["mpjpe_mm"] = _mean([r["tokenizer_mpjpe_mm"] for r in rows])
            d["mwte_mm"] = _mean([r["tokenizer_mwte_mm"] for r in rows])
        if name in ("template", "rig_template"):  # hands predicted by the next coarser mean
            d[f"unseen_{name}_hands"] = int(sum(b.get("fallbacks", 0) for b in bl))
        out[name] = d
    return out


def _summarise(rows: list[dict[str, Any]], tokens: int, gen_s: float) -> dict[str, Any]:
    hits = [h for r in rows for h in r["target_hits"]]
    oracle = [h for r in rows for h in r["oracle_hits"]]
    chance = [1.0 / r["n_objects"] for r in rows for _ in r["target_hits"]]
    return {
        "episodes": len(rows),
        **_rate([bool(r["valid"]) for r in rows], "valid_output_rate"),
        "target_pairs": len(hits),
        "target_hits": int(sum(hits)),
        **_rate(hits, "target_accuracy"),
        **_rate(oracle, "oracle_target_accuracy"),
        "chance_target_accuracy": _mean(chance),
        "final_wrist_error_m": _mean([r["final_wrist_error_m"] for r in rows]),
        "mpjpe_mm": _mean([r["mpjpe_mm"] for r in rows]),
        "pa_mpjpe_mm": _mean([r["pa_mpjpe_mm"] for r in rows]),
        "mwte_mm": _mean([r["mwte_mm"] for r in rows]),
        "tokenizer_mpjpe_mm": _mean([r["tokenizer_mpjpe_mm"] for r in rows]),
        "tokenizer_mwte_mm": _mean([r["tokenizer_mwte_mm"] for r in rows]),
        "generated_tokens": int(tokens),
        "generate_seconds": float(gen_s),
        "tokens_per_s": tokens / gen_s if gen_s > 0 else None,
        "baselines": _summarise_baselines(rows),
        **_summarise_prefix(rows),
        **_summarise_rerank(rows),
    }


def _summarise_prefix(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The rates of `_score_prefix` over the rows that have them ({} for a model without an answer prefix)."""
    scored = [r for r in rows if "prefix_hits" in r]
    if not scored:
        return {}
    return {
        **_rate([h for r in scored for h in r["prefix_hits"]], "prefix_target_accuracy"),
        **_rate([h for r in scored for h in r["motion_follows_prefix"]], "motion_follows_prefix_rate"),
        **({} if not any("stated_name_hits" in r for r in scored) else
           _rate([h for r in scored for h in r.get("stated_name_hits", [])], "stated_name_accuracy")),  # fmt: skip
        **({} if not any("end_place_hits" in r for r in scored) else {
            **_rate([h for r in scored for h in r.get("end_place_hits", [])], "end_place_accuracy"),
            **_rate([h for r in scored for h in r.get("motion_follows_end_place", [])], "motion_follows_end_place_rate"),
        }),  # fmt: skip
    }


def per_task_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Target accuracy per task type (``task_type``, HandWorld's task name) of the rows with scored pairs,
    with its Wilson interval, the oracle's (the true motion's end) and, for a model that states places, how
    often the stated place is right and the motion ends at it: where the end is not the object's place
    (carry it somewhere, set it down by another) the motion has to go further than what it stated."""
    out: dict[str, dict[str, Any]] = {}
    for t in sorted({r.get("task_type") or "unknown" for r in rows if r["target_hits"]}):
        part = [r for r in rows if (r.get("task_type") or "unknown") == t and r["target_hits"]]
        d: dict[str, Any] = {"target_pairs": sum(len(r["target_hits"]) for r in part)}
        d.update(_rate([h for r in part for h in r["target_hits"]], "target_accuracy"))
        d["oracle_target_accuracy"] = _rate([h for r in part for h in r["oracle_hits"]], "a")["a"]
        d.update({k: v for k, v in _summarise_prefix(part).items() if not k.endswith("_ci95")})
        out[t] = d
    return out


def _training_reference(
    train_stores: Sequence[str | Path] | TrainingReference | None, val_fraction: float, progress: bool
) -> TrainingReference | None:
    if train_stores is None or isinstance(train_stores, TrainingReference):
        return train_stores
    if isinstance(train_stores, (str, Path)):
        train_stores = [train_stores]
    return (
        load_training_reference(list(train_stores), val_fraction, progress=progress) if train_stores else None
    )


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
    train_stores: Sequence[str | Path] | TrainingReference | None = None,
    train_val_fraction: float = 0.0,
    translation_episodes: int = 0,
    prediction_episodes: int = 0,
    translation_max_tokens: int = 64,
    shuffle_images: bool = False,
    rerank_samples: int = 0,
    rerank_temperature: float = 1.0,
    rerank_space: str = "table",
    object_centre_height_m: float = 0.03,
    motion_from: str = "image",
    places_from: str = "answer",
) -> dict[str, Any]:
    """Generate and score motion on HandWorld episodes of ``store`` (a folder or an ``EpisodeStore``).

    ``episodes``: indices (default all, the first ``max_episodes``); ``max_seconds`` caps the generated
    length (default: the episode's whole seconds). ``align`` / ``image_size`` default to the checkpoint's
    training settings. ``train_stores``: the TRAINING stores (folders, or a loaded `TrainingReference`) the
    input-free baselines are fitted on (episodes of ``store`` itself are left out of them), with
    ``train_val_fraction`` > 0 only pretraining's training split of them; None: only the tokenizer floor.
    ``translation_episodes`` / ``prediction_episodes``: how many of the evaluated episodes also get motion
    translation (those with a target object) and contextual prediction (those of two seconds or more)
    scored (0: none; the default, so the periodic evaluation during training stays cheap).
    ``translation_max_tokens``: cap on generated text tokens. ``shuffle_images``: give each episode the
    NEXT episode's image (a derangement; instruction and scoring stay the episode's own): a model that uses
    the image drops towards the input-free baselines, one that ignores it does not (an input-sensitivity
    probe). ``rerank_samples`` > 0: decode by `generate_motion_grounded` instead of greedily: that many
    samples (at ``rerank_temperature``) of each episode whose instruction names its objects
    (`instruction_object_names`, the text only), the one whose final wrists lie nearest the boxes the model
    itself answers for those objects kept; ``summary.rerank`` scores the boxes and the first and best samples.
    ``rerank_space``: "table" chooses along the table, objects placed on HandWorld's table (world z = 0,
    known from the episode's extrinsics) with their centres ``object_centre_height_m`` above it; "view" in
    the image. ``motion_from`` "places" (with ``rerank_samples`` >= 1; 1 = greedy): the motion answers are
    made from where the model's grounding answers put the named objects instead of from the image
    (`generate_motion_grounded`, "where, then how"). ``places_from`` (models that state places, greedy, not
    with ``rerank_samples``): "answer", the motion answer states its own places; "grounding", each acting
    hand's place is the model's own answer to the grounding question about the object the instruction names
    for it (`instruction_object_names`, the text only), stated for it (`grounded_place_prefixes`: ground, then
    act); requests that name no object for every hand state their own.

    Returns {"summary": overall + ``per_rig`` + ``baselines`` (+ ``translation``, ``prediction``),
    "episodes": one row per episode, "translation_episodes", "prediction_episodes": their rows}.
    """


    model, processor, mt = bundle.model, bundle.processor, bundle.motion_tokenizer
    if mt is None:
        raise ConfigError("evaluate_handworld: the VLA bundle has no motion tokenizer to decode motion with")
    for name, v in (
        ("translation_episodes", translation_episodes),
        ("prediction_episodes", prediction_episodes),
    ):
        if isinstance(v, bool) or int(v) != v or v < 0:
            raise ConfigError(f"evaluate_handworld: {name}: expected a whole number >= 0, got {v!r}")
    if rerank_space not in RERANK_SPACES:
        raise ConfigError(f"evaluate_handworld: rerank_space: expected one of {RERANK_SPACES}, got {rerank_space!r}")
    if rerank_samples and not constrained:
        raise ConfigError("evaluate_handworld: rerank_samples decodes under the block constraint; constrained=False")
    _check_motion_from("evaluate_handworld", motion_from, rerank_samples)
    _check_places_from("evaluate_handworld", places_from, model.config, rerank_samples)
    if isinstance(translation_max_tokens, bool) or int(translation_max_tokens) < 1:
        raise ConfigError(
            f"evaluate_handworld: translation_max_tokens: expected a whole number >= 1, got {translation_max_tokens!r}"
        )
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
    text_prefix = text_prefix_tokens(model.config)  # HandVLAConfig.motion_answer_prefix
    place_prefix, frame = place_prefix_places(model.config), place_frame(model.config)
    names = names_places(model.config)  # each stated place after its object's name

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
    if shuffle_images and len(reqs) > 1:
        images = [r[4] for r in reqs]
        reqs = [(*r[:4], images[(i + 1) % len(reqs)]) for i, r in enumerate(reqs)]

    rows: list[dict[str, Any]] = []
    ctxs: list[dict[str, Any]] = []
    tokens, gen_s = 0, 0.0
    was = model.training
    model.eval()
    bar = tqdm(total=len(reqs), desc="evaluate", unit="ep", disable=not progress)
    for b0 in range(0, len(reqs), batch_size):
        batch = reqs[b0 : b0 + batch_size]
        grounded = None
        if rerank_samples:  # encodes its own prompts (k copies of each) and asks the grounding questions
            t0 = time.perf_counter()
            grounded = generate_motion_grounded(
                model, processor, mt, [r[4] for r in batch], [r[1].tasks[0] for r in batch], [r[3] for r in batch],
                [r[2] for r in batch], objects=[instruction_object_names(r[1].tasks[0], hands_for_mode(r[2])) for r in batch],
                cameras=[r[1].camera for r in batch], align=align, samples=int(rerank_samples),
                temperature=rerank_temperature, seed=seed, object_centre_height_m=object_centre_height_m,
                support_planes=[support_plane_in_camera(r[1].camera) if rerank_space == "table" else None
                                for r in batch], motion_from=motion_from,
            )  # fmt: skip
            seqs, plen = grounded.sequences, grounded.prompt_length
        else:
            samples, blocks, n_places = [], [], []
            forced = [None] * len(batch)
            if places_from == "grounding":
                forced = grounded_place_prefixes(
                    model, processor, mt, [r[4] for r in batch],
                    [instruction_object_names(r[1].tasks[0], hands_for_mode(r[2])) for r in batch], [r[2] for r in batch],
                )[0]  # fmt: skip
            for (_k, ep, mode, seconds, image), start in zip(batch, forced):
                prompt = generation_prompt(ep.tasks[0], seconds, mode, int(fps))
                sample = processor.encode(prompt, images=[image])
                samples.append(sample if start is None else processor.start_answer(sample, start))
                blocks.append(seconds * len(hands_for_mode(mode)))
                n_places.append(place_prefix_places(model.config, len(hands_for_mode(mode)), given=start is not None))

            def head(prompt_length: int, blocks=blocks, n_places=n_places):
                if constrained:
                    return MotionBlockConstraint(
                        vocab, prompt_length, blocks, text_prefix_tokens=text_prefix, place_prefix=n_places,
                        place_names=names,
                    )
                return _NoConstraint()

            max_new = MotionBlockConstraint(
                vocab, 0, blocks, text_prefix_tokens=text_prefix, place_prefix=n_places, place_names=names
            ).max_new_tokens
            t0 = time.perf_counter()
            seqs, plen = _generate(model, processor, samples, head, max_new, do_sample, 1.0, 50, 1.0, seed)
        gen_s += time.perf_counter() - t0
        new = seqs[:, plen:].cpu()
        for i, (k, ep, mode, seconds, _image) in enumerate(batch):
            hands = hands_for_mode(mode)
            row_tokens = new[i]
            eos = (row_tokens == vocab.eos_id).nonzero()
            tokens += int(eos[0, 0]) + 1 if len(eos) else len(row_tokens)
            said = None
            if text_prefix or place_prefix:
                head_ids, row_tokens = split_text_prefix(row_tokens, vocab)
                said = processor.decode(head_ids.tolist(), skip_special_tokens=False)
                if grounded is None and forced[i] is not None:  # the places were stated for it (ground, then act)
                    said = forced[i] + said  # then the end places the model said, if it states them
            row, ctx = _score(ep, k, mode, hands, seconds, row_tokens, vocab, mt, fps)
            if said is not None and place_prefix:
                given = None if grounded is not None or forced[i] is None else len(parse_places(forced[i], mt.layout))
                _score_places(row, ctx, said, ep, mt, align, f"{st.root} episode {k}", frame, names,
                              states_end_places(model.config), given)
            elif said is not None:
                _score_prefix(row, ctx, said, ep, align, f"{st.root} episode {k}")
            if grounded is not None:
                _score_rerank(row, ctx, grounded, i, ep, align, object_centre_height_m, f"{st.root} episode {k}")
            rows.append(row)
            ctxs.append(ctx)
        bar.update(len(batch))
    bar.close()

    # Input-free baselines fitted on the training stores (never on the evaluated episodes themselves).
    ref = _training_reference(train_stores, train_val_fraction, progress)
    ref_info: dict[str, Any] | None = None
    if ref is not None:
        n_all = len(ref)
        ref = ref.without(ep.key for _k, ep, *_ in reqs)
        ref_info = {
            "stores": ref.stores,
            "val_fraction": ref.val_fraction,
            "episodes": len(ref),
            "excluded_evaluated_episodes": n_all - len(ref),
        }
        for row, ctx in zip(rows, ctxs):
            _score_input_free(row, ctx, ref)

    trans_rows: list[dict[str, Any]] = []
    trans_summary = None
    if translation_episodes:
        items = [
            (k, ep, mode, seconds, image, ctx["motion_ids"])
            for (k, ep, mode, seconds, image), ctx in zip(reqs, ctxs)
            if (ep.ground_truth or {}).get("targets")
        ][: int(translation_episodes)]
        trans_summary, trans_rows = _evaluate_translation(
            model, processor, items, ref, batch_size, seed, int(translation_max_tokens), progress
        )
    pred_rows: list[dict[str, Any]] = []
    pred_summary = None
    if prediction_episodes:
        items = [(k, ep, mode) for k, ep, mode, _s, _i in reqs if _can_predict(ep, mode, F)]
        pred_summary, pred_rows = _evaluate_prediction(
            model, processor, mt, items[: int(prediction_episodes)], align, size, batch_size, seed, progress
        )
    model.train(was)

    summary = _summarise(rows, tokens, gen_s)
    summary.update(
        store=str(st.root), align=align, image_size=list(size), constrained=constrained, images_shuffled=bool(shuffle_images)
    )
    if ref_info is not None:
        summary["train_reference"] = ref_info
    else:
        summary["baselines_skipped"] = (
            f"{' / '.join(INPUT_FREE_BASELINES)}: no training stores given (train_stores, --train-store)"
        )
    summary["per_rig"] = {
        rig: _summarise([r for r in rows if r["rig"] == rig], 0, 0.0)
        for rig in sorted({r["rig"] for r in rows})
    }
    for v in summary["per_rig"].values():
        for key in ("generated_tokens", "generate_seconds", "tokens_per_s"):
            v.pop(key)
    summary["per_task"] = per_task_summary(rows)
    if trans_summary is not None:
        summary["translation"] = trans_summary
    if pred_summary is not None:
        summary["prediction"] = pred_summary
    return {
        "summary": summary,
        "episodes": rows,
        "translation_episodes": trans_rows,
        "prediction_episodes": pred_rows,
    }


def _score(
    ep, k: int, mode: str, hands, seconds: int, new_tokens, vocab, mt, fps: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics of one episode's generated tokens against its ground truth: the JSON row, and what the
    input-free baselines and the translation need of the episode (objects, pairs, true final wrists,
    the true motion's ids (seconds, hands, ids_per_block))."""
    n = seconds * int(round(fps))
    n = min(n, ep.num_frames)
    row: dict[str, Any] = {
        "episode": k,
        "key": ep.key,
        "rig": ep.rig,
        "task": ep.tasks[0],
        "task_type": (ep.ground_truth or {}).get("task"),  # HandWorld's task name (pick_up, place, ...)
        "hands": mode,
        "seconds": seconds,
        "valid": bool(is_valid_motion_output(new_tokens, vocab, seconds, len(hands))),
        "target_hits": [],
        "oracle_hits": [],
        "n_objects": 0,
        "final_wrist_error_m": None,
        "mpjpe_mm": None,
        "pa_mpjpe_mm": None,
        "mwte_mm": None,
        "tokenizer_mpjpe_mm": None,
        "tokenizer_mwte_mm": None,
        "baselines": {},
    }
    gt = ep.ground_truth
    objects = object_positions_camera(ep, n - 1)
    row["n_objects"] = len(objects)
    true = {h: ep.hands[h].slice(0, n) for h in hands}
    true_joints = {h: mt.motion_joints(true[h]) for h in hands}
    # the true final wrist: the last valid frame of the evaluated span (None: the hand is never valid)
    true_final: dict[str, np.ndarray | None] = {}
    t_last: dict[str, int] = {}
    for h in hands:
        last_valid = np.flatnonzero(true[h].valid)
        t_last[h] = int(last_valid[-1]) if len(last_valid) else n - 1
        true_final[h] = np.asarray(true[h].wrist_pos[t_last[h]], np.float64) if len(last_valid) else None
    # the tokenizer's floor: the true motion through encode + decode
    codes = {h: mt.encode_motion(true[h]) for h in hands}
    rec = {h: mt.decode_motion(codes[h], betas=true[h].betas) for h in hands}
    rec_joints = {h: mt.motion_joints(rec[h]) for h in hands}
    row["tokenizer_mpjpe_mm"] = float(
        np.mean([mpjpe(rec_joints[h], true_joints[h], true[h].valid) for h in hands])
    )
    row["tokenizer_mwte_mm"] = float(
        np.mean([mwte(rec_joints[h], true_joints[h], true[h].valid) for h in hands])
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
        row["oracle_hits"].append(target_hit(true[h].wrist_pos[t_last[h]], oid, objects))
    rec_final = {h: np.asarray(rec[h].wrist_pos[-1], np.float64) for h in hands}
    row["baselines"]["tokenizer_floor"] = {
        "target_hits": [target_hit(rec_final[h], oid, objects) for h, oid in pairs],
        "final_wrist_error_m": _mean([_dist(rec_final[h], true_final[h]) for h in hands]),
    }
    ctx = {
        "objects": objects,
        "pairs": pairs,
        "hands": tuple(hands),
        "n": n,
        "true_final": true_final,
        "ground_truth": gt,
        "motion_ids": np.stack([np.asarray(codes[h].ids, np.int64) for h in hands], 1),
    }
    if not row["valid"]:
        row["target_hits"] = [False] * len(pairs)
        return row, ctx
    ids = parse_motion_output(new_tokens, vocab, seconds, len(hands))  # (seconds, hands, ids_per_block)
    m1, m2, m3, final_wrist = [], [], [], {}
    for j, h in enumerate(hands):
        motion: HandMotion = mt.decode_motion(ids[:, j], side=h, betas=true[h].betas, num_frames=n)
        joints = mt.motion_joints(motion)  # (n, 21, 3) camera frame, metres
        valid = true[h].valid
        m1.append(mpjpe(joints, true_joints[h], valid))
        m2.append(pa_mpjpe(joints, true_joints[h], valid))
        m3.append(mwte(joints, true_joints[h], valid))
        final_wrist[h] = np.asarray(motion.wrist_pos[-1], np.float64)
    ctx["final_wrist"] = final_wrist
    row["target_hits"] = [target_hit(final_wrist[h], oid, objects) for h, oid in pairs]
    row["final_wrist_error_m"] = _mean([_dist(final_wrist[h], true_final[h]) for h in hands])
    row["mpjpe_mm"], row["pa_mpjpe_mm"], row["mwte_mm"] = _mean(m1), _mean(m2), _mean(m3)
    return row, ctx


def _score_prefix(row: dict[str, Any], ctx: dict[str, Any], said: str, ep, align: bool, where: str) -> None:
    """Score what an answer said before its motion (``HandVLAConfig.motion_answer_prefix`` "target_boxes"):
    per scored (hand, target) pair, the box the answer gives under the target's name points at the object
    in view whose box centre is nearest its centre; ``prefix_hits``: that object is the target;
    ``motion_follows_prefix``: the generated final wrist ends nearest that object (whichever it is)."""
    row["answer_prefix"] = said
    row["prefix_hits"], row["motion_follows_prefix"] = [], []
    in_view = {int(o["object_id"]): (object_name(o), box)
               for o, box in objects_in_view(scene_objects(ctx["ground_truth"], where), ep.camera, align)}  # fmt: skip
    boxes = {i: box for i, (_name, box) in in_view.items()}
    objects, final = ctx["objects"], ctx.get("final_wrist")
    for h, oid in ctx["pairs"]:
        pointed = pointed_object(said, in_view[oid][0], boxes) if oid in in_view else None
        row["prefix_hits"].append(pointed == oid)
        follows = False
        if pointed is not None and final is not None and pointed in objects:
            follows = target_hit(final[h], pointed, objects)
        row["motion_follows_prefix"].append(bool(follows))


def _score_places(
    row: dict[str, Any], ctx: dict[str, Any], said: str, ep, mt, align: bool, where: str, frame: str | None,
    names: bool = False,
    ends: bool = False,
    given: int | None = None,
) -> None:
    """Score the places an answer stated before its motion (``HandVLAConfig.motion_answer_prefix``
    "target_places", `handvla.vla.places`), in the keys of `_score_prefix`: the j-th scored (hand, target)
    pair takes the j-th stated place; it points at the object in view whose image place (x / z, y / z) is
    nearest the place's cell centre, mapped back to the camera frame from ``frame`` (`place_frame`)
    (``prefix_hits``: that is the target; ``motion_follows_prefix``: the generated final wrist ends nearest
    that object). ``names``: the places were said after names (``HandVLAConfig.place_names``);
    ``stated_name_hits``: the name before the j-th place is the target's. ``ends``: the answer then states
    where each target ends (``HandVLAConfig.end_places``: `split_end_places`, ``given`` the number of target
    places given to it, in the same order);
    ``end_place_hits``: the j-th end place points (by image place) at the target where the objects are at the
    evaluated span's end; ``motion_follows_end_place``: the generated final wrist ends nearest that object."""
    row["answer_prefix"] = said
    row["prefix_hits"], row["motion_follows_prefix"] = [], []
    centres = {int(o["object_id"]): object_centre_in_camera(o, ep.camera)
               for o, _box in objects_in_view(scene_objects(ctx["ground_truth"], where), ep.camera, align)}  # fmt: skip
    stated = parse_named_places(said, mt.layout)
    places = [place_point(b, mt.config) for _name, b in stated]
    objects, final = ctx["objects"], ctx.get("final_wrist")
    if names:
        row["stated_name_hits"] = []
        by_id = {int(o["object_id"]): object_name(o) for o in scene_objects(ctx["ground_truth"], where)}
    if ends:  # the second half: where each target ends, scored among the objects where they are then
        places, end_places = split_end_places(places, given)
        row["end_place_hits"], row["motion_follows_end_place"] = [], []
        for j, (h, oid) in enumerate(ctx["pairs"]):
            at = nearest_object_by_ray(in_place_frame(end_places[j], h, frame), objects) if j < len(end_places) else None
            row["end_place_hits"].append(at == oid)
            row["motion_follows_end_place"].append(
                bool(at is not None and final is not None and target_hit(final[h], at, objects))
            )
    for j, (h, oid) in enumerate(ctx["pairs"]):
        pointed = nearest_object_by_ray(in_place_frame(places[j], h, frame), centres) if j < len(places) else None
        row["prefix_hits"].append(pointed == oid)
        if names:
            row["stated_name_hits"].append(j < len(stated) and stated[j][0] == by_id.get(oid))
        follows = False
        if pointed is not None and final is not None and pointed in objects:
            follows = target_hit(final[h], pointed, objects)
        row["motion_follows_prefix"].append(bool(follows))


def _score_rerank(
    row: dict[str, Any], ctx: dict[str, Any], grounded, i: int, ep, align: bool, centre_height_m: float, where: str
) -> None:
    """Score how request ``i`` of a `generate_motion_grounded` batch was chosen, per scored (hand, target)
    pair: ``rerank_box_hits``: the box the model answered for the hand's named object points at the target
    (its centre nearest the target's box centre among the objects in view); ``rerank_first_hits``: the first
    sample (no choice) ends at the target; ``rerank_any_hits``: some sample does (the choice's ceiling);
    ``rerank_view_hits`` / ``rerank_table_hits``: the sample the model's boxes choose in the image / on the
    table ends at the target (whichever space the kept one was chosen in); ``rerank_true_box_view_hits`` /
    ``rerank_true_box_table_hits``: the same with the TRUE target box (perfect grounding: what the model's
    boxes cost, and what each space costs); ``rerank_true_centre_hits``: the sample nearest the target's
    true centre (where it is at the end) along the table. The row's ``rerank`` keeps the boxes, the space and
    index of the kept sample, every sample's final wrists (metres, camera frame) and the object points."""
    boxes, ends = grounded.boxes[i], grounded.candidate_ends[i]
    in_view = {int(o["object_id"]): box
               for o, box in objects_in_view(scene_objects(ctx["ground_truth"], where), ep.camera, align)}  # fmt: skip
    objects, hands = ctx["objects"], list(ctx["hands"])
    plane = support_plane_in_camera(ep.camera)
    pts = object_points_from_boxes(boxes, ep.camera, align, plane, centre_height_m)
    row["rerank"] = {
        "boxes": boxes,
        "chosen": int(grounded.chosen[i]),
        "space": grounded.space[i],
        "samples": int(len(ends)),
        "final_wrists_m": np.round(ends, 4).tolist(),
        "object_points_m": {h: None if p is None else np.round(p, 4).tolist() for h, p in pts.items()},
        "places": grounded.places[i],
    }
    keys = ("box", "first", "any", "view", "table", "true_box_view", "true_box_table", "true_centre")
    for key in keys:
        row[f"rerank_{key}_hits"] = []
    view = points_in_view(ends.reshape(-1, 3), ep.camera, align).reshape(*ends.shape[:2], 2)
    k_view, _ = choose_by_boxes(view, hands, boxes)
    k_table = choose_sample(ends, view, hands, boxes, pts, plane)[0]  # the image's choice when nothing is placed
    for h, oid in ctx["pairs"]:
        j = hands.index(h)
        hit = {"box": nearest_box(boxes.get(h), in_view) == oid, "first": target_hit(ends[0, j], oid, objects),
               "any": any(target_hit(e[j], oid, objects) for e in ends),
               "view": target_hit(ends[k_view, j], oid, objects), "table": target_hit(ends[k_table, j], oid, objects),
               "true_box_view": False, "true_box_table": False}  # fmt: skip
        if oid in in_view:
            k, _ = choose_by_boxes(view[:, [j]], [h], {h: in_view[oid]})
            hit["true_box_view"] = target_hit(ends[k, j], oid, objects)
            p = object_points_from_boxes({h: in_view[oid]}, ep.camera, align, plane, centre_height_m)
            k, _ = choose_by_points(ends[:, [j]], [h], p, along_plane=plane)
            hit["true_box_table"] = target_hit(ends[k, j], oid, objects)
        k, _ = choose_by_points(ends[:, [j]], [h], {h: objects[oid]}, along_plane=plane)
        hit["true_centre"] = target_hit(ends[k, j], oid, objects)
        for key in keys:
            row[f"rerank_{key}_hits"].append(bool(hit[key]))


#: where `evaluate_handworld` / `evaluate_counterfactual` take a place-stating model's places from
PLACES_FROM = ("answer", "grounding")


def _check_places_from(where: str, places_from: str, config, rerank_samples: int) -> None:
    """The evaluations' ``places_from``: one of `PLACES_FROM`; "grounding" needs a model that states places
    and greedy decoding."""
    if places_from not in PLACES_FROM:
        raise ConfigError(f"{where}: places_from: expected one of {PLACES_FROM}, got {places_from!r}")
    if places_from == "grounding" and (place_frame(config) is None or rerank_samples):
        raise ConfigError(
            f"{where}: places_from='grounding' states the places a model answers to grounding questions: it needs "
            "a model whose motion answers state places (motion_answer_prefix target_places / hand_places) and "
            "greedy decoding (rerank_samples 0)"
        )


def _check_motion_from(where: str, motion_from: str, rerank_samples: int) -> None:
    """The evaluations' ``motion_from``: one of ``MOTION_SOURCES``; "places" needs ``rerank_samples`` >= 1."""
    if motion_from not in MOTION_SOURCES:
        raise ConfigError(f"{where}: motion_from: expected one of {MOTION_SOURCES}, got {motion_from!r}")
    if motion_from != "image" and not rerank_samples:
        raise ConfigError(
            f"{where}: motion_from='places' asks the model where the objects are first: give "
            "rerank_samples >= 1 (1: the greedy answer from the places)"
        )


def paired_target_hits(rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]]) -> dict[str, Any]:
    """Two decodings of the same episodes (`evaluate_handworld` rows) compared on their common (hand,
    target) pairs: b's ``won`` / ``lost`` pairs against a and the exact McNemar ``p``
    (`handvla.stats.paired_comparison`)."""
    b_hits = {r["episode"]: r["target_hits"] for r in rows_b}
    a, b = [], []
    for r in rows_a:
        other = b_hits.get(r["episode"])
        if other is not None and len(other) == len(r["target_hits"]):
            a += r["target_hits"]
            b += other
    return paired_comparison(a, b)


def _summarise_rerank(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The rates of `_score_rerank` over the rows that have them ({} when decoding did not rerank)."""
    scored = [r for r in rows if "rerank_box_hits" in r]
    if not scored:
        return {}
    return {
        "rerank": {
            "samples": max(r["rerank"]["samples"] for r in scored),
            "from_places": sum(bool(r["rerank"].get("places")) for r in scored),  # requests made from places
            "chosen_in": dict(Counter(r["rerank"]["space"] for r in scored)),  # requests per space of the choice
            **rate_summary([h for r in scored for h in r["rerank_box_hits"]], "box_points_at_target"),
            **rate_summary([h for r in scored for h in r["rerank_first_hits"]], "first_sample_target_accuracy"),
            **rate_summary([h for r in scored for h in r["rerank_any_hits"]], "any_sample_target_accuracy"),
            **rate_summary([h for r in scored for h in r["rerank_view_hits"]], "view_choice_target_accuracy"),
            **rate_summary([h for r in scored for h in r["rerank_table_hits"]], "table_choice_target_accuracy"),
            **rate_summary(
                [h for r in scored for h in r["rerank_true_box_view_hits"]], "true_box_view_choice_target_accuracy"
            ),
            **rate_summary(
                [h for r in scored for h in r["rerank_true_box_table_hits"]], "true_box_table_choice_target_accuracy"
            ),
            **rate_summary([h for r in scored for h in r["rerank_true_centre_hits"]], "true_centre_choice_target_accuracy"),
        }
    }


def _score_input_free(row: dict[str, Any], ctx: dict[str, Any], ref: TrainingReference) -> None:
    """Add the constant / template / rig_template / retrieval baselines' target hits and final-wrist
    errors to ``row`` (a hand the baseline has no prediction for misses its targets)."""
    text, n, hands = row["task"], ctx["n"], ctx["hands"]
    template = instruction_template(text, ctx["ground_truth"])
    row["template"] = template
    preds: dict[str, dict[str, np.ndarray | None]] = {name: {} for name in INPUT_FREE_BASELINES}
    fallbacks, retrieved = {"template": 0, "rig_template": 0}, []
    for h in hands:
        preds["constant"][h] = ref.constant(h, n)
        p, seen = ref.template_mean(template, h, n)
        preds["template"][h] = p
        fallbacks["template"] += int(not seen)
        p, seen = ref.rig_template_mean(template, row["rig"], h, n)
        preds["rig_template"][h] = p
        fallbacks["rig_template"] += int(not seen)
        i = ref.retrieve_nearest(text, h)
        e = None if i is None else ref.entries[i]
        preds["retrieval"][h] = None if e is None else final_wrist_at(e.wrist[h], e.valid[h], n)
        retrieved.append(None if e is None else e.key)
    scored = {}
    for name, pred in preds.items():
        scored[name] = {
            "target_hits": [
                pred[h] is not None and target_hit(pred[h], oid, ctx["objects"]) for h, oid in ctx["pairs"]
            ],
            "final_wrist_error_m": _mean([_dist(pred[h], ctx["true_final"][h]) for h in hands]),
        }
    for name, k in fallbacks.items():
        scored[name]["fallbacks"] = k
    scored["retrieval"]["episodes"] = retrieved
    row["baselines"] = {**scored, **row["baselines"]}


# ---- motion translation ---------------------------------------------------------------------------------


def _translation_hits(text: str, gt: dict[str, Any]) -> tuple[list[bool], bool | None]:
    """(per target: ``text`` names its colour and noun; ``text`` names the task's direction and no other,
    None when the task has no direction)."""
    hits = [names_object(text, t["colour"], t["noun"]) for t in gt.get("targets", []) if "colour" in t]
    direction = (gt.get("task_params") or {}).get("direction")
    return hits, (None if direction is None else direction_hit(text, str(direction)))


def _translation_rates(rows: list[dict[str, Any]], hits_key: str, dir_key: str) -> dict[str, Any]:
    hits = [h for r in rows for h in r[hits_key]]
    dirs = [r[dir_key] for r in rows if r[dir_key] is not None]
    return {
        "target_pairs": len(hits),
        **_rate(hits, "translation_target_accuracy"),
        "direction_episodes": len(dirs),
        **_rate(dirs, "translation_direction_accuracy"),
    }


def _evaluate_translation(
    model,
    processor,
    items,
    ref: TrainingReference | None,
    batch_size: int,
    seed,
    max_tokens: int,
    progress: bool,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Motion -> text (greedy, `translate_motion`) for ``items`` (k, ep, mode, seconds, image, true motion
    ids (seconds, hands, ids_per_block)); scored on the episode's target objects and direction, next to a
    constant text (the training set's most frequent target object and direction)."""

    const_text = ref.constant_text() if ref is not None and len(ref) else None
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(items), desc="translate", unit="ep", disable=not progress)
    for b0 in range(0, len(items), batch_size):
        batch = items[b0 : b0 + batch_size]
        texts = translate_motion(
            model,
            processor,
            [it[4] for it in batch],
            [it[5] for it in batch],
            hand_mode=[it[2] for it in batch],
            max_new_tokens=max_tokens,
            seed=seed,
        )
        for (k, ep, mode, seconds, _image, _ids), text in zip(batch, texts):
            gt = ep.ground_truth or {}
            hits, dir_hit = _translation_hits(text, gt)
            row = {
                "episode": k,
                "key": ep.key,
                "hands": mode,
                "seconds": seconds,
                "instruction": ep.tasks[0],
                "text": text,
                "target_hits": hits,
                "direction_hit": dir_hit,
            }
            if const_text is not None:
                row["constant_text_target_hits"], row["constant_text_direction_hit"] = _translation_hits(
                    const_text, gt
                )
            rows.append(row)
        bar.update(len(batch))
    bar.close()
    summary: dict[str, Any] = {
        "episodes": len(rows),
        **_translation_rates(rows, "target_hits", "direction_hit"),
    }
    if const_text is not None:
        summary["baselines"] = {
            "constant_text": {
                "text": const_text,
                **_translation_rates(rows, "constant_text_target_hits", "constant_text_direction_hit"),
            }
        }
    else:
        summary["baselines_skipped"] = "constant_text: no training stores given (train_stores, --train-store)"
    return summary, rows


# ---- contextual prediction ------------------------------------------------------------------------------


def _can_predict(ep, mode: str, F: int) -> bool:
    """Two whole blocks (history, continuation) with a valid frame of every acting hand in each."""
    if ep.num_frames < 2 * F:
        return False
    return all(
        np.asarray(ep.hands[h].valid[:F]).any() and np.asarray(ep.hands[h].valid[F : 2 * F]).any()
        for h in hands_for_mode(mode)
    )


def _evaluate_prediction(
    model, processor, mt, items, align: bool, size, batch_size: int, seed, progress: bool
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Contextual prediction (`predict_motion`, greedy): the true first second as motion ids in the prompt,
    the frame at 1 s as the image, the next second generated; scored (MPJPE / MWTE, camera frame, mm)
    against the true second second, next to a constant-velocity continuation of the true history, the
    history's last pose held still, and the tokenizer floor (the true second second encoded + decoded)."""

    F = int(mt.config.frames_per_block)
    kinds = ("model", "constant_velocity", "hold_last", "tokenizer_floor")
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(items), desc="predict", unit="ep", disable=not progress)
    for b0 in range(0, len(items), batch_size):
        batch = items[b0 : b0 + batch_size]
        images, tasks, modes, history = [], [], [], []
        for _k, ep, mode in batch:
            hands = hands_for_mode(mode)
            history.append(np.stack([mt.encode_motion(ep.hands[h].slice(0, F)).ids for h in hands], 1))
            images.append(prepare_image(ep.video[F], ep.camera.K, align, size))
            tasks.append(ep.tasks[0])
            modes.append(mode)
        gen = predict_motion(model, processor, images, tasks, history, seconds=1, hand_mode=modes, seed=seed)
        for i, (k, ep, mode) in enumerate(batch):
            errs: dict[str, dict[str, list[float]]] = {kd: {"mpjpe_mm": [], "mwte_mm": []} for kd in kinds}
            for j, h in enumerate(hands_for_mode(mode)):
                truth = ep.hands[h].slice(F, 2 * F)
                tj = mt.motion_joints(truth)
                cands = {
                    "model": mt.decode_motion(gen.motion[i][:, j], side=h, betas=truth.betas, num_frames=F),
                    "constant_velocity": constant_velocity(ep.hands[h].slice(0, F), F),
                    "hold_last": constant_velocity(ep.hands[h].slice(0, F), F, hold=True),
                    "tokenizer_floor": mt.decode_motion(mt.encode_motion(truth), betas=truth.betas),
                }
                for kd, motion in cands.items():
                    joints = mt.motion_joints(motion)
                    errs[kd]["mpjpe_mm"].append(mpjpe(joints, tj, truth.valid))
                    errs[kd]["mwte_mm"].append(mwte(joints, tj, truth.valid))
            rows.append(
                {
                    "episode": k,
                    "key": ep.key,
                    "hands": mode,
                    **{kd: {m: _mean(v) for m, v in errs[kd].items()} for kd in kinds},
                }
            )
        bar.update(len(batch))
    bar.close()
    summary: dict[str, Any] = {"episodes": len(rows), "history_seconds": 1, "seconds": 1}
    for kd in kinds:
        summary[kd] = {m: _mean([r[kd][m] for r in rows]) for m in ("mpjpe_mm", "mwte_mm")}
    return summary, rows


# ---- instruction following ------------------------------------------------------------------------------


def _object_phrase(obj: dict[str, Any]) -> str:

    return f"the {object_name(obj)}"


def counterfactual_scene(ground_truth: dict | None) -> tuple[dict[int, dict[str, Any]], int, str] | None:
    """(the scene's objects by id, the target's id, its hand) when an episode's ground truth suits the
    counterfactual evaluation: one one-hand target among two or more objects whose names (`_object_phrase`)
    are unique in the scene, so that words can single each out; else None."""
    gt = ground_truth or {}
    objs = {int(o["object_id"]): o for o in (gt.get("scene") or {}).get("objects", [])}
    targets = [t for t in gt.get("targets", []) if int(t["object_id"]) in objs]
    if len(objs) < 2 or len(targets) != 1 or len(gt.get("acting_hands", [])) != 1:
        return None
    names = [_object_phrase(o) for o in objs.values()]
    if len(set(names)) != len(names):
        return None
    return objs, int(targets[0]["object_id"]), targets[0]["hand"]


def counterfactual_other(objs: dict[int, Any], target: int) -> int:
    """The other object a counterfactual request names: the next object id after the target's (cyclic)."""
    ids = sorted(objs)
    return ids[(ids.index(target) + 1) % len(ids)]


def counterfactual_task(hand: str, obj: dict[str, Any]) -> str:
    """The counterfactual evaluation's instruction: "move your left hand to the red cube"."""
    return f"move your {hand} hand to {_object_phrase(obj)}"


@torch.no_grad()
def evaluate_counterfactual(
    bundle,
    store,
    max_episodes: int | None = None,
    seconds: int = 2,
    batch_size: int = 8,
    align: bool | None = None,
    image_size: tuple[int, int] | None = None,
    rerank_samples: int = 0,
    rerank_temperature: float = 1.0,
    rerank_space: str = "table",
    object_centre_height_m: float = 0.03,
    seed: int | None = 0,
    motion_from: str = "image",
    places_from: str = "answer",
) -> dict[str, Any]:
    """Instruction following, measured by asking for ANOTHER object of the same scene.

    For each HandWorld episode with a one-hand target among two or more objects whose names are unique in
    the scene, the model gets the episode's first image twice, with "move your {hand} hand to {object}"
    naming (a) the episode's own target and (b) the next other object; each generated final wrist is scored
    against the object it was asked for (objects where the scene placed them). A model that reads the
    instruction reaches both; one that ignores it goes to the same place twice and scores (b) near 0.
    Returns the two target accuracies with Wilson 95 % intervals, ``chance`` (mean 1 / objects),
    ``same_end_point_rate`` (both requests end nearest the same object) and per-request rows. For a model
    with an answer prefix (``HandVLAConfig.motion_answer_prefix``) also the rates of
    `_counterfactual_prefix_scores`: whether its stated boxes point at the asked object, and whether its
    motion follows a stated box that contradicts the instruction. ``rerank_samples`` > 0: each request is
    decoded best of that many by the model's own box for the asked object (`generate_motion_grounded`, as
    `evaluate_handworld`'s options of the same names) instead of greedily (no prefix scores then);
    ``motion_from`` "places" makes each request's motion from the model's box for the asked object instead of
    the image (``rerank_samples`` 1: greedily). ``places_from`` "grounding" (a model that states places): each
    request's answer states the place the model answers to the grounding question about the asked object
    (`grounded_place_prefixes`: ground, then act).
    """

    model, processor, mt = bundle.model, bundle.processor, bundle.motion_tokenizer
    if mt is None:
        raise ConfigError("evaluate_counterfactual: the VLA bundle has no motion tokenizer to decode motion with")
    if rerank_space not in RERANK_SPACES:
        raise ConfigError(f"evaluate_counterfactual: rerank_space: expected one of {RERANK_SPACES}, got {rerank_space!r}")
    _check_motion_from("evaluate_counterfactual", motion_from, rerank_samples)
    _check_places_from("evaluate_counterfactual", places_from, bundle.model.config, rerank_samples)
    st = store if isinstance(store, EpisodeStore) else EpisodeStore(store)
    align = model_alignment(model.config) if align is None else bool(align)
    size = tuple(image_size) if image_size else model_image_size(model.config, processor)
    prefix = text_prefix_tokens(model.config) > 0 and not rerank_samples  # HandVLAConfig.motion_answer_prefix
    places = place_prefix_places(model.config) > 0 and not rerank_samples
    frame = place_frame(model.config)
    names = names_places(model.config)  # the stated place after the object's name
    reqs, stated = [], []
    for k in range(len(st) if max_episodes is None else min(len(st), int(max_episodes))):
        ep = st.load_episode(k, with_video=True)
        scene = counterfactual_scene(ep.ground_truth)
        if scene is None:
            continue
        objs, tg, hand = scene
        other = counterfactual_other(objs, tg)
        positions = object_positions_camera(ep, 0)
        image = prepare_image(ep.video[0], ep.camera.K, align, size)
        boxes = {int(o["object_id"]): box for o, box in objects_in_view(list(objs.values()), ep.camera, align)}
        for which, oid in (("factual", tg), ("counterfactual", other)):
            task = counterfactual_task(hand, objs[oid])
            reqs.append({"episode": k, "rig": ep.rig, "which": which, "object_id": oid, "hand": hand, "task": task,
                         "image": image, "objects": positions, "boxes": boxes,
                         "name": object_name(objs[oid]), "camera": ep.camera})  # fmt: skip
        if prefix and other in boxes:  # the own target asked for, the other object's box stated
            stated.append({**reqs[-2], "which": "stated_other", "object_id": other, "asked_id": tg,
                           "prefix": grounding_prefix([(object_name(objs[other]), boxes[other])])})  # fmt: skip
        elif places and other in boxes:  # the own target asked for, the other object's place stated
            stated.append({**reqs[-2], "which": "stated_other", "object_id": other, "asked_id": tg,
                           "prefix": stated_places_text([place_ids(in_place_frame(positions[other], hand, frame), mt)],
                                                        [object_name(objs[other])] if names else None)})  # fmt: skip
    was = model.training
    model.eval()
    said: list[str] = []
    if rerank_samples and reqs:  # best of k by the model's box for the asked object
        wrists_l = []
        for b in range(0, len(reqs), batch_size):
            part = reqs[b : b + batch_size]
            g = generate_motion_grounded(
                model, processor, mt, [r["image"] for r in part], [r["task"] for r in part], seconds,
                [r["hand"] for r in part], objects=[{r["hand"]: r["name"]} for r in part],
                cameras=[r["camera"] for r in part], align=align, samples=int(rerank_samples),
                temperature=rerank_temperature, seed=seed, object_centre_height_m=object_centre_height_m,
                support_planes=[support_plane_in_camera(r["camera"]) if rerank_space == "table" else None
                                for r in part], motion_from=motion_from,
            )  # fmt: skip
            wrists_l += [g.candidate_ends[i][g.chosen[i], 0] for i in range(len(part))]
        wrists = np.stack(wrists_l)
    else:
        starts = None
        if places_from == "grounding":  # each request's place: the model's grounding answer for the object it names
            starts = grounded_place_prefixes(model, processor, mt, [r["image"] for r in reqs],
                                             [{r["hand"]: r["name"]} for r in reqs], [r["hand"] for r in reqs])[0]  # fmt: skip
        wrists, said = final_wrists_and_texts(bundle, [r["image"] for r in reqs], [r["task"] for r in reqs],
                                              [r["hand"] for r in reqs], seconds, batch_size, prefixes=starts)  # fmt: skip
    forced = final_wrist_positions(bundle, [r["image"] for r in stated], [r["task"] for r in stated],
                                   [r["hand"] for r in stated], seconds, batch_size,
                                   prefixes=[r["prefix"] for r in stated]) if stated else []  # fmt: skip
    model.train(was)
    out: dict[str, Any] = {"episodes": sum(r["which"] == "factual" for r in reqs), "seconds": int(seconds)}
    if rerank_samples:
        out["rerank"] = {"samples": int(rerank_samples), "temperature": rerank_temperature, "space": rerank_space,
                         "motion_from": motion_from}  # fmt: skip
    rows, summary = counterfactual_scores(wrists, reqs)
    out.update(summary)
    if prefix:
        out.update(_counterfactual_prefix_scores(rows, reqs, said, stated, forced))
    if places:
        out.update(_counterfactual_place_scores(rows, reqs, said, mt, stated, forced, frame))
    return {"summary": out, "rows": rows}


def _counterfactual_place_scores(rows, reqs, said, mt, stated, forced, frame) -> dict[str, Any]:
    """For a model that states places (``motion_answer_prefix`` "target_places" / "hand_places", their frame
    ``frame``): whether each answer's first stated place points at the asked object (the object whose image
    place is nearest, among the scene's,
    `nearest_object_by_ray`), per request kind (``factual_place_accuracy``, ``counterfactual_...``), and
    whether the motion ends at the object its place points at (``..._motion_follows_place_rate``); over the
    ``stated`` requests (the episode's own target asked for, the OTHER object's true place made the answer's
    start), how often the motion ends at the stated object (``stated_object_accuracy``) and at the asked one
    (``asked_object_accuracy_when_other_stated``)."""
    out: dict[str, Any] = {"stated_other_requests": len(stated)}
    out.update(rate_summary([target_hit(w, r["object_id"], r["objects"]) for r, w in zip(stated, forced)],
                            "stated_object_accuracy"))  # fmt: skip
    out.update(rate_summary([target_hit(w, r["asked_id"], r["objects"]) for r, w in zip(stated, forced)],
                            "asked_object_accuracy_when_other_stated"))  # fmt: skip
    for which in ("factual", "counterfactual"):
        right, follows = [], []
        for row, r, text in zip(rows, reqs, said):
            if r["which"] != which:
                continue
            row["answer_prefix"] = text
            places = parse_places(text, mt.layout)
            point = in_place_frame(place_point(places[0], mt.config), r["hand"], frame) if places else None
            pointed = nearest_object_by_ray(point, r["objects"]) if places else None
            right.append(pointed == r["object_id"])
            follows.append(pointed is not None and row.get("nearest") == pointed)
        out.update(rate_summary(right, f"{which}_place_accuracy"))
        out.update(rate_summary(follows, f"{which}_motion_follows_place_rate"))
    return out


def _counterfactual_prefix_scores(rows, reqs, said, stated, forced) -> dict[str, Any]:
    """For a model with an answer prefix: whether each answer's stated box (under the asked object's name)
    points at the asked object, per request kind (``factual_prefix_accuracy``, ``counterfactual_...``), the
    asked object's accuracy split by that (``factual_accuracy_when_prefix_right`` / ``_wrong``: equal when
    the motion ignores what the answer stated), and,
    over the ``stated`` requests (the episode's own target asked for, the OTHER object's box made the
    answer's start), how often the motion ends at the stated object (``stated_object_accuracy``) and at the
    asked one (``asked_object_accuracy_when_other_stated``)."""
    out: dict[str, Any] = {}
    for which in ("factual", "counterfactual"):
        right, reached = [], []
        for row, r, text in zip(rows, reqs, said):
            if r["which"] == which:
                row["answer_prefix"] = text
                right.append(pointed_object(text, r["name"], r["boxes"]) == r["object_id"])
                reached.append(row["hit"])
        out.update(rate_summary(right, f"{which}_prefix_accuracy"))
        # does the motion depend on what was stated? the asked object reached, given the box right / not
        for given, keep in (("right", True), ("wrong", False)):
            hits = [h for h, ok in zip(reached, right) if ok == keep]
            out.update(rate_summary(hits, f"{which}_accuracy_when_prefix_{given}"))
    out["stated_other_requests"] = len(stated)
    out.update(rate_summary([target_hit(w, r["object_id"], r["objects"]) for r, w in zip(stated, forced)],
                            "stated_object_accuracy"))  # fmt: skip
    out.update(rate_summary([target_hit(w, r["asked_id"], r["objects"]) for r, w in zip(stated, forced)],
                            "asked_object_accuracy_when_other_stated"))  # fmt: skip
    return out


def counterfactual_scores(end_points, reqs: list[dict]) -> tuple[list[dict], dict[str, Any]]:
    """Score end points (metres, camera frame, one per request) of counterfactual request pairs.

    ``reqs`` alternate factual / counterfactual per scene, each with ``which``, ``object_id`` and ``objects``
    ({object id: position}). Returns per-request rows (``hit``, ``nearest``, ...) and the summary:
    the two target accuracies with Wilson 95 % intervals, ``chance`` (mean 1 / objects) and
    ``same_end_point_rate`` (both requests of a scene end nearest the same object).
    """
    rows = []
    for r, w in zip(reqs, end_points):
        d = {oid: float(np.linalg.norm(np.asarray(w) - p)) for oid, p in r["objects"].items()}
        rows.append({"episode": r.get("episode"), "rig": r.get("rig"), "which": r["which"], "task": r.get("task"),
                     "hit": target_hit(w, r["object_id"], r["objects"]), "nearest": min(d, key=d.get),
                     "n_objects": len(r["objects"]), "final_wrist_m": np.round(np.asarray(w, float), 4).tolist()})  # fmt: skip
    fac = [r for r in rows if r["which"] == "factual"]
    cf = [r for r in rows if r["which"] == "counterfactual"]
    same = [a["nearest"] == b["nearest"] for a, b in zip(fac, cf)]
    out: dict[str, Any] = {}
    out.update(rate_summary([r["hit"] for r in fac], "named_target_accuracy"))
    out.update(rate_summary([r["hit"] for r in cf], "other_object_accuracy"))
    out["chance"] = _mean([1.0 / r["n_objects"] for r in cf])
    out["same_end_point_rate"] = _mean([float(x) for x in same])
    return rows, out


# ---- reporting ------------------------------------------------------------------------------------------


def _fmt(x, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def _fmt_ci(ci) -> str:
    return "-" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def format_summary_table(name: str, summary: dict[str, Any]) -> str:
    """A plain-text table of one store's summary: the model, its input-free baselines, the tokenizer floor
    and the oracle (target accuracy with its Wilson 95 % interval, final-wrist error in metres), the
    answer-prefix rates of a model that states its targets first, best of k by the model's own boxes
    (``summary.reranked``, `handvla vla-eval --rerank-samples`), then translation and prediction when they
    were scored."""
    lines = [
        f"{name}: {summary.get('episodes', 0)} episodes, {summary.get('target_pairs', 0)} (hand, target) pairs",
        f"  {'':<18}{'target acc':>11}  {'95% CI':<17}{'final wrist err m':>18}",
    ]

    def line(label, acc, ci, err=None):
        lines.append(f"  {label:<18}{_fmt(acc):>11}  {_fmt_ci(ci):<17}{_fmt(err):>18}")

    line(
        "model",
        summary.get("target_accuracy"),
        summary.get("target_accuracy_ci95"),
        summary.get("final_wrist_error_m"),
    )
    for b, v in (summary.get("baselines") or {}).items():
        line(b, v.get("target_accuracy"), v.get("target_accuracy_ci95"), v.get("final_wrist_error_m"))
    line(
        "oracle (true)",
        summary.get("oracle_target_accuracy"),
        summary.get("oracle_target_accuracy_ci95"),
        0.0,
    )
    line("chance", summary.get("chance_target_accuracy"), None)
    for key, label in (
        ("prefix_target_accuracy", "stated box right"),
        ("motion_follows_prefix_rate", "motion at the box"),
        ("stated_name_accuracy", "stated name right"),
        ("end_place_accuracy", "stated end right"),
        ("motion_follows_end_place_rate", "motion at the end"),
    ):  # models whose answers state their targets first (HandVLAConfig.motion_answer_prefix)
        if key in summary:
            line(label, summary[key], summary.get(f"{key}_ci95"))
    for task, t in (summary.get("per_task") or {}).items():  # by HandWorld task type (oracle: the true end)
        line(f"  {task} ({t['target_pairs']})", t.get("target_accuracy"), t.get("target_accuracy_ci95"))
    rr = summary.get("reranked")  # handvla vla-eval --rerank-samples
    if rr:
        k = (rr.get("rerank") or {}).get("samples")
        spaces = (rr.get("rerank") or {}).get("chosen_in") or {}
        space = max(spaces, key=spaces.get) if spaces else ""
        label = f"best of {k} by box, {space}" if space else f"best of {k} by box"
        if rr.get("motion_from") == "places":
            label = f"from its places, {label}" if k != 1 else "from its places"
        line(label, rr.get("target_accuracy"), rr.get("target_accuracy_ci95"), rr.get("final_wrist_error_m"))
        pv = rr.get("paired_vs_greedy")
        if pv:
            lines.append(f"    vs the model above: {pv['won']} pairs won, {pv['lost']} lost (exact McNemar p {pv['p']:.2g})")
        for key, label in (
            ("first_sample_target_accuracy", "  one sample"),
            ("any_sample_target_accuracy", f"  any of {k}"),
            ("box_points_at_target", "  its box right"),
            ("view_choice_target_accuracy", "  chosen in the image"),
            ("table_choice_target_accuracy", "  chosen on the table"),
            ("true_box_view_choice_target_accuracy", "  true box, image"),
            ("true_box_table_choice_target_accuracy", "  true box, table"),
            ("true_centre_choice_target_accuracy", "  true centre, table"),
        ):
            line(label, rr["rerank"].get(key), rr["rerank"].get(f"{key}_ci95"))
    if summary.get("baselines_skipped"):
        lines.append(f"  (skipped: {summary['baselines_skipped']})")
    tr = summary.get("translation")
    if tr:
        lines.append(
            f"  {'translation (' + str(tr['episodes']) + ' episodes)':<28}{'target acc':>11}  {'95% CI':<17}"
            f"{'direction acc':>14}  95% CI"
        )
        for label, v in [("model", tr)] + list((tr.get("baselines") or {}).items()):
            lines.append(
                f"    {label:<26}{_fmt(v.get('translation_target_accuracy')):>11}  "
                f"{_fmt_ci(v.get('translation_target_accuracy_ci95')):<17}"
                f"{_fmt(v.get('translation_direction_accuracy')):>14}  "
                f"{_fmt_ci(v.get('translation_direction_accuracy_ci95'))}"
            )
    pr = summary.get("prediction")
    if pr:
        lines.append(
            f"  {'prediction (' + str(pr['episodes']) + ' episodes, 1 s after 1 s)':<40}{'MPJPE mm':>10}{'MWTE mm':>10}"
        )
        for kd in ("model", "constant_velocity", "hold_last", "tokenizer_floor"):
            v = pr.get(kd) or {}
            lines.append(
                f"    {kd:<38}{_fmt(v.get('mpjpe_mm'), '.1f'):>10}{_fmt(v.get('mwte_mm'), '.1f'):>10}"
            )
    for key, label in (("counterfactual", "greedy"), ("counterfactual_reranked", "best of k by box")):
        cf = summary.get(key)  # handvla vla-eval --counterfactual (--rerank-samples K)
        if cf:
            if key == "counterfactual":
                lines.append(f"  {'counterfactual (' + str(cf['episodes']) + ' scenes)':<28}{'own target':>11}  "
                             f"{'95% CI':<17}{'other object':>13}  {'95% CI':<17}{'same end':>9}")  # fmt: skip
            if "rerank" in cf:
                label = f"best of {cf['rerank']['samples']}, {cf['rerank']['space']}"
                if cf["rerank"].get("motion_from") == "places":
                    label = "from its places" + (f", {label}" if cf["rerank"]["samples"] != 1 else "")
            lines.append(
                f"    {label:<26}{_fmt(cf.get('named_target_accuracy')):>11}  "
                f"{_fmt_ci(cf.get('named_target_accuracy_ci95')):<17}{_fmt(cf.get('other_object_accuracy')):>13}  "
                f"{_fmt_ci(cf.get('other_object_accuracy_ci95')):<17}{_fmt(cf.get('same_end_point_rate')):>9}"
            )
    return "\n".join(lines)


def evaluate_checkpoint(
    ckpt: str | Path,
    stores: dict[str, str | Path],
    train_stores: Sequence[str | Path] | None = None,
    **kwargs,
) -> dict[str, Any]:
    """Load a VLA checkpoint and `evaluate_handworld` it on each named store. ``train_stores`` (default:
    the stores of the checkpoint's ``pretrain_config.json``, when found) fit the input-free baselines."""

    bundle = load_vla(ckpt)
    vf, note = 0.0, None
    if train_stores is None:
        train_stores, vf, note = checkpoint_training_stores(ckpt)
    ref = load_training_reference(list(train_stores), vf) if train_stores else None
    out = {}
    for name, path in stores.items():
        out[name] = evaluate_handworld(bundle, path, train_stores=ref, **kwargs)
        if ref is None and note:
            out[name]["summary"]["baselines_skipped"] = f"{' / '.join(INPUT_FREE_BASELINES)}: {note}"
    return out


__all__ = [
    "counterfactual_other",
    "counterfactual_scene",
    "counterfactual_task",
    "evaluate_checkpoint",
    "evaluate_counterfactual",
    "evaluate_handworld",
    "format_summary_table",
    "hand_mode_of",
    "model_alignment",
    "object_positions_camera",
    "target_hit",
]
