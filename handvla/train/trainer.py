"""One training loop for every stage (tokenizer-free: the VLA's pretraining and robot post-training).

The trainer owns what the model must not know about: devices, the process group and the parallel wrapper
(DDP or FSDP2), bf16 autocast, gradient accumulation and clipping, the learning-rate schedule, the data
position, checkpoints that resume exactly, logging and the time budget.

Exact resume: a checkpoint holds the model, optimiser, scheduler, step, the data position (epoch and
samples consumed in it, per rank) and every RNG state, taken after a whole optimiser step. A run killed
and resumed from step k replays steps k+1.. with the same batches and the same random numbers.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from handvla.errors import CheckpointError
from handvla.train.distributed import DistInfo, all_reduce_mean, barrier, init_distributed, unwrap, wrap_model


class TrainConfig(BaseModel):
    """Options shared by every training stage (YAML section ``train``)."""

    model_config = ConfigDict(extra="forbid")

    output_dir: str = Field(..., description="run folder: checkpoints/, metrics.jsonl, tensorboard/")
    max_steps: int = Field(1000, gt=0, description="optimiser steps in all")
    max_minutes: float | None = Field(None, gt=0, description="stop (and checkpoint) after this wall time")
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
    eval_every: int | None = Field(None, gt=0)
    keep_checkpoints: int = Field(2, gt=0)
    tensorboard: bool = True
    progress: bool = True


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
    """Train ``model`` on ``dataset`` with ``loss_fn(model, batch) -> (loss, metrics)``.

    ``save_model(model, dir)`` writes the deliverable model (default: ``save_pretrained`` when the model has
    it); the trainer's own checkpoints under ``output_dir/checkpoints`` are what ``resume`` reads.
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
    ):
        self.cfg = config
        self.info: DistInfo = init_distributed(config.device)
        torch.manual_seed(config.seed)
        self.out = Path(config.output_dir)
        self.ckpt_root = self.out / "checkpoints"
        self.model = wrap_model(model.to(self.info.device), config.distributed, self.info, layer_types)
        params = param_groups(unwrap(self.model)) if param_groups else [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, betas=config.adam_betas, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.dataset = dataset
        self.sampler = ResumableSampler(len(dataset), config.seed, self.info.rank, self.info.world_size, config.shuffle)
        self.loader = DataLoader(
            dataset, batch_size=config.batch_size, sampler=self.sampler, collate_fn=collate_fn,
            num_workers=config.num_workers, drop_last=False,
            # its own generator: creating an iterator must not draw from the global RNG (exact resume)
            generator=torch.Generator().manual_seed(config.seed),
        )
        self.loss_fn, self.eval_fn = loss_fn, eval_fn
        self.step, self.epoch, self.consumed = 0, 0, 0  # consumed: samples of this epoch on this rank
        self._tb = None

    # -- schedule -------------------------------------------------------------------------------------
    def _lr_factor(self, step: int) -> float:
        c = self.cfg
        if c.warmup_steps and step < c.warmup_steps:
            return (step + 1) / c.warmup_steps
        if c.schedule == "constant":
            return 1.0
        t = min(1.0, (step - c.warmup_steps) / max(1, c.max_steps - c.warmup_steps))
        return c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    # -- data -----------------------------------------------------------------------------------------
    def _batches(self) -> Iterator[Any]:
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
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer, options=opts)
        name = f"step-{self.step:08d}"
        final = self.ckpt_root / name
        rng = [None] * self.info.world_size
        if self.info.enabled:
            torch.distributed.all_gather_object(rng, {"rng": _rng_state(), "epoch": self.epoch, "consumed": self.consumed})
        else:
            rng = [{"rng": _rng_state(), "epoch": self.epoch, "consumed": self.consumed}]
        if self.info.is_main:
            tmp = self.ckpt_root / f".tmp-{name}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            from safetensors.torch import save_file

            save_file(_unshare(model_sd), str(tmp / "model.safetensors"))
            torch.save(optim_sd, tmp / "optimizer.pt")
            torch.save({"scheduler": self.scheduler.state_dict(), "ranks": rng}, tmp / "state.pt")
            (tmp / "trainer_state.json").write_text(
                json.dumps({"step": self.step, "world_size": self.info.world_size, "config": self.cfg.model_dump()}, indent=2)
            )
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            pointer_tmp = self.ckpt_root / ".latest.tmp"
            pointer_tmp.write_text(name)
            os.replace(pointer_tmp, self.ckpt_root / "latest")
            old = sorted(p for p in self.ckpt_root.glob("step-*") if p.is_dir())
            for p in old[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(p, ignore_errors=True)
        barrier(self.info)
        return final

    def load_checkpoint(self, path: Path) -> None:
        from safetensors.torch import load_file
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

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

    # -- logging --------------------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        if not self.info.is_main:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, record["step"])

    def _open_logs(self, resumed: bool) -> None:
        if not self.info.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        log = self.out / "metrics.jsonl"
        if log.exists():
            # keep the curve clean: drop records past the step we resumed from
            keep = [line for line in log.read_text().splitlines() if resumed and json.loads(line).get("step", 0) <= self.step]
            log.write_text("".join(line + "\n" for line in keep))
        if self.cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out / "tensorboard"))
            except ImportError:
                self._tb = None

    # -- the loop -------------------------------------------------------------------------------------
    def train(self, resume: bool = False) -> dict[str, Any]:
        resumed = False
        if resume:
            ckpt = self.latest_checkpoint()
            if ckpt is not None:
                self.load_checkpoint(ckpt)
                resumed = True
        self._open_logs(resumed)
        cfg, dev = self.cfg, self.info.device
        autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
        start_time, last_loss = time.time(), float("nan")
        batches = self._batches()
        bar = None
        if cfg.progress and self.info.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        self.model.train()
        stopped_by_time = False
        while self.step < cfg.max_steps:
            t0 = time.time()
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
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            last_loss = float(all_reduce_mean(loss_sum, self.info))
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                rec = {"step": self.step, "loss": last_loss, "lr": self.scheduler.get_last_lr()[0],
                       "step_time_s": time.time() - t0, **metrics_sum}
                if grad_norm is not None:
                    rec["grad_norm"] = grad_norm
                self._log(rec)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.4f}")
            if cfg.eval_every and self.eval_fn and self.step % cfg.eval_every == 0:
                self.model.eval()
                with torch.no_grad():
                    self._log({"step": self.step, **{f"eval/{k}": v for k, v in self.eval_fn(unwrap(self.model), self.step).items()}})
                self.model.train()
            out_of_time = cfg.max_minutes is not None and (time.time() - start_time) / 60 >= cfg.max_minutes
            if self.info.enabled:  # every rank must agree to stop
                flag = torch.tensor(float(out_of_time), device=dev)
                out_of_time = bool(all_reduce_mean(flag, self.info) > 0)
            if self.step % cfg.save_every == 0 or out_of_time:
                self.save_checkpoint()
            if out_of_time:
                stopped_by_time = True
                break
        if bar is not None:
            bar.close()
        if self.step == cfg.max_steps and (self.latest_checkpoint() is None or self.latest_checkpoint().name != f"step-{self.step:08d}"):
            self.save_checkpoint()
        if self._tb is not None:
            self._tb.close()
        return {"step": self.step, "loss": last_loss, "stopped_by_time": stopped_by_time,
                "minutes": (time.time() - start_time) / 60}
