"""Training the motion tokenizer.

Loss per batch of windows (B, 16, D), over real (not padding) valid frames:
  smooth-L1 reconstruction of the normalised features
  + ``joint_loss_weight`` x mean Euclidean joint error in metres (decoded features -> hand parameters ->
    21 joints through the hand model's differentiable forward kinematics, with each clip's betas)
  + ``commitment_weight`` x commitment loss of the quantisers.
AdamW, linear warm-up then cosine decay to ``min_lr_ratio`` x lr, gradient clipping. Codebooks follow
EMAs (not the optimiser); they are initialised by k-means on ``kmeans_init_windows`` encoded windows when
quantisation starts (step ``vq_start_step``; before it the model trains as a plain auto-encoder).

Budget: ``steps`` fixes the schedule; ``max_minutes`` bounds the training time of this call (k-means
init and steps; loading and fitting data are not counted). With only ``max_minutes`` the schedule length
is estimated after 10 quantised steps from their speed (and saved, so a resumed run keeps it). A run stops when its steps
are done or its minutes are spent, and always leaves a loadable model (``save_pretrained`` layout) and a
resumable checkpoint in ``out_dir``.

Resume is exact: the checkpoint holds model (with codebook EMAs), optimiser, step, schedule, and the
torch / numpy / python RNG states; the data are rebuilt deterministically from the same sources.
"""

from __future__ import annotations

import io
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from handvla.atomic import atomic_write_bytes
from handvla.errors import CheckpointError, ConfigError
from handvla.tokenizer.configuration import TokenizerConfig, TrainConfig
from handvla.tokenizer.data import Batch, WindowSampler, load_sources, make_clips
from handvla.tokenizer.modeling import MotionTokenizer, features_to_joints

CHECKPOINT_DIR = "checkpoint"
STATE_NAME = "training_state.pt"
LOG_NAME = "train_log.jsonl"
CALIBRATION_STEPS = 10


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    schedule_steps: int | None
    elapsed_s: float
    losses: list[float] = field(default_factory=list)  # loss of every step run in this call
    last_log: dict[str, Any] = field(default_factory=dict)
    stopped_by: str = "steps"  # 'steps', 'time' or 'stop_at_step'


def lr_at(step: int, cfg: TrainConfig, schedule_steps: int | None) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine from lr to min_lr_ratio x lr at ``schedule_steps``
    (constant lr while the schedule length is still unknown)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if schedule_steps is None:
        return cfg.lr
    span = max(schedule_steps - cfg.warmup_steps, 1)
    frac = min(max((step - cfg.warmup_steps) / span, 0.0), 1.0)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def compute_loss(
    model: MotionTokenizer, batch: Batch, cfg: TrainConfig, quantize: bool = True
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
        pred = features_to_joints(mc, model.denormalize(out.recon), batch.betas, hand)
        with torch.no_grad():
            gt = features_to_joints(mc, batch.feats, batch.betas, hand)
        dist = ((pred - gt).square().sum(-1) + 1e-12).sqrt()  # (B, W, 21) metres
        joint = (dist * m).sum() / (n * dist.shape[-1])
        loss = loss + cfg.joint_loss_weight * joint
        parts["joint_mm"] = joint.item() * 1000.0
    parts["loss"] = loss.item()
    parts["_codes"] = out.codes
    return loss, parts


def _rng_state(sampler: WindowSampler) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": sampler.rng.bit_generator.state,
        "python": random.getstate(),
    }


