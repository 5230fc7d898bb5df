"""Process-group set-up and model wrapping. The model code never knows about any of this.

Launch with ``torchrun --nproc-per-node N -m handvla pretrain ...`` (or the ``handvla`` script): torchrun sets
RANK / WORLD_SIZE / LOCAL_RANK and this module joins the group (NCCL on GPUs, gloo on CPU).
"""

from __future__ import annotations

import atexit
import gc
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from handvla.errors import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group if launched by torchrun; otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA device is available")
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        # A process that exits with its group alive can abort in the backend's threads ('terminate called
        # without an active exception'): leave the group on every exit path.
        atexit.register(shutdown_distributed)
    return DistInfo(rank, world, local, dev)


def shutdown_distributed() -> None:
    """Leave the process group (idempotent; a no-op in a single process). Registered to run at exit.

    On CPU (gloo) a worker thread frees a finished collective's tensors a moment after the caller has woken
    up, and it takes the GIL to do so; if the interpreter is shutting down by then, the process aborts
    ('terminate called without an active exception', exit code -6, after all the work was done). So the
    worker threads get that moment first, and the group's last references are collected while the
    interpreter is alive (its destructor joins the threads; DDP holds a reference until then). No barrier:
    a rank that stops on an error must not wait for peers that are still working."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_backend() == "gloo":
        time.sleep(_GLOO_SETTLE_S)
    dist.destroy_process_group()
    gc.collect()


_GLOO_SETTLE_S = 0.2  # seconds for gloo's worker threads to release the last collective (see above)


def wrap_model(model: nn.Module, strategy: str, info: DistInfo, layer_types: tuple[type, ...] = ()) -> nn.Module:
    """Apply the parallel strategy from the outside: 'none', 'ddp' or 'fsdp2' (per-layer ``fully_shard``
    on modules of ``layer_types``, then the root)."""
    if strategy == "auto":
        strategy = "ddp" if info.enabled else "none"
    if strategy == "none" or not info.enabled:
        return model
    if strategy == "ddp":
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[info.local_rank] if info.device.type == "cuda" else None
        )
    if strategy == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for module in model.modules():
            if layer_types and isinstance(module, layer_types):
                fully_shard(module)
        fully_shard(model)
        return model
    raise ConfigError(f"unknown distributed strategy {strategy!r}: expected 'auto', 'none', 'ddp' or 'fsdp2'")


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_mean(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= info.world_size
    return x
