"""Turning (image, text, motion ids) into model inputs.

Sequence format (Qwen chat template, InternVL image tokens, Being-H0 motion blocks)::

    <|im_start|>system\\n{system}<|im_end|>\\n                 (omitted when system is None)
    <|im_start|>user\\n{prompt}<|im_end|>\\n
    <|im_start|>assistant\\n{answer}<|im_end|>

In ``prompt`` and ``answer`` two placeholders are expanded:

- ``<image>`` -> ``<img>`` + ``<IMG_CONTEXT>`` x (tokens_per_tile x tiles) + ``</img>``; the image is cut into
  1..max_tiles tiles that keep its aspect ratio plus a thumbnail tile when more than one tile is used
  (InternVL dynamic tiling); the model replaces the ``<IMG_CONTEXT>`` embeddings by visual features.
- ``<motion>`` -> motion blocks, one per hand-second: ``<mot>`` + ids_per_block motion tokens (wrist ids
  then finger ids) + ``</mot>``. A motion array has shape (seconds, hands, ids_per_block); blocks are
  emitted second by second, and within a second in hand order LEFT then RIGHT (mode "both"), or the one
  hand of mode "left" / "right". Motion id -1 stands for "no motion" and becomes ``<MOT_NOOP>``.

Labels are -100 everywhere except the answer tokens and the closing ``<|im_end|>``, so the loss covers the
answer only. Text between special tokens is tokenised piecewise; because added tokens always split text,
this equals tokenising the expanded string (a test checks it).

With ``config.image_position == "after_text"`` the prompt's ``<image>`` is first rewritten by `place_images`
(the words "the image" where it stood, the image itself after the whole user text).

Images are given as they are; mapping them to the canonical camera first is ``handvla.camera``'s
``warp_to_canonical``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from types import EllipsisType

import numpy as np
import torch
from PIL import Image
from transformers import GotOcr2ImageProcessorPil, PreTrainedTokenizerBase

from handvla.camera import as_pil_image
from handvla.errors import InputError
from handvla.vla.configuration import (
    DEFAULT_SYSTEM_PROMPT,
    IM_END_TOKEN,
    IM_START_TOKEN,
    IMAGE_POSITIONS,
    HandVLAConfig,
)
from handvla.vla.text_tokenizer import MotionVocab

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"
MOTION_PLACEHOLDER = "<motion>"
HAND_ORDER = ("left", "right")
HAND_MODES: dict[str, tuple[str, ...]] = {"both": ("left", "right"), "left": ("left",), "right": ("right",)}
HAND_PHRASES = {"both": "the both hands", "left": "the left hand", "right": "the right hand"}


def hands_for_mode(hand_mode: str) -> tuple[str, ...]:
    """Hands (in block order) of a hand mode: "both" -> ("left", "right"), "left", "right"."""
    if hand_mode not in HAND_MODES:
        raise InputError("hand_mode", None, f"one of {sorted(HAND_MODES)}", repr(hand_mode))
    return HAND_MODES[hand_mode]


def _check_seconds(seconds: int, field_name: str = "seconds") -> int:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, np.integer)) or seconds <= 0:
        raise InputError("motion request", field_name, "a positive integer number of seconds", repr(seconds))
    return int(seconds)


def generation_prompt(task: str, seconds: int, hand_mode: str, fps: int = 15, image: bool = True) -> str:
    """Being-H0's motion-generation prompt (one ``<image>``): "In <image>, {task}, what is the
    {fps*s}-step motion sequence for {the both hands|the left hand|the right hand}?". ``image=False``: the
    motion-only variant (no ``<image>``, for stores without video): "{Task}, what is the ... ?"."""
    seconds = _check_seconds(seconds)
    hands_for_mode(hand_mode)
    task = task.strip().rstrip(".")
    tail = f"what is the {fps * seconds}-step motion sequence for {HAND_PHRASES[hand_mode]}?"
    if not image:
        return f"{task[:1].upper()}{task[1:]}, {tail}"
    return f"In {IMAGE_PLACEHOLDER}, {task}, {tail}"


def translation_prompt(seconds: int, hand_mode: str, fps: int = 15, image: bool = True) -> str:
    """Motion -> text prompt (one ``<image>`` unless ``image=False``, one ``<motion>``)."""
    seconds = _check_seconds(seconds)
    hands_for_mode(hand_mode)
    where = (
        f"In {IMAGE_PLACEHOLDER}, {HAND_PHRASES[hand_mode]}"
        if image
        else HAND_PHRASES[hand_mode].capitalize()
    )
    return (
        f"{where} perform the {fps * seconds}-step motion sequence {MOTION_PLACEHOLDER}. What is being done?"
    )


def continuation_prompt(
    task: str, history_seconds: int, seconds: int, hand_mode: str, fps: int = 15, image: bool = True
) -> str:
    """Contextual prediction prompt (one ``<image>`` unless ``image=False``, one ``<motion>`` = the history)."""
    history_seconds = _check_seconds(history_seconds, "history_seconds")
    seconds = _check_seconds(seconds)
    hands_for_mode(hand_mode)
    task = task.strip().rstrip(".")
    head = f"In {IMAGE_PLACEHOLDER}, {task}" if image else f"{task[:1].upper()}{task[1:]}"
    return (
        f"{head}. Given the previous {fps * history_seconds}-step motion sequence "
        f"{MOTION_PLACEHOLDER} of {HAND_PHRASES[hand_mode]}, what is the next {fps * seconds}-step motion sequence?"
    )


def place_prompt(prompt: str, places: str) -> str:
    """An image prompt with the image replaced by where its objects are: the prompt of a motion answer made
    from stated places instead of pixels ("motion from places": ``VLADataConfig.place_motion`` trains it,
    ``generate_motion(places=...)`` decodes it). ``places``: the objects the answer acts on in InternVL's
    grounding format (`handvla.vla.grounding.grounding_prefix`), e.g. "In <image>, pick up the red cube, what
    is ...?" -> "In <ref>the red cube</ref><box>[[...]]</box>, pick up the red cube, what is ...?". Every
    template with one ``<image>`` works, so manifest prompts need no second set of templates."""
    if prompt.count(IMAGE_PLACEHOLDER) != 1:
        raise InputError("place_prompt", "prompt", f"exactly one {IMAGE_PLACEHOLDER}", repr(prompt))
    if not isinstance(places, str) or "<box>" not in places:
        raise InputError("place_prompt", "places", "one or more '<ref>NAME</ref><box>[[x1, y1, x2, y2]]</box>'", repr(places))
    return prompt.replace(IMAGE_PLACEHOLDER, places)


def place_images(prompt: str, image_position: str) -> str:
    """The user text with its images where ``image_position`` puts them. ``"in_prompt"``: unchanged.
    ``"after_text"``: each ``<image>`` becomes the words "the image" ("image 1", "image 2", ... when there are
    several) and the images follow the text, one per line, so that with causal attention the image tokens
    come after (and can attend to) the instruction: "In <image>, pick up the red cube, what is ...?" ->
    "In the image, pick up the red cube, what is ...?\n<image>"."""
    if image_position not in IMAGE_POSITIONS:
        raise InputError("image_position", None, f"one of {IMAGE_POSITIONS}", repr(image_position))
    n = prompt.count(IMAGE_PLACEHOLDER)
    if image_position == "in_prompt" or n == 0:
        return prompt
    names = ["the image"] if n == 1 else [f"image {i + 1}" for i in range(n)]
    text = prompt
    for name in names:
        text = text.replace(IMAGE_PLACEHOLDER, name, 1)
    if n == 1:
        return f"{text}\n{IMAGE_PLACEHOLDER}"
    return text + "".join(f"\n{name}: {IMAGE_PLACEHOLDER}" for name in names)


def chat_text(prompt: str, system: str | None = DEFAULT_SYSTEM_PROMPT, answer: str | None = None) -> str:
    """The chat template as a string (placeholders left as they are), ending after the assistant header
    when ``answer`` is None."""
    out = f"{IM_START_TOKEN}system\n{system}{IM_END_TOKEN}\n" if system is not None else ""
    out += f"{IM_START_TOKEN}user\n{prompt}{IM_END_TOKEN}\n{IM_START_TOKEN}assistant\n"
    if answer is not None:
        out += f"{answer}{IM_END_TOKEN}"
    return out


@dataclass
class EncodedSample:
    """One tokenised sample. ``input_ids``/``labels``: (L,) int64; ``pixel_values``: (tiles, 3, S, S) or
    None; ``num_tiles``: tiles per image, in placeholder order; ``image_token_targets``: (tiles,
    tokens_per_tile) float32 or None, per visual token 1 / 0 = does / does not overlap an object the
    instruction acts on, -1 = unknown (the binding loss's truth, ``HandVLAConfig.binding_loss_weight``);
    ``answer_endpoint``: (6,) float32 or None, where the answer motion's left and right wrists end (camera
    frame, metres; NaN unknown or not in the answer; the end-point loss's truth,
    ``HandVLAConfig.endpoint_loss_weight``)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor | None = None
    num_tiles: list[int] = field(default_factory=list)
    image_token_targets: torch.Tensor | None = None
    answer_endpoint: torch.Tensor | None = None


