"""Training the motion tokenizer: its model, data, loss and codebook hooks, run by the shared trainer.

Loss per batch of windows (B, 16, D), over real (not padding) valid frames:
  smooth-L1 reconstruction of the normalised features
  + ``joint_loss_weight`` x mean Euclidean joint error in metres (decoded features -> hand parameters ->
    21 joints through the hand model's differentiable forward kinematics, with each clip's betas)
  + ``commitment_weight`` x commitment loss of the quantisers.
Codebooks follow EMAs (not the optimiser); they are initialised by k-means (or a lattice) on encoded
windows when quantisation starts (step ``vq_start_step``; before it the model trains as a plain
auto-encoder), in the trainer's ``before_step`` hook.

The run itself is ``handvla.train.trainer.Trainer``'s (``trainer_config`` maps the tokenizer's training
fields onto it): AdamW, linear warm-up then cosine decay to ``min_lr_ratio`` x lr, gradient clipping,
checkpoints, exact resume, ``metrics.jsonl`` with its end record, and the time budget: ``steps`` fixes the
schedule, ``max_minutes`` bounds the training time (codebook initialisation and steps; loading and fitting
data are not counted) summed over resumed sessions, and with only ``max_minutes`` the cosine schedule ends
at the deadline. The data are a ``WindowStream`` of random windows whose generator travels in the
trainer's checkpoints, so a run killed and resumed draws the same batches and ends with the same weights.

A run folder holds ``config.json`` + ``model.safetensors`` (the model, ``save_pretrained``), ``run.json``
(the model and training configs and the sources: what ``resume`` rebuilds the run from), the trainer's
``checkpoints/`` and ``metrics.jsonl``, and ``fit_cache/`` (fitted joint files).
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset

from handvla.atomic import atomic_write_json, read_json
from handvla.config import load_config
from handvla.errors import CheckpointError, ConfigError
from handvla.hand.features import features_to_joints
from handvla.tokenizer.configuration import TokenizerConfig, TokenizerTrainConfig
from handvla.tokenizer.data import Batch, WindowSampler, load_sources, make_clips
from handvla.tokenizer.modeling import MotionTokenizer
from handvla.train.trainer import TrainConfig, Trainer

#: the run's definition in its folder (model and training configs, sources)
RUN_NAME = "run.json"
#: the trainer's stop reasons in the tokenizer's words (``TrainResult.stopped_by``)
STOPPED_BY = {"max_steps": "steps", "time_budget": "time"}


@dataclass
class TrainResult:
    out_dir: Path
    step: int  # optimiser steps done, all sessions
    schedule_steps: int | None  # the LR schedule's length (a run by time only: the steps it did)
    elapsed_s: float  # training seconds, all sessions (the time budget's clock; data loading not included)
    losses: list[float] = field(default_factory=list)  # loss of every step run in this call
    last_log: dict[str, Any] = field(default_factory=dict)  # the last metrics.jsonl record, + data_s
    stopped_by: str = "steps"  # 'steps' or 'time'
    too_few_steps: bool = False  # the trainer's too-few-steps verdict, with its ``warning`` sentence
    warning: str | None = None


def trainer_config(tc: TokenizerTrainConfig, out_dir: str | Path, progress: bool = True) -> TrainConfig:
    """The shared trainer's settings for a tokenizer run: one CPU process, fp32, a batch per step."""
    return TrainConfig(
        output_dir=str(out_dir),
        max_steps=tc.steps,
        max_minutes=tc.max_minutes,
        batch_size=tc.batch_size,
        lr=tc.lr,
        min_lr_ratio=tc.min_lr_ratio,
        warmup_steps=tc.warmup_steps,
        weight_decay=tc.weight_decay,
        adam_betas=tc.adam_betas,
        grad_clip=tc.grad_clip or None,
        seed=tc.seed,
        log_every=tc.log_every,
        save_every=tc.checkpoint_every,
        save_minutes=tc.checkpoint_minutes,
        keep_checkpoints=1,
        device="cpu",
        distributed="none",
        tensorboard=False,
        progress=progress,
    )


class WindowStream(IterableDataset):
    """Batches of ``batch_size`` random training windows, forever (``WindowSampler.sample``). Its state is the
    sampler's generator, which the trainer keeps in its checkpoints."""

    def __init__(self, sampler: WindowSampler, batch_size: int):
        self.sampler, self.batch_size = sampler, batch_size

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.sampler.sample(self.batch_size)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.sampler.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.rng.bit_generator.state = state["rng"]


