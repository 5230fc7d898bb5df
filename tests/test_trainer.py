"""The shared trainer: exact resume (datasets and streams), time budget, stage hooks, accumulation, checkpoint
errors, and DDP/FSDP2 on CPU."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset

import handvla.train.trainer as trainer_mod
from handvla.errors import CheckpointError, ConfigError
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


def _records(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _losses(run_dir):
    return [r["loss"] for r in _records(run_dir) if "loss" in r]


class FakeClock:
    """The trainer's clock (seconds), moved only by the test: each loss call costs ``per_call`` seconds."""

    def __init__(self, per_call=0.0):
        self.t, self.per_call = 1000.0, per_call

    def __call__(self):
        return self.t

    def loss(self, model, batch):
        self.t += self.per_call
        return model(**batch).loss, {}


def _cosine(cfg, t):
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


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


def test_time_budget_ends_the_schedule_at_the_deadline_and_warns(tmp_path, monkeypatch, capsys):
    clock = FakeClock(per_call=6.0)  # 2 micro-batches a step: 12 s a step, so a 1-minute budget is 5 steps
    monkeypatch.setattr(trainer_mod, "_now", clock)
    cfg = _cfg(tmp_path, "b", max_steps=2000, max_minutes=1.0, warmup_steps=2, save_every=10_000, min_steps_ok=50)
    out = Trainer(Net(), Toy(), cfg, loss_fn=clock.loss).train()
    assert out["step"] == out["steps_done"] == out["steps_done_this_run"] == 5
    assert out["stopped_early"] and out["stopped_by_time"] and out["stop_reason"] == "time_budget"
    assert out["elapsed_minutes"] == pytest.approx(1.0) and out["budget_minutes"] == 1.0
    assert out["max_steps"] == 2000 and out["setup_seconds"] == 0.0  # the fake clock stands still in set-up
    # warm-up by step (2 steps, 24 s), then cosine by time over the remaining 36 s: the deadline ends it
    lrs = [r["lr"] for r in _records(tmp_path / "b") if "lr" in r]
    expected = [cfg.lr] + [_cosine(cfg, (12 * k - 24) / 36) for k in (2, 3, 4, 5)]
    assert lrs == pytest.approx(expected)
    assert out["final_lr"] == pytest.approx(cfg.lr * cfg.min_lr_ratio)
    losses = _losses(tmp_path / "b")
    assert out["final_loss"] == pytest.approx(sum(losses) / 5) and out["last_loss"] == out["loss"] == losses[-1]
    assert out["too_few_steps"] and "did only 5 of its 2000 planned optimiser steps (0.25%)" in out["warning"]
    assert "time budget of 1 min ran out (a meaningful run needs at least 50" in out["warning"]
    assert f"WARNING: {out['warning']}" in capsys.readouterr().err
    end = _records(tmp_path / "b")[-1]
    assert end["event"] == "end" and "loss" not in end
    assert {k: end[k] for k in ("steps_done", "stop_reason", "too_few_steps", "warning")} == {
        k: out[k] for k in ("steps_done", "stop_reason", "too_few_steps", "warning")
    }
    assert (tmp_path / "b" / "checkpoints" / "latest").read_text() == "step-00000005"


def test_step_limited_run_reports_max_steps_without_warning(tmp_path, capsys):
    out = Trainer(Net(), Toy(), _cfg(tmp_path, "s", min_steps_ok=12)).train()
    assert out["steps_done"] == out["max_steps"] == 12 and out["stop_reason"] == "max_steps"
    assert not out["stopped_early"] and not out["stopped_by_time"] and out["budget_minutes"] is None
    assert not out["too_few_steps"] and out["warning"] is None
    assert "WARNING" not in capsys.readouterr().err
    assert out["final_loss"] == pytest.approx(sum(_losses(tmp_path / "s")[-10:]) / 10)
    assert out["final_lr"] == pytest.approx(1e-2 * 0.1)  # the step schedule's end
    # a plan shorter than min_steps_ok is itself too few
    short = Trainer(Net(), Toy(), _cfg(tmp_path, "s2", max_steps=4, min_steps_ok=10)).train()
    assert short["stop_reason"] == "max_steps" and short["too_few_steps"]
    assert "planned for only 4 optimiser steps (a meaningful run needs at least 10" in short["warning"]
    assert "WARNING: training was planned for only 4" in capsys.readouterr().err


