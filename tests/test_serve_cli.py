"""The policy commands end to end: ``handvla posttrain`` makes a checkpoint, ``handvla serve`` (a real
subprocess on a free loopback port) answers a PolicyClient with exactly the in-process policy's chunk,
``handvla eval open-loop`` agrees with the evaluator called directly, ``handvla eval sim`` runs the closed
loop, and bad input fails with one clear line."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from handvla.cli import main
from handvla.data.lerobot import vector_feature, video_feature
from handvla.robot.lerobot_format import RobotDataset, RobotDatasetWriter

CAM = "observation.images.top"


def write_dataset(root: Path, episodes=2, T=12, state_dim=6, action_dim=4) -> Path:
    rng = np.random.default_rng(1)
    feats = {
        "observation.state": vector_feature(state_dim),
        "action": vector_feature(action_dim),
        CAM: video_feature(16, 16, 10),
    }
    with RobotDatasetWriter(root, fps=10, features=feats, robot_type="test") as w:
        for _ in range(episodes):
            state = np.cumsum(rng.normal(size=(T, state_dim)), 0).astype(np.float32)
            img = rng.integers(0, 255, (T, 16, 16, 3), dtype=np.uint8)
            w.add_episode(
                {"observation.state": state, "action": state[:, :action_dim] * 2 + 1, CAM: img}, "stack it"
            )
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("serve")
    ds = write_dataset(root / "ds")
    cfg = {
        "data": {"dataset": str(ds), "chunk_size": 3},
        "model": {"preset": "tiny", "backbone_mode": "frozen"},
        "train": {
            "output_dir": str(root / "run"),
            "max_steps": 2,
            "batch_size": 4,
            "tensorboard": False,
            "device": "cpu",
        },
    }
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["posttrain", "--config", str(root / "cfg.yaml"), "--set", "train.lr=1e-3", "--quiet"]) == 0
    return root / "run" / "final", ds


def _obs(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "state": rng.normal(size=6).astype(np.float32),
        "image": rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
    }


def test_serve_subprocess_round_trip(ckpt):
    from handvla.policy import HandVLAPolicy
    from handvla.robot.client import PolicyClient, PolicyError

    final, _ = ckpt
    cmd = [
        sys.executable,
        "-c",
        "import sys; from handvla.cli import main; sys.exit(main())",
        "serve",
        "--ckpt",
        str(final),
        "--port",
        "0",
        "--device",
        "cpu",
        "--threads",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(120)
        assert line and line[0].strip(), (
            f"server printed nothing; stderr: {proc.stderr.read() if proc.poll() is not None else ''}"
        )
        info = json.loads(line[0])
        assert info["port"] > 0 and info["chunk_size"] == 3 and info["action_dim"] == 4
        local = HandVLAPolicy.load(final, device="cpu")
        with PolicyClient(info["url"]) as client:
            assert client.metadata["observation"] == local.metadata()["observation"]
            assert client.metadata["task"] == "stack it"
            for seed in (0, 1):
                obs = _obs(seed)
                remote = client.infer(obs)
                assert remote.shape == (3, 4) and remote.dtype == np.float32
                np.testing.assert_allclose(remote, local.infer(obs), rtol=1e-5, atol=1e-5)
            with pytest.raises(PolicyError, match="bad_observation"):
                client.infer({"state": np.zeros(5, np.float32), "image": _obs()["image"]})
            assert client.ping() < 5000
    finally:
        proc.terminate()
        rc = proc.wait(30)
    assert rc == 0, proc.stderr.read()


def test_eval_open_loop_cli_matches_evaluator(ckpt, tmp_path, capsys):
    from handvla.policy import HandVLAPolicy
    from handvla.robot.evaluate import evaluate_open_loop

    final, ds = ckpt
    png = tmp_path / "err.png"
    assert (
        main(
            [
                "eval",
                "open-loop",
                "--ckpt",
                str(final),
                "--data",
                str(ds),
                "--plot",
                str(png),
                "--json",
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    got = json.loads(capsys.readouterr().out)
    ref = evaluate_open_loop(HandVLAPolicy.load(final, device="cpu"), RobotDataset(ds), max_samples=500)
    assert got["samples"] == ref.samples == 24 and len(got["l1_by_step"]) == 3
    np.testing.assert_allclose(got["l1_by_step"], ref.l1_by_step, rtol=1e-3, atol=1e-4)  # print_json rounds
    assert got["count_by_step"] == [24, 22, 20]  # the last steps of each episode are padding
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_eval_sim_cli(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("gymnasium_robotics") is None:  # (importing it would load mujoco too early)
        pytest.skip("gymnasium-robotics is not installed")
    import torch

    from handvla.policy import HandVLAPolicyModel, Normalizer, PolicyConfig
    from handvla.vla import build_vla

    # an untrained policy with the relocate task's sizes: the command's plumbing, not a success rate
    cfg = PolicyConfig(
        state_dim=39,
        action_dim=30,
        chunk_size=4,
        image_keys=["observation.images.front"],
        image_shapes=[[24, 24, 3]],
        default_task="relocate the ball to the target",
    )
    model = HandVLAPolicyModel.from_vla(build_vla("tiny"), cfg)
    rng = np.random.default_rng(0)
    model.normalizer = Normalizer.from_arrays(
        {"observation.state": rng.normal(size=(50, 39)), "action": rng.uniform(-1, 1, size=(50, 30))},
        {"observation.state": "mean_std", "action": "min_max"},
    )
    with torch.no_grad():  # keep the random arm's actions small
        model.action_head[2].weight.mul_(0.01)
    model.save_pretrained(tmp_path / "ckpt")
    assert (
        main(
            [
                "eval",
                "sim",
                "--ckpt",
                str(tmp_path / "ckpt"),
                "--task",
                "relocate",
                "--episodes",
                "2",
                "--max-steps",
                "6",
                "--seed",
                "7",
                "--json",
                "--quiet",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "res"),
            ]
        )
        == 0
    )
    got = json.loads(capsys.readouterr().out)
    assert got["episodes"] == 2 and got["seeds"] == [7, 8] and got["chunk_size"] == 4
    assert got["success_rate"] == 0.0 and got["success_ci95"][0] == 0.0 and 0.5 < got["success_ci95"][1] < 1.0
    assert got["mean_length"] == 6
    assert json.loads((tmp_path / "res" / "sim_eval_relocate.json").read_text())["episodes"] == 2


def test_bad_input_fails_with_one_line(tmp_path, capsys):
    assert main(["serve", "--ckpt", str(tmp_path / "missing"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "not found" in err and "Traceback" not in err
    (tmp_path / "bad.yaml").write_text(
        yaml.safe_dump({"data": {"dataset": str(tmp_path)}, "train": {"output_dir": "x", "lr": -1}})
    )
    assert main(["posttrain", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "train.lr" in capsys.readouterr().err
    assert main(["eval", "sim", "--task", "relocate", "--episodes", "1"]) == 2
    assert "exactly one of --ckpt" in capsys.readouterr().err
