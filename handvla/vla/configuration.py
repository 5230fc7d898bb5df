"""Configuration of the motion VLA: an InternVL3 backbone (InternViT + pixel shuffle + MLP projector + Qwen2
LLM) whose vocabulary is extended with motion tokens.

`HandVLAConfig` is a transformers ``InternVLConfig`` (so an InternVL3 ``-hf`` checkpoint's weights load into
it unchanged) plus the motion vocabulary, the image tiling, and the training-loss options. It saves and
loads as ``config.json`` like any transformers config (``model_type = "handvla"``).

Motion vocabulary (one block per hand-second, see ``handvla.vla.processing`` for the sequence format)::

    <mot> <motion_id_a1> ... <motion_id_a128> </mot>      128 = wrist 64 ids then finger 64 ids

Motion id ``i`` (0 <= i < num_motion_ids) is token ``<motion_id_i>``, token id ``motion_token_offset + i``:
the ids are contiguous so the id <-> motion-index map is one subtraction. Wrist ids are
``[0, num_wrist_motion_ids)``, finger ids ``[num_wrist_motion_ids, num_motion_ids)``.

Presets: ``tiny`` (CPU tests and demos), ``small`` (tens of millions of parameters, trains on one GPU),
and the InternVL3 shapes ``internvl3-1b`` / ``-2b`` / ``-8b`` / ``-14b`` (InternViT-300M-448px-V2.5 with
Qwen2.5-0.5B / 1.5B / 7B / 14B). The released shapes come from the public ``OpenGVLab/InternVL3-*-hf`` and
Qwen2.5 configs; ``HandVLAForConditionalGeneration.from_backbone`` always reads the real ``config.json`` of a
local checkpoint, so the presets only matter for planning (parameter counts) and random-init runs.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from transformers import AutoConfig, InternVLConfig

from handvla.errors import ConfigError

# Token strings. Chat tokens are Qwen's; image tokens are InternVL's; motion tokens are Being-H0's.
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
ENDOFTEXT_TOKEN = "<|endoftext|>"
IMG_START_TOKEN = "<img>"
IMG_END_TOKEN = "</img>"
IMG_CONTEXT_TOKEN = "<IMG_CONTEXT>"
MOT_START_TOKEN = "<mot>"
MOT_END_TOKEN = "</mot>"
MOT_NOOP_TOKEN = "<MOT_NOOP>"


def motion_token(index: int) -> str:
    """The vocabulary string of motion id ``index``."""
    return f"<motion_id_{index}>"


# The system turn of every chat (stored in the config so training and inference use the same one).
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# ImageNet statistics: InternViT was trained on them (InternVL's own preprocessing).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class MotionLayout:
    """How motion ids are laid out (defaults: Being-H0's GRVQ-8K tokenizer).

    ``ids_per_block`` ids per hand-second: the first ``wrist_ids_per_block`` come from the wrist tokenizer
    (ids in ``[0, num_wrist_motion_ids)``), the next ``finger_ids_per_block`` from the finger tokenizer
    (ids in ``[num_wrist_motion_ids, num_motion_ids)``). A single-part (not part-level) tokenizer has
    ``finger_ids_per_block = 0`` and ``num_wrist_motion_ids = num_motion_ids``: every position may hold any id.

    The motion tokenizer defines the layout (``handvla.tokenizer.modeling.token_layout``);
    `MotionLayout.from_token_layout` converts it.
    """

    num_motion_ids: int = 8192
    ids_per_block: int = 128
    wrist_ids_per_block: int = 64
    finger_ids_per_block: int = 64
    num_wrist_motion_ids: int = 4096
    #: > 0 when every residual layer has its own id range of this many ids inside each part (the motion
    #: tokenizer's ``id_layout = 'per_layer'``): then an id says its layer, ``(id - part_start) // it``
    codes_per_layer: int = 0
    #: residual layer of the code at each position of a block (None: unknown, e.g. older checkpoints)
    position_layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.position_layers is not None:
            object.__setattr__(self, "position_layers", tuple(int(v) for v in self.position_layers))
            if len(self.position_layers) != self.ids_per_block:
                raise ConfigError(
                    f"MotionLayout.position_layers: expected {self.ids_per_block} entries, got {len(self.position_layers)}"
                )
        if self.codes_per_layer < 0:
            raise ConfigError(f"MotionLayout.codes_per_layer: expected >= 0, got {self.codes_per_layer}")
        for name in ("num_motion_ids", "ids_per_block", "wrist_ids_per_block", "num_wrist_motion_ids"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(
                    f"MotionLayout.{name}: expected a positive integer, got {getattr(self, name)}"
                )
        if self.finger_ids_per_block < 0:
            raise ConfigError(
                f"MotionLayout.finger_ids_per_block: expected >= 0, got {self.finger_ids_per_block}"
            )
        if self.wrist_ids_per_block + self.finger_ids_per_block != self.ids_per_block:
            raise ConfigError(
                "MotionLayout: expected wrist_ids_per_block + finger_ids_per_block == ids_per_block, got "
                f"{self.wrist_ids_per_block} + {self.finger_ids_per_block} != {self.ids_per_block}"
            )
        if self.finger_ids_per_block == 0:
            if self.num_wrist_motion_ids != self.num_motion_ids:
                raise ConfigError(
                    "MotionLayout: a single-part layout (finger_ids_per_block = 0) needs num_wrist_motion_ids == "
                    f"num_motion_ids, got {self.num_wrist_motion_ids} and {self.num_motion_ids}"
                )
        elif not 0 < self.num_wrist_motion_ids < self.num_motion_ids:
            raise ConfigError(
                f"MotionLayout.num_wrist_motion_ids: expected in (0, {self.num_motion_ids}), "
                f"got {self.num_wrist_motion_ids}"
            )

    @classmethod
    def from_token_layout(cls, layout: Any) -> MotionLayout:
        """From the motion tokenizer's ``TokenLayout`` (parts ("wrist", "finger") or one part)."""
        parts = tuple(layout.parts)
        per_layer = getattr(layout, "id_layout", "per_part") == "per_layer"
        extra = dict(
            codes_per_layer=int(layout.codebook_size) if per_layer else 0,
            position_layers=tuple(int(v) for v in layout.position_layers())
            if hasattr(layout, "position_layers")
            else None,
        )
        if parts == ("wrist", "finger"):
            return cls(
                num_motion_ids=int(layout.vocab_size),
                ids_per_block=int(layout.tokens_per_block),
                wrist_ids_per_block=int(layout.tokens_per_part),
                finger_ids_per_block=int(layout.tokens_per_part),
                num_wrist_motion_ids=int(layout.id_range("wrist")[1]),
                **extra,
            )
        if len(parts) == 1:
            return cls(
                num_motion_ids=int(layout.vocab_size),
                ids_per_block=int(layout.tokens_per_block),
                wrist_ids_per_block=int(layout.tokens_per_block),
                finger_ids_per_block=0,
                num_wrist_motion_ids=int(layout.vocab_size),
                **extra,
            )
        raise ConfigError(
            f"motion token layout: expected parts ('wrist', 'finger') or a single part, got {parts}"
        )

    @property
    def wrist_id_range(self) -> tuple[int, int]:
        """Half-open range of wrist motion ids."""
        return 0, self.num_wrist_motion_ids

    @property
    def finger_id_range(self) -> tuple[int, int]:
        """Half-open range of finger motion ids."""
        return self.num_wrist_motion_ids, self.num_motion_ids

    def compatible(self, other: MotionLayout) -> bool:
        """Same ids in the same places: every field equal, ``position_layers`` only where both know it
        (checkpoints from before it was recorded have None)."""
        a, b = self.to_dict(), other.to_dict()
        if a["position_layers"] is None or b["position_layers"] is None:
            a.pop("position_layers"), b.pop("position_layers")
        return a == b

    @property
    def num_layers(self) -> int:
        """Residual layers per part (1 when unknown)."""
        return max(self.position_layers) + 1 if self.position_layers else 1

    def check_layer_weights(self, weights: Any, where: str) -> list[float]:
        """``weights`` as one float >= 0 per residual layer, or a one-line ConfigError naming ``where``: the
        ids must say their layer (a tokenizer with ``id_layout: per_layer``)."""
        if not self.codes_per_layer:
            raise ConfigError(
                f"{where}: the motion tokenizer's ids do not say their residual layer (train it with "
                "id_layout: per_layer)"
            )
        w = [float(x) for x in weights]
        if len(w) != self.num_layers or any((not math.isfinite(x)) or x < 0 for x in w):
            raise ConfigError(
                f"{where}: expected {self.num_layers} weights >= 0 (one per residual layer), got {list(weights)}"
            )
        return w

    def position_id_ranges(self) -> np.ndarray:
        """(ids_per_block, 2) legal [lo, hi) motion-id range at each position of a block: the part's range,
        narrowed to the position's residual layer when ids are per layer."""
        out = np.zeros((self.ids_per_block, 2), np.int64)
        w = self.wrist_ids_per_block
        out[:w] = self.wrist_id_range
        out[w:] = self.finger_id_range
        if self.codes_per_layer and self.position_layers is not None:
            layers = np.asarray(self.position_layers, np.int64)
            out[:, 0] = out[:, 0] + layers * self.codes_per_layer
            out[:, 1] = out[:, 0] + self.codes_per_layer
        return out

    def id_kinds(self, motion_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(part, layer) of motion ids: part 0 = wrist, 1 = finger; layer -1 when ids do not say it."""
        ids = np.asarray(motion_ids, np.int64)
        part = (ids >= self.num_wrist_motion_ids).astype(np.int64) if self.finger_ids_per_block else np.zeros_like(ids)
        if not self.codes_per_layer:
            return part, np.full_like(ids, -1)
        start = np.where(part == 1, self.num_wrist_motion_ids, 0)
        return part, (ids - start) // self.codes_per_layer

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_motion_ids": self.num_motion_ids,
            "ids_per_block": self.ids_per_block,
            "wrist_ids_per_block": self.wrist_ids_per_block,
            "finger_ids_per_block": self.finger_ids_per_block,
            "num_wrist_motion_ids": self.num_wrist_motion_ids,
            "codes_per_layer": self.codes_per_layer,
            "position_layers": list(self.position_layers) if self.position_layers is not None else None,
        }


class HandVLAConfig(InternVLConfig):
    r"""InternVL config + motion vocabulary + tiling + loss options.

    Motion layout (see `MotionLayout`): ``num_motion_ids``, ``ids_per_block``, ``wrist_ids_per_block``,
    ``finger_ids_per_block``, ``num_wrist_motion_ids``. ``motion_fps``: motion frames per second (a block
    covers one second = ``motion_fps`` steps; the generation prompt names ``motion_fps * seconds`` steps).

    Token ids (set by ``extend_vocabulary`` once the tokenizer has the tokens; None before):
    ``motion_token_offset`` (id of ``<motion_id_0>``), ``mot_start_token_id``, ``mot_end_token_id``,
    ``mot_noop_token_id``, ``img_start_token_id``, ``img_end_token_id`` (``image_token_id``, inherited, is
    ``<IMG_CONTEXT>``), ``text_eos_token_id`` (``<|im_end|>``, ends an answer), ``text_pad_token_id``.

    Images: ``min_tiles`` / ``max_tiles`` tiles of ``vision_config.image_size`` pixels chosen to keep the
    aspect ratio, plus a thumbnail tile when more than one tile is used (``use_thumbnail``); pixel values
    normalised with ``image_mean`` / ``image_std``.

    Loss options: ``motion_logit_mask_prob`` (p: at each target motion token, with probability p, the
    cross-entropy is taken over motion ids only, i.e. non-motion logits are -inf), and
    ``loss_quantile_low`` / ``loss_quantile_high`` (keep only answer tokens whose loss lies between these
    quantiles of the batch's per-token losses; 0 and 1 keep all), ``motion_layer_loss_weights`` (one
    weight per residual layer for the cross-entropy of motion ids, which need per-layer ids,
    ``codes_per_layer > 0``; None = every token weighs 1, the reference).

    ``system_prompt``: the chat's system turn (None: no system turn). ``has_motion_tokenizer``: the
    checkpoint folder holds ``motion_tokenizer/``. ``preset``: name of the preset this config came from
    (informational).
    """

    model_type = "handvla"

    num_motion_ids: int = 8192
    ids_per_block: int = 128
    wrist_ids_per_block: int = 64
    finger_ids_per_block: int = 64
    num_wrist_motion_ids: int = 4096
    codes_per_layer: int = 0
    position_layers: list[int] | None = None
    motion_fps: int = 15

    motion_token_offset: int | None = None
    mot_start_token_id: int | None = None
    mot_end_token_id: int | None = None
    mot_noop_token_id: int | None = None
    img_start_token_id: int | None = None
    img_end_token_id: int | None = None
    text_eos_token_id: int | None = None
    text_pad_token_id: int | None = None

    min_tiles: int = 1
    max_tiles: int = 12
    use_thumbnail: bool = True
    image_mean: list[float] | tuple[float, ...] = IMAGENET_MEAN
    image_std: list[float] | tuple[float, ...] = IMAGENET_STD

    motion_logit_mask_prob: float = 0.0
    loss_quantile_low: float = 0.0
    loss_quantile_high: float = 1.0
    motion_layer_loss_weights: list[float] | None = None

    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    has_motion_tokenizer: bool = False
    preset: str | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.image_mean = list(self.image_mean)
        self.image_std = list(self.image_std)
        _ = self.motion_layout  # building it validates the layout fields
        if not 1 <= self.min_tiles <= self.max_tiles:
            raise ConfigError(
                f"HandVLAConfig: expected 1 <= min_tiles <= max_tiles, got {self.min_tiles}, {self.max_tiles}"
            )
        if not 0.0 <= self.motion_logit_mask_prob <= 1.0:
            raise ConfigError(
                f"HandVLAConfig.motion_logit_mask_prob: expected in [0, 1], got {self.motion_logit_mask_prob}"
            )
        if not 0.0 <= self.loss_quantile_low < self.loss_quantile_high <= 1.0:
            raise ConfigError(
                "HandVLAConfig: expected 0 <= loss_quantile_low < loss_quantile_high <= 1, got "
                f"{self.loss_quantile_low}, {self.loss_quantile_high}"
            )
        if self.motion_layer_loss_weights is not None:
            self.motion_layout.check_layer_weights(
                self.motion_layer_loss_weights, "HandVLAConfig.motion_layer_loss_weights"
            )
        if self.motion_fps <= 0:
            raise ConfigError(f"HandVLAConfig.motion_fps: expected a positive integer, got {self.motion_fps}")
        side, patch = self.vision_config.image_size[0], self.vision_config.patch_size[0]
        if side % patch or (side // patch) % round(1 / self.downsample_ratio):
            raise ConfigError(
                f"HandVLAConfig.vision_config: image_size {side} must be a multiple of patch_size {patch} times "
                f"1/downsample_ratio ({1 / self.downsample_ratio:g})"
            )
        if self.image_seq_length != self.tokens_per_tile:
            # image_seq_length is what InternVL's own processor uses; keep it truthful.
            self.image_seq_length = self.tokens_per_tile

    @property
    def motion_layout(self) -> MotionLayout:
        return MotionLayout(
            num_motion_ids=self.num_motion_ids,
            ids_per_block=self.ids_per_block,
            wrist_ids_per_block=self.wrist_ids_per_block,
            finger_ids_per_block=self.finger_ids_per_block,
            num_wrist_motion_ids=self.num_wrist_motion_ids,
            codes_per_layer=int(self.codes_per_layer or 0),
            position_layers=tuple(self.position_layers) if self.position_layers else None,
        )

    @property
    def tile_size(self) -> int:
        """Side of one square image tile in pixels."""
        return int(self.vision_config.image_size[0])

    @property
    def tokens_per_tile(self) -> int:
        """Visual tokens per tile after pixel shuffle: (tile / patch)^2 * downsample_ratio^2 (256 for InternVL3)."""
        side = self.vision_config.image_size[0] // self.vision_config.patch_size[0]
        return int(round(side * self.downsample_ratio)) ** 2

    @property
    def vocabulary_ready(self) -> bool:
        """True once the motion/image token ids have been assigned (``extend_vocabulary``)."""
        needed = (
            self.motion_token_offset,
            self.mot_start_token_id,
            self.mot_end_token_id,
            self.mot_noop_token_id,
            self.img_start_token_id,
            self.img_end_token_id,
            self.text_eos_token_id,
        )
        return all(v is not None for v in needed)

    @classmethod
    def from_preset(cls, name: str, layout: MotionLayout | None = None, **overrides: Any) -> HandVLAConfig:
        """Build the config of a preset (see `PRESETS`); ``overrides`` set top-level fields, and
        ``vision_config`` / ``text_config`` dicts in ``overrides`` update the preset's sub-configs."""
        if name not in PRESETS:
            raise ConfigError(f"HandVLAConfig preset: expected one of {sorted(PRESETS)}, got '{name}'")
        spec = copy.deepcopy(PRESETS[name])
        spec["vision_config"].update(overrides.pop("vision_config", {}) or {})
        spec["text_config"].update(overrides.pop("text_config", {}) or {})
        spec.update((layout or MotionLayout()).to_dict())
        spec.update(overrides)
        spec["preset"] = name
        return cls(**spec)


def _internvit_300m() -> dict[str, Any]:
    """InternViT-300M-448px-V2.5 as converted in the OpenGVLab/InternVL3-*-hf configs."""
    return dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=448,
        patch_size=14,
        attention_bias=True,
        use_qk_norm=False,
        norm_type="layer_norm",
        layer_norm_eps=1e-6,
        layer_scale_init_value=0.1,
        hidden_act="gelu",
        use_mean_pooling=True,
        use_absolute_position_embeddings=True,
    )


def _qwen25(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int) -> dict[str, Any]:
    """A Qwen2.5 text config; InternVL3-*-hf trims the vocabulary to 151674 (Qwen's 151665 tokens + 9
    InternVL tokens) and uses dynamic RoPE scaling x2 over theta 1e6."""
    return dict(
        model_type="qwen2",
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=151674,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1000000.0},
        use_sliding_window=False,
    )


