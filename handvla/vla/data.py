"""Training samples of the motion VLA: the three instruction task types, tokenized and ready to collate.

Task types (Being-H0's physical instruction data, docs/being-h0-reference.md sections 1 and 7):

- ``generation`` (instructed motion generation): image + instruction + duration + hand mode -> motion
  blocks (answer);
- ``translation`` (motion translation): image + motion blocks in the prompt -> text (answer);
- ``prediction`` (contextual motion prediction): image + history blocks in the prompt -> the next blocks.

Beside them, off by default, one auxiliary type: ``grounding`` ("In <image>, where is the red cube?" -> the
object's box in InternVL's format, ``handvla.vla.grounding``), ``data.grounding`` questions per task sample
from episodes whose scene is known (HandWorld), drawn after the balancing.

Where samples come from (`collect_samples`):

- an instruction manifest (``handvla.language.instructions``, ``.jsonl`` / ``.parquet``): each record names the
  store, episode, target span, hands, task type and the filled prompt / answer text;
- or, without a manifest, straight from the episodes of the stores: the episode's task text with the
  reference prompts of ``handvla.vla.processing`` (`generation_prompt`, `translation_prompt`,
  `continuation_prompt`) over windows that start at the episode start (generation, translation) or at
  every whole second after a history (prediction).

Images: the episode frame at the sample's ``image_s`` (the start of the target span). With alignment on,
it is warped to the canonical camera (``handvla.camera``) from the episode's own intrinsics
(`warp_to_canonical`, the weak-perspective alignment: 3D motion is unchanged, only the image moves); both
with and without alignment the image is then ``image_size`` pixels (default one square tile, as the
reference resizes to 448 x 448), so both variants cost the same number of visual tokens. Stores built
without video (``video: false``) give motion-only samples: prompts without ``<image>`` (the instruction
builder's motion-only templates, or the ``image=False`` reference prompts), ``image_s`` None and no
``pixel_values``; batches may mix them with image samples (the model replaces only the ``<IMG_CONTEXT>``
embeddings that are there). A prompt with ``<image>`` over a store without video is refused when the
dataset is built, naming the store.

Motion: one block of ``ids_per_block`` ids per hand-second, from the motion tokenizer. Blocks are cut on
the episode's frame grid (a block starting at frame f covers frames [f, f + frames_per_block)), so the
tokens of a window are the tokens of its blocks and overlapping windows share them. Every block a sample
needs is tokenized once when the dataset is built (`MotionTokenCache`: in memory, optionally in an
``.npz`` file keyed by a fingerprint of the tokenizer weights and the stores) - deterministic, so a
resumed run sees the same ids. A block in which the hand has no valid frame is ``-1`` (``<MOT_NOOP>``);
samples whose answer would contain such a block are dropped (the constrained decoder never emits NOOP).
With ``HandVLAConfig.motion_answer_prefix`` "target_boxes", the motion answers of samples with an image
first give the boxes of their hands' targets (`VLAInstructionDataset.answer_text`).

Batches (`VLAInstructionDataset.collate`): plain padding with ``HandVLAProcessor.collate``, or, with
``pack = True``, sequence packing: samples are grouped (first fit, in a seeded order fixed at build time)
into packs of at most ``max_length`` tokens; a pack is one row whose ``position_ids`` restart at 0 at each
sample. With no ``attention_mask`` and no cache, transformers turns restarting position ids into a
block-diagonal causal mask (every attention implementation), so packed samples never see each other; the
loss is unchanged because every sample's first label is -100 (its prompt). The model must be called with
``use_cache=False`` on packed batches (a cache disables the detection); ``handvla.vla.pretrain`` does.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pydantic import Field, field_validator
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from handvla.atomic import atomic_savez
from handvla.camera import warp_to_canonical
from handvla.config import ConfigModel
from handvla.data.schema import camera_from_row
from handvla.data.store import EpisodeStore
from handvla.errors import ConfigError, InputError
from handvla.language.instructions.build import read_manifest
from handvla.language.instructions.sampling import InstructionBalanceConfig, balanced_sample
from handvla.language.instructions.templates import TASK_TYPES
from handvla.vla.grounding import (
    PLACE_VIEWS,
    box_token_map,
    grounding_prefix,
    grounding_question_name,
    grounding_questions,
    object_name,
    parse_grounding_answer,
    scene_objects,
    stated_box,
    stated_places,
    target_grounding,
)
from handvla.vla.places import (
    in_place_frame,
    names_places,
    object_centre_in_camera,
    place_frame,
    place_ids,
    place_text,
    stated_places_text,
    states_end_places,
    target_centres,
)
from handvla.vla.processing import (
    IGNORE_INDEX,
    IMAGE_PLACEHOLDER,
    MOTION_PLACEHOLDER,
    EncodedSample,
    HandVLAProcessor,
    collate_image_token_targets,
    continuation_prompt,
    generation_prompt,
    hands_for_mode,
    place_images,
    place_prompt,
    token_endpoint_rows,
    translation_prompt,
)

#: auxiliary task types, off by default (``data.grounding``): object-grounding questions (``handvla.vla.grounding``)
AUX_TASK_TYPES = ("grounding",)
ALL_TASK_TYPES = TASK_TYPES + AUX_TASK_TYPES
#: UniHand-2.5M proportions: 1.6M generation, 0.4M translation, 0.5M contextual prediction
DEFAULT_TASK_MIX = {"generation": 1.6, "translation": 0.4, "prediction": 0.5}
SIDE_CODE = {"left": 0, "right": 1}
#: fields every instruction-manifest record must have (``handvla.language.instructions.build.make_sample``)
REQUIRED_RECORD_FIELDS = (
    "dataset",
    "episode_index",
    "episode_key",
    "task_type",
    "hands",
    "start_s",
    "end_s",
    "prompt",
)


class VLADataConfig(ConfigModel):
    """Where pretraining samples come from and how they are made (YAML section ``data``)."""

    stores: list[str] = Field(default_factory=list, description="episode store folders (without a manifest)")
    manifest: str | None = Field(None, description="instruction manifest (.jsonl / .parquet); else episodes")
    task_mix: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_TASK_MIX),
        description="relative weight per task type; 0 leaves a type out",
    )
    size: int | None = Field(
        None, gt=0, description="samples to draw, balanced by task_mix (None: every candidate once)"
    )
    seconds: list[int] | None = Field(
        None, description="window lengths in seconds for episode-built samples (None: the whole episode)"
    )
    history_seconds: list[int] = Field(default_factory=lambda: [1], description="prediction history lengths")
    hand_modes: list[str] = Field(default_factory=lambda: ["both", "left", "right"])
    align: bool = Field(True, description="warp images to the canonical camera (weak-perspective alignment)")
    image_size: tuple[int, int] | None = Field(
        None, description="(width, height) of the image given to the model; None: one square tile"
    )
    max_length: int | None = Field(None, gt=0, description="longer samples are dropped; pack length")
    pack: bool = Field(False, description="pack samples into rows of up to max_length tokens")
    cache: str | None = Field(None, description="motion-token cache file (.npz); None: memory only")
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="share of episodes held out for validation")
    grounding: float = Field(
        0.0,
        ge=0.0,
        description="auxiliary object-grounding questions per task sample, from episodes whose scene is known "
        "(HandWorld; handvla.vla.grounding); 0: the reference's three task types only",
    )
    place_motion: float = Field(
        0.0,
        ge=0.0,
        description="image-free 'motion from places' copies per generation sample whose targets are known "
        "(HandWorld): the image in the prompt replaced by the target objects' boxes in the view "
        "(processing.place_prompt), the same motion answer, so that the motion must be read off the stated "
        "place (decoded by generate_motion(places=...)); 0: none (the reference)",
    )
    places_without_image: float = Field(
        0.0,
        ge=0.0,
        description="with model.motion_answer_prefix target_places or hand_places: image-free copies per "
        "generation sample whose targets are known (HandWorld), the prompt's image replaced by the words 'the "
        "scene', the answer still stating the targets' places before the motion, so that the motion must be read "
        "off the stated places (handvla.vla.places); 0: none",
    )
    place_view: str = Field(
        "model",
        description="the view whose boxes the motion-from-places prompts state (grounding.PLACE_VIEWS): 'model' "
        "(the view the model sees: the camera's image, or the canonical camera's with align) or 'canonical' "
        "(the canonical camera's whatever the model sees: one box is one ray on every rig, which a prompt "
        "without the image needs; at inference the model's own boxes are mapped there with the camera's "
        "intrinsics, grounding.box_to_view). Saved in the checkpoint's config",
    )
    seed: int = 0

    @field_validator("place_view")
    @classmethod
    def _check_place_view(cls, v: str) -> str:
        if v not in PLACE_VIEWS:
            raise ValueError(f"expected one of {list(PLACE_VIEWS)}, got {v!r}")
        return v

    @field_validator("task_mix")
    @classmethod
    def _check_mix(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k in v if k not in TASK_TYPES]
        if bad:
            raise ValueError(f"unknown task type(s) {bad}; expected {list(TASK_TYPES)}")
        if any((not math.isfinite(w)) or w < 0 for w in v.values()) or sum(v.values()) <= 0:
            raise ValueError("weights must be >= 0 with at least one positive")
        return v

    @field_validator("hand_modes")
    @classmethod
    def _check_modes(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in ("both", "left", "right")]
        if bad or not v:
            raise ValueError(f"expected a non-empty list of 'both', 'left', 'right', got {v}")
        return v

    @field_validator("seconds", "history_seconds")
    @classmethod
    def _check_seconds(cls, v):
        if v is not None and (not v or any(int(s) != s or s < 1 for s in v)):
            raise ValueError(f"expected whole numbers of seconds >= 1, got {v}")
        return v

    @field_validator("image_size")
    @classmethod
    def _check_size(cls, v):
        if v is not None and (v[0] < 8 or v[1] < 8):
            raise ValueError(f"expected (width, height) of at least 8 x 8 pixels, got {v}")
        return v


@dataclass(frozen=True)
class SampleSpec:
    """One training sample by reference: the motion is tokenized and the image read when it is encoded.

    ``dataset``: index into the dataset's store list; ``episode``: episode index in that store.
    ``start_s``/``end_s``: the target span (seconds from the episode start): the answer motion of generation
    and prediction, the prompt motion of translation. ``history_start_s``: prediction's history span is
    [history_start_s, start_s). ``prompt``: text with ``<image>`` / ``<motion>`` placeholders; ``answer``:
    the text answer of translation (None for motion answers). ``image_s`` None: a motion-only sample (no
    ``<image>`` in the prompt; stores built without video).
    """

    dataset: int
    episode: int
    task_type: str
    hand_mode: str
    start_s: float
    end_s: float
    image_s: float | None
    prompt: str
    answer: str | None = None
    history_start_s: float | None = None
    #: a motion answer that states its targets' places although the prompt has no image
    #: (``VLADataConfig.places_without_image``)
    state_places: bool = False


# ---- images -------------------------------------------------------------------------------------------


def prepare_image(
    frame: np.ndarray | Image.Image,
    K: np.ndarray | Sequence[float] | None,
    align: bool,
    image_size: tuple[int, int],
) -> Image.Image:
    """The model's view of a frame: warped to the canonical camera from intrinsics ``K`` (3x3 or
    (fx, fy, cx, cy), pixels) when ``align``, then ``image_size`` = (width, height) pixels. With ``align``
    and ``K=None`` the frame is taken to be canonical already (only resized)."""
    pil = frame if isinstance(frame, Image.Image) else Image.fromarray(np.asarray(frame, np.uint8))
    size = (int(image_size[0]), int(image_size[1]))
    if align and K is not None:
        return warp_to_canonical(pil.convert("RGB"), K, out_size=size)
    return pil.convert("RGB").resize(size, Image.BILINEAR)


def default_image_size(processor: HandVLAProcessor) -> tuple[int, int]:
    """One square tile of the model (the reference resizes every aligned image to 448 x 448)."""
    return (processor.tile_size, processor.tile_size)


# ---- samples --------------------------------------------------------------------------------------------


def in_split(key: str, val_fraction: float, split: str) -> bool:
    """Stable hash split by episode key: the same episode is in the same split in every process."""
    if split == "all" or val_fraction <= 0:
        return split != "val"
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") / 2**64
    return (h < val_fraction) == (split == "val")


def _episode_candidates(
    store, di: int, k: int, cfg: VLADataConfig, fps: float
) -> dict[str, list[SampleSpec]]:
    row = store.meta(k)
    tasks = [t for t in (row["tasks"] or []) if t and t.strip()]
    if not tasks:
        return {}
    task = tasks[0]
    present = [s for s in ("left", "right") if s in (row["hands"] or [])]
    modes = [m for m in cfg.hand_modes if (m == "both" and len(present) == 2) or m in present]
    whole = int(math.floor(int(row["length"]) / fps + 1e-6))
    if whole < 1:
        return {}
    lengths = sorted({s for s in (cfg.seconds or [whole]) if s <= whole})
    out: dict[str, list[SampleSpec]] = {t: [] for t in TASK_TYPES}
    f = int(fps)
    video = store.camera is not None  # a motion-only store gives motion-only samples (no <image>)
    for mode in modes:
        for s in lengths:
            span = dict(
                dataset=di,
                episode=k,
                hand_mode=mode,
                start_s=0.0,
                end_s=float(s),
                image_s=0.0 if video else None,
            )
            prompt = generation_prompt(task, s, mode, f, image=video)
            out["generation"].append(SampleSpec(task_type="generation", prompt=prompt, **span))
            prompt = translation_prompt(s, mode, f, image=video)
            out["translation"].append(SampleSpec(task_type="translation", prompt=prompt, answer=task, **span))
        for h in cfg.history_seconds:
            futures = cfg.seconds or [whole - h]
            for n in sorted({n for n in futures if n >= 1}):
                for t in range(int(h), whole - int(n) + 1):
                    out["prediction"].append(
                        SampleSpec(
                            dataset=di,
                            episode=k,
                            task_type="prediction",
                            hand_mode=mode,
                            start_s=float(t),
                            end_s=float(t + n),
                            image_s=float(t) if video else None,
                            prompt=continuation_prompt(task, int(h), int(n), mode, f, image=video),
                            history_start_s=float(t - h),
                        )
                    )
    return out


def _open_stores(paths: Sequence[str | Path]) -> list:

    return [EpisodeStore(p) for p in paths]


def collect_samples(
    cfg: VLADataConfig, split: str = "train"
) -> tuple[list[SampleSpec], list[str], dict[str, Any]]:
    """Sample specs of ``split`` ('train', 'val' or 'all'), the store folders they index, and a report.

    With ``cfg.manifest`` the records of the manifest (filtered by task types with a positive weight and by
    ``hand_modes``; ``size`` draws a seeded subset); else candidates from the episodes of ``cfg.stores``,
    balanced over task types by ``task_mix`` (``handvla.language.instructions.sampling.balanced_sample``) when
    ``size`` is given, all of them otherwise.
    """
    if split not in ("train", "val", "all"):
        raise ConfigError(f"collect_samples: split must be 'train', 'val' or 'all', got {split!r}")
    if cfg.manifest:
        specs, dirs, report = _manifest_samples(cfg, split)
        need = cfg.place_motion > 0 or cfg.grounding > 0 or cfg.places_without_image > 0
        stores = _open_stores(dirs) if need else None
        specs, report = _with_place_motion(specs, stores, report, cfg)
        specs, report = _with_places_without_image(specs, stores, report, cfg)
        return _with_grounding(specs, dirs, report, cfg, split, stores)
    if not cfg.stores:
        raise ConfigError("data: give 'stores' (episode store folders) or a 'manifest'")
    stores = _open_stores(cfg.stores)
    weights = {t: w for t, w in cfg.task_mix.items() if w > 0}
    pool: list[SampleSpec] = []
    strata: dict[tuple[str, str], list[int]] = {}
    n_episodes = 0
    for di, store in enumerate(stores):
        fps = float(store.fps)
        for k in range(len(store)):
            row = store.meta(k)
            if not in_split(row["key"], cfg.val_fraction, split):
                continue
            n_episodes += 1
            source = row["source"] or Path(cfg.stores[di]).name
            for t, specs in _episode_candidates(store, di, k, cfg, fps).items():
                if t not in weights:
                    continue
                idx = strata.setdefault((source, t), [])
                idx.extend(range(len(pool), len(pool) + len(specs)))
                pool.extend(specs)
    report: dict[str, Any] = {"episodes": n_episodes, "candidates": len(pool)}
    if cfg.size is not None and pool:
        sel, bal = balanced_sample(
            {k: np.asarray(v, np.int64) for k, v in strata.items()},
            InstructionBalanceConfig(size=int(cfg.size), seed=int(cfg.seed), task_weights=dict(weights)),
        )
        specs = [pool[i] for i in sel.tolist()]
        report["balance"] = {t: d["count"] for t, d in bal["task_types"].items()}
    else:
        specs = pool
    report["samples"] = len(specs)
    report["task_types"] = {t: sum(1 for s in specs if s.task_type == t) for t in ALL_TASK_TYPES}
    specs, report = _with_place_motion(specs, stores, report, cfg)
    specs, report = _with_places_without_image(specs, stores, report, cfg)
    return _with_grounding(specs, [str(Path(p)) for p in cfg.stores], report, cfg, split, stores)


def target_places(
    ground_truth, camera, align: bool, where: str, hands: Sequence[str], place_view: str = "model"
) -> str:
    """The places a motion-from-places prompt states for ``hands`` (`stated_places`): each hand's first
    target and its true box in the model's view (``align``), moved to the canonical view when ``place_view``
    is "canonical" the way inference moves the model's own boxes (`stated_box`); "" when no hand's target
    is known and in view."""
    firsts = {h: target_grounding(ground_truth, camera, align, where, (h,))[:1] for h in hands}
    return stated_places(
        {h: (t[0][0], stated_box(t[0][1], camera, align, place_view)) for h, t in firsts.items() if t}
    )


def _draw_each_once(pool: list, n: int, seed: int, tag: int) -> list:
    """``n`` items of ``pool`` drawn seeded by (``seed``, ``tag``): a permutation of the pool, repeated until
    ``n`` are drawn, so each item is drawn once before any repeats."""
    rng = np.random.default_rng([int(seed), tag])
    order = np.concatenate([rng.permutation(len(pool)) for _ in range(-(-n // len(pool)))])[:n]
    return [pool[i] for i in order.tolist()]


def _with_image_free_copies(
    specs: list[SampleSpec],
    stores: list,
    report: dict[str, Any],
    cfg: VLADataConfig,
    option: str,
    tag: int,
    lookup,
    copy,
) -> tuple[list[SampleSpec], dict[str, Any]]:
    """``specs`` plus ``round(share * n)`` image-free copies (``share``: ``cfg.<option>``; drawn seeded, each
    once before any repeats) of the n generation samples with one image whose targets are known:
    ``lookup(ground_truth, camera, where, hands)`` says what an episode's targets give (falsy: nothing; once
    per episode and hand mode), ``copy(sample, looked_up)`` makes the copy. The report gains ``option``."""
    share = getattr(cfg, option)
    pool: list[SampleSpec] = []
    found: dict[tuple, Any] = {}
    for s in specs:
        if s.task_type != "generation" or s.image_s is None or s.prompt.count(IMAGE_PLACEHOLDER) != 1:
            continue
        key = (s.dataset, s.episode, s.hand_mode)
        if key not in found:
            store = stores[s.dataset]
            row = store.meta(s.episode)
            where = f"{store.root} episode {s.episode}"
            found[key] = lookup(row.get("ground_truth"), camera_from_row(row), where, hands_for_mode(s.hand_mode))
        if found[key]:
            pool.append(copy(s, found[key]))
    if not pool:
        raise ConfigError(
            f"data.{option} = {share}: no generation sample with an image has known targets in "
            f"view (ground_truth.targets and scene, as HandWorld writes): set data.{option} to 0"
        )
    n = int(round(share * len(pool)))
    report = dict(report, **{option: {"samples": n, "distinct": len(pool)}})
    report["samples"] = report.get("samples", len(specs)) + n
    return specs + _draw_each_once(pool, n, cfg.seed, tag), report


def _with_place_motion(
    specs: list[SampleSpec], stores: list | None, report: dict[str, Any], cfg: VLADataConfig
) -> tuple[list[SampleSpec], dict[str, Any]]:
    """``specs`` plus ``round(cfg.place_motion * n)`` motion-from-places copies (``VLADataConfig.place_motion``)
    of the n generation samples with an image whose targets are known, drawn seeded (each once before any
    repeats): the same span and answer, no image, the prompt's ``<image>`` replaced by the targets' boxes.
    ``stores``: the opened stores ``specs`` index (None only when ``cfg.place_motion`` is 0)."""
    if cfg.place_motion <= 0:
        return specs, report
    return _with_image_free_copies(
        specs, stores, report, cfg, "place_motion", 0x91ACE,
        lambda gt, camera, where, hands: target_places(gt, camera, cfg.align, where, hands, cfg.place_view),
        lambda s, places: replace(s, image_s=None, prompt=place_prompt(s.prompt, places)),
    )  # fmt: skip


def _with_places_without_image(
    specs: list[SampleSpec], stores: list | None, report: dict[str, Any], cfg: VLADataConfig
) -> tuple[list[SampleSpec], dict[str, Any]]:
    """``specs`` plus ``round(cfg.places_without_image * n)`` image-free copies (seeded, each once before any
    repeats) of the n generation samples with one image whose hands' targets are known and in view: the
    prompt's ``<image>`` replaced by "the scene", ``state_places`` set, so that the answer states the places
    (`VLAInstructionDataset.answer_text`) and its motion has nothing else to find the target by."""
    if cfg.places_without_image <= 0:
        return specs, report
    return _with_image_free_copies(
        specs, stores, report, cfg, "places_without_image", 0x91ACF,
        lambda gt, camera, where, hands: target_centres(gt, camera, cfg.align, where, hands),
        lambda s, _found: replace(s, image_s=None, prompt=s.prompt.replace(IMAGE_PLACEHOLDER, "the scene"),
                                  state_places=True),
    )  # fmt: skip


def _with_grounding(
    specs: list[SampleSpec],
    store_dirs: list[str],
    report: dict[str, Any],
    cfg: VLADataConfig,
    split: str,
    stores: list | None = None,
) -> tuple[list[SampleSpec], list[str], dict[str, Any]]:
    """``specs`` plus ``round(cfg.grounding * len(specs))`` object-grounding questions drawn (seeded; each
    (image, object) once before any repeats) from the split's episodes with a known scene and video.
    ``stores``: ``store_dirs`` already opened (else they are opened here)."""
    n = int(round(cfg.grounding * len(specs)))
    if n <= 0:
        return specs, store_dirs, report
    pool: list[SampleSpec] = []
    for di, store in enumerate(stores if stores is not None else _open_stores(store_dirs)):
        if store.camera is None:
            continue
        for k in range(len(store)):
            row = store.meta(k)
            if not in_split(row["key"], cfg.val_fraction, split):
                continue
            where = f"{store.root} episode {k}"
            for prompt, answer in grounding_questions(row["ground_truth"], camera_from_row(row), cfg.align, where):
                pool.append(SampleSpec(di, k, "grounding", "both", 0.0, 0.0, 0.0, prompt, answer))
    if not pool:
        raise ConfigError(
            f"data.grounding = {cfg.grounding}: no episode of {store_dirs} with video has a known scene "
            "(ground_truth.scene with objects in view, as HandWorld writes): set data.grounding to 0"
        )
    report = dict(report, grounding={"questions": n, "distinct": len(pool)})
    report["samples"] = len(specs) + n
    report["task_types"] = dict(report["task_types"], grounding=n)
    return specs + _draw_each_once(pool, n, cfg.seed, 0x6120), store_dirs, report


def _manifest_samples(cfg: VLADataConfig, split: str) -> tuple[list[SampleSpec], list[str], dict[str, Any]]:

    path = Path(cfg.manifest)
    records = read_manifest(path)
    weights = {t for t, w in cfg.task_mix.items() if w > 0}
    roots: dict[str, int] = {}
    specs: list[SampleSpec] = []
    skipped = 0
    for i, r in enumerate(records):
        where = f"{path}: record {i + 1}"
        for field in REQUIRED_RECORD_FIELDS:
            if r.get(field) is None:
                raise InputError(where, field, "a value (an instruction manifest record)", "missing")
        if r["task_type"] not in TASK_TYPES:
            raise InputError(where, "task_type", f"one of {TASK_TYPES}", repr(r["task_type"]))
        if r["hands"] not in ("both", "left", "right"):
            raise InputError(where, "hands", "'both', 'left' or 'right'", repr(r["hands"]))
        if r["task_type"] not in weights or r["hands"] not in cfg.hand_modes:
            skipped += 1
            continue
        if not in_split(str(r["episode_key"]), cfg.val_fraction, split):
            continue
        prompt = str(r["prompt"])
        n_images = prompt.count(IMAGE_PLACEHOLDER)
        if n_images > 1:
            raise InputError(
                where, "prompt", f"one '{IMAGE_PLACEHOLDER}' (or none: a motion-only sample)", repr(prompt)
            )
        needs_motion = r["task_type"] in ("translation", "prediction")
        if prompt.count(MOTION_PLACEHOLDER) != int(needs_motion):
            raise InputError(
                where, "prompt", f"{int(needs_motion)} '{MOTION_PLACEHOLDER}' placeholder(s)", repr(prompt)
            )
        if r["task_type"] == "translation" and not r.get("answer"):
            raise InputError(where, "answer", "the text answer of a translation sample", "missing")
        if r["task_type"] == "prediction" and r.get("history_start_s") is None:
            raise InputError(where, "history_start_s", "the history start of a prediction sample", "missing")
        image_s = None  # a motion-only sample
        if n_images:
            image_s = float(r["image_s"]) if r.get("image_s") is not None else float(r["start_s"])
        root = str(Path(r["dataset"]))
        di = roots.setdefault(root, len(roots))
        specs.append(
            SampleSpec(
                dataset=di,
                episode=int(r["episode_index"]),
                task_type=r["task_type"],
                hand_mode=r["hands"],
                start_s=float(r["start_s"]),
                end_s=float(r["end_s"]),
                image_s=image_s,
                prompt=prompt,
                answer=str(r["answer"]) if r["task_type"] == "translation" else None,
                history_start_s=None if r.get("history_start_s") is None else float(r["history_start_s"]),
            )
        )
    if cfg.size is not None and len(specs) > cfg.size:
        rng = np.random.default_rng(cfg.seed)
        specs = [specs[i] for i in np.sort(rng.choice(len(specs), size=cfg.size, replace=False))]
    report = {
        "manifest": str(path),
        "records": len(records),
        "filtered_out": skipped,
        "samples": len(specs),
        "task_types": {t: sum(1 for s in specs if s.task_type == t) for t in TASK_TYPES},
    }
    return specs, list(roots), report


def sample_texts(specs: Sequence[SampleSpec]) -> list[str]:
    """Every prompt and text answer (a corpus for a small text tokenizer)."""
    out = []
    for s in specs:
        out.append(s.prompt)
        if s.answer:
            out.append(s.answer)
    return out


# ---- motion tokens --------------------------------------------------------------------------------------


def tokenizer_fingerprint(motion_tokenizer) -> str:
    """sha256 of the tokenizer's config and weights: a cache made with other weights is never reused."""
    h = hashlib.sha256(json.dumps(motion_tokenizer.config.model_dump(), sort_keys=True).encode())
    for name, t in sorted(motion_tokenizer.inference_state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class MotionTokenCache:
    """Motion ids per (dataset, episode, first frame, side) block, computed once, optionally kept in an
    ``.npz`` file (written atomically) whose fingerprint covers the tokenizer and the stores' episode keys."""

    def __init__(self, motion_tokenizer, stores: list, path: str | Path | None = None):
        self.mt = motion_tokenizer
        self.stores = stores
        self.path = None if path is None else Path(path)
        self.F = int(motion_tokenizer.config.frames_per_block)
        self.W = int(motion_tokenizer.config.window_frames)
        self.n = int(motion_tokenizer.layout.tokens_per_block)
        h = hashlib.sha256(tokenizer_fingerprint(motion_tokenizer).encode())
        for s in stores:
            h.update(str(Path(s.root).resolve()).encode())
            for k in range(len(s)):
                r = s.meta(k)
                h.update(f"{r['key']}|{r['length']}".encode())
        self.fingerprint = h.hexdigest()
        self.blocks: dict[tuple[int, int, int, int], np.ndarray] = {}
        self.loaded_from_file = 0
        if self.path is not None and self.path.is_file():
            self._load()

    def _load(self) -> None:
        try:
            with np.load(self.path, allow_pickle=False) as d:
                if str(d["fingerprint"]) != self.fingerprint:
                    return  # made with another tokenizer or other stores: rebuilt and overwritten
                keys, ids = d["keys"], d["ids"]
        except (OSError, KeyError, ValueError) as e:
            raise InputError(
                self.path, None, "a motion-token cache (.npz) written by handvla", str(e)
            ) from None
        for key, row in zip(keys.tolist(), ids):
            self.blocks[tuple(key)] = row.astype(np.int64)
        self.loaded_from_file = len(keys)

    def save(self) -> None:
        if self.path is None:
            return
        keys = np.array(sorted(self.blocks), np.int64).reshape(-1, 4)
        ids = np.stack([self.blocks[tuple(k)] for k in keys.tolist()]) if len(keys) else np.zeros((0, self.n))
        atomic_savez(
            self.path, {"fingerprint": np.array(self.fingerprint), "keys": keys, "ids": ids.astype(np.int32)}
        )

    def block_starts(self, start_s: float, end_s: float, fps: float) -> list[int]:
        """First frames of the blocks covering [start_s, end_s) (one block per frames_per_block frames)."""
        a = int(round(start_s * fps))
        n = max(1, math.ceil((end_s - start_s) * fps / self.F - 1e-6))
        return [a + i * self.F for i in range(n)]

    @torch.no_grad()
    def fill(self, needed: dict[tuple[int, int], set[tuple[int, int]]], progress: bool = False) -> int:
        """Tokenize the missing blocks. ``needed``: {(dataset, episode): {(first frame, side code)}}.
        Returns how many blocks were computed."""

        todo = {
            ep: sorted(b for b in blocks if (ep[0], ep[1], b[0], b[1]) not in self.blocks)
            for ep, blocks in needed.items()
        }
        todo = {ep: b for ep, b in todo.items() if b}
        computed = 0
        for (di, k), blocks in tqdm(
            sorted(todo.items()), desc="motion tokens", unit="ep", disable=not progress, leave=False
        ):
            ep = self.stores[di].load_episode(k, with_video=False)
            T = ep.num_frames
            for side in ("left", "right"):
                starts = [f for f, s in blocks if s == SIDE_CODE[side]]
                if not starts:
                    continue
                motion = ep.hands[side]
                valid = np.asarray(motion.valid, bool)
                ok = [f for f in starts if 0 <= f < T and valid[f : f + self.F].any()]
                for f in starts:
                    if f not in ok:
                        self.blocks[(di, k, f, SIDE_CODE[side])] = np.full(self.n, -1, np.int64)
                if ok:
                    feats = self.mt.motion_features(motion)  # (T, D) right-hand frame, invalid frames filled
                    windows = []
                    # frames [f, f + F), padded to W by repeating the last one (as the tokenizer's own cut)
                    for f in ok:
                        idx = np.minimum(np.arange(f, f + self.W), min(f + self.F, T) - 1)
                        windows.append(feats[idx])
                    ids = torch.cat(
                        [self.mt.encode(torch.stack(windows[i : i + 256]), side) for i in range(0, len(ok), 256)]
                    )
                    for f, row in zip(ok, ids.numpy()):
                        self.blocks[(di, k, f, SIDE_CODE[side])] = row.astype(np.int64)
                computed += len(starts)
        return computed

    def motion(
        self, di: int, k: int, start_s: float, end_s: float, hands: Sequence[str], fps: float
    ) -> np.ndarray:
        """Motion ids (blocks, hands, ids_per_block) of a span (blocks must have been filled)."""
        starts = self.block_starts(start_s, end_s, fps)
        return np.stack([np.stack([self.blocks[(di, k, f, SIDE_CODE[h])] for h in hands]) for f in starts])


# ---- the dataset ----------------------------------------------------------------------------------------


class VLAInstructionDataset(Dataset):
    """Map-style dataset of processor-encoded samples (or of packs of them, with ``pack``).

    Built from `collect_samples`' specs: the motion blocks of every sample are tokenized here (see
    `MotionTokenCache`); samples longer than ``max_length`` and samples whose answer hand is absent are
    dropped (counted in ``report``). ``__getitem__`` reads the image frame (cached, ``image_cache`` frames),
    warps it and encodes the sample with the processor; it draws no random numbers.
    """

    def __init__(
        self,
        specs: Sequence[SampleSpec],
        store_dirs: Sequence[str | Path],
        processor: HandVLAProcessor,
        motion_tokenizer,
        align: bool = True,
        image_size: tuple[int, int] | None = None,
        max_length: int | None = None,
        pack: bool = False,
        cache: str | Path | None = None,
        seed: int = 0,
        image_cache: int = 2048,
        progress: bool = False,
    ):
        if motion_tokenizer is None:
            raise ConfigError("VLAInstructionDataset: a motion tokenizer is needed to tokenize motion")
        if pack and not max_length:
            raise ConfigError("data.pack needs data.max_length (the length of a packed row)")
        self.processor = processor
        self.align = bool(align)
        self.image_size = tuple(image_size) if image_size else default_image_size(processor)
        self.max_length = max_length
        self.stores = _open_stores(store_dirs)
        self.fps = [float(s.fps) for s in self.stores]
        mfps = float(processor.config.motion_fps)
        for s, fps in zip(self.stores, self.fps):
            if abs(fps - mfps) > 1e-6 or abs(fps - float(motion_tokenizer.config.fps)) > 1e-6:
                raise ConfigError(
                    f"{s.root}: episodes at {fps:g} fps, but the VLA (motion_fps {mfps:g}) and the motion "
                    f"tokenizer ({motion_tokenizer.config.fps:g} fps) need the same rate: resample the store"
                )
        self.cache = MotionTokenCache(motion_tokenizer, self.stores, cache)
        specs = list(specs)
        for s in specs:
            if not 0 <= s.dataset < len(self.stores):
                raise InputError(
                    "sample", "dataset", f"a store index in [0, {len(self.stores)})", str(s.dataset)
                )
            self.stores[s.dataset]._check_index(s.episode)
            st = self.stores[s.dataset]
            if s.image_s is not None and st.camera is None:  # before any tokenizing
                raise InputError(
                    f"{st.root} episode {s.episode}",
                    "video",
                    f"a video frame for the sample's '{IMAGE_PLACEHOLDER}' (this store was built without video: "
                    "rebuild the instructions, which then uses motion-only prompts)",
                    "none",
                )
        needed: dict[tuple[int, int], set[tuple[int, int]]] = {}
        for s in specs:
            blocks = needed.setdefault((s.dataset, s.episode), set())
            for a, b in self._spans(s):
                for f in self.cache.block_starts(a, b, self.fps[s.dataset]):
                    for h in hands_for_mode(s.hand_mode):
                        blocks.add((f, SIDE_CODE[h]))
        computed = self.cache.fill(needed, progress)
        if computed:
            self.cache.save()
        # Lengths without reading images: the images placed as the model's config says, then <image> -> one
        # added token stands in for <img> ... </img>, so the text splits exactly as in the real encoding
        # (added tokens always split text).
        n_tiles = processor.num_tiles(*self.image_size)
        image_tokens = n_tiles * processor.tokens_per_tile + 2
        # the target boxes of an episode (per hand set): the binding loss's truth and the answer prefix
        self._targets: dict[tuple, list] = {}
        self.answer_prefix = getattr(processor.config, "motion_answer_prefix", "none")
        self.place_frame = place_frame(processor.config)  # None: the answers state no places
        self.place_names = names_places(processor.config)  # each place after its name
        self.end_places = states_end_places(processor.config)  # then where each target ends
        kept, lengths = [], []
        self.report: dict[str, Any] = {"absent_hand": 0, "too_long": 0, "motion_only": 0}
        for s in specs:
            prompt_m, answer_m = self._motions(s)
            if answer_m and (answer_m[0] < 0).all(axis=-1).any():
                self.report["absent_hand"] += 1
                continue
            enc = processor.encode(
                place_images(s.prompt, processor.config.image_position).replace(IMAGE_PLACEHOLDER, "<img>"),
                self.answer_text(s),
                prompt_motions=prompt_m,
                answer_motions=answer_m,
            )
            n = len(enc.input_ids) - 1 + image_tokens if s.image_s is not None else len(enc.input_ids)
            if max_length and n > max_length:
                self.report["too_long"] += 1
                continue
            kept.append(s)
            lengths.append(n)
            self.report["motion_only"] += s.image_s is None
        self.specs = kept
        self.lengths = np.asarray(lengths, np.int64)
        self.packs: list[list[int]] | None = None
        if pack:
            self.packs = self._pack(int(max_length), seed)
        self._images: OrderedDict[tuple[int, int, int], Image.Image] = OrderedDict()
        self._image_cache = int(image_cache)
        # the binding loss's truth (HandVLAConfig.binding_loss_weight): target boxes per episode
        self.binding = float(getattr(processor.config, "binding_loss_weight", 0.0)) > 0
        # the end-point loss's truth (HandVLAConfig.endpoint_loss_weight): six numbers per sample, read from
        # the wrist tracks of the last few episodes (long real episodes are not all kept in memory)
        self.endpoint = float(getattr(processor.config, "endpoint_loss_weight", 0.0)) > 0
        self._endpoints: dict[tuple, torch.Tensor] = {}
        self._wrists: OrderedDict[tuple[int, int], dict[str, tuple[np.ndarray, np.ndarray]]] = OrderedDict()
        self.report.update(
            samples=len(self.specs),
            packs=None if self.packs is None else len(self.packs),
            blocks_tokenized=computed,
            blocks_from_cache_file=self.cache.loaded_from_file,
            tokens=int(self.lengths.sum()),
            mean_length=float(self.lengths.mean()) if len(self.lengths) else 0.0,
            max_length=int(self.lengths.max()) if len(self.lengths) else 0,
            task_types={t: sum(1 for s in self.specs if s.task_type == t) for t in ALL_TASK_TYPES},
        )
        if not self.specs:
            raise ConfigError(f"VLAInstructionDataset: no samples left ({self.report})")

    # -- spans and motion ----------------------------------------------------------------------------------
    @staticmethod
    def _spans(s: SampleSpec) -> list[tuple[float, float]]:
        if s.task_type == "grounding":
            return []
        spans = [(s.start_s, s.end_s)]
        if s.task_type == "prediction":
            spans.append((float(s.history_start_s), s.start_s))
        return spans

    def _motions(self, s: SampleSpec) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(prompt motions, answer motions) of a sample, each (blocks, hands, ids_per_block)."""
        if s.task_type == "grounding":
            return [], []
        fps, hands = self.fps[s.dataset], hands_for_mode(s.hand_mode)
        target = self.cache.motion(s.dataset, s.episode, s.start_s, s.end_s, hands, fps)
        if s.task_type == "generation":
            return [], [target]
        if s.task_type == "translation":
            return [target], []
        history = self.cache.motion(s.dataset, s.episode, float(s.history_start_s), s.start_s, hands, fps)
        return [history], [target]

    def _pack(self, max_length: int, seed: int) -> list[list[int]]:
        """First-fit packing in a seeded order (fixed at build time, so a resumed run sees the same packs)."""
        order = np.random.default_rng([int(seed), 0x9ACC]).permutation(len(self.specs))
        packs: list[list[int]] = []
        room: list[int] = []
        for i in order.tolist():
            n = int(self.lengths[i])
            for p, r in enumerate(room):
                if n <= r:
                    packs[p].append(i)
                    room[p] -= n
                    break
            else:
                packs.append([i])
                room.append(max_length - n)
        return packs

    # -- images ---------------------------------------------------------------------------------------------
    def image(self, s: SampleSpec) -> Image.Image:
        fps = self.fps[s.dataset]
        f = int(round(s.image_s * fps))
        key = (s.dataset, s.episode, f)
        img = self._images.get(key)
        if img is None:
            ep = self.stores[s.dataset].load_episode(s.episode, f / fps, (f + 1) / fps, with_video=True)
            if ep.video is None or len(ep.video) == 0:
                raise InputError(
                    f"{self.stores[s.dataset].root} episode {s.episode}",
                    "video",
                    f"a frame at {s.image_s} s",
                    "none",
                )
            img = prepare_image(ep.video[0], ep.camera.K, self.align, self.image_size)
            self._images[key] = img
            if len(self._images) > self._image_cache:
                self._images.popitem(last=False)
        else:
            self._images.move_to_end(key)
        return img

    # -- Dataset ----------------------------------------------------------------------------------------------
    def targets(self, s: SampleSpec, hands: tuple[str, ...] | None = None) -> list:
        """(name, box) of each object sample ``s``'s episode's instruction acts on (``hands``: only those
        hands' targets), boxes 0..1000 in the model's view (`target_grounding`); [] when unknown."""
        key = (s.dataset, s.episode, hands)
        if key not in self._targets:
            store = self.stores[s.dataset]
            row = store.meta(s.episode)
            where = f"{store.root} episode {s.episode}"
            self._targets[key] = target_grounding(
                row.get("ground_truth"), camera_from_row(row), self.align, where, hands
            )
        return self._targets[key]

    def boxes(self, s: SampleSpec) -> list:
        """The boxes (0..1000 in the model's view) of what sample ``s`` names: a grounding question's
        object, else the objects its episode's instruction acts on (`targets`); [] when unknown."""
        if s.task_type == "grounding":
            box = parse_grounding_answer(s.answer or "")
            return [] if box is None else [box]
        return [box for _name, box in self.targets(s)]

    def answer_text(self, s: SampleSpec) -> str:
        """Sample ``s``'s answer: its text, or for a motion answer the motion placeholder, after the boxes of
        its hands' targets when ``HandVLAConfig.motion_answer_prefix`` is "target_boxes" and it has an
        image (`grounding_prefix`; nothing when no target is known). With "target_places" / "hand_places" the
        motion answer starts with its hands' target places and a grounding question is answered with the
        object's place (`handvla.vla.places`)."""
        places = self.place_frame is not None
        if s.answer is not None:
            return self.grounding_place(s) if places and s.task_type == "grounding" else s.answer
        if self.answer_prefix == "target_boxes" and s.image_s is not None:
            return grounding_prefix(self.targets(s, hands_for_mode(s.hand_mode))) + MOTION_PLACEHOLDER
        if places and (s.image_s is not None or s.state_places):
            return self.target_places_text(s) + MOTION_PLACEHOLDER
        if s.state_places:
            raise ConfigError(
                "data.places_without_image: its samples state places, which needs model.motion_answer_prefix "
                f"'target_places' or 'hand_places' (this model's: {self.answer_prefix!r})"
            )
        return MOTION_PLACEHOLDER

    def _scene(self, s: SampleSpec) -> tuple[Any, Any, str]:
        store = self.stores[s.dataset]
        row = store.meta(s.episode)
        return row.get("ground_truth"), camera_from_row(row), f"{store.root} episode {s.episode}"

    def target_places_text(self, s: SampleSpec) -> str:
        """The places (`handvla.vla.places.place_text`) of sample ``s``'s hands' first targets, left then
        right, each in the model's place frame (`handvla.vla.places.in_place_frame`) and after its object's
        name when the model names its places (``HandVLAConfig.place_names``); then, when it states end places
        (``HandVLAConfig.end_places``), where the same targets are at the answer span's last frame, in the
        same order; "" when none is known and in view."""
        hands = hands_for_mode(s.hand_mode)
        end = None
        if self.end_places:
            end = int(round(s.end_s * self.fps[s.dataset])) - 1
        key = ("places", s.dataset, s.episode, hands, end)
        if key not in self._targets:
            gt, camera, where = self._scene(s)
            found = target_centres(gt, camera, self.align, where, hands)
            if end is not None:
                found += target_centres(gt, camera, self.align, where, hands, at_frame=end)
            ids = [place_ids(in_place_frame(c, h, self.place_frame), self.cache.mt) for h, _n, c in found]
            names = [n for _h, n, _c in found] if self.place_names else None
            self._targets[key] = stated_places_text(ids, names)
        return self._targets[key]

    def grounding_place(self, s: SampleSpec) -> str:
        """A grounding question's answer as the asked object's place (its centre's end-point ids)."""
        name = grounding_question_name(s.prompt)
        gt, camera, where = self._scene(s)
        objs = scene_objects(gt, where)
        obj = next((o for o in objs if name is not None and object_name(o) == name), None)
        if obj is None or camera is None or camera.extrinsics is None:
            raise InputError(where, "ground_truth.scene", f"the object of the question {s.prompt!r}", "not found")
        return place_text(place_ids(object_centre_in_camera(obj, camera), self.cache.mt))

    def answer_endpoint(self, s: SampleSpec) -> torch.Tensor:
        """(6,): where the wrists of sample ``s``'s answer motion end (left xyz, right xyz; camera frame,
        metres): the last valid frame of the tokenized answer span per hand; NaN for a hand not in the answer
        or never valid in it, and for samples whose answer is text."""
        out = torch.full((6,), float("nan"))
        if s.task_type not in ("generation", "prediction"):
            return out
        skey = (s.dataset, s.episode, s.start_s, s.end_s, s.hand_mode)
        if skey in self._endpoints:
            return self._endpoints[skey].clone()
        key = (s.dataset, s.episode)
        if key in self._wrists:
            self._wrists.move_to_end(key)
        else:
            ep = self.stores[s.dataset].load_episode(s.episode, with_video=False)
            self._wrists[key] = {
                h: (np.asarray(ep.hands[h].wrist_pos, np.float32), np.asarray(ep.hands[h].valid, bool))
                for h in ("left", "right")
            }
            while len(self._wrists) > 32:
                self._wrists.popitem(last=False)
        starts = self.cache.block_starts(s.start_s, s.end_s, self.fps[s.dataset])
        for j, h in enumerate(("left", "right")):
            if h not in hands_for_mode(s.hand_mode):
                continue
            pos, valid = self._wrists[key][h]
            a, b = starts[0], min(starts[-1] + self.cache.F, len(valid))
            last = np.flatnonzero(valid[a:b])
            if len(last):
                out[3 * j : 3 * j + 3] = torch.tensor(pos[a + last[-1]])
        self._endpoints[skey] = out
        return out.clone()

    def encode(self, i: int) -> EncodedSample:
        s = self.specs[i]
        prompt_m, answer_m = self._motions(s)
        enc = self.processor.encode(
            s.prompt,
            self.answer_text(s),
            images=[] if s.image_s is None else [self.image(s)],
            prompt_motions=prompt_m,
            answer_motions=answer_m,
        )
        if self.binding and enc.pixel_values is not None:
            boxes = self.boxes(s)
            if boxes:  # the last tile (the thumbnail, or the only tile) shows the whole view
                tpt = self.processor.tokens_per_tile
                targets = torch.full((enc.pixel_values.shape[0], tpt), -1.0)
                targets[-1] = torch.from_numpy(box_token_map(boxes, int(round(tpt**0.5))))
                enc.image_token_targets = targets
        if self.endpoint:
            enc.answer_endpoint = self.answer_endpoint(s)
        return enc

    def __len__(self) -> int:
        return len(self.packs) if self.packs is not None else len(self.specs)

    def __getitem__(self, i: int) -> EncodedSample | list[EncodedSample]:
        if self.packs is not None:
            return [self.encode(j) for j in self.packs[i]]
        return self.encode(i)

    def collate(self, items: Sequence[EncodedSample | list[EncodedSample]]) -> dict[str, torch.Tensor]:
        """Padded batch (``input_ids``, ``attention_mask``, ``labels``, ``pixel_values``), or with packing
        (``input_ids``, ``labels``, ``position_ids``, ``pixel_values``; no attention mask, see the module doc)."""
        if self.packs is None:
            return self.processor.collate(items)
        return collate_packs(items, self.processor.vocab.pad_id)


def collate_packs(packs: Sequence[Sequence[EncodedSample]], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows of concatenated samples, position ids restarting at 0 per sample (and for the padding run)."""
    rows = []
    for pack in packs:
        ids = torch.cat([s.input_ids for s in pack])
        lab = torch.cat([s.labels for s in pack])
        pos = torch.cat([torch.arange(len(s.input_ids)) for s in pack])
        rows.append((ids, lab, pos))
    L = max(len(r[0]) for r in rows)
    B = len(rows)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    labels = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((B, L), dtype=torch.long)
    for b, (ids, lab, pos) in enumerate(rows):
        n = len(ids)
        input_ids[b, :n], labels[b, :n], position_ids[b, :n] = ids, lab, pos
        position_ids[b, n:] = torch.arange(L - n)  # the padding is a sequence of its own
    out = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
    if any(s.answer_endpoint is not None for pack in packs for s in pack):
        ends = torch.full((B, L, 6), float("nan"))
        for b, pack in enumerate(packs):
            rows_b = torch.cat([token_endpoint_rows(s) for s in pack])
            ends[b, : len(rows_b)] = rows_b
        out["endpoint_targets"] = ends
    pix = [s.pixel_values for pack in packs for s in pack if s.pixel_values is not None]
    if pix:
        out["pixel_values"] = torch.cat(pix, 0)
    targets = collate_image_token_targets([s for pack in packs for s in pack])
    if targets is not None:
        out["image_token_targets"] = targets
    return out


def build_datasets(
    cfg: VLADataConfig,
    processor: HandVLAProcessor,
    motion_tokenizer,
    specs: dict[str, tuple[list[SampleSpec], list[str]]],
    progress: bool = False,
) -> dict[str, VLAInstructionDataset]:
    """One `VLAInstructionDataset` per split in ``specs`` ({split: (specs, store dirs)}); packing only for
    'train' (validation losses are per sample)."""
    out = {}
    for split, (sp, dirs) in specs.items():
        if not sp:
            continue
        out[split] = VLAInstructionDataset(
            sp,
            dirs,
            processor,
            motion_tokenizer,
            align=cfg.align,
            image_size=cfg.image_size,
            max_length=cfg.max_length,
            pack=cfg.pack and split == "train",
            cache=cfg.cache,
            seed=cfg.seed,
            progress=progress,
        )
    return out


__all__ = [
    "ALL_TASK_TYPES",
    "AUX_TASK_TYPES",
    "DEFAULT_TASK_MIX",
    "TASK_TYPES",
    "MotionTokenCache",
    "SampleSpec",
    "VLADataConfig",
    "VLAInstructionDataset",
    "build_datasets",
    "collate_packs",
    "collect_samples",
    "default_image_size",
    "prepare_image",
    "sample_texts",
    "tokenizer_fingerprint",
]
