"""Training the motion tokenizer: its model, data, loss and codebook hooks, run by the shared trainer.

Loss per batch of windows (B, 16, D), over real (not padding) valid frames:
  smooth-L1 reconstruction of the normalised features
  + ``joint_loss_weight`` x mean Euclidean joint error in metres (decoded features -> hand parameters ->
    21 joints through the hand model's differentiable forward kinematics, with each clip's betas)
  + ``commitment_weight`` x commitment loss of the quantisers.
Codebooks follow EMAs (not the optimiser); they are initialised by k-means (or a lattice) on encoded
windows when quantisation starts: at set-up, before the first step, when ``vq_start_step`` is 0 (the
default); else in the trainer's ``before_step`` hook at that step, with its time taken off the training clock.

The run itself is ``handvla.train.trainer.Trainer``'s (``trainer_config`` maps the tokenizer's training
fields onto it): AdamW, linear warm-up then cosine decay to ``min_lr_ratio`` x lr, gradient clipping,
checkpoints, exact resume, ``metrics.jsonl`` with its end record, and the time budget: ``steps`` fixes the
schedule, ``max_minutes`` bounds the training time (optimiser steps only: loading and fitting data, the
codebook initialisation and validation are set-up, timed and reported apart) summed over resumed sessions,
and with only ``max_minutes`` the cosine schedule follows the clock and ends at the deadline. A run with
fewer than ``min_steps_ok`` steps says so (stderr, ``summary.json``). The data are a ``WindowStream`` of
random windows whose generator travels in the trainer's checkpoints, so a run killed and resumed draws the
same batches and ends with the same weights.

Validation: whole files are held out (``val_sources``, else ``val_fraction`` of the real files, else fresh
built-in sequences) and evaluated at step 0 (the initialisation), every ``eval_minutes`` of training and at
the end (``Validator``: MPJPE / PA-MPJPE in mm through ``evaluation.evaluate_motions``); the best model by
``best_metric`` is kept in ``OUT/best``, written atomically.

A run folder holds ``config.json`` + ``model.safetensors`` (the final model, ``save_pretrained``), ``best/``
(the best validated model and its ``best.json``), ``validation.jsonl``, ``summary.json`` (sources with frame
counts, the split, set-up / training / validation seconds, init / best / final held-out numbers, warnings),
``run.json`` (the model and training configs and the sources: what ``resume`` rebuilds the run from), the
trainer's ``checkpoints/`` and ``metrics.jsonl``, and ``fit_cache/`` (fitted joint files).
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset

from handvla.atomic import atomic_dir, atomic_write_json, read_json
from handvla.config import load_config
from handvla.errors import CheckpointError, ConfigError, InputError
from handvla.hand.features import features_to_joints
from handvla.tokenizer.configuration import TokenizerConfig, TokenizerTrainConfig
from handvla.tokenizer.data import (
    BUILTIN,
    Batch,
    LoadedMotion,
    WindowSampler,
    builtin_motions,
    load_sources,
    make_clips,
    source_report,
    split_by_file,
    stats_range_warnings,
    warn,
)
from handvla.tokenizer.evaluation import evaluate_motions
from handvla.tokenizer.modeling import MotionTokenizer
from handvla.train.trainer import TrainConfig, Trainer

#: the run's definition in its folder (model and training configs, sources)
RUN_NAME = "run.json"
#: held-out evaluations (one JSON record per line), the best model's folder and its record, the run summary
VALIDATION_NAME = "validation.jsonl"
BEST_DIR = "best"
BEST_INFO_NAME = "best.json"
SUMMARY_NAME = "summary.json"
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
    summary: dict[str, Any] = field(default_factory=dict)  # the run's summary.json


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
        min_steps_ok=tc.min_steps_ok,
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
        self.trainer: Trainer | None = None  # set once the trainer exists: its clock
        self.validator: Validator | None = None
        self.eval_interval_s = 60.0
        self.codebook_init_s = 0.0

    def init_codebooks(self, model: MotionTokenizer) -> None:
        """k-means / lattice initialisation of the codebooks, then their EMA refinement."""
        tc = self.tc
        _init_codebooks(model, self.sampler, tc.kmeans_init_windows, tc.lattice_init_windows)
        _refine_codebooks(model, self.sampler, tc.vq_warmup_steps, tc.vq_warmup_batch)

    def _off_clock(self, t0: float) -> float:
        """Seconds since ``t0``, taken out of the trainer's training clock."""
        dt = time.perf_counter() - t0
        if self.trainer is not None:
            self.trainer.pause_clock(dt)
        return dt

    def before_step(self, model: MotionTokenizer, step: int) -> None:
        tc = self.tc
        self.quantize = step >= tc.vq_start_step
        if self.quantize and not all(bool(p.quantizer.initted) for p in model.parts.values()):
            t0 = time.perf_counter()
            self.init_codebooks(model)
            self.codebook_init_s += self._off_clock(t0)
        v = self.validator
        if v is None or not self.quantize:
            return
        now = self.trainer.elapsed_s if self.trainer is not None else 0.0
        if v.last_at is None or now - v.last_at >= self.eval_interval_s:
            t0 = time.perf_counter()
            v.evaluate(model, step, now, "init" if not v.history else "periodic")
            v.last_at = now
            self._off_clock(t0)

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


