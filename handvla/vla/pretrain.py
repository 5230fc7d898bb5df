"""Physical-instruction pretraining of the motion VLA (Being-H0 stage 1) on the shared trainer.

One typed config (`PretrainConfig`, YAML sections ``data``, ``model``, ``train``, ``eval``) drives it::

    data:   stores / manifest, task mix, window seconds, hand modes, alignment, packing (handvla.vla.data)
    model:  preset (tiny, small, internvl3-*) or backbone (an InternVL3 -hf folder) or init_checkpoint
            (a VLA to continue from); motion_tokenizer (a MotionTokenizer folder); loss options
    train:  handvla.train.trainer.TrainConfig (output_dir, steps, batch, lr, bf16, DDP/FSDP2, ...)
    eval:   validation loss on held-out episodes, and generation metrics on HandWorld stores

`run_pretrain` builds the samples, the model and the datasets, runs ``Trainer`` (answer-token loss with
motion-logit masking p and the loss-quantile curriculum, periodic eval), and exports the final VLA with
``save_vla`` (motion tokenizer included) to ``OUTPUT_DIR/final``. Resume (``resume=True``) continues from
the trainer's latest checkpoint with the same text tokenizer (saved in ``OUTPUT_DIR/text_tokenizer`` on the
first run) and the same data (everything is rebuilt deterministically). Under ``torchrun`` rank 0 prepares
the tokenizer and the motion-token cache first, the other ranks then read them.

Loss: ``HandVLAForConditionalGeneration.forward``'s cross-entropy on answer tokens only. ``loss_quantiles``
(q_lo, q_hi) keeps per-token losses between those batch quantiles (Being-H0: 0.15 / 0.95) from step
``quantile_start_step`` on; before it every answer token counts (at the start every loss is high and the
filter would only drop useful tokens).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from safetensors.torch import load_file

from handvla.config import ConfigModel, load_config
from handvla.errors import CheckpointError, ConfigError
from handvla.hand.registry import load_hand_model
from handvla.hand.topology import SIDES
from handvla.train.distributed import barrier, init_distributed, unwrap
from handvla.train.trainer import TrainConfig, Trainer
from handvla.vla.configuration import (
    PLACE_FRAMES,
    ImagePosition,
    MotionAnswerPrefix,
    check_film_options,
    check_place_options,
)
from handvla.vla.data import VLADataConfig, build_datasets, collect_samples, sample_texts
from handvla.vla.evaluate import evaluate_handworld
from handvla.vla.loading import backbone_layer_types, load_initial_vla, write_summary
from handvla.vla.modeling import (
    HandVLAForConditionalGeneration,
    VLABundle,
    save_vla,
    set_binding_mark,
    set_endpoint_loss,
)

FINAL_DIR = "final"
SUMMARY_NAME = "pretrain_summary.json"


class ModelConfig(ConfigModel):
    """Which model to train (YAML section ``model``). Exactly one of preset / backbone / init_checkpoint."""

    preset: str | None = Field("tiny", description="random init from a HandVLAConfig preset")
    preset_overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="HandVLAConfig fields over the preset's (vision_config / text_config dicts update the "
        "preset's sub-configs), e.g. {vision_config: {image_size: 112}}",
    )
    backbone: str | None = Field(None, description="InternVL3 -hf folder (real weights) to extend")
    init_checkpoint: str | None = Field(None, description="a VLA checkpoint (save_vla folder) to continue")
    motion_tokenizer: str | None = Field(
        None, description="MotionTokenizer folder (default: the checkpoint's)"
    )
    mano_dir: str | None = Field(
        None,
        description="MANO model folder, for a motion tokenizer whose hand model is MANO (Being-H0's "
        "GRVQ-8K: its features need MANO's joints)",
    )
    text_vocab_size: int = Field(1024, ge=259, description="BPE size of the text tokenizer of random presets")
    dtype: str | None = Field(None, description="load dtype of real weights: float32, bfloat16, float16")
    seed: int = 0
    motion_logit_mask_prob: float = Field(0.5, ge=0.0, le=1.0, description="Being-H0's p = 50%")
    loss_quantiles: tuple[float, float] = Field((0.0, 1.0), description="(q_lo, q_hi); Being-H0 (0.15, 0.95)")
    quantile_start_step: int = Field(0, ge=0, description="the quantile filter applies from this step on")
    motion_layer_loss_weights: list[float] | None = Field(
        None,
        description="loss weight per residual layer of motion ids (needs a tokenizer with per-layer ids); "
        "None: every answer token weighs 1 (the reference)",
    )

    image_position: ImagePosition | None = Field(
        None,
        description="where the image's tokens stand in the user turn: in_prompt (the reference: where the "
        "prompt's <image> is) or after_text (after the instruction, so the image tokens attend to it); None: "
        "the checkpoint's or preset's",
    )

    vision_film: bool = Field(
        False,
        description="modulate the vision tower's output by the instruction before the image (InstructionFiLM; "
        "implies image_position after_text); off in the reference. A random preset or a backbone gains it; an "
        "init_checkpoint must have it",
    )
    binding_loss_weight: float = Field(
        0.0,
        ge=0.0,
        description="weight of the binding loss (needs vision_film): a head on the visual tokens says which "
        "overlap the object the instruction acts on, from episodes with a known scene (HandWorld); 0: off",
    )

    binding_mark: bool = Field(
        False,
        description="move the binding head into the vision path (needs vision_film): each visual token gains "
        "a learned direction times its binding probability, for the LLM's attention to key on; an "
        "init_checkpoint's binding head becomes the mark's score (freeze it as model.binding_mark.score)",
    )

    binding_pool: bool = Field(
        False,
        description="with binding_mark: every visual token also gains a learned map (zero at the start) of the "
        "tokens pooled by the mark's softmax, so that any attention to the image reads the marked object; an "
        "init_checkpoint's mark without a pool gains one",
    )

    endpoint_loss_weight: float = Field(
        0.0,
        ge=0.0,
        description="weight of the end-point loss: a head on the LLM's answer states regresses where the "
        "answer motion's wrists end (camera frame, metres); 0: off (the reference). An init_checkpoint without "
        "the head gains one",
    )

    motion_answer_prefix: MotionAnswerPrefix | None = Field(
        None,
        description="what motion answers say before their motion blocks: none (the reference) or target_boxes "
        "(the box of each object the instruction acts on, InternVL's <ref>..</ref><box>[[..]]</box>, from "
        "episodes with a known scene) or target_places (each acting hand's target centre as three end-point "
        "ids, camera frame, and grounding answers in the same ids; needs a tokenizer with end points) or "
        "hand_places (the same, each motion answer's place in the acting hand's own frame, left hands mirrored "
        "as the tokenizer mirrors them); None: the checkpoint's or preset's",
    )

    place_names: bool | None = Field(
        None,
        description="with motion_answer_prefix target_places / hand_places: each stated place comes after its "
        "object's name in text, so the model names the instruction's object itself before saying where it is; "
        "None: the checkpoint's or preset's (off)",
    )
    end_places: bool | None = Field(
        None,
        description="with motion_answer_prefix target_places / hand_places: after the targets' places the answer "
        "states where each target is when the motion ends (a carried object's destination), before the motion; "
        "not with place_names; None: the checkpoint's or preset's (off)",
    )

    freeze: list[str] = Field(
        default_factory=list,
        description="parameter-name prefixes kept fixed during training, e.g. [model.vision_tower, "
        "model.multi_modal_projector, model.instruction_film] to keep a vision path trained on grounding "
        "questions (an init_checkpoint) while the LLM learns motion; each must name at least one parameter",
    )
    reinit: list[str] = Field(
        default_factory=list,
        description="module-name prefixes drawn afresh after loading the init_checkpoint (linear and embedding "
        "weights normal with the text config's initializer_range, biases 0, norms 1), e.g. "
        "[model.language_model.layers, model.language_model.norm] to start stage 2 from a grounding checkpoint's "
        "vision path with a fresh LLM: the LLM that grounding questions left behind learns motion more slowly "
        "and its motion does not follow a stated place (docs/vla-learning.md (20), (21)); each must name "
        "at least one parameter",
    )

    @model_validator(mode="after")
    def _check_film(self):  # before any work; unset, image_position follows vision_film (film_overrides)
        position = self.image_position or ("after_text" if self.vision_film else "in_prompt")
        check_film_options(
            self.vision_film, position, self.binding_loss_weight, "model", self.binding_mark, self.binding_pool
        )
        if self.reinit and not self.init_checkpoint:
            raise ConfigError("model.reinit: re-initialises parts of an init_checkpoint, and this run starts from none")
        check_place_options(self.motion_answer_prefix, bool(self.place_names), bool(self.end_places), "model.")
        return self

    def film_overrides(self) -> dict[str, Any]:
        """The `HandVLAConfig` fields these options set on a new model ({} when vision_film is off)."""
        if not self.vision_film:
            return {}
        return {
            "vision_film": True,
            "image_position": "after_text",
            "binding_loss_weight": self.binding_loss_weight,
            "binding_mark": self.binding_mark,
            "binding_pool": self.binding_pool,
        }

    @field_validator("loss_quantiles")
    @classmethod
    def _check_q(cls, v):
        if not 0.0 <= v[0] < v[1] <= 1.0:
            raise ValueError(f"expected 0 <= q_lo < q_hi <= 1, got {v}")
        return v

    @field_validator("dtype")
    @classmethod
    def _check_dtype(cls, v):
        if v is not None and v not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"expected float32, bfloat16 or float16, got {v!r}")
        return v


class EvalConfig(ConfigModel):
    """Evaluation during and after training (YAML section ``eval``; ``train.eval_every`` sets the period)."""

    val_samples: int = Field(64, ge=0, description="held-out samples for the validation loss (0: none)")
    val_batch_size: int = Field(8, gt=0)
    handworld: dict[str, str] = Field(
        default_factory=dict, description="name -> HandWorld store for generation metrics (held-out episodes)"
    )
    handworld_episodes: int = Field(8, ge=0, description="episodes per store at each periodic eval")
    final_episodes: int | None = Field(
        None, ge=1, description="episodes per store after training (None: all)"
    )
    max_seconds: int | None = Field(None, ge=1, description="cap on the generated seconds per episode")
    batch_size: int = Field(4, gt=0, description="generation batch size")


class PretrainConfig(ConfigModel):
    """The whole ``handvla pretrain`` configuration."""

    data: VLADataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig
    eval: EvalConfig = Field(default_factory=EvalConfig)


# ---- config files and overrides ------------------------------------------------------------------------


def load_pretrain_config(
    path: str | Path | None = None, overrides: list[str] | None = None, base: dict | None = None
) -> PretrainConfig:
    """Read a YAML/JSON config (or start from ``base``), apply ``key=value`` overrides (YAML values), validate."""
    return load_config(PretrainConfig, path, overrides, base, "pretrain config")


# ---- model ----------------------------------------------------------------------------------------------


def build_model(cfg: PretrainConfig, corpus: list[str], out_dir: Path, is_main: bool, barrier) -> Any:
    """The `VLABundle` to train (`load_initial_vla`: a random preset's text tokenizer is trained on
    ``corpus`` too), set up for this run's loss options and image alignment."""
    m = cfg.model
    bundle = load_initial_vla(
        m,
        corpus,
        out_dir,
        is_main,
        barrier,
        motion_tokenizer=m.motion_tokenizer,
        need_motion_tokenizer=True,
        preset_overrides={**m.preset_overrides, **m.film_overrides()},
        backbone_overrides=m.film_overrides(),
    )
    if m.vision_film and not getattr(bundle.model.config, "vision_film", False):
        raise ConfigError(
            f"model.vision_film: the init_checkpoint {m.init_checkpoint} was trained without it (the modulation "
            "is part of the model's shape): set vision_film to false, or start from a preset or a backbone"
        )
    if m.vision_film and m.binding_loss_weight != bundle.model.config.binding_loss_weight:
        raise ConfigError(
            f"model.binding_loss_weight: {m.binding_loss_weight}, but the init_checkpoint {m.init_checkpoint} "
            f"has {bundle.model.config.binding_loss_weight} (its binding head exists only when > 0): use its value"
        )
    mt = bundle.motion_tokenizer
    if mt is not None and mt.config.hand_model == "mano":
        if not m.mano_dir:
            raise ConfigError(
                "model.mano_dir: the motion tokenizer works in MANO's features (e.g. Being-H0's GRVQ-8K); set it "
                "to the folder with MANO_LEFT.pkl / MANO_RIGHT.pkl (mano_v1_2/models of the official zip)"
            )
        for side in SIDES:
            mt.set_hand_model(load_hand_model(mt.config.hand_model, side, m.mano_dir))
    c = bundle.model.config
    c.motion_logit_mask_prob = float(m.motion_logit_mask_prob)
    c.loss_quantile_low, c.loss_quantile_high = 0.0, 1.0  # set per step by the loss (curriculum start)
    if m.motion_layer_loss_weights is not None:
        c.motion_layer_loss_weights = c.motion_layout.check_layer_weights(
            m.motion_layer_loss_weights, "model.motion_layer_loss_weights"
        )
    if m.image_position is not None:
        c.image_position = m.image_position
    if m.motion_answer_prefix is not None:
        if m.motion_answer_prefix in PLACE_FRAMES and not c.motion_layout.end_point_bins:
            raise ConfigError(
                f"model.motion_answer_prefix: {m.motion_answer_prefix!r} states places in end-point ids, but "
                "the motion tokenizer's blocks have none: add them with `handvla tokenizer end-points` and set "
                "model.motion_tokenizer to its output"
            )
        if m.motion_answer_prefix == "hand_places" and mt is not None and mt.config.end_point_frame == "camera":
            raise ConfigError(
                "model.motion_answer_prefix: 'hand_places' states places in the hand's own frame (left hands "
                "mirrored), the frame of a tokenizer's end points made with --frame hand, but this tokenizer's "
                "end-point ids are in the camera frame: use 'target_places' (its places then are the ids the "
                "motion's end points say, for either hand)"
            )
        c.motion_answer_prefix = m.motion_answer_prefix
    if m.place_names is not None:
        c.place_names = bool(m.place_names)
    if m.end_places is not None:
        c.end_places = bool(m.end_places)
    # the checkpoint's own settings with these options on top
    check_place_options(c.motion_answer_prefix, getattr(c, "place_names", False), getattr(c, "end_places", False), "model.")
    if m.binding_mark:
        set_binding_mark(bundle.model, seed=m.seed, pool=m.binding_pool)
    set_endpoint_loss(bundle.model, m.endpoint_loss_weight, seed=m.seed)
    if m.reinit:
        reinitialize_parameters(bundle.model, m.reinit, "model.reinit", seed=m.seed)
    freeze_parameters(bundle.model, m.freeze, "model.freeze")
    c.image_alignment = "canonical" if cfg.data.align else "none"
    c.place_view = cfg.data.place_view
    return bundle


