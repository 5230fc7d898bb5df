"""The motion VLA: transformers' InternVL (InternViT + pixel shuffle + MLP projector + Qwen2 LLM) with a
vocabulary extended by motion tokens, an answer-only loss with Being-H0's two training options, and
checkpoints that carry the text tokenizer and (optionally) the motion tokenizer.

Entry points (each returns a `VLABundle` = model + processor + motion tokenizer or None):

- `build_vla(preset_or_config, tokenizer=None, corpus=None)`: random initialisation (tiny/small presets,
  or an InternVL3 shape); without a tokenizer a small BPE tokenizer is trained on ``corpus``.
- `vla_from_backbone(path)` (= ``HandVLAForConditionalGeneration.from_backbone``): real InternVL3 weights in
  transformers format (an ``OpenGVLab/InternVL3-*-hf`` folder) plus its tokenizer, extended with motion tokens.
- `load_vla(path)` / `save_vla(path, bundle)`: this project's checkpoints. Folder layout::

      config.json, model.safetensors (or shards), generation_config.json   the model (HandVLAConfig)
      tokenizer.json, tokenizer_config.json, ...                           the text tokenizer with motion tokens
      motion_tokenizer/                                                    when config.has_motion_tokenizer
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoModelForImageTextToText,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLModel,
    PreTrainedTokenizerBase,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.internvl.modeling_internvl import InternVLCausalLMOutputWithPast

from handvla.atomic import atomic_dir, check_safetensors, read_json
from handvla.errors import CheckpointError, ConfigError, MissingResourceError
from handvla.tokenizer.configuration import TokenizerConfig
from handvla.tokenizer.layout import TokenLayout, token_layout
from handvla.tokenizer.loading import load_tokenizer
from handvla.vla.configuration import HandVLAConfig, check_film_options
from handvla.vla.processing import IGNORE_INDEX, HandVLAProcessor
from handvla.vla.text_tokenizer import (
    MotionVocab,
    add_motion_tokens,
    build_text_tokenizer,
    load_text_tokenizer,
)

MOTION_TOKENIZER_DIR = "motion_tokenizer"
#: attention-pooling heads of `InstructionFiLM` (each pools the instruction's embeddings with its own weights)
FILM_HEADS = 4


class InstructionFiLM(torch.nn.Module):
    """Feature-wise modulation of visual features by an instruction (``HandVLAConfig.vision_film``).

    The instruction's token embeddings (T, L, H) are pooled by ``FILM_HEADS`` content-based attention
    heads (one score per token and head, softmax over the instruction's tokens), normalised and mapped to
    (gamma, beta), each (T, D); the visual features become ``x * (1 + gamma) + beta``. The output layer
    starts at zero, so a new modulation leaves the features unchanged (`reset_parameters`)."""

    def __init__(self, text_dim: int, vision_dim: int, heads: int = FILM_HEADS):
        super().__init__()
        self.score = torch.nn.Linear(text_dim, heads)
        self.norm = torch.nn.LayerNorm(heads * text_dim)
        self.out = torch.nn.Linear(heads * text_dim, 2 * vision_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.score.reset_parameters()
        self.norm.reset_parameters()
        torch.nn.init.zeros_(self.out.weight)
        torch.nn.init.zeros_(self.out.bias)

    def forward(
        self, embeds: torch.Tensor, rows: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``embeds`` (B, L, H): a batch's input embeddings; ``rows`` (T,): the row of each tile;
        ``text_mask`` (T, L) bool: the tokens each tile reads (none: no modulation but the biases).
        Returns (gamma, beta), each (T, D)."""
        scores = self.score(embeds).float()[rows]  # (T, L, heads)
        scores = scores.masked_fill(~text_mask[..., None], float("-inf"))
        weights = torch.softmax(scores, dim=1).nan_to_num(0.0).to(embeds.dtype)  # all-masked rows -> 0
        pooled = torch.einsum("tlh,tld->thd", weights, embeds[rows]).flatten(1)
        gamma, beta = self.out(self.norm(pooled)).chunk(2, dim=-1)
        return gamma, beta


def binding_loss(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """Balanced binary cross-entropy of per-visual-token ``logits`` (tiles, T) against ``targets`` (1 / 0,
    -1 = unknown): the mean over target tokens plus the mean over the other known tokens, halved. Without
    known targets: zero, still connected to ``logits`` (every parameter gets a gradient, as DDP needs)."""
    zero = logits.sum() * 0.0
    if targets is None:
        return zero
    targets = targets.to(logits.device, logits.dtype)
    if targets.shape != logits.shape:
        raise ConfigError(
            f"image_token_targets: expected {tuple(logits.shape)} (tiles, tokens per tile), got {tuple(targets.shape)}"
        )
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets.clamp(min=0), reduction="none")
    pos, neg = targets == 1, targets == 0
    if not pos.any() or not neg.any():
        return zero
    return 0.5 * (bce[pos].mean() + bce[neg].mean())


ENDPOINT_KNEE_M = 0.05  # the end-point loss is quadratic within 5 cm of the truth, linear beyond


def endpoint_loss(pred: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Smooth L1 (metres, knee `ENDPOINT_KNEE_M`) of predicted end points ``pred`` (N, 6: left xyz, right
    xyz) against ``targets`` (N, 6; NaN = unknown), the mean over known entries. Without known entries:
    zero, still connected to ``pred``."""
    known = ~torch.isnan(targets)
    if not known.any():
        return pred.sum() * 0.0
    return torch.nn.functional.smooth_l1_loss(
        pred[known], targets[known].to(pred.dtype), beta=ENDPOINT_KNEE_M, reduction="mean"
    )


def set_endpoint_loss(model: torch.nn.Module, weight: float, seed: int = 0) -> None:
    """Set ``config.endpoint_loss_weight`` of a `HandVLAForConditionalGeneration` to ``weight`` and give it an
    ``endpoint_head`` to match: a new one (seeded) where it had none, none where ``weight`` is 0. The head
    is training-only, so a checkpoint can be continued with or without the loss."""
    if not weight >= 0.0:
        raise ConfigError(f"endpoint_loss_weight: expected a number >= 0, got {weight!r}")
    model.config.endpoint_loss_weight = float(weight)
    has = getattr(model, "endpoint_head", None) is not None
    if weight > 0 and not has:
        hidden = model.config.text_config.hidden_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            head = torch.nn.Linear(hidden, 6)
        ref = next(model.parameters())
        model.endpoint_head = head.to(ref.device, ref.dtype)
    elif weight == 0 and has:
        del model.endpoint_head


class BindingMark(torch.nn.Module):
    """The binding head inside the vision path (``HandVLAConfig.binding_mark``): ``score`` (a linear map of a
    projected visual token to its binding logit, trained by the binding loss) and ``direction`` (H,), added
    to every visual token times the sigmoid of its logit. ``direction`` starts at zero, so a new mark
    changes nothing until trained. With ``pool`` (``HandVLAConfig.binding_pool``), ``pool`` (a linear map,
    zero at the start) of the tile's tokens weighted by the softmax of their logits is added to every token
    of the tile."""

    def __init__(self, hidden: int, pool: bool = False):
        super().__init__()
        self.score = torch.nn.Linear(hidden, 1)
        self.direction = torch.nn.Parameter(torch.zeros(hidden))
        self.pool = zero_linear(hidden, hidden) if pool else None

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``feats`` (tiles, T, H) -> (the marked tokens (tiles, T, H), the logits (tiles, T))."""
        logits = self.score(feats)[..., 0]
        out = feats + torch.sigmoid(logits)[..., None] * self.direction.to(feats.dtype)
        if self.pool is not None:
            weights = torch.softmax(logits.float(), dim=-1).to(feats.dtype)
            out = out + self.pool(torch.einsum("tn,tnh->th", weights, feats))[:, None]
        return out, logits


def zero_linear(n_in: int, n_out: int) -> torch.nn.Linear:
    """A Linear(n_in, n_out) whose weight and bias start at zero (an addition that changes nothing yet)."""
    layer = torch.nn.Linear(n_in, n_out)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    return layer


def add_instruction_film(inner: torch.nn.Module, config: HandVLAConfig) -> None:
    """Give the InternVL model ``inner`` its `InstructionFiLM` when ``config.vision_film`` is on, and its
    `BindingMark` when ``config.binding_mark`` is."""
    if getattr(config, "vision_film", False):
        inner.instruction_film = InstructionFiLM(config.text_config.hidden_size, config.vision_config.hidden_size)
    if getattr(config, "binding_mark", False):
        inner.binding_mark = BindingMark(config.text_config.hidden_size, getattr(config, "binding_pool", False))


def set_binding_mark(model: torch.nn.Module, seed: int = 0, pool: bool = False) -> None:
    """Turn ``binding_mark`` on for a `HandVLAForConditionalGeneration` with ``vision_film``: its binding head
    (when it has one, e.g. from grounding questions) becomes the mark's ``score``, with a zero
    ``direction``. With ``pool`` (``binding_pool``) a mark without a pool gains one, zero at the start.
    Nothing else to do when the mark is there already."""
    ref = next(model.parameters())
    mark = getattr(model.model, "binding_mark", None)
    if mark is None:
        check_film_options(
            model.config.vision_film, model.config.image_position, model.config.binding_loss_weight, "model", True
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            mark = BindingMark(model.config.text_config.hidden_size)
        head = getattr(model, "binding_head", None)
        if head is not None:
            mark.score.load_state_dict(head.state_dict())
            del model.binding_head
        model.model.binding_mark = mark.to(ref.device, ref.dtype)
        model.config.binding_mark = True
    if pool and mark.pool is None:
        hidden = model.config.text_config.hidden_size
        mark.pool = zero_linear(hidden, hidden).to(ref.device, ref.dtype)
        model.config.binding_pool = True


class HandVLAModel(InternVLModel):
    """The VLA without its LM head (a policy's backbone): InternVL's model plus, with ``vision_film``, the
    instruction's modulation (`add_instruction_film`). Same weight names as a VLA's ``.model``."""

    config_class = HandVLAConfig

    def __init__(self, config: HandVLAConfig):
        super().__init__(config)
        add_instruction_film(self, config)


def instruction_text_mask(
    input_ids: torch.Tensor,
    image_token_id: int,
    tokens_per_tile: int,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each tile of a batch (its visual tokens in row-major order of ``input_ids``, ``tokens_per_tile``
    each): (its row (T,), (T, L) bool of the tokens before the tile in the same sample that are text:
    not visual tokens, not padding (``attention_mask`` 0). A sample starts where ``position_ids`` is 0
    (packed rows), else at the row's start."""
    B, L = input_ids.shape
    is_image = input_ids == image_token_id
    rows, cols = is_image.nonzero(as_tuple=True)  # row-major
    if rows.numel() % tokens_per_tile:
        raise ConfigError(
            f"instruction_text_mask: {rows.numel()} visual tokens is not a multiple of {tokens_per_tile} per tile"
        )
    rows, first = rows[::tokens_per_tile], cols[::tokens_per_tile]  # each tile's first visual token
    arange = torch.arange(L, device=input_ids.device)
    if position_ids is not None:
        starts = torch.cummax(torch.where(position_ids == 0, arange, 0), dim=1).values  # (B, L)
        start = starts[rows, first]
    else:
        start = torch.zeros_like(first)
    text = ~is_image
    if attention_mask is not None:
        text = text & attention_mask.bool()
    mask = (arange[None] >= start[:, None]) & (arange[None] < first[:, None]) & text[rows]
    return rows, mask


def image_features(
    inner: torch.nn.Module,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    return_binding_logits: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
    """(tiles, tokens_per_tile, H): the projected visual tokens of ``pixel_values`` for the InternVL model
    ``inner`` (a VLA's ``.model``, a policy's backbone). With an `InstructionFiLM` on ``inner``
    (``vision_film``), each tile's tower output is modulated by the text before it in ``input_ids``; with a
    `BindingMark` (``binding_mark``) the projected tokens are then marked. ``return_binding_logits``: also
    the mark's logits (tiles, tokens_per_tile), None without a mark."""
    film = getattr(inner, "instruction_film", None)
    if film is None:
        feats = inner.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output
        return (feats, None) if return_binding_logits else feats
    if input_ids is None:
        raise ConfigError("vision_film: the visual features depend on the text, so input_ids are needed")
    cfg = inner.config
    layer = cfg.vision_feature_layer
    out = inner.vision_tower(
        pixel_values=pixel_values.to(dtype=inner.dtype), output_hidden_states=layer != -1, return_dict=True
    )
    feats = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
    if cfg.vision_feature_select_strategy == "default":
        feats = feats[:, 1:]
    rows, mask = instruction_text_mask(
        input_ids, cfg.image_token_id, int(cfg.image_seq_length), attention_mask, position_ids
    )
    if rows.numel() != feats.shape[0]:
        raise ConfigError(
            f"vision_film: {feats.shape[0]} tiles in pixel_values but {rows.numel()} in input_ids' placeholders"
        )
    gamma, beta = film(inner.get_input_embeddings()(input_ids), rows, mask)
    feats = feats * (1 + gamma[:, None].to(feats.dtype)) + beta[:, None].to(feats.dtype)
    T, n = feats.shape[0], int(round(feats.shape[1] ** 0.5))
    feats = inner.pixel_shuffle(feats.reshape(T, n, n, -1), scale_factor=cfg.downsample_ratio)
    feats = inner.multi_modal_projector(feats.reshape(T, -1, feats.shape[-1]))
    mark = getattr(inner, "binding_mark", None)
    logits = None
    if mark is not None:
        feats, logits = mark(feats)
    return (feats, logits) if return_binding_logits else feats


def motion_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    motion_token_range: tuple[int, int] | None = None,
    motion_logit_mask_prob: float = 0.0,
    loss_quantiles: tuple[float, float] = (0.0, 1.0),
    num_items_in_batch: int | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    return_token_losses: bool = False,
    token_weights: torch.Tensor | None = None,
):
    """Next-token cross-entropy on labelled tokens (labels != -100), as a mean over the kept tokens.

    ``logits`` (B, L, V) at position t predict ``labels[:, t + 1]``.
    ``motion_logit_mask_prob`` p: each target that is a motion id (in ``motion_token_range`` [lo, hi)) is,
    with probability p, scored against motion ids only (equivalent to setting every other logit to -inf).
    ``loss_quantiles`` (q_lo, q_hi): keep tokens whose loss lies within the batch's [q_lo, q_hi] quantiles
    (Being-H0's curriculum uses (0.15, 0.95)); quantiles are taken without gradient.
    ``num_items_in_batch``: divide the summed loss by this instead of the kept count (gradient accumulation).
    ``token_weights`` (V,): weight of each target token id (e.g. per residual layer of motion ids); the loss
    is then the weighted mean over kept tokens. Returns the loss, and with ``return_token_losses`` also
    (token_losses (N,), kept mask (N,)).
    """
    if logits.shape[:2] != labels.shape:
        raise ConfigError(
            f"motion_lm_loss: logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ in (B, L)"
        )
    target = labels[:, 1:]
    valid = target != IGNORE_INDEX
    return answer_token_loss(
        logits[:, :-1][valid], target[valid], motion_token_range, motion_logit_mask_prob, loss_quantiles,
        num_items_in_batch, generator, return_token_losses, token_weights,
    )  # fmt: skip


def answer_token_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    motion_token_range: tuple[int, int] | None = None,
    motion_logit_mask_prob: float = 0.0,
    loss_quantiles: tuple[float, float] = (0.0, 1.0),
    num_items_in_batch: int | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    return_token_losses: bool = False,
    token_weights: torch.Tensor | None = None,
):
    """`motion_lm_loss` on the labelled positions only: ``logits`` (N, V) predict ``targets`` (N,)."""
    lg = logits.float()  # upcast for a stable log-softmax
    tg = targets
    if tg.numel() == 0:
        zero = logits.sum() * 0.0
        return (
            (zero, torch.zeros(0, device=logits.device), torch.zeros(0, dtype=torch.bool))
            if return_token_losses
            else zero
        )
    tgt_logit = lg.gather(1, tg[:, None])[:, 0]
    token_loss = torch.logsumexp(lg, dim=-1) - tgt_logit
    if motion_logit_mask_prob > 0.0:
        if motion_token_range is None:
            raise ConfigError("motion_lm_loss: motion_logit_mask_prob > 0 needs motion_token_range")
        lo, hi = motion_token_range
        is_motion = (tg >= lo) & (tg < hi)
        draw = torch.rand(tg.shape, device=tg.device, generator=generator) < motion_logit_mask_prob
        masked = is_motion & draw
        if masked.any():
            # log-softmax restricted to the contiguous motion slice == -inf on every other logit
            lse_motion = torch.logsumexp(lg[:, lo:hi], dim=-1)
            token_loss = torch.where(masked, lse_motion - tgt_logit, token_loss)
    keep = torch.ones_like(token_loss, dtype=torch.bool)
    q_lo, q_hi = loss_quantiles
    if (q_lo > 0.0 or q_hi < 1.0) and token_loss.numel() > 1:
        with torch.no_grad():
            bounds = torch.quantile(token_loss.detach(), torch.tensor([q_lo, q_hi], device=token_loss.device))
            keep = (token_loss >= bounds[0]) & (token_loss <= bounds[1])
    w = keep.to(token_loss.dtype)
    if token_weights is not None:
        w = w * token_weights.to(token_loss.device, token_loss.dtype)[tg]
    denom = num_items_in_batch if num_items_in_batch is not None else w.sum().clamp(min=1e-6)
    loss = (token_loss * w).sum() / denom
    return (loss, token_loss, keep) if return_token_losses else loss


class HandVLAForConditionalGeneration(InternVLForConditionalGeneration):
    """InternVL with the motion vocabulary. Same weights layout as ``InternVLForConditionalGeneration``
    (so InternVL3 ``-hf`` checkpoints load), ``forward`` computes the answer-only loss of `motion_lm_loss`
    with the config's masking / curriculum options (overridable per call)."""

    config_class = HandVLAConfig  # explicit: string annotations (postponed evaluation) are not resolved

    def __init__(self, config: HandVLAConfig):
        super().__init__(config)
        add_instruction_film(self.model, config)
        if getattr(config, "binding_loss_weight", 0.0) > 0 and not getattr(config, "binding_mark", False):
            # training only: not part of a policy's backbone (with binding_mark the head is the mark's score)
            self.binding_head = torch.nn.Linear(config.text_config.hidden_size, 1)
        if getattr(config, "endpoint_loss_weight", 0.0) > 0:  # training only, as the binding head
            self.endpoint_head = torch.nn.Linear(config.text_config.hidden_size, 6)

    @property
    def motion_vocab(self) -> MotionVocab:
        return MotionVocab.from_config(self.config)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        motion_logit_mask_prob: float | None = None,
        loss_quantiles: tuple[float, float] | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        answer_logits_only: bool = False,
        image_token_targets: torch.Tensor | None = None,
        endpoint_targets: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> InternVLCausalLMOutputWithPast:
        """InternVL forward. With ``labels`` (B, L) (-100 = not scored; see ``HandVLAProcessor``), ``loss`` is
        the answer-token cross-entropy. ``motion_logit_mask_prob`` / ``loss_quantiles`` default to the
        config's ``motion_logit_mask_prob`` / (``loss_quantile_low``, ``loss_quantile_high``) in training
        mode and to plain cross-entropy in eval mode (so validation losses stay comparable); in training
        mode the config's ``motion_layer_loss_weights`` weigh motion ids by residual layer.

        ``answer_logits_only`` (with ``labels``): the LM head runs on the labelled positions only (the
        prompt's image and text positions are skipped, the same loss at a fraction of the head's cost,
        which dominates small models with a large vocabulary); ``logits`` is then (N, V) for the N labelled
        tokens, in row-major order, and ``answer_targets`` (N,) holds their labels. The output also carries
        ``answer_token_losses`` (N,), detached, for per-kind metrics.

        ``image_token_targets`` (tiles, tokens_per_tile): 1 / 0 where a visual token does / does not overlap
        an object the instruction acts on, -1 unknown; with ``binding_loss_weight`` > 0, in training mode,
        the loss gains the weighted binding loss (``out.binding_loss``, detached, for metrics).

        ``endpoint_targets`` (B, L, 6): per token, where the wrists of the motion answer it belongs to end
        (left xyz, right xyz; camera frame, metres; NaN unknown); with ``endpoint_loss_weight`` > 0, in
        training mode, the loss gains the weighted `endpoint_loss` of ``endpoint_head`` on the last hidden
        state at every position that predicts a labelled token (``out.endpoint_loss``, detached)."""
        binding = None
        endpoint_on = (
            self.training and labels is not None and endpoint_targets is not None
            and getattr(self, "endpoint_head", None) is not None
        )  # fmt: skip
        if pixel_values is not None and getattr(self.model, "instruction_film", None) is not None:
            feats, mark_logits = image_features(
                self.model, pixel_values, input_ids, attention_mask, position_ids, return_binding_logits=True
            )
            kwargs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=feats)}
            pixel_values = None
            if self.training and labels is not None and self.config.binding_loss_weight > 0:
                if mark_logits is None and getattr(self, "binding_head", None) is not None:
                    mark_logits = self.binding_head(feats)[..., 0]
                if mark_logits is not None:
                    binding = binding_loss(mark_logits, image_token_targets)
        if labels is not None and answer_logits_only:
            outputs = self.model(
                input_ids=input_ids,
                pixel_values=pixel_values,
                attention_mask=attention_mask,
                position_ids=position_ids,
                inputs_embeds=inputs_embeds,
                **kwargs,
            )
            target = labels[:, 1:].to(outputs[0].device)
            valid = target != IGNORE_INDEX
            last_hidden = outputs[0]
            logits = self.lm_head(last_hidden[:, :-1][valid])
            out = InternVLCausalLMOutputWithPast(logits=logits)
            targets = target[valid]
            out.answer_targets = targets
        else:
            out = super().forward(
                input_ids=input_ids,
                pixel_values=pixel_values,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                inputs_embeds=inputs_embeds,
                labels=None,
                logits_to_keep=logits_to_keep,
                **({**kwargs, "output_hidden_states": True} if endpoint_on else kwargs),
            )
            if labels is not None:
                target = labels[:, 1:].to(out.logits.device)
                valid = target != IGNORE_INDEX
                logits, targets = out.logits[:, :-1][valid], target[valid]
                last_hidden = out.hidden_states[-1] if endpoint_on else None
        if labels is not None:
            cfg = self.config
            if motion_logit_mask_prob is None:
                motion_logit_mask_prob = cfg.motion_logit_mask_prob if self.training else 0.0
            if loss_quantiles is None:
                loss_quantiles = (
                    (cfg.loss_quantile_low, cfg.loss_quantile_high) if self.training else (0.0, 1.0)
                )
            rng = None
            if motion_logit_mask_prob > 0.0:
                if cfg.motion_token_offset is None:
                    raise ConfigError("HandVLAConfig: motion_logit_mask_prob > 0 needs the motion vocabulary")
                rng = (cfg.motion_token_offset, cfg.motion_token_offset + cfg.motion_layout.vocab_size)
            loss, token_loss, _kept = answer_token_loss(
                logits,
                targets,
                motion_token_range=rng,
                motion_logit_mask_prob=motion_logit_mask_prob,
                loss_quantiles=tuple(loss_quantiles),
                num_items_in_batch=num_items_in_batch,
                return_token_losses=True,
                token_weights=self.token_loss_weights(logits.shape[-1]) if self.training else None,
            )
            if binding is not None:
                loss = loss + cfg.binding_loss_weight * binding
                out.binding_loss = binding.detach()
            if endpoint_on:
                et = endpoint_targets.to(last_hidden.device)
                if et.shape[:2] != labels.shape or et.shape[-1] != 6:
                    raise ConfigError(
                        f"endpoint_targets: expected {(*labels.shape, 6)} (batch, tokens, left and right xyz), "
                        f"got {tuple(et.shape)}"
                    )
                pred = self.endpoint_head(last_hidden[:, :-1][valid]).float()
                ep_loss = endpoint_loss(pred, et[:, 1:][valid])
                loss = loss + cfg.endpoint_loss_weight * ep_loss
                out.endpoint_loss = ep_loss.detach()
            out.loss = loss
            out.answer_token_losses = token_loss.detach()
        return out

    def token_loss_weights(self, vocab_rows: int) -> torch.Tensor | None:
        """(vocab_rows,) loss weight per target token id from ``config.motion_layer_loss_weights`` (motion
        ids weighted by their residual layer, every other token 1), or None when unset."""
        w = self.config.motion_layer_loss_weights
        if not w:
            return None
        key = (vocab_rows, tuple(float(x) for x in w))
        cached = getattr(self, "_token_weight_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        layout, off = self.config.motion_layout, int(self.config.motion_token_offset)
        _part, layer = layout.id_kinds(np.arange(layout.vocab_size))
        table = torch.ones(vocab_rows)
        table[off : off + layout.vocab_size] = torch.as_tensor(np.asarray(w, np.float32)[layer])
        self._token_weight_cache = (key, table)
        return table

    @classmethod
    def from_backbone(cls, path: str | Path, **kwargs: Any) -> VLABundle:
        """See `vla_from_backbone`."""
        return vla_from_backbone(path, **kwargs)


try:
    AutoModelForImageTextToText.register(HandVLAConfig, HandVLAForConditionalGeneration, exist_ok=True)
except TypeError:  # older transformers without exist_ok
    pass


def _register_weight_names() -> None:
    """Use InternVL's checkpoint key renaming for model_type "handvla" too: transformers saves InternVL weights
    under their legacy names (``language_model.model.*``, ``language_model.lm_head``) and renames them on
    load by model type, so without this an untied LM head of a backbone (or of our own checkpoints) would
    not be found."""
    try:
        from transformers.conversion_mapping import (
            get_checkpoint_conversion_mapping,
            register_checkpoint_conversion_mapping,
        )
    except (
        ImportError
    ):  # transformers without conversion mappings saves and loads the module names as they are
        return
    mapping = get_checkpoint_conversion_mapping("internvl")
    if mapping:
        register_checkpoint_conversion_mapping(HandVLAConfig.model_type, mapping, overwrite=True)


_register_weight_names()


# ---- vocabulary ---------------------------------------------------------------------------------------


@torch.no_grad()
def _init_new_rows(
    weight: torch.Tensor, start: int, stop: int, noise: float, generator: torch.Generator
) -> None:
    """Rows [start, stop) := mean of rows [0, start) + noise * (per-dimension std) * N(0, 1).

    Starting every new token at the mean embedding keeps the LM's first predictions and hidden states in
    their usual range; the small noise breaks the symmetry between tokens."""
    old = weight[:start].float()
    mean, std = old.mean(0), old.std(0) if start > 1 else torch.ones_like(old[0])
    eps = torch.randn((stop - start, weight.shape[1]), generator=generator).to(weight.device)
    weight[start:stop] = (mean + noise * std * eps).to(weight.dtype)


def extend_vocabulary(
    model: HandVLAForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    layout: TokenLayout | None = None,
    noise: float = 0.02,
    seed: int = 0,
    pad_to_multiple_of: int | None = None,
) -> MotionVocab:
    """Add the image/motion tokens to ``tokenizer`` (in place), grow the model's embeddings (and untied LM
    head) to match, initialise the new rows (`_init_new_rows`), and write the ids into ``model.config``.

    Idempotent. ``layout`` defaults to the config's. ``pad_to_multiple_of`` pads the embedding rows (the
    extra rows are never produced by the tokenizer)."""
    layout = layout or model.config.motion_layout
    first_new = len(tokenizer)
    rows = model.get_input_embeddings().weight.shape[0]
    if first_new > rows:
        raise ConfigError(
            f"extend_vocabulary: the tokenizer already has {first_new} tokens but the model only {rows} embedding "
            "rows (a tokenizer that does not belong to this model?)"
        )
    vocab = add_motion_tokens(tokenizer, layout)
    n_tokens = len(tokenizer)
    if n_tokens > rows:
        model.resize_token_embeddings(n_tokens, pad_to_multiple_of=pad_to_multiple_of, mean_resizing=False)
    if n_tokens > first_new:
        gen = torch.Generator().manual_seed(seed)
        emb = model.get_input_embeddings().weight
        _init_new_rows(emb, first_new, n_tokens, noise, gen)
        head = model.get_output_embeddings().weight
        if head.data_ptr() != emb.data_ptr():
            _init_new_rows(head, first_new, n_tokens, noise, gen)
    vocab.write_to_config(model.config)
    model.config.text_config.vocab_size = model.get_input_embeddings().weight.shape[0]
    gc = model.generation_config
    gc.eos_token_id, gc.pad_token_id = vocab.eos_id, vocab.pad_id
    return vocab


# ---- bundles ------------------------------------------------------------------------------------------


@dataclass
class VLABundle:
    """What a VLA checkpoint holds: the model, its processor (text tokenizer + image tiling + motion
    blocks), and the motion tokenizer (None when the checkpoint has none)."""

    model: HandVLAForConditionalGeneration
    processor: HandVLAProcessor
    motion_tokenizer: Any = None

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.processor.tokenizer

    def save(self, path: str | Path) -> Path:
        return save_vla(path, self)


def sincos_position_table(grid: int, dim: int, base: float = 100.0) -> torch.Tensor:
    """(grid * grid, dim) 2-D sin-cos position table in raster order (row-major): the first half of the
    channels encode the patch's row, the second half its column, each as sines then cosines at frequencies
    base^(-k / n), k < n = dim // 4 (channels left over when dim is not a multiple of 4 stay 0)."""
    n = dim // 4
    out = torch.zeros(grid * grid, dim)
    if n == 0:
        return out
    freq = base ** (-torch.arange(n, dtype=torch.float64) / n)
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    for a, pos in enumerate((rows.reshape(-1), cols.reshape(-1))):
        ang = pos[:, None].double() * freq[None]
        out[:, a * (dim // 2) : a * (dim // 2) + 2 * n] = torch.cat([ang.sin(), ang.cos()], 1).float()
    return out


def init_vision_positions(model) -> bool:
    """Give a randomly initialised vision tower a 2-D sin-cos table in its absolute position embeddings
    (each patch's row and column; the class token's row stays 0). transformers initialises them to zero,
    which leaves the tower permutation-invariant over patches: no visual token says where in the image it
    is, and "where is the red cube?" has to be learned from nothing (measured: single-object localisation on
    rendered HandWorld scenes, 1000 steps: the answered centre inside the true box 0.31 with the table vs
    0.15 from zero). Pretrained towers (InternVL3) have learned embeddings and are not touched: this is
    for random presets only. Returns whether a table was written (False: no absolute position embeddings,
    or a patch count that is not a square)."""
    emb = getattr(getattr(getattr(model, "model", None), "vision_tower", None), "embeddings", None)
    pe = getattr(emb, "position_embeddings", None)
    if not isinstance(pe, torch.nn.Parameter) or pe.dim() != 3:
        return False
    n_patches = pe.shape[1] - 1  # row 0: the class token
    grid = int(round(n_patches**0.5))
    if grid * grid != n_patches:
        return False
    with torch.no_grad():
        pe.zero_()
        pe[0, 1:] = sincos_position_table(grid, pe.shape[2]).to(pe.dtype)
    return True


def build_vla(
    preset: str | HandVLAConfig = "tiny",
    tokenizer: PreTrainedTokenizerBase | None = None,
    corpus: Iterable[str] | None = None,
    text_vocab_size: int = 1024,
    layout: TokenLayout | None = None,
    motion_tokenizer: Any = None,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    **overrides: Any,
) -> VLABundle:
    """A randomly initialised VLA (the vision tower's position embeddings a 2-D sin-cos table,
    `init_vision_positions`, unless ``config.vision_position_init`` is "zero"). ``preset``: a preset name
    or a `HandVLAConfig`; ``overrides`` go to `HandVLAConfig.from_preset`. Without ``tokenizer`` one is
    trained on ``corpus`` (`build_text_tokenizer`). With ``motion_tokenizer`` the motion layout is taken
    from it (and checked against ``layout``)."""
    if motion_tokenizer is not None:
        mt_layout = motion_tokenizer.layout
        if layout is not None and not layout.same_ids(mt_layout):
            raise ConfigError(f"build_vla: layout {layout} differs from the motion tokenizer's {mt_layout}")
        layout = mt_layout
    if isinstance(preset, HandVLAConfig):
        config = preset
        if layout is not None and config.motion_layout != layout:
            config.motion_token_layout = layout.to_dict()
    else:
        config = HandVLAConfig.from_preset(preset, layout=layout, **overrides)
    if motion_tokenizer is not None:
        _check_motion_fps(config, motion_tokenizer, "build_vla")
    tokenizer = (
        tokenizer if tokenizer is not None else build_text_tokenizer(corpus, vocab_size=text_vocab_size)
    )
    # Random init: size the embeddings to the extended tokenizer up front (every row is freshly drawn).
    add_motion_tokens(tokenizer, config.motion_layout)
    config.text_config.vocab_size = len(tokenizer)
    torch.manual_seed(seed)
    model = HandVLAForConditionalGeneration(config)
    if config.vision_position_init == "sincos":
        init_vision_positions(model)
    if dtype is not None:
        model = model.to(dtype)
    extend_vocabulary(model, tokenizer, seed=seed)
    model.config.has_motion_tokenizer = motion_tokenizer is not None
    model.eval()
    return VLABundle(model, HandVLAProcessor(tokenizer, model.config), motion_tokenizer)


def fresh_weights(bundle: VLABundle, seed: int = 0) -> VLABundle:
    """A bundle of ``bundle``'s architecture (its config, text tokenizer and motion tokenizer) whose weights are
    drawn afresh, as a new model of that config starts: the control that tells what a checkpoint's training
    adds from what its architecture does (benchmarks/relocate_transfer.py, arm 'scratch')."""
    torch.manual_seed(int(seed))
    config = copy.deepcopy(bundle.model.config)
    model = HandVLAForConditionalGeneration(config)
    if config.vision_position_init == "sincos":
        init_vision_positions(model)
    dtype = next(bundle.model.parameters()).dtype
    return VLABundle(model.to(dtype).eval(), bundle.processor, bundle.motion_tokenizer)


def _check_motion_fps(config: HandVLAConfig, motion_tokenizer: Any, where: str) -> None:
    mcfg = getattr(motion_tokenizer, "config", None)
    if mcfg is None:
        return
    fps, spb = float(getattr(mcfg, "fps", config.motion_fps)), float(getattr(mcfg, "seconds_per_block", 1.0))
    if abs(spb - 1.0) > 1e-6:
        raise ConfigError(
            f"{where}: the VLA uses one motion block per hand-second; the motion tokenizer has "
            f"seconds_per_block = {spb}"
        )
    if abs(fps - config.motion_fps) > 1e-6:
        raise ConfigError(
            f"{where}: HandVLAConfig.motion_fps = {config.motion_fps} but the motion tokenizer runs "
            f"at {fps} fps"
        )


def vla_from_backbone(
    path: str | Path,
    layout: TokenLayout | None = None,
    motion_tokenizer: Any = None,
    dtype: torch.dtype | str | None = None,
    seed: int = 0,
    **overrides: Any,
) -> VLABundle:
    """Load InternVL weights in transformers format from a local folder (``config.json`` with model_type
    "internvl", safetensors weights, a tokenizer; e.g. ``OpenGVLab/InternVL3-1B-hf`` downloaded beforehand)
    and extend the vocabulary with motion tokens. Tiling settings and pixel statistics are read from the
    folder's ``preprocessor_config.json`` when present. ``overrides`` set `HandVLAConfig` fields."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise MissingResourceError(f"{path}: expected an InternVL checkpoint folder with config.json")
    raw = read_json(path / "config.json", dict, CheckpointError)
    if raw.get("model_type") != "internvl":
        raise ConfigError(
            f"{path / 'config.json'}: field 'model_type': expected 'internvl' (an InternVL3 -hf checkpoint), "
            f"got {raw.get('model_type')!r}"
        )
    base = InternVLConfig.from_pretrained(str(path))
    if motion_tokenizer is not None:
        mt_layout = motion_tokenizer.layout
        if layout is not None and not layout.same_ids(mt_layout):
            raise ConfigError(
                f"vla_from_backbone: layout {layout} differs from the motion tokenizer's {mt_layout}"
            )
        layout = mt_layout
    layout = layout or token_layout(TokenizerConfig())
    extra: dict[str, Any] = {}
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        p = read_json(pre, dict, CheckpointError)
        for src, dst in (
            ("image_mean", "image_mean"),
            ("image_std", "image_std"),
            ("min_patches", "min_tiles"),
            ("max_patches", "max_tiles"),
        ):
            if p.get(src) is not None:
                extra[dst] = p[src]
    extra.update(overrides)
    config = HandVLAConfig(
        vision_config=base.vision_config.to_dict(),
        text_config=base.text_config.to_dict(),
        image_token_id=base.image_token_id,
        image_seq_length=base.image_seq_length,
        downsample_ratio=base.downsample_ratio,
        projector_hidden_act=base.projector_hidden_act,
        vision_feature_layer=base.vision_feature_layer,
        vision_feature_select_strategy=base.vision_feature_select_strategy,
        tie_word_embeddings=base.tie_word_embeddings,
        motion_token_layout=layout.to_dict(),
        **extra,
    )
    if motion_tokenizer is not None:
        _check_motion_fps(config, motion_tokenizer, "vla_from_backbone")
    tokenizer = load_text_tokenizer(path)
    ctx = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    if "<IMG_CONTEXT>" in tokenizer.get_vocab() and ctx != base.image_token_id:
        raise CheckpointError(
            f"{path}: tokenizer has <IMG_CONTEXT> = {ctx} but config.json image_token_id = {base.image_token_id}"
        )
    model, info = HandVLAForConditionalGeneration.from_pretrained(
        str(path), config=config, dtype=dtype, output_loading_info=True, local_files_only=True
    )
    film = getattr(model.model, "instruction_film", None)
    if film is not None:  # new with this option: not in the backbone's weights; starts as no modulation
        film.reset_parameters()
    new = (".instruction_film.", ".binding_head.", ".binding_mark.", ".endpoint_head.")  # ours, not InternVL's
    info["missing_keys"] = [k for k in info.get("missing_keys", []) if not any(n in f".{k}" for n in new)]
    _check_loading_info(path, model, info)
    extend_vocabulary(model, tokenizer, layout, seed=seed)
    model.config.has_motion_tokenizer = motion_tokenizer is not None
    model.config.preset = None
    model.eval()
    return VLABundle(model, HandVLAProcessor(tokenizer, model.config), motion_tokenizer)


def _check_loading_info(path: Path, model: HandVLAForConditionalGeneration, info: dict) -> None:
    tied = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    missing = [k for k in info.get("missing_keys", []) if not (tied and k.startswith("lm_head"))]
    unexpected = list(info.get("unexpected_keys", []))
    mismatched = list(info.get("mismatched_keys", []))
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{path}: weights do not match the config: missing {sorted(missing)[:5]}, unexpected "
            f"{sorted(unexpected)[:5]}, mismatched {list(mismatched)[:5]}"
        )


def save_vla(
    path: str | Path,
    bundle: VLABundle,
    motion_tokenizer: Any = None,
    max_shard_size: str = "5GB",
) -> Path:
    """Write a checkpoint folder atomically (built beside ``path``, then swapped in). ``motion_tokenizer``
    (default: the bundle's) is saved under ``motion_tokenizer/`` with its own ``save_pretrained``."""
    path = Path(path)
    model, tokenizer = bundle.model, bundle.processor.tokenizer
    motion_tokenizer = motion_tokenizer if motion_tokenizer is not None else bundle.motion_tokenizer
    if not model.config.vocabulary_ready:
        raise ConfigError("save_vla: the model's motion vocabulary is not set (extend_vocabulary first)")
    if MotionVocab.from_tokenizer(tokenizer, model.config.motion_layout) != MotionVocab.from_config(
        model.config
    ):
        raise ConfigError("save_vla: the tokenizer's motion/image token ids differ from the model config's")
    if motion_tokenizer is not None:
        mt_layout = motion_tokenizer.layout
        if not mt_layout.same_ids(model.config.motion_layout):
            raise ConfigError(
                f"save_vla: motion tokenizer layout {mt_layout} != model layout {model.config.motion_layout}"
            )

    had = model.config.has_motion_tokenizer
    try:
        with atomic_dir(path) as tmp:
            model.config.has_motion_tokenizer = motion_tokenizer is not None
            model.save_pretrained(str(tmp), max_shard_size=max_shard_size)
            tokenizer.save_pretrained(str(tmp))
            if motion_tokenizer is not None:
                motion_tokenizer.save_pretrained(tmp / MOTION_TOKENIZER_DIR)
    except BaseException:
        model.config.has_motion_tokenizer = had
        raise
    return path


def load_vla(
    path: str | Path,
    dtype: torch.dtype | str | None = None,
    load_motion_tokenizer: bool = True,
    motion_tokenizer_loader: Callable[[Path], Any] | None = None,
    device: str | torch.device | None = None,
) -> VLABundle:
    """Load a folder written by `save_vla`. A checkpoint whose config declares a motion tokenizer must hold
    ``motion_tokenizer/`` (CheckpointError otherwise); it is loaded with ``motion_tokenizer_loader``
    (default ``handvla.tokenizer.loading.load_tokenizer``: any tokenizer class) unless ``load_motion_tokenizer`` is False."""
    path = Path(path)
    if not path.is_dir():
        raise MissingResourceError(f"{path}: VLA checkpoint folder not found")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(
            f"{cfg_path}: missing (a VLA checkpoint needs config.json, weights and a tokenizer)"
        )
    raw = read_json(cfg_path, dict, CheckpointError)
    if raw.get("model_type") != HandVLAConfig.model_type:
        hint = (
            " (load InternVL backbones with vla_from_backbone)" if raw.get("model_type") == "internvl" else ""
        )
        raise CheckpointError(
            f"{cfg_path}: field 'model_type': expected '{HandVLAConfig.model_type}', got {raw.get('model_type')!r}{hint}"
        )
    if not any(path.glob("*.safetensors")):
        raise CheckpointError(f"{path}: no *.safetensors weights")
    check_safetensors(path)  # a corrupt or truncated weights file: CheckpointError naming it
    config = HandVLAConfig.from_pretrained(str(path))
    if not config.vocabulary_ready:
        raise CheckpointError(f"{cfg_path}: the motion vocabulary ids are missing")
    mt_dir = path / MOTION_TOKENIZER_DIR
    if config.has_motion_tokenizer and not mt_dir.is_dir():
        raise CheckpointError(
            f"{mt_dir}: missing, but {cfg_path} declares a motion tokenizer (has_motion_tokenizer = true)"
        )
    tokenizer = load_text_tokenizer(path)
    tok_vocab = MotionVocab.from_tokenizer(tokenizer, config.motion_layout)
    cfg_vocab = MotionVocab.from_config(config)
    if tok_vocab != cfg_vocab:
        raise CheckpointError(
            f"{path}: the tokenizer's motion/image ids {tok_vocab} differ from config.json's {cfg_vocab}"
        )
    model, info = HandVLAForConditionalGeneration.from_pretrained(
        str(path), config=config, dtype=dtype, output_loading_info=True, local_files_only=True
    )
    _check_loading_info(path, model, info)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        raise CheckpointError(
            f"{path}: tokenizer has {len(tokenizer)} tokens but the embeddings only "
            f"{model.get_input_embeddings().weight.shape[0]} rows"
        )
    if device is not None:
        model = model.to(device)
    model.eval()
    motion_tokenizer = None
    if config.has_motion_tokenizer and load_motion_tokenizer:
        loader = motion_tokenizer_loader or load_tokenizer
        motion_tokenizer = loader(mt_dir)
        layout = getattr(motion_tokenizer, "layout", None)
        if layout is not None:
            if not layout.same_ids(config.motion_layout):
                raise CheckpointError(
                    f"{mt_dir}: motion tokenizer layout {layout} differs from {cfg_path}'s {config.motion_layout}"
                )
            # a checkpoint written before configs stored the token layout: take its factorisation
            model.config.motion_token_layout = layout.to_dict()
    return VLABundle(model, HandVLAProcessor(tokenizer, model.config), motion_tokenizer)
