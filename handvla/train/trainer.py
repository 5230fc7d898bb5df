"""One training loop for every stage: the motion tokenizer, the VLA's pretraining and robot post-training.

The trainer owns what the model must not know about: devices, the process group and the parallel wrapper
(DDP or FSDP2), bf16 autocast, gradient accumulation and clipping, the learning-rate schedule, the data
position, checkpoints that resume exactly, logging and the time budget.

Time budget: with ``max_minutes`` the run stops when its training time (wall seconds from the first step on,
summed over resumed sessions; one-off set-up before the first step is not counted) reaches the budget, and
the cosine schedule decays by whichever ends first, steps or time: after warm-up (always step-based) its
progress is max((step - warmup) / (max_steps - warmup), (t - t_warm) / (budget - t_warm)), t the training
seconds and t_warm those at the end of warm-up. So a time-limited run ends at the schedule's final LR
instead of stopping part-way down it. Checkpoints keep the clock, so a resumed run goes on with the time
left (raise ``max_minutes`` to give a spent run more). Without ``max_minutes`` the schedule is by step only
and the clock plays no part (exact resume stays exact).

Honest results: ``train()`` returns (and appends to metrics.jsonl as a final ``"event": "end"`` record) the
steps done, why it stopped, the final loss, the minutes spent, and a ``warning`` when the run did too few
steps for its numbers to mean much (fewer than ``min_steps_ok``, or under a quarter of ``max_steps`` because
the time budget ran out); the warning is also printed to stderr.

Exact resume: a checkpoint holds the model, optimiser, scheduler, step, the data position (epoch and
samples consumed in it, per rank) and every RNG state, taken after a whole optimiser step. A run killed
and resumed from step k replays steps k+1.. with the same batches and the same random numbers.

Data: a map-style ``Dataset`` is read in seeded, resumable epochs (``ResumableSampler``). A stream (an
``IterableDataset`` that yields ready batches forever, e.g. random windows of motion) is read in the
training process; its position is its own ``state_dict()`` / ``load_state_dict()``, kept in checkpoints
beside the RNG states (each rank's stream must draw its own batches).

Stage hooks (optional): ``before_step(model, step)`` runs at the start of every optimiser step, inside the
training clock (work the loss depends on, e.g. the tokenizer's codebook initialisation at a given step);
``on_log(model, record)`` sees every training log record before it is written and may add entries (e.g.
codebook usage). Both get the unwrapped model.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler
from tqdm.auto import tqdm

from handvla.config import ConfigModel
from handvla.errors import CheckpointError, ConfigError
from handvla.train.distributed import DistInfo, all_reduce_mean, barrier, init_distributed, unwrap, wrap_model


class TrainConfig(ConfigModel):
    """Options shared by every training stage (YAML section ``train``)."""

    output_dir: str = Field(..., description="run folder: checkpoints/, metrics.jsonl, tensorboard/")
    max_steps: int | None = Field(
        1000, gt=0, description="optimiser steps in all; None: as many as the time budget (max_minutes) allows"
    )
    max_minutes: float | None = Field(
        None, gt=0,
        description="training-time budget in minutes (wall time from the first step, summed over resumed "
        "sessions): stop and checkpoint when it is spent; the cosine schedule reaches its end by then",
    )
    min_steps_ok: int = Field(
        200, ge=0, description="fewer optimiser steps than this in all and the result carries a too-few-steps warning"
    )
    batch_size: int = Field(8, gt=0, description="samples per micro-batch per process")
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimiser step")
    lr: float = Field(1e-4, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr as a fraction of lr (cosine)")
    warmup_steps: int = Field(50, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = Field(1.0, gt=0)
    precision: Literal["fp32", "bf16"] = "fp32"
    distributed: Literal["auto", "none", "ddp", "fsdp2"] = "auto"
    device: str = Field("auto", description="'auto', 'cpu' or 'cuda'")
    seed: int = 0
    shuffle: bool = True
    num_workers: int = Field(0, ge=0)
    log_every: int = Field(10, gt=0)
    save_every: int = Field(200, gt=0)
    save_minutes: float | None = Field(
        None, gt=0, description="also checkpoint when this many training minutes passed since the last checkpoint"
    )
    eval_every: int | None = Field(None, gt=0)
    keep_checkpoints: int = Field(2, gt=0)
    tensorboard: bool = True
    progress: bool = True

    @model_validator(mode="after")
    def _has_an_end(self) -> TrainConfig:
        if self.max_steps is None and self.max_minutes is None:
            raise ConfigError("train: field 'max_steps': a run needs max_steps, max_minutes or both, got neither")
        return self


#: the clock of the time budget and of the reported durations (seconds; tests replace it with a fake one)
_now: Callable[[], float] = time.perf_counter

#: logged losses averaged into the result's ``final_loss``
FINAL_LOSS_WINDOW = 10

#: a run stopped by its time budget before this fraction of ``max_steps`` gets a too-few-steps warning
MIN_BUDGET_FRACTION = 0.25


def budget_warning(steps: int, max_steps: int | None, stop_reason: str, min_steps_ok: int,
                   budget_minutes: float | None) -> str | None:
    """The plain-language warning for a run that did too few optimiser steps, or None when it did enough.

    Too few: fewer than ``min_steps_ok`` in all, or fewer than ``MIN_BUDGET_FRACTION`` x ``max_steps``
    because the time budget (``budget_minutes``, minutes) ran out (``max_steps`` None: a run by time only).
    """
    cut = stop_reason == "time_budget" and max_steps is not None and steps < MIN_BUDGET_FRACTION * max_steps
    if steps >= min_steps_ok and not cut:
        return None
    if stop_reason == "time_budget":
        planned = "" if max_steps is None else f" of its {max_steps} planned"
        share = "" if max_steps is None else f" ({100 * steps / max_steps:.2g}%)"
        what = (f"training did only {steps}{planned} optimiser steps{share} "
                f"before its time budget of {budget_minutes:g} min ran out")
    else:
        what = f"training was planned for only {max_steps} optimiser steps"
    if steps < min_steps_ok:
        what += f" (a meaningful run needs at least {min_steps_ok}, the min_steps_ok setting)"
    return what + ": the model is barely trained and metrics measured on it do not mean much"


class ResumableSampler(Sampler[int]):
    """Seeded permutation per epoch, sharded by rank, that can start part-way through an epoch."""

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.n, self.seed, self.rank, self.world, self.shuffle = n, seed, rank, world_size, shuffle
        self.epoch, self.start = 0, 0

    def per_rank(self) -> int:
        return math.ceil(self.n / self.world)

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank() * self.world
        order = (order * math.ceil(total / max(self.n, 1)))[:total]  # pad by wrapping so ranks agree
        mine = order[self.rank :: self.world]
        return iter(mine[self.start :])

    def __len__(self) -> int:
        return self.per_rank() - self.start


def default_loss(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    out = model(**batch)
    return out.loss, {}


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _unshare(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied embeddings and LM head): give each key its own
    copy. Loading assigns every key, so tied parameters come back tied and equal."""
    seen: set[int] = set()
    out = {}
    for k, v in state.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        out[k] = v.clone().contiguous() if ptr in seen else v.contiguous()
        if ptr != -1:
            seen.add(ptr)
    return out


