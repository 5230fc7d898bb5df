"""Decoding that always yields valid motion, and the other two task types.

`MotionBlockConstraint` is a transformers ``LogitsProcessor`` for ``model.generate`` (KV cache, batches with
left padding, greedy or sampled): after the prompt it allows exactly ``<mot>``, then ``ids_per_block``
motion ids (optionally wrist ids for the first ``wrist_ids_per_block`` positions and finger ids for the
rest), then ``</mot>``, for ``blocks`` blocks, then only the end-of-turn token ``<|im_end|>``. Because every
step has exactly one legal structure, the output parses for every seed, temperature and model, trained or
not (Being-H0's 1B model produced parsable motion only 64.8% of the time without such a constraint).
With ``text_prefix_tokens`` > 0 (a model whose ``motion_answer_prefix`` is "target_boxes") the answer may
first say up to that many text tokens (no motion, image or end-of-turn token); the blocks start at the first
``<mot>``, which is forced once the text reaches the cap. With ``place_prefix`` > 0 (``motion_answer_prefix``
"target_places") it may first state up to that many places, three end-point ids each in axis order
(`handvla.vla.places`); ``<mot>`` may follow any whole place and is forced after the last.

- `generate_motion`: image + task -> motion ids (seconds, hands, ids_per_block) per sample.
- `predict_motion`: contextual prediction: history blocks in the prompt, the continuation is generated.
- `translate_motion`: motion -> text; motion and image tokens are forbidden in the output.
- `parse_motion_output` / `is_valid_motion_output`: generated token ids -> motion ids, or the reason why not.

Block order in a sequence: second by second; within a second left hand then right hand (mode "both").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from handvla.errors import InputError
from handvla.vla.configuration import PLACE_FRAMES
from handvla.vla.places import PLACE_IDS, names_places, states_end_places
from handvla.vla.processing import (
    MOTION_PLACEHOLDER,
    EncodedSample,
    HandVLAProcessor,
    _check_seconds,
    continuation_prompt,
    generation_prompt,
    hands_for_mode,
    place_prompt,
    translation_prompt,
)
from handvla.vla.text_tokenizer import MotionVocab

# States of the block automaton: which tokens are legal next. States >= _S_POS0 are the positions of a
# block's motion ids (state _S_POS0 + k: the id at position k).
_S_START, _S_ANY, _S_END, _S_EOS, _S_TEXT, _S_POS0 = range(6)
#: the most text tokens a motion answer may start with (``HandVLAConfig.motion_answer_prefix``): two targets'
#: "<ref>the red cube</ref><box>[[x1, y1, x2, y2]]</box>" take about 60 tokens of a small byte-level BPE
TEXT_PREFIX_MAX_TOKENS = 96
#: the most text tokens a stated place's name may take (``HandVLAConfig.place_names``) before its place is forced
PLACE_NAME_MAX_TOKENS = 24


def text_prefix_tokens(config) -> int:
    """How many text tokens `MotionBlockConstraint` lets a motion answer start with for a model of ``config``:
    `TEXT_PREFIX_MAX_TOKENS` when its ``motion_answer_prefix`` is "target_boxes", else 0."""
    return TEXT_PREFIX_MAX_TOKENS if getattr(config, "motion_answer_prefix", "none") == "target_boxes" else 0


def place_prefix_places(config, hands: int = 2, given: bool = False) -> int:
    """How many places (`handvla.vla.places`) a motion answer for ``hands`` hands may start with for a model
    of ``config``: one per hand when its ``motion_answer_prefix`` states places (`PLACE_FRAMES`), two per hand
    when it also states where the targets end (``end_places``), else 0. ``given``: the answer's start (its
    targets' places, e.g. ground, then act) is given, and what it may still say are the end places."""
    if getattr(config, "motion_answer_prefix", "none") not in PLACE_FRAMES:
        return 0
    ends = int(hands) if states_end_places(config) else 0
    return ends if given else int(hands) + ends