def _load_data(
    model_config: TokenizerConfig,
    tc: TokenizerTrainConfig,
    sources: list[str],
    fit_cache: Path,
    progress: bool,
) -> tuple[list[LoadedMotion], list[LoadedMotion], str]:
    """(training motions, held-out motions, how the held-out set was chosen)."""
    fps = model_config.fps
    motions = load_sources(
        sources, fps, tc.builtin_sequences, tc.builtin_seconds, tc.seed, fit_cache, progress=progress
    )
    if tc.val_sources:
        val = load_sources(tc.val_sources, fps, tc.val_builtin_sequences, tc.builtin_seconds, tc.seed + 1000,
                           fit_cache, progress=progress)  # fmt: skip
        held = {str(Path(m.group).resolve()) for m in val if m.kind != BUILTIN}
        train_m = [m for m in motions if m.kind == BUILTIN or str(Path(m.group).resolve()) not in held]
        return train_m, val, "val_sources"
    train_m, val = split_by_file(motions, tc.val_fraction, tc.seed)
    if val:
        return train_m, val, f"val_fraction {tc.val_fraction:g} of the files (seed {tc.seed})"
    if any(m.kind == BUILTIN for m in motions) and tc.val_builtin_sequences > 0:
        val = builtin_motions(tc.val_builtin_sequences, tc.builtin_seconds, tc.seed + 1000, fps)
        for m in val:
            m.source = f"builtin (validation, seed {tc.seed + 1000})"
        return train_m, val, "fresh built-in sequences (no real file to hold out)"
    return train_m, [], "none"