def compute_loss(
    model: MotionTokenizer, batch: Batch, cfg: TokenizerTrainConfig, quantize: bool = True
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The training loss of one batch and its parts (floats, for logging)."""
    mc = model.config
    out = model(batch.feats, quantize=quantize)
    target = model.normalize(batch.feats)
    m = batch.mask.float()[..., None]  # (B, W, 1)
    n = m.sum().clamp(min=1.0)
    if cfg.recon_beta > 0:
        err = F.smooth_l1_loss(out.recon, target, reduction="none", beta=cfg.recon_beta)
    else:
        err = (out.recon - target).abs()
    if not mc.part_level and cfg.wrist_loss_weight != 1.0:
        w = torch.ones(model.spec.dim)
        w[torch.as_tensor(model.spec.part_indices("wrist"))] = cfg.wrist_loss_weight
        err = err * w
    recon = (err * m).sum() / (n * err.shape[-1])
    loss = recon + mc.commitment_weight * out.commit_loss
    parts: dict[str, Any] = {"recon": recon.item(), "commit": out.commit_loss.item()}
    if cfg.joint_loss_weight > 0:
        hand = model.hand_model("right")
        pred = features_to_joints(mc.spec, model.denormalize(out.recon), batch.betas, hand)
        with torch.no_grad():
            gt = features_to_joints(mc.spec, batch.feats, batch.betas, hand)
        dist = ((pred - gt).square().sum(-1) + 1e-12).sqrt()  # (B, W, 21) metres
        joint = (dist * m).sum() / (n * dist.shape[-1])
        loss = loss + cfg.joint_loss_weight * joint
        parts["joint_mm"] = joint.item() * 1000.0
    parts["loss"] = loss.item()
    parts["_codes"] = out.codes
    return loss, parts


def _codebook_stats(model: MotionTokenizer, codes: dict[str, torch.Tensor]) -> dict[str, float]:
    out = {}
    for part, c in codes.items():
        st = model.parts[part].quantizer.usage_stats(c)
        for k, v in st.items():
            out[f"{part}_{k}"] = round(v, 4)
    return out


class TokenizerStage:
    """What the tokenizer adds to the shared loop: the codebook initialisation when quantisation starts
    (``before_step``), the loss (``loss``) and codebook usage in the log (``on_log``). It keeps this call's
    per-step losses and last log record for ``TrainResult``."""

    def __init__(self, sampler: WindowSampler, tc: TokenizerTrainConfig):
        self.sampler, self.tc = sampler, tc
        self.quantize = True
        self.codes: dict[str, torch.Tensor] = {}
        self.losses: list[float] = []
        self.last_log: dict[str, Any] = {}

    def before_step(self, model: MotionTokenizer, step: int) -> None:
        tc = self.tc
        self.quantize = step >= tc.vq_start_step
        if self.quantize and not all(bool(p.quantizer.initted) for p in model.parts.values()):
            _init_codebooks(model, self.sampler, tc.kmeans_init_windows, tc.lattice_init_windows)
            _refine_codebooks(model, self.sampler, tc.vq_warmup_steps, tc.vq_warmup_batch)

    def loss(self, model: MotionTokenizer, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        loss, parts = compute_loss(model, batch, self.tc, self.quantize)
        self.codes = parts.pop("_codes")
        self.losses.append(parts.pop("loss"))
        return loss, parts

    def on_log(self, model: MotionTokenizer, record: dict[str, Any]) -> None:
        record.update(_codebook_stats(model, self.codes))
        self.last_log = dict(record)


def read_run(out_dir: str | Path) -> tuple[TokenizerConfig, TokenizerTrainConfig, list[str]]:
    """The model config, training config and sources of the run in ``out_dir`` (its ``run.json``)."""
    path = Path(out_dir) / RUN_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: missing: no tokenizer training run to resume in {out_dir}")
    run = read_json(path, error=CheckpointError)
    try:
        return (
            load_config(TokenizerConfig, base=run["model_config"], what=f"{path}: model_config"),
            load_config(TokenizerTrainConfig, base=run["train_config"], what=f"{path}: train_config"),
            [str(s) for s in run["sources"]],
        )
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{path}: not a tokenizer run description ({type(e).__name__}: {e})") from None


def train(
    model_config: TokenizerConfig,
    train_config: TokenizerTrainConfig,
    sources: list[str],
    out_dir: str | Path,
    resume: bool = False,
    fit_cache: str | Path | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train (or resume) a tokenizer on ``sources`` ('builtin', joint files, parameter files, folders).

    Writes the run folder ``out_dir`` (see the module doc). ``resume`` continues the run there from its
    latest checkpoint with its own configs and sources (``model_config`` and ``sources`` are ignored); of
    ``train_config`` only ``max_minutes`` counts, the run's total time budget (raise it to give a spent run
    more time). A fresh run replaces the folder's earlier checkpoints.
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    if resume:
        model_config, stored, sources = read_run(out_dir)
        train_config = stored.replace(max_minutes=train_config.max_minutes)
    tc = train_config
    if tc.steps is None and tc.max_minutes is None:
        raise ConfigError("tokenizer training: give a number of steps or a time budget (max_minutes)")
    if tc.threads:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    fit_cache = fit_cache if fit_cache is not None else out_dir / "fit_cache"

    motions = load_sources(
        sources,
        model_config.fps,
        tc.builtin_sequences,
        tc.builtin_seconds,
        tc.seed,
        fit_cache,
        progress=progress,
    )
    clips = make_clips(model_config, motions, tc.real_weight)
    sampler = WindowSampler(
        model_config, clips, seed=tc.seed, aug_yaw_deg=tc.aug_yaw_deg, aug_shift_m=tc.aug_shift_m
    )
    model = MotionTokenizer(model_config)
    if tc.freeze_encoder:
        for part in model.parts.values():
            part.encoder.requires_grad_(False)
    stage = TokenizerStage(sampler, tc)
    trainer = Trainer(
        model,
        WindowStream(sampler, tc.batch_size),
        trainer_config(tc, out_dir, progress),
        loss_fn=stage.loss,
        before_step=stage.before_step,
        on_log=stage.on_log,
    )
    if not resume:
        shutil.rmtree(trainer.ckpt_root, ignore_errors=True)  # an earlier run's checkpoints
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            out_dir / RUN_NAME,
            {
                "model_config": model_config.model_dump(),
                "train_config": tc.model_dump(),
                "sources": list(sources),
            },
        )
    # a fresh start fits the model to the data (a resumed run loads all this from its checkpoint)
    if trainer.latest_checkpoint() is None:
        model.set_normalizer(sampler.fit_normalizer())
        model.init_linear_skip(sampler.sample(tc.kmeans_init_windows).feats)
    data_s = time.perf_counter() - t_start
    summary = trainer.train(resume=resume)
    model.eval()
    model.save_pretrained(out_dir)
    steps = summary["steps_done"]
    return TrainResult(
        out_dir,
        steps,
        tc.steps if tc.steps is not None else steps,  # by time only, the cosine ended at the last step
        summary["elapsed_minutes"] * 60,
        stage.losses,
        {**stage.last_log, "data_s": round(data_s, 2)},
        STOPPED_BY[summary["stop_reason"]],
        summary["too_few_steps"],
        summary["warning"],
    )


@torch.no_grad()
def _init_codebooks(
    model: MotionTokenizer, sampler: WindowSampler, n_windows: int, n_lattice_windows: int | None = None
) -> None:
    """Initialisation of every part's codebooks on the latents of ``n_windows`` windows (k-means parts)
    or ``n_lattice_windows`` (lattice parts)."""
    need = {
        p: (n_lattice_windows or n_windows) if m.quantizer.init_method == "lattice" else n_windows
        for p, m in model.parts.items()
    }
    batch = sampler.sample(max(need.values()))
    x = model.normalize(batch.feats)
    for part, xp in model._split(x).items():
        xp = xp[: need[part]]
        m = model.parts[part]
        z = torch.cat([m.encoder(c.transpose(1, 2)).transpose(1, 2) for c in xp.split(512)])
        m.quantizer.init_codebooks(z)


@torch.no_grad()
def _refine_codebooks(model: MotionTokenizer, sampler: WindowSampler, steps: int, batch_size: int) -> None:
    """EMA / dead-code updates of the k-means codebooks on fresh batches with the encoder frozen (k-means
    on a few windows memorises them; fresh data spreads the codes out). Lattice codebooks are left as
    they are: they were fitted to a larger sample and refinement only pulls them towards it."""
    for _ in range(steps):
        x = model.normalize(sampler.sample(batch_size).feats)
        for part, xp in model._split(x).items():
            m = model.parts[part]
            if m.quantizer.init_method == "lattice":
                continue
            m.quantizer(m.encoder(xp.transpose(1, 2)).transpose(1, 2), update=True)


__all__ = [
    "TokenizerStage",
    "TrainResult",
    "WindowStream",
    "compute_loss",
    "read_run",
    "train",
    "trainer_config",
]