def _per_row(values: torch.Tensor, B: int, name: str) -> torch.Tensor:
    """(B,) one value per row from one value, one per row, or one per group of rows (num_return_sequences /
    beams expand each row into consecutive rows)."""
    if values.numel() == B:
        return values
    if values.numel() == 1:
        return values.expand(B)
    if B % values.numel() == 0:
        return values.repeat_interleave(B // values.numel())
    raise InputError("MotionBlockConstraint", name, f"1 or {B} values (or a divisor of {B})", str(values.numel()))


class MotionBlockConstraint(LogitsProcessor):
    """Force ``blocks`` motion blocks then the end-of-turn token after a prompt of ``prompt_length`` tokens.

    ``blocks``: one int for the whole batch or one per prompt (rows that finish early get only EOS, which
    ``generate`` then pads). ``restrict_parts``: each position of a block allows only the ids its layout
    gives it (`TokenLayout.position_id_ranges`: wrist ids at the wrist's positions,
    finger ids after them, and with per-layer ids only the position's residual-layer range); False allows
    any motion id.
    ``allow_noop``: also allow ``<MOT_NOOP>`` inside blocks (off: the output is always real motion).
    ``text_prefix_tokens``: before the first block, each row may say up to this many text tokens (anything
    but motion, image, end-of-turn and padding tokens); its blocks start at its first ``<mot>``, forced once
    the cap is reached (0: the blocks start at once).
    ``place_prefix``: before the first block, each row may state up to this many places (one number, or one per
    row: e.g. one per hand of the row's request; three end-point ids each, axis 0, 1, 2; the layout must have
    end points); ``<mot>`` may follow a whole place and is forced after the row's last (0: none). Not with
    ``text_prefix_tokens``. ``place_names`` (``HandVLAConfig.place_names``): each place comes after a name of
    1 to `PLACE_NAME_MAX_TOKENS` text tokens (its first id is forced at the cap).

    The state is a function of the generated tokens only (the count, and with a text prefix where each row's
    first ``<mot>`` stands), so the processor needs no memory between calls and works with any cache or
    batch layout.
    """

    def __init__(
        self,
        vocab: MotionVocab,
        prompt_length: int,
        blocks: int | Sequence[int],
        restrict_parts: bool = True,
        allow_noop: bool = False,
        text_prefix_tokens: int = 0,
        place_prefix: int = 0,
        place_names: bool = False,
    ):
        blocks_list = [blocks] if isinstance(blocks, (int, np.integer)) else list(blocks)
        if not blocks_list or any(int(b) <= 0 for b in blocks_list):
            raise InputError("MotionBlockConstraint", "blocks", "positive block counts", str(blocks_list))
        self.vocab = vocab
        self.prompt_length = int(prompt_length)
        self.blocks = torch.tensor([int(b) for b in blocks_list], dtype=torch.long)
        self.restrict_parts = restrict_parts
        self.allow_noop = allow_noop
        if isinstance(text_prefix_tokens, bool) or int(text_prefix_tokens) != text_prefix_tokens or text_prefix_tokens < 0:
            raise InputError("MotionBlockConstraint", "text_prefix_tokens", "a whole number >= 0", repr(text_prefix_tokens))
        self.text_prefix_tokens = int(text_prefix_tokens)
        lay = vocab.layout
        places_list = [place_prefix] if isinstance(place_prefix, (int, np.integer)) else list(place_prefix)
        if not places_list or any(isinstance(p, bool) or int(p) != p or p < 0 for p in places_list):
            raise InputError(
                "MotionBlockConstraint", "place_prefix", "whole numbers >= 0 (one, or one per row)", repr(place_prefix)
            )
        self.place_prefix = torch.tensor([int(p) for p in places_list], dtype=torch.long)
        if self.place_prefix.any() and (self.text_prefix_tokens or not lay.end_point_bins):
            raise InputError(
                "MotionBlockConstraint", "place_prefix", "0 with a text prefix or a layout without end points",
                repr(place_prefix),
            )
        self.place_names = bool(place_names) and bool(self.place_prefix.any())
        self._s_place0 = _S_POS0 + lay.tokens_per_block  # place states follow the block positions' states
        # a name's states follow them: its first token (text only), after a whole place (text or <mot>),
        # within it (text or its place's first id), and at its cap (the place's first id only)
        self._s_name_first, self._s_name_next, self._s_name_in, self._s_name_cap = (
            self._s_place0 + PLACE_IDS + j for j in range(4)
        )
        if restrict_parts:
            states = [_S_START] + [_S_POS0 + k for k in range(lay.tokens_per_block)] + [_S_END]
        else:
            states = [_S_START] + [_S_ANY] * lay.tokens_per_block + [_S_END]
        self.block_states = torch.tensor(states, dtype=torch.long)  # (L,) state at each offset in a block
        # (states, V) bool: legal tokens per state, built on the first call for the logits' V and device
        self._table: torch.Tensor | None = None

    @property
    def max_new_tokens(self) -> int:
        """Tokens the longest row generates: its text prefix, blocks and the end-of-turn token."""
        per_place = PLACE_IDS + (PLACE_NAME_MAX_TOKENS if self.place_names else 0)
        prefix = self.text_prefix_tokens + per_place * int(self.place_prefix.max())
        return prefix + int(self.blocks.max()) * self.vocab.block_length + 1

    def _build_table(self, V: int, device: torch.device) -> torch.Tensor:
        v = self.vocab
        if v.motion_token_range[1] > V:
            raise InputError(
                "MotionBlockConstraint", "scores", f"at least {v.motion_token_range[1]} logits", str(V)
            )
        ranges = v.layout.position_id_ranges() + v.motion_offset  # (tokens_per_block, 2) token-id ranges
        t = torch.zeros((self._s_name_cap + 1, V), dtype=torch.bool)
        if self.place_prefix.any():  # a place's id of axis a; <mot> only between whole places
            ep_lo, nb = v.motion_offset + v.layout.end_point_id_range[0], v.layout.end_point_bins
            for a in range(PLACE_IDS):
                t[self._s_place0 + a, ep_lo + a * nb : ep_lo + (a + 1) * nb] = True
            t[self._s_place0, v.mot_start_id] = True
        t[_S_START, v.mot_start_id] = True
        lo, hi = v.motion_token_range
        t[_S_ANY, lo:hi] = True
        for k, (lo, hi) in enumerate(ranges.tolist()):
            t[_S_POS0 + k, lo:hi] = True
        if self.allow_noop:
            t[_S_ANY, v.mot_noop_id] = True
            t[_S_POS0:, v.mot_noop_id] = True
        t[_S_END, v.mot_end_id] = True
        t[_S_EOS, v.eos_id] = True
        t[_S_TEXT] = True  # text, then <mot>: no motion id, image or end token
        lo, hi = v.motion_token_range
        t[_S_TEXT, lo:hi] = False
        no_text = [v.mot_end_id, v.mot_noop_id, v.img_start_id, v.img_end_id, v.img_context_id, v.eos_id, v.pad_id]
        t[_S_TEXT, no_text] = False
        if self.place_names:
            for state in (self._s_name_first, self._s_name_next, self._s_name_in):
                t[state] = t[_S_TEXT]
                t[state, v.mot_start_id] = False
            t[self._s_name_next, v.mot_start_id] = True
            t[self._s_name_cap] = t[self._s_place0]
            t[self._s_name_cap, v.mot_start_id] = False
            t[self._s_name_in] |= t[self._s_name_cap]
        return t.to(device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        B, V = scores.shape
        if self._table is None or self._table.shape[1] != V or self._table.device != scores.device:
            self._table = self._build_table(V, scores.device)
        n = input_ids.shape[1] - self.prompt_length  # tokens generated so far (same for every row)
        if n < 0:
            raise InputError(
                "MotionBlockConstraint",
                "prompt_length",
                f"<= the sequence length {input_ids.shape[1]}",
                str(self.prompt_length),
            )
        blocks = _per_row(self.blocks, B, "blocks").to(scores.device)
        L = self.vocab.block_length
        states = self.block_states.to(scores.device)
        if not (self.text_prefix_tokens or self.place_prefix.any()):
            in_block = states[n % L].expand(B)
            state = torch.where(n >= blocks * L, torch.full_like(in_block, _S_EOS), in_block)
        else:  # count from each row's first <mot> (m = 0 while the row is still in its prefix)
            starts = input_ids[:, self.prompt_length :] == self.vocab.mot_start_id
            started = starts.any(dim=1)
            first = starts.int().argmax(dim=1) if n else torch.zeros_like(blocks)
            m = torch.where(started, n - first, torch.zeros_like(blocks))
            in_block = torch.where(m >= blocks * L, torch.full_like(m, _S_EOS), states[m % L])
            if self.place_prefix.any():  # before it, the place ids said so far (each row: up to its cap)
                cap = PLACE_IDS * _per_row(self.place_prefix, B, "place_prefix").to(scores.device)
                before = self._s_place0 + n % PLACE_IDS
            else:
                cap, before = torch.full_like(m, self.text_prefix_tokens), _S_TEXT
            if self.place_names:  # names between the places: the state follows the place ids said so far
                prefix = self._named_place_state(input_ids[:, self.prompt_length :], cap)
            else:
                prefix = torch.where(n < cap, torch.full_like(m, before), torch.full_like(m, _S_START))
            state = torch.where(started, in_block, prefix)
        allowed = self._table[state]  # (B, V)
        return scores.masked_fill(~allowed, float("-inf"))

    def _named_place_state(self, generated: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        """(B,) the state of each row still before its first ``<mot>`` under ``place_names``, from its generated
        tokens (B, n): within a place its next axis; after ``cap`` place ids ``<mot>``; else a name's first
        token, the next token of a name, or (a name at `PLACE_NAME_MAX_TOKENS`) the next place's first id."""
        v = self.vocab
        lo = v.motion_offset + v.layout.end_point_id_range[0]
        is_place = (generated >= lo) & (generated < lo + PLACE_IDS * v.layout.end_point_bins)
        said = is_place.sum(dim=1)  # place ids said so far
        n = generated.shape[1]
        pos = torch.arange(n, device=generated.device).expand_as(generated)
        last = torch.where(is_place, pos, torch.full_like(pos, -1)).amax(dim=1) if n else torch.full_like(said, -1)
        name_len = n - 1 - last  # text tokens since the last place id (or the start)
        full = lambda x: torch.full_like(said, x)  # noqa: E731
        at_boundary = torch.where(
            name_len == 0,
            torch.where(said == 0, full(self._s_name_first), full(self._s_name_next)),
            torch.where(name_len >= PLACE_NAME_MAX_TOKENS, full(self._s_name_cap), full(self._s_name_in)),
        )
        state = torch.where(said >= cap, full(_S_START), at_boundary)
        return torch.where(said % PLACE_IDS != 0, self._s_place0 + said % PLACE_IDS, state)


class SuppressTokenRanges(LogitsProcessor):
    """Forbid token ids (given as half-open ranges and single ids), e.g. motion and image tokens in text."""

    def __init__(self, ranges: Sequence[tuple[int, int]], ids: Sequence[int] = ()):
        self.ranges = [(int(lo), int(hi)) for lo, hi in ranges]
        self.ids = [int(i) for i in ids]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        for lo, hi in self.ranges:
            scores[:, lo:hi] = float("-inf")
        if self.ids:
            scores[:, self.ids] = float("-inf")
        return scores


def text_only_processor(vocab: MotionVocab) -> SuppressTokenRanges:
    """Forbids every motion token (ids, delimiters, NOOP) and the image tokens."""
    return SuppressTokenRanges(
        [vocab.motion_token_range],
        [
            vocab.mot_start_id,
            vocab.mot_end_id,
            vocab.mot_noop_id,
            vocab.img_start_id,
            vocab.img_end_id,
            vocab.img_context_id,
        ],
    )


# ---- parsing -------------------------------------------------------------------------------------------


def _structure_error(
    tokens: np.ndarray, vocab: MotionVocab, blocks: int, check_parts: bool, allow_noop: bool
) -> str | None:
    """None if ``tokens`` is exactly ``blocks`` blocks followed by EOS (or padding / the end), else why not."""
    L, lay = vocab.block_length, vocab.layout
    lo, hi = vocab.motion_token_range
    if len(tokens) < blocks * L:
        return f"only {len(tokens)} tokens for {blocks} blocks of {L}"
    for b in range(blocks):
        blk = tokens[b * L : (b + 1) * L]
        if blk[0] != vocab.mot_start_id:
            return f"block {b}: token 0 is {blk[0]}, expected <mot> ({vocab.mot_start_id})"
        if blk[-1] != vocab.mot_end_id:
            return f"block {b}: last token is {blk[-1]}, expected </mot> ({vocab.mot_end_id})"
        ids = blk[1:-1]
        ok = ((ids >= lo) & (ids < hi)) | ((ids == vocab.mot_noop_id) if allow_noop else False)
        if not ok.all():
            k = int(np.argmin(ok))
            return f"block {b}: position {k} holds token {ids[k]}, not a motion id"
        if check_parts:
            m = ids - vocab.motion_offset
            real = ids != vocab.mot_noop_id
            rng = lay.position_id_ranges()
            bad = real & ((m < rng[:, 0]) | (m >= rng[:, 1]))
            if bad.any():
                k = int(np.argmax(bad))
                part = lay.position_part(k)
                return f"block {b}: {part} position {k} holds id {int(m[k])}, expected one in [{rng[k, 0]}, {rng[k, 1]})"
    rest = tokens[blocks * L :]
    if len(rest) and rest[0] not in (vocab.eos_id, vocab.pad_id):
        return f"token {rest[0]} after the last block, expected the end of the turn ({vocab.eos_id})"
    return None


def split_text_prefix(
    tokens: np.ndarray | torch.Tensor | Sequence[int], vocab: MotionVocab
) -> tuple[np.ndarray, np.ndarray]:
    """Generated token ids -> (the text before the first ``<mot>``, the rest from it on); all text when
    there is no ``<mot>``."""
    arr = np.asarray(tokens.cpu() if isinstance(tokens, torch.Tensor) else tokens, dtype=np.int64).reshape(-1)
    at = np.flatnonzero(arr == vocab.mot_start_id)
    k = int(at[0]) if len(at) else len(arr)
    return arr[:k], arr[k:]


def parse_motion_output(
    tokens: np.ndarray | torch.Tensor | Sequence[int],
    vocab: MotionVocab,
    seconds: int,
    hands: int,
    check_parts: bool = True,
    allow_noop: bool = False,
) -> np.ndarray:
    """Generated token ids (after the prompt, and after any text before the motion: `split_text_prefix`) ->
    motion ids (seconds, hands, ids_per_block) int64 (``<MOT_NOOP>`` -> -1 when ``allow_noop``). Raises
    InputError naming the first malformed token."""
    arr = np.asarray(tokens.cpu() if isinstance(tokens, torch.Tensor) else tokens, dtype=np.int64).reshape(-1)
    blocks = _check_seconds(seconds) * int(hands)
    err = _structure_error(arr, vocab, blocks, check_parts, allow_noop)
    if err is not None:
        raise InputError(
            "generated motion", None, f"{blocks} well-formed motion blocks then the end of turn", err
        )
    L = vocab.block_length
    ids = arr[: blocks * L].reshape(blocks, L)[:, 1:-1]
    out = np.where(ids == vocab.mot_noop_id, -1, ids - vocab.motion_offset)
    return out.reshape(int(seconds), int(hands), vocab.layout.tokens_per_block)


def is_valid_motion_output(
    tokens: np.ndarray | torch.Tensor | Sequence[int],
    vocab: MotionVocab,
    seconds: int,
    hands: int,
    check_parts: bool = True,
) -> bool:
    """True when `parse_motion_output` would succeed (for measuring valid-output rates)."""
    arr = np.asarray(tokens.cpu() if isinstance(tokens, torch.Tensor) else tokens, dtype=np.int64).reshape(-1)
    return _structure_error(arr, vocab, int(seconds) * int(hands), check_parts, False) is None


# ---- generation ----------------------------------------------------------------------------------------


@dataclass
class MotionGeneration:
    """Result of `generate_motion` / `predict_motion`. ``motion[i]``: (seconds_i, hands_i, ids_per_block)
    int64 motion ids of sample i; ``hands[i]``: its hands in block order; ``sequences``: (B, prompt + new)
    token ids as returned by ``generate`` (left-padded prompts); ``prompt_length``: padded prompt length
    (with the given ``prefixes``); ``prefix_texts[i]``: what the answer said before its motion (the given
    prefix, or the generated text of a model with ``motion_answer_prefix``; "" when none)."""

    motion: list[np.ndarray]
    hands: list[tuple[str, ...]]
    sequences: torch.Tensor
    prompt_length: int
    prefix_texts: list[str] = field(default_factory=list)


def _broadcast(value, n: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise InputError(
                "generation request", name, f"one value or {n} values (one per sample)", str(len(value))
            )
        return list(value)
    return [value] * n


def _sampling_processors(
    do_sample: bool, temperature: float, top_k: int | None, top_p: float
) -> list[LogitsProcessor]:
    """Warpers applied AFTER the constraint (so top-k / top-p never cut away every legal token)."""
    if not do_sample:
        return []
    if temperature <= 0:
        raise InputError("generation request", "temperature", "> 0", str(temperature))
    out: list[LogitsProcessor] = []
    if temperature != 1.0:
        out.append(TemperatureLogitsWarper(temperature))
    if top_k:
        out.append(TopKLogitsWarper(top_k=int(top_k)))
    if top_p is not None and top_p < 1.0:
        out.append(TopPLogitsWarper(top_p=float(top_p)))
    return out


@torch.no_grad()
def _generate(
    model,
    processor: HandVLAProcessor,
    samples: list[EncodedSample],
    make_head: Callable[[int], LogitsProcessor],
    max_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    top_p: float,
    seed: int | None,
) -> tuple[torch.Tensor, int]:
    """Left-pad ``samples``, run ``model.generate`` with ``make_head(prompt_length)`` first and the sampling
    warpers after it; returns (sequences (B, prompt_length + new), prompt_length)."""
    batch = processor.collate(samples, padding_side="left")
    prompt_length = batch["input_ids"].shape[1]
    head = make_head(prompt_length)
    device = model.device
    inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    v = processor.vocab
    # HF's own warpers stay off (ours run after the constraint): top_k=0 disables its default of 50.
    sampling = {"temperature": 1.0, "top_k": 0, "top_p": 1.0} if do_sample else {}
    gen_cfg = GenerationConfig(
        do_sample=do_sample,
        max_new_tokens=max_new_tokens,
        num_beams=1,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        eos_token_id=v.eos_id,
        pad_token_id=v.pad_id,
        use_cache=True,
        **sampling,
    )
    procs = LogitsProcessorList([head] + _sampling_processors(do_sample, temperature, top_k, top_p))
    if seed is not None:
        torch.manual_seed(seed)
    seqs = model.generate(**inputs, generation_config=gen_cfg, logits_processor=procs)
    return seqs, prompt_length


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _motion_request(
    processor: HandVLAProcessor,
    images,
    tasks,
    seconds,
    hand_mode,
    history=None,
    system=...,
    prefixes=None,
    places=None,
) -> tuple[list[EncodedSample], list[int], list[int], list[tuple[str, ...]]]:
    tasks_l = _as_list(tasks)
    n = len(tasks_l)
    if n == 0:
        raise InputError("generation request", "tasks", "at least one task", "none")
    images_l = _broadcast(images, n, "images") if isinstance(images, (list, tuple)) else [images] * n
    secs = [_check_seconds(s) for s in _broadcast(seconds, n, "seconds")]
    modes = _broadcast(hand_mode, n, "hand_mode")
    hands = [hands_for_mode(m) for m in modes]
    hist = _broadcast(history, n, "history") if history is not None else [None] * n
    places_l = _broadcast(places, n, "places")
    fps = processor.config.motion_fps
    samples = []
    for i in range(n):
        if not isinstance(tasks_l[i], str) or not tasks_l[i].strip():
            raise InputError("generation request", f"tasks[{i}]", "a non-empty instruction", repr(tasks_l[i]))
        if hist[i] is None:
            prompt = generation_prompt(tasks_l[i], secs[i], modes[i], fps)
            motions = []
        else:
            h = np.asarray(hist[i])
            if (
                h.ndim != 3
                or h.shape[1] != len(hands[i])
                or h.shape[2] != processor.vocab.layout.tokens_per_block
            ):
                raise InputError(
                    "generation request",
                    f"history[{i}]",
                    f"shape (seconds, {len(hands[i])}, {processor.vocab.layout.tokens_per_block}) for hand_mode '{modes[i]}'",
                    f"shape {h.shape}",
                )
            prompt = continuation_prompt(tasks_l[i], h.shape[0], secs[i], modes[i], fps)
            motions = [h]
        if places_l[i]:  # motion from stated places: the image is not shown
            prompt = place_prompt(prompt, places_l[i])
            samples.append(processor.encode(prompt, images=[], prompt_motions=motions, system=system))
            continue
        samples.append(processor.encode(prompt, images=[images_l[i]], prompt_motions=motions, system=system))
    if prefixes is not None:
        for i, text in enumerate(_broadcast(prefixes, n, "prefixes")):
            if text is None:  # this request's answer starts as the model says
                continue
            if not isinstance(text, str):
                raise InputError("generation request", f"prefixes[{i}]", "text or None", repr(text))
            samples[i] = processor.start_answer(samples[i], text)
    blocks = [s * len(h) for s, h in zip(secs, hands)]
    return samples, secs, blocks, hands


def generate_motion(
    model,
    processor: HandVLAProcessor,
    images: Image.Image | np.ndarray | Sequence,
    tasks: str | Sequence[str],
    seconds: int | Sequence[int] = 1,
    hand_mode: str | Sequence[str] = "both",
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = 50,
    top_p: float = 1.0,
    restrict_parts: bool = True,
    seed: int | None = None,
    system=...,
    history: Sequence[np.ndarray] | None = None,
    prefixes: str | Sequence[str] | None = None,
    places: str | Sequence[str | None] | None = None,
) -> MotionGeneration:
    """Instructed motion generation with the reference prompt, batched over ``tasks`` (one image per task,
    or one image for all). ``seconds`` / ``hand_mode``: one value or one per task. Greedy by default;
    ``do_sample`` samples with ``temperature`` / ``top_k`` (HF's default 50) / ``top_p`` applied after the
    block constraint. ``seed`` seeds torch's RNG first. ``history``: per task, motion ids (h_seconds, hands,
    ids_per_block) shown in the prompt to continue from (see `predict_motion`).

    A model whose ``motion_answer_prefix`` is not "none" first says its text (up to
    `TEXT_PREFIX_MAX_TOKENS`), returned in ``prefix_texts``. ``prefixes``: per task (or one for all), text
    the answer is made to start with instead (e.g. the box of another object, to see whether the motion
    follows what the answer says; or the places the model grounds, `handvla.vla.places.grounded_place_prefixes`);
    the motion blocks then follow it at once. A None entry leaves that answer's start to a model that states
    places (a text-prefix model needs text for every task).

    ``places``: per task (or one for all; None: none), where the objects the motion acts on are, in InternVL's
    grounding format ("<ref>the red cube</ref><box>[[x1, y1, x2, y2]]</box>", boxes 0..1000 of the model's
    view; `handvla.vla.grounding.grounding_prefix`): the motion is made from the stated places instead of the
    image (`place_prompt`; models trained with ``VLADataConfig.place_motion``); a task whose place is None or
    "" keeps its image."""
    samples, secs, blocks, hands = _motion_request(
        processor, images, tasks, seconds, hand_mode, history, system, prefixes, places
    )
    vocab = processor.vocab
    forced = [False] * len(samples)  # answers whose start is given
    if prefixes is not None:
        forced = [t is not None for t in _broadcast(prefixes, len(samples), "prefixes")]
        if not all(forced) and text_prefix_tokens(processor.config):
            raise InputError("generate_motion", "prefixes", "text for every task (this model starts with text)", "None")
    text = 0 if prefixes is not None else text_prefix_tokens(processor.config)
    n_places = [place_prefix_places(processor.config, len(h), given=f) for f, h in zip(forced, hands)]

    def make(prompt_length: int) -> MotionBlockConstraint:
        return MotionBlockConstraint(
            vocab, prompt_length, blocks, restrict_parts=restrict_parts, text_prefix_tokens=text,
            place_prefix=n_places, place_names=names_places(processor.config),
        )

    max_new = make(0).max_new_tokens
    seqs, plen = _generate(
        model, processor, samples, make, max_new, do_sample, temperature, top_k, top_p, seed
    )
    new = seqs[:, plen:].cpu()
    motion, said = [], []
    for i in range(len(samples)):
        head, rest = split_text_prefix(new[i], vocab)  # head: empty unless the model may say text first
        motion.append(parse_motion_output(rest, vocab, secs[i], len(hands[i]), check_parts=restrict_parts))
        said.append(processor.decode(head.tolist(), skip_special_tokens=False) if len(head) else "")
    if prefixes is not None:
        # a given start, then what the model said after it (its end places, for a model that states them)
        said = [str(t) + own if t is not None else own for t, own in zip(_broadcast(prefixes, len(samples), "prefixes"), said)]
    return MotionGeneration(motion=motion, hands=hands, sequences=seqs.cpu(), prompt_length=plen, prefix_texts=said)


def predict_motion(
    model,
    processor: HandVLAProcessor,
    images: Image.Image | np.ndarray | Sequence,
    tasks: str | Sequence[str],
    history: Sequence[np.ndarray],
    seconds: int | Sequence[int] = 1,
    hand_mode: str | Sequence[str] = "both",
    **kwargs,
) -> MotionGeneration:
    """Contextual motion prediction: ``history[i]`` (h_seconds, hands, ids_per_block) is placed in the prompt
    (`continuation_prompt`) and the next ``seconds`` are generated under the block constraint."""
    if history is None:
        raise InputError("predict_motion", "history", "one motion array per task", "None")
    hist = list(history) if isinstance(history, (list, tuple)) else [history]
    return generate_motion(model, processor, images, tasks, seconds, hand_mode, history=hist, **kwargs)


def _decode_answers(
    processor: HandVLAProcessor, seqs: torch.Tensor, prompt_length: int
) -> tuple[list[str], list[list[int]]]:
    """The generated text answers of ``seqs`` (after ``prompt_length``), each up to ``<|im_end|>``, and
    their token ids (without it)."""
    texts, rows = [], []
    for row in seqs[:, prompt_length:].cpu().tolist():
        if processor.vocab.eos_id in row:
            row = row[: row.index(processor.vocab.eos_id)]
        rows.append(row)
        texts.append(processor.decode(row, skip_special_tokens=True))
    return texts, rows


def answer_questions(
    model,
    processor: HandVLAProcessor,
    images: Sequence,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 48,
    system=...,
) -> list[str]:
    """Image + question -> text, greedy (e.g. the grounding questions of ``handvla.vla.grounding``): one
    ``<image>`` per prompt, no motion; the answer may not contain motion or image tokens. Returns the decoded
    answers (up to ``<|im_end|>``)."""
    if len(images) != len(prompts) or not prompts:
        raise InputError(
            "answer_questions", "images", f"one image per prompt ({len(prompts)})", str(len(images))
        )
    if max_new_tokens <= 0:
        raise InputError("answer_questions", "max_new_tokens", "a positive integer", str(max_new_tokens))
    samples = [processor.encode(q, images=[im], system=system) for im, q in zip(images, prompts)]
    head = text_only_processor(processor.vocab)
    seqs, plen = _generate(
        model, processor, samples, lambda _: head, max_new_tokens, False, 1.0, None, 1.0, None
    )
    return _decode_answers(processor, seqs, plen)[0]


class PlaceAnswerConstraint(LogitsProcessor):
    """Force exactly one place (`handvla.vla.places.PLACE_IDS` end-point ids, axis 0, 1, 2) then the end of
    turn after a prompt of ``prompt_length`` tokens: a grounding question's answer for a model that answers
    them in places (``motion_answer_prefix`` "target_places" / "hand_places")."""

    def __init__(self, vocab: MotionVocab, prompt_length: int):
        if not vocab.layout.end_point_bins:
            raise InputError("PlaceAnswerConstraint", "vocab", "a motion layout with end-point ids", "none")
        self.vocab, self.prompt_length = vocab, int(prompt_length)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        n = input_ids.shape[1] - self.prompt_length
        v = self.vocab
        allowed = torch.zeros(scores.shape[1], dtype=torch.bool, device=scores.device)
        if n < PLACE_IDS:
            lo = v.motion_offset + v.layout.end_point_id_range[0] + n * v.layout.end_point_bins
            allowed[lo : lo + v.layout.end_point_bins] = True
        else:
            allowed[v.eos_id] = True
        return scores.masked_fill(~allowed, float("-inf"))


@torch.no_grad()
def answer_places(
    model, processor: HandVLAProcessor, images: Sequence, prompts: Sequence[str], *, system=..., batch_size: int = 16
) -> np.ndarray:
    """Image + question -> one place, greedy under `PlaceAnswerConstraint` (the grounding questions of a model
    that answers them in end-point ids): (N, `PLACE_IDS`) bins, one row per prompt."""
    if len(images) != len(prompts) or not prompts:
        raise InputError("answer_places", "images", f"one image per prompt ({len(prompts)})", str(len(images)))
    lay = processor.vocab.layout
    out = []
    for b in range(0, len(prompts), batch_size):
        samples = [processor.encode(q, images=[im], system=system)
                   for im, q in zip(images[b : b + batch_size], prompts[b : b + batch_size])]  # fmt: skip
        seqs, plen = _generate(model, processor, samples, lambda pl: PlaceAnswerConstraint(processor.vocab, pl),
                               PLACE_IDS + 1, False, 1.0, None, 1.0, None)  # fmt: skip
        ids = seqs[:, plen : plen + PLACE_IDS].cpu() - processor.vocab.motion_offset - lay.end_point_id_range[0]
        out.append((ids - torch.arange(PLACE_IDS) * lay.end_point_bins).numpy())
    return np.concatenate(out).astype(np.int64)


def translate_motion(
    model,
    processor: HandVLAProcessor,
    images: Image.Image | np.ndarray | Sequence,
    motions: np.ndarray | Sequence[np.ndarray],
    hand_mode: str | Sequence[str] = "both",
    *,
    prompts: str | Sequence[str] | None = None,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = 50,
    top_p: float = 1.0,
    seed: int | None = None,
    system=...,
    return_token_ids: bool = False,
) -> list[str] | tuple[list[str], list[list[int]]]:
    """Motion -> text. ``motions[i]``: (seconds, hands, ids_per_block). The prompt (default
    `translation_prompt`; custom ``prompts`` need one ``<image>`` and one ``<motion>``) shows the motion;
    the answer may not contain motion or image tokens. Returns the decoded answers (up to ``<|im_end|>``),
    and with ``return_token_ids`` also the generated ids (up to, not including, ``<|im_end|>``)."""
    motions_l = [motions] if isinstance(motions, np.ndarray) else list(motions)
    n = len(motions_l)
    if n == 0:
        raise InputError("translate_motion", "motions", "at least one motion array", "none")
    images_l = _broadcast(images, n, "images") if isinstance(images, (list, tuple)) else [images] * n
    modes = _broadcast(hand_mode, n, "hand_mode")
    prompts_l = _broadcast(prompts, n, "prompts") if prompts is not None else [None] * n
    if max_new_tokens <= 0:
        raise InputError("translate_motion", "max_new_tokens", "a positive integer", str(max_new_tokens))
    samples = []
    for i, m in enumerate(motions_l):
        hands = hands_for_mode(modes[i])
        arr = np.asarray(m)
        if arr.ndim != 3 or arr.shape[1] != len(hands):
            raise InputError(
                "translate_motion",
                f"motions[{i}]",
                f"shape (seconds, {len(hands)}, ids_per_block)",
                f"shape {arr.shape}",
            )
        prompt = prompts_l[i] or translation_prompt(arr.shape[0], modes[i], processor.config.motion_fps)
        if MOTION_PLACEHOLDER not in prompt:
            raise InputError(
                "translate_motion", f"prompts[{i}]", f"a '{MOTION_PLACEHOLDER}' placeholder", repr(prompt)
            )
        samples.append(processor.encode(prompt, images=[images_l[i]], prompt_motions=[arr], system=system))
    head = text_only_processor(processor.vocab)
    seqs, plen = _generate(
        model, processor, samples, lambda _: head, max_new_tokens, do_sample, temperature, top_k, top_p, seed
    )
    texts, rows = _decode_answers(processor, seqs, plen)
    return (texts, rows) if return_token_ids else texts