class Validator:
    """Held-out evaluation during training (``evaluate_motions``: MPJPE and PA-MPJPE in mm), each record
    appended to ``OUT/validation.jsonl``; the best model by ``metric`` is written atomically to ``OUT/best``
    (``save_pretrained`` + ``best.json``). Evaluation runs under a forked torch RNG, so validating does not
    change the training's random numbers (exact resume stays exact)."""

    def __init__(self, motions: list[LoadedMotion], out_dir: Path, metric: str, fresh: bool):
        self.motions, self.out_dir, self.metric = motions, out_dir, metric
        self.log = out_dir / VALIDATION_NAME
        self.best_dir = out_dir / BEST_DIR
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.eval_s = 0.0
        self.last_at: float | None = None  # training seconds of the last validation
        if fresh:
            self.log.unlink(missing_ok=True)
            shutil.rmtree(self.best_dir, ignore_errors=True)
        else:  # a resumed run keeps its history and best
            if self.log.is_file():
                self.history = [json.loads(x) for x in self.log.read_text().splitlines() if x.strip()]
            if (self.best_dir / BEST_INFO_NAME).is_file():
                self.best = read_json(self.best_dir / BEST_INFO_NAME, error=CheckpointError)

    def evaluate(self, model: MotionTokenizer, step: int, train_s: float, tag: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        was_training = model.training
        with torch.random.fork_rng(devices=[]):
            res = evaluate_motions(model, self.motions, check_range=False)  # checked once, at set-up
        model.train(was_training)
        rec = {
            "step": step,
            "tag": tag,
            "train_s": round(train_s, 2),
            **{k: round(float(res[k]), 4) for k in ("mpjpe_mm", "pa_mpjpe_mm", "mwte_mm") if k in res},
            "frames": res["frames"],
        }
        if self.best is None or rec[self.metric] < self.best[self.metric]:
            with atomic_dir(self.best_dir) as tmp:
                model.save_pretrained(tmp)
                atomic_write_json(tmp / BEST_INFO_NAME, rec)
            self.best = rec
            rec["best"] = True
        dt = time.perf_counter() - t0
        rec["eval_s"] = round(dt, 2)
        self.eval_s += dt
        self.history.append(rec)
        with open(self.log, "a") as f:
            f.write(json.dumps(rec) + "\n")
        return rec


def train(
    model_config: TokenizerConfig,
    train_config: TokenizerTrainConfig,
    sources: list[str],
    out_dir: str | Path,
    resume: bool = False,
    fit_cache: str | Path | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train (or resume) a tokenizer on ``sources`` ('builtin', joint files, parameter files, folders, globs,
    episode stores).

    Writes the run folder ``out_dir`` (see the module doc). ``resume`` continues the run there from its
    latest checkpoint with its own configs and sources (``model_config`` and ``sources`` are ignored); of
    ``train_config`` only ``max_minutes`` counts, the run's total time budget (raise it to give a spent run
    more time). A fresh run replaces the folder's earlier checkpoints, validation log and best model.
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    if resume:
        model_config, stored, sources = read_run(out_dir)
        train_config = stored.replace(max_minutes=train_config.max_minutes or stored.max_minutes)
    tc = train_config
    if tc.steps is None and tc.max_minutes is None:
        raise ConfigError("tokenizer training: give a number of steps or a time budget (max_minutes)")
    if tc.threads:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    fit_cache = Path(fit_cache) if fit_cache is not None else out_dir / "fit_cache"

    train_motions, val_motions, val_how = _load_data(model_config, tc, sources, fit_cache, progress)
    if not train_motions:
        raise InputError("tokenizer training", "data", "training motion left after holding out validation files",
                         "none (every file is held out)")  # fmt: skip
    data_rows = source_report(train_motions, "train") + source_report(val_motions, "val")
    for r in data_rows:
        print(f"data: {r['role']:5s} {r['source']}: {r['kind']}, {r['files']} file(s), {r['motions']} motion(s), "
              f"{r['frames']} frames ({r['seconds']:.1f} s at {model_config.fps:g} fps)", file=sys.stderr, flush=True)  # fmt: skip
    warnings = [w for m in train_motions + val_motions for w in m.warnings]
    t_feat = time.perf_counter()
    clips = make_clips(model_config, train_motions, tc.real_weight)
    sampler = WindowSampler(
        model_config,
        clips,
        seed=tc.seed,
        aug_yaw_deg=tc.aug_yaw_deg,
        aug_shift_m=tc.aug_shift_m,
        aug_speed=tc.aug_speed,
    )
    model = MotionTokenizer(model_config)
    if tc.freeze_encoder:
        for part in model.parts.values():
            part.encoder.requires_grad_(False)
    for part in model.parts.values():
        part.quantizer.training_updates = tc.codebook_updates
    stage = TokenizerStage(sampler, tc)
    trainer = Trainer(
        model,
        WindowStream(sampler, tc.batch_size),
        trainer_config(tc, out_dir, progress),
        loss_fn=stage.loss,
        before_step=stage.before_step,
        on_log=stage.on_log,
    )
    stage.trainer = trainer
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
    # a fresh start fits the model to the data (a resumed run loads all this from its checkpoint); the
    # codebook initialisation is set-up too, timed apart and outside the training budget
    fresh = trainer.latest_checkpoint() is None
    codebook_s = 0.0
    if fresh:
        model.set_normalizer(sampler.fit_normalizer())
        model.init_linear_skip(sampler.sample(tc.kmeans_init_windows).feats)
        if tc.vq_start_step == 0:
            print(
                "initialising the codebooks (set-up, outside the training budget) ...",
                file=sys.stderr,
                flush=True,
            )
            t_cb = time.perf_counter()
            stage.init_codebooks(model)
            codebook_s = time.perf_counter() - t_cb
    load_s, features_s = t_feat - t_start, time.perf_counter() - t_feat - codebook_s
    norm_where = {c.name: m.group or m.name for c, m in zip(clips, train_motions)}
    val_clips = make_clips(model_config, val_motions) if val_motions else []
    norm_where.update({m.name: m.group or m.name for m in val_motions})
    # against the normalisation stats just fitted (a resumed run's come with its checkpoint; checked before)
    stats_warnings = (
        stats_range_warnings(
            model_config.spec, model.normalizer, model_config.field_weights, clips + val_clips, norm_where
        )
        if fresh
        else []
    )
    warn(stats_warnings)
    warnings += stats_warnings
    validator = Validator(val_motions, out_dir, tc.best_metric, fresh=fresh) if val_motions else None
    if validator is None:
        msg = "no held-out validation data (give --val-data, or more than one real file): best = final"
        warn([msg])
        warnings.append(msg)
    stage.validator, stage.eval_interval_s = validator, tc.eval_minutes * 60
    setup_s = time.perf_counter() - t_start
    # always said (a silent set-up looked like a hung run)
    print(f"set-up {setup_s:.1f} s (codebook initialisation {codebook_s:.1f} s), not part of the training budget",
          file=sys.stderr, flush=True)  # fmt: skip
    summary = trainer.train(resume=resume)
    model.eval()
    steps = summary["steps_done"]
    if validator is not None and (not validator.history or validator.history[-1]["step"] != steps):
        validator.evaluate(model, steps, trainer.elapsed_s, "final")
    model.save_pretrained(out_dir)
    stage.codebook_init_s += codebook_s
    if summary["warning"]:
        warnings.append(summary["warning"])
    if validator is not None and validator.best and validator.history:
        final, best, metric = validator.history[-1], validator.best, tc.best_metric
        if final[metric] > 1.05 * best[metric]:
            msg = (
                f"held-out {metric} got worse with training: {final[metric]:.2f} at the last step vs "
                f"{best[metric]:.2f} at step {best['step']} ({best['tag']}); use {validator.best_dir} "
                f"({out_dir} holds the last step)"
            )
            warn([msg])
            warnings.append(msg)
    setup = {"setup_s": setup_s, "load_s": load_s, "features_s": features_s}
    run_summary = _run_summary(tc, out_dir, summary, stage, validator, data_rows, val_how, setup,
                               time.perf_counter() - t_start, warnings)  # fmt: skip
    atomic_write_json(out_dir / SUMMARY_NAME, run_summary)
    return TrainResult(
        out_dir,
        steps,
        tc.steps if tc.steps is not None else steps,  # by time only, the cosine ended at the last step
        summary["elapsed_minutes"] * 60,
        stage.losses,
        {**stage.last_log, "data_s": round(setup_s, 2)},
        STOPPED_BY[summary["stop_reason"]],
        summary["too_few_steps"],
        summary["warning"],
        summary=run_summary,
    )


def _run_summary(
    tc: TokenizerTrainConfig,
    out_dir: Path,
    summary: dict[str, Any],
    stage: TokenizerStage,
    validator: Validator | None,
    data_rows: list[dict],
    val_how: str,
    setup: dict[str, float],
    wall_s: float,
    warnings: list[str],
) -> dict[str, Any]:
    """The run's ``summary.json``: data, set-up / training / validation time, and init / best / final
    held-out numbers."""
    hist = validator.history if validator else []
    val: dict[str, Any] = {"held_out": val_how, "metric": tc.best_metric}
    if validator:
        val["files"] = sorted({m.group for m in validator.motions if m.kind != BUILTIN})
    if hist:
        val["init"] = next((h for h in hist if h["tag"] == "init"), None)
        val["final"] = hist[-1]
        val["best"] = validator.best
        val["best_dir"] = str(validator.best_dir)
        val["evaluations"] = len(hist)
    steps = summary["steps_done"]
    train_s = summary["elapsed_minutes"] * 60
    return {
        "out": str(out_dir),
        "best": str(validator.best_dir) if validator and validator.best else str(out_dir),
        "data": data_rows,
        "validation": val,
        "steps": steps,
        "schedule": "steps" if tc.steps is not None else "time",
        "budget_minutes": tc.max_minutes,
        "stopped_by": STOPPED_BY[summary["stop_reason"]],
        "train_s": round(train_s, 2),
        "steps_per_s": round(steps / train_s, 3) if train_s > 0 else None,
        # set-up (not part of the training budget): loading + fitting data, features + normalisation, codebooks
        **{k: round(v, 2) for k, v in setup.items()},
        "codebook_init_s": round(stage.codebook_init_s, 2),
        "validation_s": round(validator.eval_s, 2) if validator else 0.0,
        "wall_s": round(wall_s, 2),
        "final_loss": summary["final_loss"],
        "final_lr": summary["final_lr"],
        "too_few_steps": summary["too_few_steps"],
        "warnings": warnings,
    }


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
    "Validator",
    "WindowStream",
    "compute_loss",
    "read_run",
    "train",
    "trainer_config",
]
