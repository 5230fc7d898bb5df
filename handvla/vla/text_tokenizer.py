"""The text tokenizer and the motion vocabulary on top of it.

The text tokenizer normally comes from the backbone folder (an InternVL3 ``-hf`` checkpoint ships Qwen's
tokenizer): `load_text_tokenizer`. Without one (tiny models, tests, the demo) `build_text_tokenizer` trains a
small byte-level BPE tokenizer with the ``tokenizers`` library on the project's own text, with Qwen's chat
special tokens, wrapped as a transformers fast tokenizer that saves and loads with the checkpoint. Byte-level
means any text encodes (no unknown token), however small the vocabulary.

`add_motion_tokens` appends the image tokens InternVL needs (when absent) and the motion vocabulary:
``<mot>``, ``</mot>``, ``<MOT_NOOP>``, then ``<motion_id_0>`` .. ``<motion_id_{K-1}>`` with contiguous ids.
`MotionVocab` holds the resulting ids and maps token ids <-> motion ids by one subtraction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from handvla.errors import CheckpointError, ConfigError, InputError, MissingResourceError
from handvla.tokenizer.layout import TokenLayout
from handvla.vla.configuration import (
    ENDOFTEXT_TOKEN,
    IM_END_TOKEN,
    IM_START_TOKEN,
    IMG_CONTEXT_TOKEN,
    IMG_END_TOKEN,
    IMG_START_TOKEN,
    MOT_END_TOKEN,
    MOT_NOOP_TOKEN,
    MOT_START_TOKEN,
    HandVLAConfig,
    motion_token,
)

CHAT_SPECIAL_TOKENS = (ENDOFTEXT_TOKEN, IM_START_TOKEN, IM_END_TOKEN)

# A small built-in corpus: the words of the generation / translation / prediction prompts and of simple
# manipulation instructions. Real training passes its own instruction text as well.
DEFAULT_CORPUS = (
    "You are a helpful assistant that understands hand motion.",
    "In <image>, pick up the red cube, what is the 15-step motion sequence for the both hands?",
    "In <image>, grasp the blue cup, what is the 30-step motion sequence for the left hand?",
    "In <image>, open the drawer, what is the 45-step motion sequence for the right hand?",
    "In <image>, the motion sequence of the left hand is <motion>. What is the hand doing?",
    "Given the previous 15-step motion sequence, what is the next 60-step motion sequence?",
    "reach grasp lift move place release push point wave pinch open close rotate pour wipe stack",
    "the right hand reaches towards the green ball on the table and closes its fingers around it",
    "the left hand lifts the yellow box, moves it to the left and puts it down gently",
    "both hands hold the bowl, the thumb and index finger pinch the lid, the palm faces down",
    "red green blue yellow white black orange purple cube ball cup bowl box bottle lid drawer door",
    "up down left right forward backward towards away from above below near far slowly quickly",
    "0 1 2 3 4 5 6 7 8 9 10 15 30 45 60 75 90 105 120 135 150 one two three four five seconds",
)


def build_text_tokenizer(
    corpus: Iterable[str] | None = None, vocab_size: int = 1024, min_frequency: int = 1
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``corpus`` (default `DEFAULT_CORPUS`) with Qwen's chat special
    tokens; ``<|im_end|>`` is the end-of-turn (eos) token and ``<|endoftext|>`` the padding token.

    ``vocab_size`` is an upper bound: a small corpus stops merging earlier. Deterministic for a given corpus.
    """
    texts = list(DEFAULT_CORPUS if corpus is None else corpus)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise InputError("build_text_tokenizer", "corpus", "a non-empty iterable of strings")
    if vocab_size < 256 + len(CHAT_SPECIAL_TOKENS):
        raise ConfigError(
            f"build_text_tokenizer: vocab_size must be >= 259 (the byte alphabet), got {vocab_size}"
        )
    tok = Tokenizer(models.BPE())
    # Qwen-like: no prefix space, so "In" at the start and " In" mid-sentence are distinct tokens; and every
    # digit its own token, as Qwen2's pre-tokenizer splits numbers, so that a number reads the same way
    # wherever it appears (with merges learned from a small corpus "440" became "4" "40" and "425" "42" "5",
    # which a small model cannot learn to write as coordinates).
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(CHAT_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END_TOKEN,
        pad_token=ENDOFTEXT_TOKEN,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def load_text_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer saved in a local folder (a backbone or a VLA checkpoint); no downloads."""
    path = Path(path)
    if not path.is_dir():
        raise MissingResourceError(f"{path}: expected a folder with tokenizer files (tokenizer.json ...)")
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise MissingResourceError(
            f"{path}: no tokenizer files found (expected tokenizer.json or tokenizer_config.json)"
        )
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # a broken or foreign tokenizer folder
        raise CheckpointError(f"{path}: the tokenizer does not load: {type(e).__name__}: {e}") from e
    return tok


@dataclass(frozen=True)
class MotionVocab:
    """Token ids of the motion and image vocabulary in one LLM vocabulary.

    ``motion_offset``: id of ``<motion_id_0>``; motion id ``i`` is token ``motion_offset + i``.
    """

    layout: TokenLayout
    motion_offset: int
    mot_start_id: int
    mot_end_id: int
    mot_noop_id: int
    img_start_id: int
    img_end_id: int
    img_context_id: int
    eos_id: int  # <|im_end|>: ends an assistant turn
    pad_id: int

    @property
    def num_motion_ids(self) -> int:
        return self.layout.vocab_size

    @property
    def motion_token_range(self) -> tuple[int, int]:
        """Half-open token-id range of all motion ids."""
        return self.motion_offset, self.motion_offset + self.layout.vocab_size

    @property
    def wrist_token_range(self) -> tuple[int, int]:
        lo, hi = self.layout.first_part_id_range
        return self.motion_offset + lo, self.motion_offset + hi

    @property
    def finger_token_range(self) -> tuple[int, int]:
        lo, hi = self.layout.finger_id_range
        return self.motion_offset + lo, self.motion_offset + hi

    @property
    def block_length(self) -> int:
        """Tokens in one hand-second block: ``<mot>`` + the layout's tokens_per_block + ``</mot>``."""
        return self.layout.tokens_per_block + 2

    def special_motion_ids(self) -> list[int]:
        """Token ids that only appear in motion blocks: delimiters, NOOP and all motion ids."""
        lo, hi = self.motion_token_range
        return [self.mot_start_id, self.mot_end_id, self.mot_noop_id, *range(lo, hi)]

    def to_token_ids(self, motion_ids: np.ndarray | torch.Tensor | list) -> np.ndarray:
        """Motion ids (any shape, ints in [0, K)) -> token ids, same shape."""
        arr = np.asarray(motion_ids)
        if arr.size and (
            not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= self.num_motion_ids
        ):
            raise InputError("motion ids", None, f"integers in [0, {self.num_motion_ids})", _range_str(arr))
        return arr.astype(np.int64) + self.motion_offset

    def to_motion_ids(self, token_ids: np.ndarray | torch.Tensor | list) -> np.ndarray:
        """Token ids that are all motion tokens -> motion ids, same shape."""
        arr = np.asarray(
            token_ids.cpu() if isinstance(token_ids, torch.Tensor) else token_ids, dtype=np.int64
        )
        lo, hi = self.motion_token_range
        if arr.size and (arr.min() < lo or arr.max() >= hi):
            raise InputError("token ids", None, f"motion token ids in [{lo}, {hi})", _range_str(arr))
        return arr - lo

    def is_motion(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Boolean mask of motion-id tokens (delimiters excluded)."""
        lo, hi = self.motion_token_range
        return (token_ids >= lo) & (token_ids < hi)

    @classmethod
    def from_config(cls, config: HandVLAConfig) -> MotionVocab:
        if not config.vocabulary_ready:
            raise ConfigError(
                "HandVLAConfig: the motion vocabulary ids are not set (call extend_vocabulary with a tokenizer)"
            )
        return cls(
            layout=config.motion_layout,
            motion_offset=config.motion_token_offset,
            mot_start_id=config.mot_start_token_id,
            mot_end_id=config.mot_end_token_id,
            mot_noop_id=config.mot_noop_token_id,
            img_start_id=config.img_start_token_id,
            img_end_id=config.img_end_token_id,
            img_context_id=config.image_token_id,
            eos_id=config.text_eos_token_id,
            pad_id=config.text_pad_token_id
            if config.text_pad_token_id is not None
            else config.text_eos_token_id,
        )

    def write_to_config(self, config: HandVLAConfig) -> None:
        config.motion_token_layout = self.layout.to_dict()
        config.motion_token_offset = self.motion_offset
        config.mot_start_token_id = self.mot_start_id
        config.mot_end_token_id = self.mot_end_id
        config.mot_noop_token_id = self.mot_noop_id
        config.img_start_token_id = self.img_start_id
        config.img_end_token_id = self.img_end_id
        config.image_token_id = self.img_context_id
        config.text_eos_token_id = self.eos_id
        config.text_pad_token_id = self.pad_id

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase, layout: TokenLayout) -> MotionVocab:
        """Read the ids from a tokenizer that already has the motion vocabulary; checks contiguity."""
        where = f"tokenizer {getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__}"
        vocab = tokenizer.get_vocab()

        def need(tok: str) -> int:
            if tok not in vocab:
                raise CheckpointError(f"{where}: token '{tok}' is missing from the vocabulary")
            return int(vocab[tok])

        offset = need(motion_token(0))
        last = need(motion_token(layout.vocab_size - 1))
        if last - offset != layout.vocab_size - 1:
            raise CheckpointError(
                f"{where}: motion tokens are not contiguous: <motion_id_0> = {offset}, "
                f"<motion_id_{layout.vocab_size - 1}> = {last}"
            )
        ids = np.array([vocab.get(motion_token(i), -1) for i in range(layout.vocab_size)])
        if not np.array_equal(ids, np.arange(offset, offset + layout.vocab_size)):
            raise CheckpointError(f"{where}: motion token ids are not contiguous from {offset}")
        if motion_token(layout.vocab_size) in vocab:
            raise CheckpointError(
                f"{where}: has more motion tokens than the layout's vocab_size = {layout.vocab_size}"
            )
        pad = tokenizer.pad_token_id
        return cls(
            layout=layout,
            motion_offset=offset,
            mot_start_id=need(MOT_START_TOKEN),
            mot_end_id=need(MOT_END_TOKEN),
            mot_noop_id=need(MOT_NOOP_TOKEN),
            img_start_id=need(IMG_START_TOKEN),
            img_end_id=need(IMG_END_TOKEN),
            img_context_id=need(IMG_CONTEXT_TOKEN),
            eos_id=need(IM_END_TOKEN),
            pad_id=int(pad) if pad is not None else need(IM_END_TOKEN),
        )


def _range_str(arr: np.ndarray) -> str:
    if arr.size == 0:
        return "empty"
    if not np.issubdtype(arr.dtype, np.number):
        return f"dtype {arr.dtype}"
    return f"values in [{arr.min()}, {arr.max()}] (dtype {arr.dtype})"


def _grow_motion_ids(tokenizer: PreTrainedTokenizerBase, layout: TokenLayout) -> None:
    """A tokenizer with the motion ids of a smaller layout (e.g. a checkpoint trained before its tokenizer's
    blocks gained end-point ids, ``TokenLayout.end_point_bins``) gets the missing ``<motion_id_k>`` after its
    last one, which must be the tokenizer's last token so that the ids stay contiguous."""
    vocab = tokenizer.get_vocab()
    have = 0
    while motion_token(have) in vocab:
        have += 1
    if have >= layout.vocab_size:
        return
    if int(vocab[motion_token(have - 1)]) != len(tokenizer) - 1:
        raise ConfigError(
            f"tokenizer: has {have} motion ids and the layout {layout.vocab_size}, but tokens follow "
            f"<motion_id_{have - 1}>, so more motion ids would not be contiguous"
        )
    new = [motion_token(i) for i in range(have, layout.vocab_size)]
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in new], special_tokens=True)