def _internvl3(text: dict[str, Any]) -> dict[str, Any]:
    return dict(
        vision_config=_internvit_300m(),
        text_config=text,
        downsample_ratio=0.5,
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_seq_length=256,
        image_token_id=151667,
        tie_word_embeddings=False,
        max_tiles=12,
    )


# name -> HandVLAConfig kwargs. The text vocab_size of tiny/small is a placeholder: the real size comes
# from the tokenizer when the vocabulary is extended.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=56,
            patch_size=14,
            attention_bias=True,
        ),
        text_config=dict(
            model_type="qwen2",
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=512,
            max_position_embeddings=8192,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
        image_token_id=0,
        tie_word_embeddings=True,
        max_tiles=4,
    ),
    "small": dict(
        vision_config=dict(
            hidden_size=256,
            intermediate_size=1024,
            num_hidden_layers=4,
            num_attention_heads=4,
            image_size=224,
            patch_size=14,
            attention_bias=True,
        ),
        text_config=dict(
            model_type="qwen2",
            hidden_size=512,
            intermediate_size=1408,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=2,
            vocab_size=2048,
            max_position_embeddings=8192,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        ),
        image_token_id=0,
        tie_word_embeddings=True,
        max_tiles=6,
    ),
    "internvl3-1b": _internvl3(_qwen25(896, 4864, 24, 14, 2)),
    "internvl3-2b": _internvl3(_qwen25(1536, 8960, 28, 12, 2)),
    "internvl3-8b": _internvl3(_qwen25(3584, 18944, 28, 28, 4)),
    "internvl3-14b": _internvl3(_qwen25(5120, 13824, 48, 40, 8)),
}


