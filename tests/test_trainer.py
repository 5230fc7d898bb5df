"""The shared trainer: exact resume, time budget, accumulation, checkpoint errors, and DDP/FSDP2 on CPU."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from handvla.errors import CheckpointError
from handvla.train.trainer import ResumableSampler, TrainConfig, Trainer


class Toy(Dataset):
    def __init__(self, n=37):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x @ torch.randn(8, 1, generator=g) + 0.1

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        # random augmentation from the global RNG: exact resume must restore it
        return {"x": self.x[i] + 0.01 * torch.randn(8), "y": self.y[i]}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 1))

    def forward(self, x, y):
        return type("Out", (), {"loss": nn.functional.mse_loss(self.body(x), y)})()


def _cfg(tmp_path, name, **kw):
    base = dict(output_dir=str(tmp_path / name), max_steps=12, batch_size=5, grad_accum=2, lr=1e-2,
                warmup_steps=3, log_every=1, save_every=4, tensorboard=False, progress=False, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_resume_replays_the_same_loss_curve_exactly(tmp_path):
    torch.manual_seed(0)
    full = Trainer(Net(), Toy(), _cfg(tmp_path, "full")).train()
    assert full["step"] == 12

    calls = {"n": 0}

    def crashing_loss(model, batch):  # the process dies in step 10 (micro-batch 19), after the step-8 save
        calls["n"] += 1
        if calls["n"] == 19:
            raise KeyboardInterrupt("killed")
        return model(**batch).loss, {}

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        Trainer(Net(), Toy(), _cfg(tmp_path, "cut"), loss_fn=crashing_loss).train()
    torch.manual_seed(123)  # whatever state the new process starts in
    resumed = Trainer(Net(), Toy(), _cfg(tmp_path, "cut")).train(resume=True)
    assert resumed["step"] == 12
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "cut")
    assert len(a) == len(b) == 12
    assert a == b  # bit-exact, epochs crossed mid-run (37 samples, 10 per step)
    assert sum(a[-4:]) < sum(a[:4])  # and it learns


def test_time_budget_stops_and_checkpoints(tmp_path):
    out = Trainer(Net(), Toy(), _cfg(tmp_path, "t", max_steps=10_000, max_minutes=0.002, save_every=10_000)).train()
    assert out["stopped_by_time"] and out["step"] < 10_000
    assert (tmp_path / "t" / "checkpoints" / "latest").read_text() == f"step-{out['step']:08d}"


def test_sampler_shards_cover_everything_once_per_epoch():
    seen = []
    for r in range(3):
        s = ResumableSampler(10, seed=0, rank=r, world_size=3)
        seen += list(s)
    assert sorted(set(seen)) == list(range(10)) and len(seen) == 12  # padded by wrapping
    s = ResumableSampler(10, seed=0)
    full = list(s)
    s.set_position(0, 4)
    assert list(s) == full[4:]


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    Trainer(Net(), Toy(), _cfg(tmp_path, "c", max_steps=4)).train()
    ckpt = tmp_path / "c" / "checkpoints" / "step-00000004"
    (ckpt / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="model.safetensors|cannot read"):
        Trainer(Net(), Toy(), _cfg(tmp_path, "c", max_steps=8)).train(resume=True)


SCRIPT = textwrap.dedent(
    """
    import sys, json, torch
    sys.path.insert(0, {tests!r})
    from test_trainer import Net, Toy
    from handvla.train.trainer import Trainer, TrainConfig
    torch.manual_seed(0)
    cfg = TrainConfig(output_dir={out!r}, max_steps=int(sys.argv[1]), batch_size=4, lr=1e-2, warmup_steps=0, log_every=1,
                      save_every=3, tensorboard=False, progress=False, distributed={strategy!r})
    r = Trainer(Net(), Toy(), cfg).train(resume=True)
    print(json.dumps(r))
    """
)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_process_cpu_training_and_resume(tmp_path, strategy):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path / strategy), strategy=strategy))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for max_steps in (3, 6):  # the second launch resumes from the first one's step-3 checkpoint
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script), str(max_steps)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (tmp_path / strategy / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    losses = _losses(tmp_path / strategy)
    assert all(v == v for v in losses)
    assert (tmp_path / strategy / "checkpoints" / "latest").read_text() == "step-00000006"
