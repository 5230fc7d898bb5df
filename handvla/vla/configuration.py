"""Configuration of the motion VLA: an InternVL3 backbone (InternViT + pixel shuffle + MLP projector + Qwen2
LLM) whose vocabulary is extended with motion tokens.

`HandVLAConfig` is a transformers ``InternVLConfig`` (so an InternVL3 ``-hf`` checkpoint's weights load into
it unchanged) plus the motion vocabulary, the image tiling, and the training-loss options. It saves and
loads as ``config.json`` like any transformers config (``model_type = "handvla"``).

Motion vocabulary (one block per hand-second, see ``handvla.vla.processing`` for the sequence format)::

    <mot> <motion_id_a1> ... <motion_id_a128> </mot>      128 = wrist 64 ids then finger 64 ids

Motion id ``i`` (0 <= i < the layout's ``vocab_size``) is token ``<motion_id_i>``, token id
``motion_token_offset + i``: the ids are contiguous so the id <-> motion-index map is one subtraction. Which
ids may stand at which position of a block is the motion tokenizer's `TokenLayout`
(``HandVLAConfig.motion_layout``).

Presets: ``tiny`` (CPU tests and demos), ``small`` (tens of millions of parameters, trains on one GPU),
and the InternVL3 shapes ``internvl3-1b`` / ``-2b`` / ``-8b`` / ``-14b`` (InternViT-300M-448px-V2.5 with
Qwen2.5-0.5B / 1.5B / 7B / 14B). The released shapes come from the public ``OpenGVLab/InternVL3-*-hf`` and
Qwen2.5 configs; ``HandVLAForConditionalGeneration.from_backbone`` always reads the real ``config.json`` of a
local checkpoint, so the presets only matter for planning (parameter counts) and random-init runs.
"""

from __future__ import annotations

import copy
from typing import Any, Literal, get_args

from transformers import AutoConfig, InternVLConfig

from handvla.errors import ConfigError
from handvla.tokenizer.configuration import TokenizerConfig
from handvla.tokenizer.layout import TokenLayout, token_layout

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
#: HandVLAConfig.image_position: the reference's (the image where the prompt says) or after the user's text
ImagePosition = Literal["in_prompt", "after_text"]
IMAGE_POSITIONS: tuple[str, ...] = get_args(ImagePosition)

def check_film_options(
    vision_film: bool,
    image_position: str,
    binding_loss_weight: float,
    where: str,
    binding_mark: bool = False,
    binding_pool: bool = False,
) -> None:
    """ConfigError unless the options agree: ``vision_film`` reads the text before the image, so it needs
    ``image_position`` "after_text"; ``binding_loss_weight`` is >= 0, and > 0 only with ``vision_film``;
    ``binding_mark`` only with ``vision_film``; ``binding_pool`` only with ``binding_mark``."""
    if vision_film and image_position != "after_text":
        raise ConfigError(
            f"{where}.vision_film: needs image_position 'after_text' (the modulation reads the text before the "
            f"image), got image_position {image_position!r}"
        )
    if binding_loss_weight < 0 or (binding_loss_weight > 0 and not vision_film):
        raise ConfigError(
            f"{where}.binding_loss_weight: expected 0, or > 0 with vision_film on, got {binding_loss_weight} "
            f"(vision_film {vision_film})"
        )
    if binding_mark and not vision_film:
        raise ConfigError(f"{where}.binding_mark: needs vision_film on (the mark scores the modulated visual tokens)")
    if binding_pool and not binding_mark:
        raise ConfigError(f"{where}.binding_pool: needs binding_mark on (the pool is weighted by the mark's scores)")


#: what a motion answer says before its motion blocks (``HandVLAConfig.motion_answer_prefix``)
MotionAnswerPrefix = Literal["none", "target_boxes", "target_places", "hand_places"]
MOTION_ANSWER_PREFIXES: tuple[str, ...] = get_args(MotionAnswerPrefix)
#: the prefixes that state places (three end-point ids each, `handvla.vla.places`) and the frame of a motion
#: answer's places: the camera's, or the acting hand's own (left hands mirrored, as the tokenizer mirrors them)
PLACE_FRAMES: dict[str, str] = {"target_places": "camera", "hand_places": "hand"}


def check_place_options(prefix: str | None, place_names: bool, end_places: bool, where: str) -> None:
    """ConfigError unless the options about stated places fit together: ``place_names`` and ``end_places``
    need a ``motion_answer_prefix`` that states places (`PLACE_FRAMES`; ``prefix`` None: not known yet, not
    checked), and not both at once. ``where``: the options' prefix in the message ("model.",
    "HandVLAConfig.")."""
    wanted = f"set {where}motion_answer_prefix to target_places or hand_places"
    if place_names and prefix is not None and prefix not in PLACE_FRAMES:
        raise ConfigError(f"{where}place_names: names stated places, but {where}motion_answer_prefix {prefix!r} "
                          f"states none: {wanted}, or {where}place_names to false")  # fmt: skip
    if end_places and prefix is not None and prefix not in PLACE_FRAMES:
        raise ConfigError(f"{where}end_places: states where the targets end after their places, but "
                          f"{where}motion_answer_prefix {prefix!r} states none: {wanted}, or {where}end_places "
                          "to false")  # fmt: skip
    if end_places and place_names:
        raise ConfigError(f"{where}end_places: not with {where}place_names (set one of them to false)")