def estimate_num_parameters(config: InternVLConfig, vocab_size: int | None = None) -> dict[str, int]:
    """Parameter count of an InternVL/HandVLA model from its config alone (nothing is built).

    ``vocab_size``: embedding rows (defaults to ``text_config.vocab_size``; pass the extended size to
    count the motion vocabulary). Returns counts for ``vision``, ``projector``, ``language`` (embeddings +
    decoder + untied LM head) and ``total``.
    """
    v, t = config.vision_config, config.text_config
    D, inter, n = v.hidden_size, v.intermediate_size, v.num_hidden_layers
    patch = v.patch_size[0]
    num_patches = (v.image_size[0] // patch) * (v.image_size[1] // patch)
    norm = 2 * D if v.norm_type == "layer_norm" else D
    vision = D  # cls token
    vision += D if v.use_mask_token else 0
    vision += v.num_channels * patch * patch * D + D  # patch conv
    vision += (num_patches + 1) * D if v.use_absolute_position_embeddings else 0
    per_layer = 3 * (D * D + (D if v.attention_bias else 0)) + D * D + D  # q, k, v, output projection
    per_layer += 2 * D if v.use_qk_norm else 0
    per_layer += D * inter + inter + inter * D + D  # MLP
    per_layer += 2 * norm + 2 * D  # two norms, two layer-scale vectors
    vision += n * per_layer
    vision += 0 if v.use_mean_pooling else 2 * D

    scale = int(round(1 / config.downsample_ratio)) ** 2
    H = t.hidden_size
    projector = 2 * D * scale + (D * scale * H + H) + (H * H + H)

    V = int(vocab_size if vocab_size is not None else t.vocab_size)
    heads, kv = t.num_attention_heads, t.num_key_value_heads
    hd = getattr(t, "head_dim", None) or H // heads
    attn = H * heads * hd + heads * hd + 2 * (H * kv * hd + kv * hd) + heads * hd * H  # q,k,v biased; o not
    mlp = 3 * H * t.intermediate_size
    language = V * H + t.num_hidden_layers * (attn + mlp + 2 * H) + H
    if not config.tie_word_embeddings:
        language += V * H
    return {
        "vision": vision,
        "projector": projector,
        "language": language,
        "total": vision + projector + language,
    }


try:  # let AutoConfig resolve model_type "handvla" (exist_ok: the module may be re-imported)
    AutoConfig.register("handvla", HandVLAConfig, exist_ok=True)
except TypeError:  # older transformers without exist_ok
    pass