def _matching(model: torch.nn.Module, prefix: str, where: str) -> list[str]:
    """Names of ``model``'s parameters under ``prefix`` (whole name parts: ``model.vision_tower`` matches
    ``model.vision_tower.x`` but not ``model.vision_towerx``); none is a ConfigError that lists the model's parts
    (modules, two levels deep)."""
    named = [n for n, _ in model.named_parameters()]
    hits = [n for n in named if n == prefix or n.startswith(prefix.rstrip(".") + ".")]
    if not hits:
        parts = sorted({".".join(n.split(".")[:-1][:2]) or n for n in named})
        raise ConfigError(f"{where}: {prefix!r} names no parameter of the model (its parts: {', '.join(parts)})")
    return hits


@torch.no_grad()
def reinitialize_parameters(model: torch.nn.Module, prefixes: list[str], where: str, seed: int = 0) -> int:
    """Draw the weights of every module under ``prefixes`` afresh, as a new model of the same config starts:
    linear and embedding weights normal with std = the text config's ``initializer_range`` (0.02 if unset),
    biases 0, norm weights 1 and their biases 0. Returns how many parameters were drawn; a prefix that names no
    parameter is a ConfigError (`_matching`)."""
    cfg = getattr(model, "config", None)
    text = cfg.get_text_config() if cfg is not None and hasattr(cfg, "get_text_config") else cfg
    std = float(getattr(text, "initializer_range", None) or 0.02)
    gen = torch.Generator().manual_seed(int(seed))
    names = {n for prefix in prefixes for n in _matching(model, prefix, where)}
    done = 0
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if full not in names:
                continue
            if "Norm" in type(module).__name__ or isinstance(module, torch.nn.LayerNorm):
                p.fill_(1.0 if p_name == "weight" else 0.0)
            elif p_name == "bias":
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).mul_(std).to(p.dtype))
            done += 1
    return done