def token_endpoint_rows(sample: EncodedSample) -> torch.Tensor:
    """(len(input_ids), 6): the sample's ``answer_endpoint`` at every one of its tokens (NaN without one)."""
    row = sample.answer_endpoint if sample.answer_endpoint is not None else torch.full((6,), float("nan"))
    return row.to(torch.float32).expand(len(sample.input_ids), 6)


def collate_image_token_targets(samples: Sequence[EncodedSample]) -> torch.Tensor | None:
    """The batch's ``image_token_targets`` (all tiles in ``pixel_values`` order; -1 for samples without
    them), or None when no sample has them."""
    with_images = [s for s in samples if s.pixel_values is not None]
    if not any(s.image_token_targets is not None for s in with_images):
        return None
    t = next(s.image_token_targets for s in with_images if s.image_token_targets is not None).shape[1]
    return torch.cat(
        [
            s.image_token_targets
            if s.image_token_targets is not None
            else torch.full((s.pixel_values.shape[0], t), -1.0)
            for s in with_images
        ]
    )


class HandVLAProcessor:
    """Tokenizer + InternVL tiling + motion blocks for one `HandVLAConfig` (whose vocabulary is extended)."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        config: HandVLAConfig,
        system_prompt: str | None | EllipsisType = ...,
    ):
        self.tokenizer = tokenizer
        self.config = config
        self.vocab = MotionVocab.from_config(config)
        # default: the config's, so a checkpoint reproduces the prompts it was trained with
        self.system_prompt = config.system_prompt if system_prompt is ... else system_prompt
        self.tile_size = config.tile_size
        self.tokens_per_tile = config.tokens_per_tile
        self.image_processor = GotOcr2ImageProcessorPil(
            size={"height": self.tile_size, "width": self.tile_size},
            crop_to_patches=True,
            min_patches=config.min_tiles,
            max_patches=config.max_tiles,
            image_mean=list(config.image_mean),
            image_std=list(config.image_std),
            do_convert_rgb=True,
        )
        self._im_start = self._single_id(IM_START_TOKEN)
        self._im_end = self._single_id(IM_END_TOKEN)

    def _single_id(self, token: str) -> int:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if tid is None or tid == self.tokenizer.unk_token_id:
            raise InputError(
                f"tokenizer {self.tokenizer.name_or_path}", None, f"the token '{token}'", "missing"
            )
        return int(tid)

    # ---- images --------------------------------------------------------------------------------------
    def num_tiles(self, width: int, height: int) -> int:
        """Tiles (thumbnail included) an image of this size in pixels is cut into."""
        return self.image_processor.get_number_of_image_patches(int(height), int(width))

    def tile_image(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        """Normalised tiles of one image, (tiles, 3, tile, tile) float32; the thumbnail (if any) is last."""
        image = as_pil_image(image, "image")
        out = self.image_processor(images=[image], return_tensors="pt")
        return out["pixel_values"].to(torch.float32)

    def image_token_ids(self, num_tiles: int) -> list[int]:
        v = self.vocab
        return (
            [v.img_start_id] + [v.img_context_id] * (self.tokens_per_tile * int(num_tiles)) + [v.img_end_id]
        )

    # ---- motion --------------------------------------------------------------------------------------
    def motion_token_ids(self, motion: np.ndarray | torch.Tensor | Sequence) -> list[int]:
        """Motion blocks as token ids. ``motion``: (seconds, hands, ids_per_block), (blocks, ids_per_block)
        or (ids_per_block,) ints in [0, K) or -1 (no motion -> ``<MOT_NOOP>``); blocks in row-major order."""
        arr = np.asarray(motion.cpu() if isinstance(motion, torch.Tensor) else motion)
        n = self.vocab.layout.tokens_per_block
        if arr.ndim == 0 or arr.shape[-1] != n or arr.ndim > 3:
            raise InputError(
                "motion",
                None,
                f"an array of shape (seconds, hands, {n}) or (blocks, {n})",
                f"shape {arr.shape}",
            )
        if arr.size == 0:
            raise InputError("motion", None, "at least one block", f"shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            raise InputError("motion", None, "integer motion ids", f"dtype {arr.dtype}")
        blocks = arr.reshape(-1, n).astype(np.int64)
        noop = blocks == -1
        if blocks.min() < -1 or blocks.max() >= self.vocab.num_motion_ids:
            raise InputError(
                "motion",
                None,
                f"ids in [0, {self.vocab.num_motion_ids}) or -1",
                f"[{blocks.min()}, {blocks.max()}]",
            )
        tokens = np.where(noop, self.vocab.mot_noop_id, blocks + self.vocab.motion_offset)
        full = np.empty((blocks.shape[0], n + 2), dtype=np.int64)
        full[:, 0] = self.vocab.mot_start_id
        full[:, 1:-1] = tokens
        full[:, -1] = self.vocab.mot_end_id
        return full.reshape(-1).tolist()

    # ---- text ----------------------------------------------------------------------------------------
    def _text_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _expand(
        self, text: str, images: list, motions: list, where: str
    ) -> tuple[list[int], list[torch.Tensor], list[int]]:
        """Tokenise ``text`` with placeholders consumed from ``images`` / ``motions`` (front first)."""
        ids: list[int] = []
        pixels: list[torch.Tensor] = []
        tiles: list[int] = []
        pos = 0
        while True:
            i_img = text.find(IMAGE_PLACEHOLDER, pos)
            i_mot = text.find(MOTION_PLACEHOLDER, pos)
            cands = [i for i in (i_img, i_mot) if i >= 0]
            if not cands:
                ids += self._text_ids(text[pos:])
                break
            nxt = min(cands)
            ids += self._text_ids(text[pos:nxt])
            if nxt == i_img:
                if not images:
                    raise InputError(
                        where, "images", f"one image per '{IMAGE_PLACEHOLDER}' placeholder", "too few"
                    )
                px = self.tile_image(images.pop(0))
                pixels.append(px)
                tiles.append(px.shape[0])
                ids += self.image_token_ids(px.shape[0])
                pos = nxt + len(IMAGE_PLACEHOLDER)
            else:
                if not motions:
                    raise InputError(
                        where,
                        "motions",
                        f"one motion array per '{MOTION_PLACEHOLDER}' placeholder",
                        "too few",
                    )
                ids += self.motion_token_ids(motions.pop(0))
                pos = nxt + len(MOTION_PLACEHOLDER)
        return ids, pixels, tiles

    def encode(
        self,
        prompt: str,
        answer: str | None = None,
        images: Sequence[Image.Image | np.ndarray] = (),
        prompt_motions: Sequence[np.ndarray] = (),
        answer_motions: Sequence[np.ndarray] = (),
        system: str | None | EllipsisType = ...,
    ) -> EncodedSample:
        """Tokenise one chat turn. Placeholders: ``<image>`` (prompt only) consumes ``images`` in order,
        ``<motion>`` consumes ``prompt_motions`` in the prompt and ``answer_motions`` in the answer. With
        ``answer=None`` the sequence ends after the assistant header (a generation prompt, no labels).
        ``system``: the system prompt (default: the processor's; None: no system turn). The config's
        ``image_position`` places the images (`place_images`)."""
        system = self.system_prompt if system is ... else system
        prompt = place_images(prompt, self.config.image_position)
        images, prompt_motions, answer_motions = list(images), list(prompt_motions), list(answer_motions)
        nl = self._text_ids("\n")
        head: list[int] = []
        if system is not None:
            head += [self._im_start] + self._text_ids(f"system\n{system}") + [self._im_end] + nl
        head += [self._im_start] + self._text_ids("user\n")
        p_ids, pixels, tiles = self._expand(prompt, images, prompt_motions, "prompt")
        head += p_ids + [self._im_end] + nl + [self._im_start] + self._text_ids("assistant\n")
        if images:
            raise InputError(
                "prompt",
                "images",
                f"as many images as '{IMAGE_PLACEHOLDER}' placeholders",
                f"{len(images)} left over",
            )
        if prompt_motions:
            raise InputError(
                "prompt",
                "prompt_motions",
                f"as many as '{MOTION_PLACEHOLDER}' placeholders",
                f"{len(prompt_motions)} left over",
            )
        ans: list[int] = []
        if answer is not None:
            if IMAGE_PLACEHOLDER in answer:
                raise InputError("answer", None, f"no '{IMAGE_PLACEHOLDER}' in the answer", "one")
            a_ids, _, _ = self._expand(answer, [], answer_motions, "answer")
            ans = a_ids + [self._im_end]
            if answer_motions:
                raise InputError(
                    "answer",
                    "answer_motions",
                    f"as many as '{MOTION_PLACEHOLDER}' placeholders",
                    f"{len(answer_motions)} left over",
                )
        elif answer_motions:
            raise InputError(
                "answer", "answer_motions", "no motions without an answer", f"{len(answer_motions)}"
            )
        input_ids = torch.tensor(head + ans, dtype=torch.long)
        labels = torch.tensor([IGNORE_INDEX] * len(head) + ans, dtype=torch.long)
        pv = torch.cat(pixels, 0) if pixels else None
        return EncodedSample(input_ids=input_ids, labels=labels, pixel_values=pv, num_tiles=tiles)

    def motion_generation_sample(
        self,
        image: Image.Image | np.ndarray,
        task: str,
        motion: np.ndarray,
        hand_mode: str,
        system: str | None | EllipsisType = ...,
    ) -> EncodedSample:
        """A training sample of instructed motion generation: ``motion`` (seconds, hands, ids_per_block) is the
        answer for the reference prompt; ``hands`` must match ``hand_mode``."""
        arr = np.asarray(motion)
        hands = hands_for_mode(hand_mode)
        if arr.ndim != 3 or arr.shape[1] != len(hands):
            raise InputError(
                "motion",
                None,
                f"shape (seconds, {len(hands)}, ids_per_block) for hand_mode '{hand_mode}'",
                f"shape {arr.shape}",
            )
        prompt = generation_prompt(task, arr.shape[0], hand_mode, self.config.motion_fps)
        return self.encode(prompt, MOTION_PLACEHOLDER, images=[image], answer_motions=[arr], system=system)

    def collate(
        self, samples: Sequence[EncodedSample], padding_side: str = "right"
    ) -> dict[str, torch.Tensor]:
        """Pad to a batch: ``input_ids`` (B, L), ``attention_mask`` (B, L), ``labels`` (B, L) (-100 on padding),
        ``pixel_values`` (all tiles of all samples in order, or absent). Use ``padding_side="left"`` for generation."""
        if not samples:
            raise InputError("collate", "samples", "at least one sample", "none")
        if padding_side not in ("left", "right"):
            raise InputError("collate", "padding_side", "'left' or 'right'", repr(padding_side))
        L = max(len(s.input_ids) for s in samples)
        B = len(samples)
        ids = torch.full((B, L), self.vocab.pad_id, dtype=torch.long)
        lab = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((B, L), dtype=torch.long)
        with_ends = any(s.answer_endpoint is not None for s in samples)
        ends = torch.full((B, L, 6), float("nan")) if with_ends else None
        for b, s in enumerate(samples):
            n = len(s.input_ids)
            sl = slice(L - n, L) if padding_side == "left" else slice(0, n)
            ids[b, sl] = s.input_ids
            lab[b, sl] = s.labels
            mask[b, sl] = 1
            if with_ends:
                ends[b, sl] = token_endpoint_rows(s)
        out = {"input_ids": ids, "attention_mask": mask, "labels": lab}
        if with_ends:
            out["endpoint_targets"] = ends
        pix = [s.pixel_values for s in samples if s.pixel_values is not None]
        if pix:
            out["pixel_values"] = torch.cat(pix, 0)
        targets = collate_image_token_targets(samples)
        if targets is not None:
            out["image_token_targets"] = targets
        return out

    def start_answer(self, sample: EncodedSample, text: str) -> EncodedSample:
        """A generation prompt (`encode` with ``answer=None``) whose answer starts with ``text``, tokenised
        as `encode` tokenises an answer's text before a placeholder; no labels."""
        if IMAGE_PLACEHOLDER in text or MOTION_PLACEHOLDER in text:
            raise InputError("answer start", None, "plain text without placeholders", repr(text))
        ids = torch.cat([sample.input_ids, torch.tensor(self._text_ids(text), dtype=torch.long)])
        return replace(sample, input_ids=ids, labels=torch.full_like(ids, IGNORE_INDEX))

    def decode(self, token_ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)
