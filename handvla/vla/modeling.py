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
    PreTrainedTokenizerBase,
)
from transformers.models.internvl.modeling_internvl import InternVLCausalLMOutputWithPast

from handvla.atomic import atomic_dir, check_safetensors, read_json
from handvla.errors import CheckpointError, ConfigError, MissingResourceError
from handvla.tokenizer.configuration import TokenizerConfig
from handvla.tokenizer.layout import TokenLayout, token_layout
from handvla.tokenizer.loading import load_tokenizer
from handvla.vla.configuration import HandVLAConfig
from handvla.vla.processing import IGNORE_INDEX, HandVLAProcessor
from handvla.vla.text_tokenizer import (
    MotionVocab,
    add_motion_tokens,
    build_text_tokenizer,
    load_text_tokenizer,
)

MOTION_TOKENIZER_DIR = "motion_tokenizer"


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
        ``answer_token_losses`` (N,), detached, for per-kind metrics."""
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
            logits = self.lm_head(outputs[0][:, :-1][valid])
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
                **kwargs,
            )
            if labels is not None:
                target = labels[:, 1:].to(out.logits.device)
                valid = target != IGNORE_INDEX
                logits, targets = out.logits[:, :-1][valid], target[valid]
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