def freeze_parameters(model: torch.nn.Module, prefixes: list[str], where: str) -> None:
    """Turn off gradients of every parameter whose name starts with one of ``prefixes`` (a prefix matches
    whole name parts: ``model.vision_tower`` matches ``model.vision_tower.x`` but not ``model.vision_towerx``).
    A prefix that names none is a ConfigError that lists the model's parts (modules, two levels deep)."""
    named = dict(model.named_parameters())
    for prefix in prefixes:
        for n in _matching(model, prefix, where):
            named[n].requires_grad_(False)


# ---- loss and eval --------------------------------------------------------------------------------------


def token_kinds(targets: torch.Tensor, config) -> tuple[torch.Tensor, list[str]]:
    """Kind index of each target token id and the kind names: 'text' (every non-motion token, block
    delimiters and end of turn included), then per part 'wrist' / 'finger' (or 'hand'), split by residual
    layer ('wrist_l0', ...) when the ids say their layer, and the blocks' end-point ids ('end_point')."""
    layout = config.motion_layout
    off = int(config.motion_token_offset)
    parts = layout.parts
    L = layout.layers if layout.ids_say_layer else 1
    names = ["text"] + [f"{p}_l{k}" if L > 1 else p for p in parts for k in range(L)]
    if layout.end_point_bins:  # `TokenLayout.id_kinds` gives them part len(parts), layer 0
        names.append("end_point")  # kind 1 + len(parts) * L
    ids = targets.detach().cpu().numpy() - off
    is_motion = (ids >= 0) & (ids < layout.vocab_size)
    part, layer = layout.id_kinds(np.where(is_motion, ids, 0))
    kind = 1 + part * L + np.maximum(layer, 0)
    return torch.as_tensor(np.where(is_motion, kind, 0)), names