def _set_rng_state(sampler: WindowSampler, st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    sampler.rng.bit_generator.state = st["numpy"]
    random.setstate(_to_tuple(st["python"]))


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no training checkpoint to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: name it (weights_only refuses code)
        raise CheckpointError(
            f"{path}: not a readable training checkpoint ({type(e).__name__}: {e})"
        ) from None


def _codebook_stats(model: MotionTokenizer, codes: dict[str, torch.Tensor]) -> dict[str, float]:
    out = {}
    for part, c in codes.items():
        st = model.parts[part].quantizer.usage_stats(c)
        for k, v in st.items():
            out[f"{part}_{k}"] = round(v, 4)
    return out


def train(
    model_config: TokenizerConfig,
    train_config: TrainConfig,
    sources: list[str],
    out_dir: str | Path,
    resume: bool = False,
    fit_cache: str | Path | None = None,
    progress: bool = True,
    stop_at_step: int | None = None,
    log_fn=None,
) -> TrainResult:
    """Train (or resume) a tokenizer on ``sources`` ('builtin', joint files, parameter files, folders).

    Writes to ``out_dir``: ``config.json`` + ``model.safetensors`` (the model), ``checkpoint/`` (resumable
    state), ``train_log.jsonl`` (one line per ``log_every`` steps). ``stop_at_step`` ends the call after
    that step without changing the schedule (for tests and staged runs).
    """
    from tqdm import tqdm

    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    ckpt_path = out_dir / CHECKPOINT_DIR / STATE_NAME
    state = None
    if resume:
        state = load_checkpoint(ckpt_path)
        model_config = TokenizerConfig.from_dict(state["model_config"], str(ckpt_path))
        budget = train_config.max_minutes
        train_config = TrainConfig.from_dict(state["train_config"], str(ckpt_path))
        train_config.max_minutes = budget  # a new session brings its own time budget
        sources = list(state["sources"])
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
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc.lr, betas=tc.adam_betas, weight_decay=tc.weight_decay)
    step, schedule_steps, elapsed_before = 0, tc.steps, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, schedule_steps = state["step"], state["schedule_steps"]
        elapsed_before = state.get("elapsed_s", 0.0)
        _set_rng_state(sampler, state["rng"])
    else:
        model.set_normalizer(sampler.fit_normalizer())
        model.init_linear_skip(sampler.sample(tc.kmeans_init_windows).feats)
    data_s = time.perf_counter() - t_start
    t_budget = time.perf_counter()  # the time budget covers training (k-means init and steps), not data
    model.train()

    def checkpoint() -> None:
        save_checkpoint(
            ckpt_path,
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "step": step,
                "schedule_steps": schedule_steps,
                "elapsed_s": elapsed_before + time.perf_counter() - t_start,
                "rng": _rng_state(sampler),
                "model_config": model_config.to_dict(),
                "train_config": tc.to_dict(),
                "sources": list(sources),
            },
        )

    budget_s = tc.max_minutes * 60.0 if tc.max_minutes else None
    total_for_bar = schedule_steps or 0
    bar = tqdm(
        total=total_for_bar or None,
        initial=step,
        desc="tokenizer",
        disable=not progress,
        unit="step",
        dynamic_ncols=True,
    )
    log_path = out_dir / LOG_NAME
    out_dir.mkdir(parents=True, exist_ok=True)
    losses: list[float] = []
    last_log: dict[str, Any] = {}
    last_ckpt_t = time.perf_counter()
    calib_t0 = calib_step0 = None
    stopped_by = "steps"
    while True:
        if schedule_steps is not None and step >= schedule_steps:
            break
        if stop_at_step is not None and step >= stop_at_step:
            stopped_by = "stop_at_step"
            break
        now = time.perf_counter()
        if budget_s is not None and now - t_budget >= budget_s:
            stopped_by = "time"
            break
        quantize = step >= tc.vq_start_step
        if quantize and not all(bool(p.quantizer.initted) for p in model.parts.values()):
            _init_codebooks(model, sampler, tc.kmeans_init_windows, tc.lattice_init_windows)
            _refine_codebooks(model, sampler, tc.vq_warmup_steps, tc.vq_warmup_batch)
            now = time.perf_counter()
        # schedule length from the speed of the first quantised steps (time budget only)
        if schedule_steps is None and quantize:
            if calib_t0 is None:
                calib_t0, calib_step0 = now, step
            elif step - calib_step0 >= CALIBRATION_STEPS:
                per_step = (now - calib_t0) / (step - calib_step0)
                remaining = budget_s - (now - t_budget)
                schedule_steps = max(step + int(remaining / per_step), step + 1)
                bar.total = schedule_steps
        lr = lr_at(step, tc, schedule_steps)
        for g in opt.param_groups:
            g["lr"] = lr
        batch = sampler.sample(tc.batch_size)
        loss, parts = compute_loss(model, batch, tc, quantize)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip) if tc.grad_clip > 0 else None
        opt.step()
        step += 1
        losses.append(parts["loss"])
        bar.update(1)
        bar.set_postfix(loss=f"{parts['loss']:.4f}", joint_mm=f"{parts.get('joint_mm', float('nan')):.2f}")
        if step % tc.log_every == 0 or step == 1:
            codes = parts.pop("_codes")
            last_log = {
                "step": step,
                "lr": lr,
                **{k: round(v, 6) for k, v in parts.items()},
                "grad_norm": None if gnorm is None else round(float(gnorm), 4),
                "elapsed_s": round(elapsed_before + time.perf_counter() - t_start, 2),
                **_codebook_stats(model, codes),
            }
            with open(log_path, "a") as f:
                f.write(json.dumps(last_log) + "\n")
            if log_fn is not None:
                log_fn(last_log)
        if step % tc.checkpoint_every == 0 or time.perf_counter() - last_ckpt_t > tc.checkpoint_minutes * 60:
            checkpoint()
            last_ckpt_t = time.perf_counter()
    bar.close()
    checkpoint()
    model.eval()
    model.save_pretrained(out_dir)
    elapsed = elapsed_before + time.perf_counter() - t_start
    last_log = {**last_log, "data_s": round(data_s, 2)}
    return TrainResult(out_dir, step, schedule_steps, elapsed, losses, last_log, stopped_by)


@torch.no_grad()
def _init_codebooks(
    model: MotionTokenizer, sampler: WindowSampler, n_windows: int, n_lattice_windows: int | None = None
) -> None:
    """Initialisation of every part's codebooks on the latents of ``n_windows`` windows (k-means parts)
    or ``n_lattice_windows`` (lattice parts)."""
    need = {p: (n_lattice_windows or n_windows) if m.quantizer.init_method == "lattice" else n_windows
            for p, m in model.parts.items()}
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


__all__ = ["TrainResult", "compute_loss", "load_checkpoint", "lr_at", "train"]