class Trainer:
    """Train ``model`` on ``dataset`` (map-style, or a stream of batches: see the module doc) with
    ``loss_fn(model, batch) -> (loss, metrics)``; ``before_step`` and ``on_log`` are the stage hooks.

    The trainer's own checkpoints under ``output_dir/checkpoints`` are what ``resume`` reads; the caller
    writes the deliverable model (e.g. ``save_pretrained``) from ``unwrap(trainer.model)``.
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset,
        config: TrainConfig,
        collate_fn: Callable | None = None,
        loss_fn: Callable = default_loss,
        eval_fn: Callable[[nn.Module, int], dict[str, float]] | None = None,
        layer_types: tuple[type, ...] = (),
        param_groups: Callable[[nn.Module], list[dict]] | None = None,
        dist: DistInfo | None = None,
        before_step: Callable[[nn.Module, int], None] | None = None,
        on_log: Callable[[nn.Module, dict[str, Any]], None] | None = None,
    ):
        t_init = _now()
        self.cfg = config
        # training seconds (the time budget's clock): before this session, and at the last finished step;
        # _warmup_end_s: training seconds when warm-up ended (the time part of the schedule starts there)
        self._elapsed_before_s, self.elapsed_s = 0.0, 0.0
        self._warmup_end_s: float | None = 0.0 if config.warmup_steps == 0 else None
        self._loop_t0: float | None = None
        self._saved_at_s = 0.0  # training seconds at the last checkpoint (for save_minutes)
        self._recent_losses: deque[float] = deque(maxlen=FINAL_LOSS_WINDOW)  # the last logged losses
        # a caller that already joined the process group passes its DistInfo (set up once per process)
        self.info: DistInfo = dist if dist is not None else init_distributed(config.device)
        torch.manual_seed(config.seed)
        self.out = Path(config.output_dir)
        self.ckpt_root = self.out / "checkpoints"
        self.model = wrap_model(model.to(self.info.device), config.distributed, self.info, layer_types)
        params = param_groups(unwrap(self.model)) if param_groups else [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, betas=config.adam_betas, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.dataset = dataset
        self.stream = isinstance(dataset, IterableDataset)  # ready batches, read here (see the module doc)
        self.sampler: ResumableSampler | None = None
        self.loader: DataLoader | None = None
        if not self.stream:
            self.sampler = ResumableSampler(len(dataset), config.seed, self.info.rank, self.info.world_size, config.shuffle)
            self.loader = DataLoader(
                dataset, batch_size=config.batch_size, sampler=self.sampler, collate_fn=collate_fn,
                num_workers=config.num_workers, drop_last=False,
                # its own generator: creating an iterator must not draw from the global RNG (exact resume)
                generator=torch.Generator().manual_seed(config.seed),
            )
        self.loss_fn, self.eval_fn = loss_fn, eval_fn
        self.before_step, self.on_log = before_step, on_log
        self.step, self.epoch, self.consumed = 0, 0, 0  # consumed: samples of this epoch on this rank
        self._tb = None
        self._init_s = _now() - t_init

    # -- schedule -------------------------------------------------------------------------------------
    def _lr_factor(self, step: int) -> float:
        c = self.cfg
        if c.warmup_steps and step < c.warmup_steps:
            return (step + 1) / c.warmup_steps
        if c.schedule == "constant":
            return 1.0
        t = 0.0 if c.max_steps is None else min(1.0, (step - c.warmup_steps) / max(1, c.max_steps - c.warmup_steps))
        if c.max_minutes is not None:  # ... or by the deadline, whichever comes first
            t_warm = self._warmup_end_s or 0.0
            span = c.max_minutes * 60 - t_warm
            t = max(t, 1.0 if span <= 0 else min(1.0, (self.elapsed_s - t_warm) / span))
        return c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    # -- data -----------------------------------------------------------------------------------------
    def _batches(self) -> Iterator[Any]:
        if self.stream:
            yield from self.dataset
            raise RuntimeError(f"the training stream {type(self.dataset).__name__} ended; a stream must not end")
        while True:
            self.sampler.set_position(self.epoch, self.consumed)
            for batch in self.loader:
                n = len(next(iter(batch.values()))) if isinstance(batch, dict) else len(batch)
                self.consumed += n
                yield batch
            self.epoch, self.consumed = self.epoch + 1, 0

    # -- checkpoints ----------------------------------------------------------------------------------
    def latest_checkpoint(self) -> Path | None:
        pointer = self.ckpt_root / "latest"
        if not pointer.exists():
            return None
        path = self.ckpt_root / pointer.read_text().strip()
        if not (path / "trainer_state.json").exists():
            raise CheckpointError(f"{pointer} names {path}, which is not a complete checkpoint")
        return path

    def save_checkpoint(self) -> Path:

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer, options=opts)
        name = f"step-{self.step:08d}"
        final = self.ckpt_root / name
        mine = {"rng": _rng_state(), "epoch": self.epoch, "consumed": self.consumed}
        if self.stream and hasattr(self.dataset, "state_dict"):
            mine["stream"] = self.dataset.state_dict()
        rng = [None] * self.info.world_size
        if self.info.enabled:
            torch.distributed.all_gather_object(rng, mine)
        else:
            rng = [mine]
        if self.info.is_main:
            tmp = self.ckpt_root / f".tmp-{name}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)

            save_file(_unshare(model_sd), str(tmp / "model.safetensors"))
            torch.save(optim_sd, tmp / "optimizer.pt")
            torch.save({"scheduler": self.scheduler.state_dict(), "ranks": rng}, tmp / "state.pt")
            (tmp / "trainer_state.json").write_text(json.dumps({
                "step": self.step, "world_size": self.info.world_size, "config": self.cfg.model_dump(),
                # seconds of training so far (the time budget's clock) and at the end of warm-up
                "elapsed_s": self._training_seconds(), "warmup_end_s": self._warmup_end_s,
                "recent_losses": list(self._recent_losses),
            }, indent=2))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            pointer_tmp = self.ckpt_root / ".latest.tmp"
            pointer_tmp.write_text(name)
            os.replace(pointer_tmp, self.ckpt_root / "latest")
            old = sorted(p for p in self.ckpt_root.glob("step-*") if p.is_dir())
            for p in old[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(p, ignore_errors=True)
        self._saved_at_s = self._training_seconds()
        barrier(self.info)
        return final

    def load_checkpoint(self, path: Path) -> None:

        try:
            state = json.loads((path / "trainer_state.json").read_text())
            model_sd = load_file(str(path / "model.safetensors"))
            optim_sd = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
            extra = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
        except Exception as e:  # safetensors, pickle and json each raise their own types
            raise CheckpointError(f"{path}: cannot read the training checkpoint ({type(e).__name__}: {e})") from None
        if state["world_size"] != self.info.world_size:
            raise CheckpointError(
                f"{path}: saved with {state['world_size']} processes, resumed with {self.info.world_size}; "
                "exact resume needs the same number"
            )
        set_state_dict(
            self.model, self.optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd,
            options=StateDictOptions(full_state_dict=True),
        )
        self.scheduler.load_state_dict(extra["scheduler"])
        mine = extra["ranks"][self.info.rank]
        self.step, self.epoch, self.consumed = state["step"], mine["epoch"], mine["consumed"]
        _set_rng_state(mine["rng"])
        if "stream" in mine:
            self.dataset.load_state_dict(mine["stream"])
        # older checkpoints lack the clock: their runs start the budget afresh
        self._elapsed_before_s = self.elapsed_s = self._saved_at_s = float(state.get("elapsed_s", 0.0))
        self._warmup_end_s = state.get("warmup_end_s", 0.0 if self.step >= self.cfg.warmup_steps else None)
        self._recent_losses = deque(state.get("recent_losses", []), maxlen=FINAL_LOSS_WINDOW)

    def pause_clock(self, seconds: float) -> None:
        """Leave ``seconds`` that a hook just spent on work outside training (a validation pass, a one-off
        initialisation) out of the training clock, so the time budget and the schedule count steps only."""
        if self._loop_t0 is not None:
            self._loop_t0 += seconds

    def _training_seconds(self) -> float:
        """Training seconds now: before this session plus this session's since its first step."""
        if self._loop_t0 is None:
            return self.elapsed_s
        return self._elapsed_before_s + _now() - self._loop_t0

    # -- logging --------------------------------------------------------------------------------------
    def _log(self, record: dict[str, Any], tensorboard: bool = True) -> None:
        if not self.info.is_main:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None and tensorboard:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, record["step"])

    def _open_logs(self, resumed: bool) -> None:
        if not self.info.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        log = self.out / "metrics.jsonl"
        if log.exists():
            # keep the curve clean: drop records past the step we resumed from, and earlier sessions' end records
            keep = [
                line for line in log.read_text().splitlines()
                if resumed and json.loads(line).get("step", 0) <= self.step and "event" not in json.loads(line)
            ]
            log.write_text("".join(line + "\n" for line in keep))
        if self.cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out / "tensorboard"))
            except ImportError:
                self._tb = None

    # -- the loop -------------------------------------------------------------------------------------
    def _agreed(self, value: float) -> float:
        """``value`` averaged over the ranks (one number all of them act on: the clock drives the LR)."""
        if not self.info.enabled:
            return value
        return float(all_reduce_mean(torch.tensor(value, dtype=torch.float64, device=self.info.device), self.info))

    def train(self, resume: bool = False) -> dict[str, Any]:
        """Train until ``max_steps`` or the time budget, whichever comes first; returns the run's summary.

        Keys: ``step`` (= ``steps_done``, all sessions), ``steps_done_this_run``, ``max_steps`` (None: a run
        by time only), ``loss`` and
        ``last_loss`` (the last step's), ``final_loss`` (mean of the last logged losses; None before any),
        ``final_lr``, ``stopped_early`` and ``stopped_by_time`` (the time budget ended it before max_steps),
        ``stop_reason`` ('max_steps' or 'time_budget'), ``elapsed_minutes`` (training minutes, all sessions:
        the budget's clock), ``budget_minutes`` (``max_minutes``), ``minutes`` (wall minutes of this call,
        set-up included), ``setup_seconds`` (this call's set-up before its first step, trainer construction
        included), ``too_few_steps`` and ``warning`` (a sentence, or None).
        """
        t_call = _now()
        resumed = False
        if resume:
            ckpt = self.latest_checkpoint()
            if ckpt is not None:
                self.load_checkpoint(ckpt)
                resumed = True
        self._open_logs(resumed)
        cfg, dev = self.cfg, self.info.device
        budget_s = cfg.max_minutes * 60 if cfg.max_minutes is not None else None
        autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
        last_loss = float("nan")
        step0 = self.step
        batches = self._batches()
        bar = None
        if cfg.progress and self.info.is_main:

            bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        self.model.train()
        # a resumed run whose budget is already spent does no step (every rank read the same clock)
        out_of_time = budget_s is not None and self.elapsed_s >= budget_s
        self._loop_t0 = _now()
        setup_s, self._init_s = self._loop_t0 - t_call + self._init_s, 0.0  # construction counts once
        while (cfg.max_steps is None or self.step < cfg.max_steps) and not out_of_time:
            t0 = _now()
            if self.before_step is not None:
                self.before_step(unwrap(self.model), self.step)
            metrics_sum: dict[str, float] = {}
            loss_sum = torch.zeros((), device=dev)
            for _ in range(cfg.grad_accum):
                batch = _to_device(next(batches), dev)
                with autocast:
                    loss, metrics = self.loss_fn(self.model, batch)
                (loss / cfg.grad_accum).backward()
                loss_sum += loss.detach() / cfg.grad_accum
                for k, v in metrics.items():
                    metrics_sum[k] = metrics_sum.get(k, 0.0) + float(v) / cfg.grad_accum
            grad_norm = None
            if cfg.grad_clip:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
            self.optimizer.step()
            self.step += 1
            if budget_s is not None:  # the clock the schedule and the stop read, the same on every rank
                self.elapsed_s = self._agreed(self._training_seconds())
                out_of_time = self.elapsed_s >= budget_s
            else:
                self.elapsed_s = self._training_seconds()
            if self._warmup_end_s is None and self.step >= cfg.warmup_steps:
                self._warmup_end_s = self.elapsed_s
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            last_loss = float(all_reduce_mean(loss_sum, self.info))
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps or out_of_time:
                rec = {"step": self.step, "loss": last_loss, "lr": self.scheduler.get_last_lr()[0],
                       "step_time_s": _now() - t0, **metrics_sum}
                if grad_norm is not None:
                    rec["grad_norm"] = grad_norm
                if self.on_log is not None:
                    self.on_log(unwrap(self.model), rec)
                self._log(rec)
                self._recent_losses.append(last_loss)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.4f}")
            if cfg.eval_every and self.eval_fn and self.step % cfg.eval_every == 0:
                self.model.eval()
                with torch.no_grad():
                    self._log({"step": self.step, **{f"eval/{k}": v for k, v in self.eval_fn(unwrap(self.model), self.step).items()}})
                self.model.train()
            if self.step % cfg.save_every == 0 or out_of_time or self._save_due():
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        if self.step == cfg.max_steps and (self.latest_checkpoint() is None or self.latest_checkpoint().name != f"step-{self.step:08d}"):
            self.save_checkpoint()
        self.elapsed_s = self._training_seconds()
        self._loop_t0 = None
        result = self._summary(last_loss, step0, setup_s, _now() - t_call)
        self._log({"event": "end", **{k: v for k, v in result.items() if k != "loss"}}, tensorboard=False)
        if self._tb is not None:
            self._tb.close()
        if result["warning"] and self.info.is_main:
            print(f"WARNING: {result['warning']}", file=sys.stderr, flush=True)
        return result

    def _save_due(self) -> bool:
        """``save_minutes`` of training passed since the last checkpoint (every rank decides alike)."""
        if self.cfg.save_minutes is None:
            return False
        return self._agreed(self._training_seconds() - self._saved_at_s) >= self.cfg.save_minutes * 60

    def _summary(self, last_loss: float, step0: int, setup_s: float, call_s: float) -> dict[str, Any]:
        """The result of ``train()`` (see there); ``step0`` the step this call started at, times in seconds."""
        cfg = self.cfg
        stop_reason = "max_steps" if cfg.max_steps is not None and self.step >= cfg.max_steps else "time_budget"
        warning = budget_warning(self.step, cfg.max_steps, stop_reason, cfg.min_steps_ok, cfg.max_minutes)
        recent = list(self._recent_losses)
        return {
            "step": self.step,
            "loss": last_loss,
            "steps_done": self.step,
            "steps_done_this_run": self.step - step0,
            "max_steps": cfg.max_steps,
            "final_loss": sum(recent) / len(recent) if recent else None,
            "last_loss": recent[-1] if recent else None,
            "final_lr": self.scheduler.get_last_lr()[0],
            "stopped_early": stop_reason != "max_steps",
            "stopped_by_time": stop_reason == "time_budget",
            "stop_reason": stop_reason,
            "elapsed_minutes": self.elapsed_s / 60,
            "budget_minutes": cfg.max_minutes,
            "minutes": call_s / 60,
            "setup_seconds": setup_s,
            "too_few_steps": warning is not None,
            "warning": warning,
        }