@torch.no_grad()
def token_kind_metrics(
    hits: torch.Tensor,
    targets: torch.Tensor,
    token_losses: torch.Tensor | None,
    config,
    loss_key: str = "loss",
    acc_key: str = "acc",
) -> dict[str, float]:
    """Loss (``{loss_key}/KIND``) and accuracy (``{acc_key}/KIND``) of answer tokens per kind (`token_kinds`).
    ``hits`` (N,): whether the argmax was the target; ``targets`` (N,) the labels; ``token_losses`` (N,) or
    None (accuracies only)."""
    if targets.numel() == 0:
        return {}
    hit = hits.float().cpu()
    losses = None
    if token_losses is not None and token_losses.numel() == targets.numel():
        losses = token_losses.float().cpu()
    kind, names = token_kinds(targets, config)
    out: dict[str, float] = {}
    for k, name in enumerate(names):
        sel = kind == k
        if not sel.any():
            continue
        out[f"{acc_key}/{name}"] = float(hit[sel].mean())
        if losses is not None:
            out[f"{loss_key}/{name}"] = float(losses[sel].mean())
    return out


def vla_loss(model, batch: dict[str, torch.Tensor], quantiles: tuple[float, float] | None = None):
    """Answer-token loss, token accuracy and per-kind losses / accuracies (`token_kind_metrics`).
    ``use_cache=False``: no KV cache in training, and packed rows rely on it (see handvla.vla.data).
    ``quantiles``: the curriculum's (q_lo, q_hi) for this step."""
    kw = {} if quantiles is None else {"loss_quantiles": quantiles}
    out = model(**batch, use_cache=False, answer_logits_only=True, **kw)
    with torch.no_grad():
        targets = out.answer_targets
        hits = out.logits.argmax(-1) == targets
        acc = hits.float().mean() if targets.numel() else torch.zeros(())
        kinds = token_kind_metrics(hits, targets, out.answer_token_losses, unwrap(model).config)
        if getattr(out, "binding_loss", None) is not None:  # HandVLAConfig.binding_loss_weight
            kinds["loss/binding"] = float(out.binding_loss)
        if getattr(out, "endpoint_loss", None) is not None:  # HandVLAConfig.endpoint_loss_weight
            kinds["loss/endpoint"] = float(out.endpoint_loss)
    return out.loss, {"token_acc": float(acc), "answer_tokens": float(targets.numel()), **kinds}