# ImageNet statistics: InternViT was trained on them (InternVL's own preprocessing).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


#: the id-count fields configs held before they stored the token layout (read on load, then dropped)
_FLAT_LAYOUT_FIELDS = (
    "num_motion_ids", "ids_per_block", "wrist_ids_per_block", "finger_ids_per_block", "num_wrist_motion_ids",
    "codes_per_layer", "position_layers",
)


class HandVLAConfig(InternVLConfig):
    r"""InternVL config + motion vocabulary + tiling + loss options.

    Motion ids: ``motion_token_layout``, the motion tokenizer's `TokenLayout` as a dict (None: the default
    tokenizer's; configs written before it was stored have flat id-count fields, converted on load);
    ``motion_layout`` gives the `TokenLayout`. ``motion_fps``: motion frames per second (a block
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

    ``vision_position_init``: how a RANDOM-init model's vision tower starts its absolute position
    embeddings: ``"sincos"`` (a 2-D sin-cos table, `handvla.vla.modeling.init_vision_positions`) or
    ``"zero"`` (transformers' init); a pretrained tower keeps its own.

    ``image_position``: where the image's tokens stand in the user turn. ``"in_prompt"`` (the reference):
    where the prompt's ``<image>`` is ("In <image>, pick up the red cube, ..."). ``"after_text"``: the
    placeholder reads "the image" and the image follows the whole user text, so that (causal attention) the
    image tokens can attend to the instruction; see `handvla.vla.processing.place_images`.

    ``vision_film`` (off in the reference): the vision tower's output is modulated, per tile, by the text
    that precedes the image in its sample (FiLM: features * (1 + gamma) + beta, with gamma and beta read from
    an attention-pooled summary of that text's input embeddings; `handvla.vla.modeling.InstructionFiLM`),
    so that visual features can depend on which object the instruction names before the LLM sees them.
    Needs ``image_position: after_text`` (otherwise no instruction precedes the image).
    ``binding_loss_weight`` (0: off, the reference; needs ``vision_film``): in training, adds this weight times
    a binding loss: a linear head on the (modulated) visual tokens says whether each token overlaps an object
    the instruction acts on (balanced binary cross-entropy; the truth comes with the batch as
    ``image_token_targets``, from episodes with a known scene, `handvla.vla.grounding.target_grounding`).
    ``binding_mark`` (off; needs ``vision_film``): the binding head moves into the vision path
    (`handvla.vla.modeling.BindingMark`, on the model as ``binding_mark``): each visual token gains a learned
    direction times its binding probability, so that the LLM's attention can key on the tokens the
    instruction marks; the binding loss then trains that head. Part of the model (a policy keeps it).
    ``binding_pool`` (off; needs ``binding_mark``): every visual token of a tile also gains a learned linear
    map (zero at the start) of the tokens pooled by the mark's softmax over the tile, so that any attention
    to the image reads what the instruction marked, without having to find it.
    ``endpoint_loss_weight`` (0: off, the reference): in training, adds this weight times an end-point loss:
    a linear head on the LLM's last hidden state at every position that predicts a motion answer's token
    regresses where that answer's wrists END (camera frame, metres; smooth L1 with a 5 cm knee; per hand,
    only hands with a valid final frame). The truth comes with the batch as ``endpoint_targets`` (from the
    answer motion itself, so any motion data has it). It asks every answer state to carry the goal that the
    motion ids encode only spread over many tokens. Training only: the head is not part of a policy.
    ``motion_answer_prefix``: what a motion answer (generation, prediction) says before its motion blocks.
    ``"none"`` (the reference): nothing, the answer is the blocks. ``"target_boxes"``: first the box of each
    object the instruction acts on, in InternVL's grounding format
    ("<ref>the red cube</ref><box>[[x1, y1, x2, y2]]</box>", `handvla.vla.grounding.grounding_prefix`;
    nothing when no target is known), then the blocks: the model states where the named object is, and its
    motion ids can attend to that statement. Decoding lets text through until the first ``<mot>``
    (`handvla.vla.generation.MotionBlockConstraint`) and returns the text beside the motion.
    ``"target_places"`` (needs a tokenizer with end-point ids, ``TokenLayout.end_point_bins``): first, for
    each acting hand (left, then right) whose target object is known, the object's centre as three end-point
    ids (the bins of `handvla.tokenizer.modeling.end_point_coded` in the camera frame, not mirrored:
    `handvla.vla.grounding.place_ids`), then the blocks; grounding questions (``data.grounding``) are then
    answered with the same three ids. Where the hand goes and where an object is are said with the very ids
    that say where each block ends, so that the motion after a stated place is nearly a copy. Decoding
    allows up to one place per hand of the request (three ids each, one per axis) before the first ``<mot>``. ``"hand_places"``: the
    same, each motion answer's place in the acting hand's own frame (left hands mirrored, x -> -x: the frame of
    the tokenizer and of the blocks' end-point ids; grounding answers stay in the camera frame). Measured:
    docs/vla-learning.md (20). With a tokenizer whose end-point ids are in the camera frame
    (``TokenizerConfig.end_point_frame``, (21)) "target_places" states the ids the blocks' end points say.
    ``place_names`` (with "target_places" / "hand_places"; off by default): each stated place comes after its
    object's name in text (" red cube" then three ids, the name after a space as in the instruction), so the
    model names the instruction's object for each hand itself, then says where it is, then the motion
    (docs/vla-learning.md (22)).
    ``end_places`` (with "target_places" / "hand_places"; off by default): after the targets' places (one per
    acting hand), the answer states where each of those targets is when the answer's motion ends (its object
    track at the span's last frame; the same place for an object that does not move), so that the model says
    where a carried object is going before the motion that carries it (move it left, put it behind the X).
    Ground, then act grounds the first places and the model completes the ends. Not with ``place_names``.
    Measured at CPU budgets (docs/vla-learning.md (23)): no gain; the ends of objects set down beside
    another were right 0.19 of the time.

    ``system_prompt``: the chat's system turn (None: no system turn). ``has_motion_tokenizer``: the
    checkpoint folder holds ``motion_tokenizer/``. ``preset``: name of the preset this config came from
    (informational).
    """

    model_type = "handvla"

    motion_token_layout: dict[str, Any] | None = None
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
    vision_position_init: str = "sincos"
    image_position: str = "in_prompt"
    vision_film: bool = False
    binding_loss_weight: float = 0.0
    binding_mark: bool = False
    binding_pool: bool = False
    endpoint_loss_weight: float = 0.0
    motion_answer_prefix: str = "none"
    place_names: bool = False
    end_places: bool = False

    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    has_motion_tokenizer: bool = False
    preset: str | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.image_mean = list(self.image_mean)
        self.image_std = list(self.image_std)
        legacy = {k: getattr(self, k) for k in _FLAT_LAYOUT_FIELDS if hasattr(self, k)}
        for k in legacy:
            delattr(self, k)
        if legacy and self.motion_token_layout is not None:
            raise ConfigError(f"HandVLAConfig: give motion_token_layout or the old fields {sorted(legacy)}, not both")
        if self.motion_token_layout is None:
            if legacy:
                layout = TokenLayout.from_flat_fields(**legacy, where="HandVLAConfig")
            else:
                layout = token_layout(TokenizerConfig())
            self.motion_token_layout = layout.to_dict()
        _ = self.motion_layout  # building it validates the layout
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
        if self.vision_position_init not in ("sincos", "zero"):
            raise ConfigError(
                f"HandVLAConfig.vision_position_init: expected 'sincos' or 'zero', got {self.vision_position_init!r}"
            )
        if self.image_position not in IMAGE_POSITIONS:
            raise ConfigError(
                f"HandVLAConfig.image_position: expected one of {IMAGE_POSITIONS}, got {self.image_position!r}"
            )
        check_film_options(
            self.vision_film,
            self.image_position,
            self.binding_loss_weight,
            "HandVLAConfig",
            self.binding_mark,
            self.binding_pool,
        )
        if not self.endpoint_loss_weight >= 0.0:
            raise ConfigError(
                f"HandVLAConfig.endpoint_loss_weight: expected a number >= 0, got {self.endpoint_loss_weight!r}"
            )
        if self.motion_answer_prefix not in MOTION_ANSWER_PREFIXES:
            raise ConfigError(
                f"HandVLAConfig.motion_answer_prefix: expected one of {MOTION_ANSWER_PREFIXES}, got "
                f"{self.motion_answer_prefix!r}"
            )
        if self.motion_answer_prefix in PLACE_FRAMES and not self.motion_layout.end_point_bins:
            raise ConfigError(
                f"HandVLAConfig.motion_answer_prefix: {self.motion_answer_prefix!r} states places in end-point "
                "ids, but the motion token layout has none (make the tokenizer with `handvla tokenizer end-points`)"
            )
        check_place_options(self.motion_answer_prefix, self.place_names, self.end_places, "HandVLAConfig.")
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
    def motion_layout(self) -> TokenLayout:
        return TokenLayout.from_dict(dict(self.motion_token_layout), "HandVLAConfig.motion_token_layout")

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
    def from_preset(cls, name: str, layout: TokenLayout | None = None, **overrides: Any) -> HandVLAConfig:
        """Build the config of a preset (see `PRESETS`); ``overrides`` set top-level fields, and
        ``vision_config`` / ``text_config`` dicts in ``overrides`` update the preset's sub-configs."""
        if name not in PRESETS:
            raise ConfigError(f"HandVLAConfig preset: expected one of {sorted(PRESETS)}, got '{name}'")
        spec = copy.deepcopy(PRESETS[name])
        spec["vision_config"].update(overrides.pop("vision_config", {}) or {})
        spec["text_config"].update(overrides.pop("text_config", {}) or {})
        spec["motion_token_layout"] = layout.to_dict() if layout is not None else None  # None: the default
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