def add_motion_tokens(tokenizer: PreTrainedTokenizerBase, layout: TokenLayout) -> MotionVocab:
    """Add the image tokens (when absent) and the motion vocabulary to ``tokenizer`` in place.

    All added tokens are special (never split, dropped by ``decode(skip_special_tokens=True)``). The motion
    ids get contiguous token ids. Idempotent: a tokenizer that already has the full motion vocabulary is
    only checked; one with fewer motion ids than ``layout`` (a layout that gained end-point ids) gets the
    rest, contiguous after its last (`_grow_motion_ids`). Returns the `MotionVocab`.
    """
    vocab = tokenizer.get_vocab()
    for tok in (IM_START_TOKEN, IM_END_TOKEN):
        if tok not in vocab:
            raise ConfigError(
                f"tokenizer {getattr(tokenizer, 'name_or_path', '')}: expected the chat token '{tok}' "
                "(a Qwen-style tokenizer)"
            )
    missing_img = [t for t in (IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN) if t not in vocab]
    if missing_img:
        tokenizer.add_tokens(
            [AddedToken(t, special=True, normalized=False) for t in missing_img], special_tokens=True
        )
    present = [t for t in (MOT_START_TOKEN, MOT_END_TOKEN, MOT_NOOP_TOKEN, motion_token(0)) if t in vocab]
    if not present:
        new = [MOT_START_TOKEN, MOT_END_TOKEN, MOT_NOOP_TOKEN] + [
            motion_token(i) for i in range(layout.vocab_size)
        ]
        before = len(tokenizer)
        tokenizer.add_tokens(
            [AddedToken(t, special=True, normalized=False) for t in new], special_tokens=True
        )
        if len(tokenizer) != before + len(new):
            raise ConfigError(
                f"tokenizer: adding {len(new)} motion tokens grew the vocabulary by {len(tokenizer) - before}"
            )
    elif len(present) != 4:
        raise ConfigError(
            f"tokenizer: has only part of the motion vocabulary ({present}); expected all or none"
        )
    else:
        _grow_motion_ids(tokenizer, layout)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = ENDOFTEXT_TOKEN if ENDOFTEXT_TOKEN in tokenizer.get_vocab() else IM_END_TOKEN
    # Batched generation needs left padding (all prompts end at the same position).
    tokenizer.padding_side = "left"
    return MotionVocab.from_tokenizer(tokenizer, layout)