@torch.no_grad()
def validation_loss(model, dataset, max_samples: int, batch_size: int) -> dict[str, float]:
    """Mean answer-token cross-entropy (no masking, no quantile filter, no layer weights) and token accuracy
    over the first ``max_samples`` samples of ``dataset``, token-weighted, and both per token kind
    (``val_loss/KIND``, ``val_acc/KIND``, see `token_kinds`)."""
    was = model.training
    model.eval()
    n = min(len(dataset), max_samples)
    device = next(model.parameters()).device
    losses, hits, targets = [], [], []
    for i in range(0, n, batch_size):
        batch = dataset.collate([dataset[j] for j in range(i, min(n, i + batch_size))])
        batch = {k: v.to(device) for k, v in batch.items()}
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(next(model.parameters()).dtype)
        out = model(**batch, use_cache=False, answer_logits_only=True)
        losses.append(out.answer_token_losses.float().cpu())
        hits.append((out.logits.argmax(-1) == out.answer_targets).cpu())
        targets.append(out.answer_targets.cpu())
    model.train(was)
    if not losses:
        return {"val_loss": float("nan"), "val_token_acc": float("nan")}
    loss, hit, target = torch.cat(losses), torch.cat(hits), torch.cat(targets)
    res = {"val_loss": float(loss.mean()), "val_token_acc": float(hit.float().mean())}
    res.update(token_kind_metrics(hit, target, loss, model.config, "val_loss", "val_acc"))
    return res