def test_resume_restores_the_training_clock(tmp_path, monkeypatch):
    clock = FakeClock(per_call=6.0)
    monkeypatch.setattr(trainer_mod, "_now", clock)
    cfg = _cfg(tmp_path, "r", max_steps=2000, max_minutes=1.0, warmup_steps=0, save_every=2, min_steps_ok=1)
    calls = {"n": 0}

    def dying(model, batch):  # dies in step 4, after the step-2 checkpoint (24 s of training)
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("killed")
        return clock.loss(model, batch)

    with pytest.raises(KeyboardInterrupt):
        Trainer(Net(), Toy(), cfg, loss_fn=dying).train()
    state = json.loads((tmp_path / "r" / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    assert state["elapsed_s"] == pytest.approx(24.0) and state["warmup_end_s"] == 0.0
    clock.t += 500.0  # time between the sessions (and the new one's set-up) is not training time
    t = Trainer(Net(), Toy(), cfg, loss_fn=clock.loss)
    out = t.train(resume=True)
    assert out["steps_done"] == 5 and out["steps_done_this_run"] == 3 and out["stop_reason"] == "time_budget"
    assert out["elapsed_minutes"] == pytest.approx(1.0)
    lrs = [r["lr"] for r in _records(tmp_path / "r") if "lr" in r]
    assert lrs == pytest.approx([_cosine(cfg, 12 * k / 60) for k in range(1, 6)])
    # a spent budget: resuming again does no step
    again = Trainer(Net(), Toy(), cfg, loss_fn=clock.loss).train(resume=True)
    assert again["steps_done"] == 5 and again["steps_done_this_run"] == 0 and again["stop_reason"] == "time_budget"
    assert [r["event"] for r in _records(tmp_path / "r") if "event" in r] == ["end"]  # one end record, the last


class Stream(IterableDataset):
    """Random batches forever from its own generator (its state is the data position)."""

    def __init__(self, batch=5):
        self.rng, self.batch, self.data = np.random.default_rng(7), batch, Toy()

    def __iter__(self):
        while True:
            idx = self.rng.integers(0, len(self.data), self.batch)
            yield {"x": self.data.x[idx], "y": self.data.y[idx]}

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]


def test_stream_dataset_and_stage_hooks_resume_exactly(tmp_path):
    seen = {"before": [], "logged": []}

    def before_step(model, step):
        assert isinstance(model, Net)
        seen["before"].append(step)

    def on_log(model, record):
        record["extra"] = 1.0
        seen["logged"].append(record["step"])

    torch.manual_seed(0)
    Trainer(Net(), Stream(), _cfg(tmp_path, "full", log_every=3), before_step=before_step, on_log=on_log).train()
    assert seen["before"] == list(range(12)) and seen["logged"] == [3, 6, 9, 12]
    assert all(r["extra"] == 1.0 for r in _records(tmp_path / "full") if "loss" in r)
    calls = {"n": 0}

    def crashing_loss(model, batch):  # dies in step 10, after the step-8 checkpoint
        calls["n"] += 1
        if calls["n"] == 19:
            raise KeyboardInterrupt("killed")
        return model(**batch).loss, {}

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        Trainer(Net(), Stream(), _cfg(tmp_path, "cut", log_every=3), loss_fn=crashing_loss).train()
    seen["before"].clear()
    resumed = Trainer(Net(), Stream(), _cfg(tmp_path, "cut", log_every=3), before_step=before_step).train(resume=True)
    assert resumed["steps_done_this_run"] == 4 and seen["before"] == [8, 9, 10, 11]
    assert _losses(tmp_path / "full") == _losses(tmp_path / "cut")  # the stream's position came back too


def test_run_by_time_only_and_checkpoints_by_minutes(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="max_steps, max_minutes or both"):
        _cfg(tmp_path, "none", max_steps=None)
    clock = FakeClock(per_call=6.0)  # 12 s a step: a 1-minute budget is 5 steps
    monkeypatch.setattr(trainer_mod, "_now", clock)
    cfg = _cfg(tmp_path, "t", max_steps=None, max_minutes=1.0, warmup_steps=0, save_every=10_000, save_minutes=0.4,
               keep_checkpoints=10, min_steps_ok=10)  # fmt: skip
    out = Trainer(Net(), Toy(), cfg, loss_fn=clock.loss).train()
    assert out["steps_done"] == 5 and out["max_steps"] is None and out["stop_reason"] == "time_budget"
    lrs = [r["lr"] for r in _records(tmp_path / "t") if "lr" in r]
    assert lrs == pytest.approx([_cosine(cfg, 12 * k / 60) for k in range(1, 6)])  # the cosine ends at the deadline
    assert "did only 5 optimiser steps before its time budget of 1 min ran out" in out["warning"]
    saved = sorted(p.name for p in (tmp_path / "t" / "checkpoints").glob("step-*"))
    assert saved == ["step-00000002", "step-00000004", "step-00000005"]  # every 24 s of training, and at the end


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


def test_demo_report_shows_training_budgets_and_warns_when_too_few_steps(tmp_path, monkeypatch):
    from handvla.demo import write_report
    from handvla.tokenizer.training import TrainResult

    clock = FakeClock(per_call=6.0)
    monkeypatch.setattr(trainer_mod, "_now", clock)
    vla = Trainer(Net(), Toy(), _cfg(tmp_path, "v", max_steps=2000, max_minutes=1.0, save_every=10_000),
                  loss_fn=clock.loss).train()
    tok = TrainResult(tmp_path / "tok", step=300, schedule_steps=300, elapsed_s=90.0, losses=[0.5] * 20 + [0.25] * 10,
                      stopped_by="time")
    base = {"minutes": 2.0, "tokenizer": {"mpjpe_mm": 5.0}, "vla": {"heldout": {"valid_output_rate": 1.0}}}
    page = write_report(tmp_path, {**base, "vla_train": vla, "tokenizer_train": tok}, []).read_text()
    assert "class='budget-warning'" in page and "Training budget" in page
    assert ("The VLA got only 5 of 2000 planned training steps, because its 1-minute time budget ran out. "
            "It is barely trained, so the numbers below that depend on it do not mean much.") in page
    assert page.index("budget-warning'>") < page.index("Motion tokenizer (held-out")  # at the top
    assert "<td>5 / 2000</td>" in page and "<td>yes: time budget</td>" in page and "<td>1.00 / 1</td>" in page
    # the tokenizer: its TrainResult's steps, mean of the last 10 losses, time (its schedule was done: not early)
    assert "<td>300 / 300</td>" in page and "<td>0.25 (last 0.25)</td>" in page and "<td>no: time budget</td>" in page
    assert page.count("budget-warning'>") == 1
    plain = write_report(tmp_path, base, []).read_text()  # no training summaries: nothing about budgets
    assert "Training budget" not in plain and "budget-warning'>" not in plain


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
    records = _records(tmp_path / strategy)
    assert [r["step"] for r in records if "event" not in r] == [1, 2, 3, 4, 5, 6]
    assert records[-1]["event"] == "end" and records[-1]["steps_done_this_run"] == 3
    losses = _losses(tmp_path / strategy)
    assert all(v == v for v in losses)
    assert (tmp_path / strategy / "checkpoints" / "latest").read_text() == "step-00000006"