def _handworld_metrics(bundle, cfg: PretrainConfig, episodes: int | None, progress: bool) -> dict[str, Any]:
    out = {}
    for name, store in cfg.eval.handworld.items():
        res = evaluate_handworld(
            bundle,
            store,
            max_episodes=episodes,
            max_seconds=cfg.eval.max_seconds,
            batch_size=cfg.eval.batch_size,
            image_size=cfg.data.image_size,
            progress=progress,
        )
        out[name] = res["summary"]
    return out


# ---- the run --------------------------------------------------------------------------------------------


def run_pretrain(cfg: PretrainConfig, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train, then export ``OUTPUT_DIR/final`` (rank 0) and write ``pretrain_summary.json``. Returns the
    summary (trainer result, data report, final eval). The process group is joined once, here, and its
    ``DistInfo`` handed to the trainer."""
    t0 = time.time()
    info = init_distributed(cfg.train.device)
    out_dir = Path(cfg.train.output_dir)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "pretrain_config.json").write_text(cfg.model_dump_json(indent=2))
    barrier(info)

    specs_train, dirs_train, rep_train = collect_samples(cfg.data, "train")
    # validation: every held-out candidate (the size / balance settings are for training)
    val_cfg = cfg.data.model_copy(update={"size": None})
    specs_val, dirs_val, rep_val = (
        collect_samples(val_cfg, "val") if cfg.data.val_fraction > 0 else ([], [], {"samples": 0})
    )
    if not specs_train:
        raise ConfigError(f"data: no training samples ({rep_train})")
    bundle = build_model(cfg, sample_texts(specs_train), out_dir, info.is_main, lambda: barrier(info))
    mt = bundle.motion_tokenizer
    if info.is_main:  # rank 0 fills the motion-token cache file first; the others then read it
        sets = build_datasets(
            cfg.data,
            bundle.processor,
            mt,
            {"train": (specs_train, dirs_train), "val": (specs_val, dirs_val)},
            progress,
        )
    barrier(info)
    if not info.is_main:
        sets = build_datasets(
            cfg.data, bundle.processor, mt, {"train": (specs_train, dirs_train), "val": (specs_val, dirs_val)}
        )
    train_set, val_set = sets["train"], sets.get("val")

    trainer_ref: dict[str, Trainer] = {}
    q = tuple(cfg.model.loss_quantiles)

    def loss_fn(model, batch):
        step = trainer_ref["t"].step if "t" in trainer_ref else 0
        active = q if step >= cfg.model.quantile_start_step else (0.0, 1.0)
        return vla_loss(model, batch, active)

    def eval_fn(model, step):
        metrics: dict[str, Any] = {}
        if val_set is not None and cfg.eval.val_samples:
            metrics.update(validation_loss(model, val_set, cfg.eval.val_samples, cfg.eval.val_batch_size))
        if cfg.eval.handworld and cfg.eval.handworld_episodes:
            view = VLABundle(model, bundle.processor, mt)
            for name, summ in _handworld_metrics(view, cfg, cfg.eval.handworld_episodes, False).items():
                for k in ("valid_output_rate", "target_accuracy", "mpjpe_mm", "mwte_mm"):
                    if summ.get(k) is not None:
                        metrics[f"{name}/{k}"] = summ[k]
            model.train()
        return metrics

    trainer = Trainer(
        bundle.model,
        train_set,
        cfg.train,
        collate_fn=train_set.collate,
        loss_fn=loss_fn,
        eval_fn=eval_fn,
        layer_types=backbone_layer_types(bundle.model),
        dist=info,
    )
    trainer_ref["t"] = trainer
    result = trainer.train(resume=resume)

    # Export from the trainer's own (full, unsharded) checkpoint, so DDP and FSDP2 runs export the same way.
    summary: dict[str, Any] = {
        "train": result,
        "data": {
            "train": {**rep_train, **train_set.report},
            "val": {**rep_val, **(val_set.report if val_set else {})},
        },
        "output_dir": str(out_dir),
    }
    final = None
    if info.is_main:
        ckpt = trainer.latest_checkpoint()
        model = unwrap(trainer.model)
        if ckpt is not None and cfg.train.distributed != "none" and info.enabled:
            model = HandVLAForConditionalGeneration(bundle.model.config)
            try:
                model.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=True)
            except RuntimeError as e:
                raise CheckpointError(
                    f"{ckpt}: the trainer checkpoint does not match the model ({e})"
                ) from None
        model = model.to("cpu").eval()
        model.config.image_size = list(train_set.image_size)
        model.config.image_alignment = "canonical" if cfg.data.align else "none"
        model.config.place_view = cfg.data.place_view
        export = VLABundle(model, bundle.processor, mt)
        final = save_vla(out_dir / FINAL_DIR, export)
        summary["final"] = str(final)
        if val_set is not None and cfg.eval.val_samples:
            summary["final_val"] = validation_loss(
                model, val_set, cfg.eval.val_samples, cfg.eval.val_batch_size
            )
        if cfg.eval.handworld:
            summary["final_eval"] = _handworld_metrics(export, cfg, cfg.eval.final_episodes, progress)
        summary["minutes"] = (time.time() - t0) / 60
        write_summary(out_dir / SUMMARY_NAME, summary)
    barrier(info)
    return summary


__all__ = [
    "EvalConfig",
    "ModelConfig",
    "PretrainConfig",
    "load_pretrain_config",
    "run_pretrain",
    "validation_loss",
    "vla_loss",
]
