"""Bad input that used to end in a traceback: each is now one line on stderr, ``handvla: error: ...``, naming
the file (or option) and what was expected, with exit status 2.

Cases: a 0-byte npz for ``tokenizer eval``; ``--out`` that is an existing folder where a file is written;
a corrupt, truncated or empty ``model.safetensors`` for ``generate`` and ``serve`` (``load_vla`` and the policy
loader raise ``CheckpointError`` naming the file); ``serve`` on a port in use or out of range."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from handvla.cli import main
from handvla.errors import CheckpointError


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """A tiny tokenizer, a tiny VLA (carrying it), a 2-step post-trained policy and its dataset, an image and
    a motion file."""
    from handvla.data.lerobot import vector_feature, video_feature
    from handvla.hand.io import save_motion
    from handvla.hand.motion import HandMotion
    from handvla.robot.lerobot_format import RobotDatasetWriter
    from handvla.tokenizer.configuration import PRESETS, TokenizerConfig
    from handvla.tokenizer.modeling import MotionTokenizer
    from handvla.vla import build_vla, save_vla

    root = tmp_path_factory.mktemp("bad_input")
    torch.manual_seed(0)
    mt = MotionTokenizer(TokenizerConfig(**PRESETS["tiny"]))
    mt.save_pretrained(root / "mt")
    save_vla(root / "vla", build_vla("tiny", motion_tokenizer=mt, seed=0))
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(root / "frame.png")
    T = 30
    save_motion(root / "m.npz", HandMotion(np.zeros((T, 3)), np.zeros((T, 15, 3)), np.tile([0, 0, 0.5], (T, 1)), side="right", fps=15.0))  # fmt: skip
    rng = np.random.default_rng(1)
    feats = {"observation.state": vector_feature(6), "action": vector_feature(4),
             "observation.images.top": video_feature(16, 16, 10)}  # fmt: skip
    with RobotDatasetWriter(root / "ds", fps=10, features=feats, robot_type="test") as w:
        for _ in range(2):
            state = np.cumsum(rng.normal(size=(12, 6)), 0).astype(np.float32)
            img = rng.integers(0, 255, (12, 16, 16, 3), dtype=np.uint8)
            w.add_episode(
                {"observation.state": state, "action": state[:, :4], "observation.images.top": img},
                "stack it",
            )
    cfg = {
        "data": {"dataset": str(root / "ds"), "chunk_size": 3},
        "model": {"preset": "tiny", "backbone_mode": "frozen"},
        "train": {"output_dir": str(root / "run"), "max_steps": 2, "batch_size": 4, "tensorboard": False,
                  "device": "cpu"},
    }  # fmt: skip
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["posttrain", "--config", str(root / "cfg.yaml"), "--quiet"]) == 0
    return {"root": root, "mt": root / "mt", "vla": root / "vla", "policy": root / "run" / "final",
            "ds": root / "ds", "image": root / "frame.png", "motion": root / "m.npz"}  # fmt: skip


def _error(capsys, argv: list[str]) -> str:
    """Run the CLI; it must fail with status 2 and one ``handvla: error:`` line (no traceback)."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("handvla: error:")]
    assert len(lines) == 1, err
    return lines[0]


# ---- a 0-byte npz ----------------------------------------------------------------------------------------


def test_tokenizer_eval_on_an_empty_npz(ckpts, tmp_path, capsys):
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    line = _error(capsys, ["tokenizer", "eval", "--ckpt", ckpts["mt"], "--data", empty, "--no-progress"])
    assert str(empty) in line and "npz" in line


# ---- --out that is a folder --------------------------------------------------------------------------------


def _out_cases(c: dict[str, Path], d: Path) -> dict[str, list]:
    """argv per command with a file output, ``--out`` pointing at the existing folder ``d`` (or ``d`` + ext)."""
    return {
        "generate": [
            "generate",
            "--ckpt",
            c["vla"],
            "--image",
            c["image"],
            "--instruction",
            "wave",
            "--seconds",
            "1",
            "--out",
            d,
        ],  # fmt: skip
        "tokenizer encode": ["tokenizer", "encode", "--ckpt", c["mt"], "--motion", c["motion"], "--out", d],
        "hand render": ["hand", "render", "--motion", c["motion"], "--out", d.with_suffix(".mp4")],
        "eval open-loop": [
            "eval",
            "open-loop",
            "--ckpt",
            c["policy"],
            "--data",
            c["ds"],
            "--no-plot",
            "--out",
            d,
            "--quiet",
        ],  # fmt: skip
    }


@pytest.mark.parametrize(
    "command", ["generate", "tokenizer encode", "hand render", "eval open-loop", "hand fit"]
)
def test_out_that_is_a_folder(ckpts, tmp_path, capsys, command, real_hands_dir):
    d = tmp_path / "taken"
    for p in (d, d.with_suffix(".npz"), d.with_suffix(".mp4")):
        p.mkdir()
        (p / "keep.txt").write_text("mine")  # must survive
    cases = _out_cases(ckpts, d) | {
        "hand fit": ["hand", "fit", "--joints", real_hands_dir / "leap_wave_right.npz", "--out", d]
    }
    line = _error(capsys, cases[command])
    assert "existing folder" in line and str(tmp_path / "taken") in line
    assert all(
        (p / "keep.txt").read_text() == "mine" for p in (d, d.with_suffix(".npz"), d.with_suffix(".mp4"))
    )


def test_instructions_out_that_is_a_folder(tmp_path, capsys):
    from handvla.data.store import EpisodeWriter

    store = tmp_path / "store"
    with EpisodeWriter(store, fps=15.0, hand_model="builtin", joints=False, camera=None):
        pass
    out = tmp_path / "m.jsonl"
    out.mkdir()
    line = _error(capsys, ["data", "instructions", store, "--out", out, "--quiet"])
    assert str(out) in line and "existing folder" in line


def test_atomic_writers_refuse_a_folder_and_a_file_as_folder(tmp_path):
    from handvla.atomic import atomic_savez, atomic_write_text
    from handvla.errors import InputError

    (tmp_path / "dir").mkdir()
    with pytest.raises(InputError, match=r"dir: expected a file path to write, got an existing folder"):
        atomic_write_text(tmp_path / "dir", "x")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        atomic_savez(tmp_path / "file" / "a.npz", {"a": np.zeros(1)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file"]  # no temporary file left


# ---- corrupt weights ---------------------------------------------------------------------------------------


def _corrupt(src: Path, dst: Path, name: str, how: str) -> Path:
    shutil.copytree(src, dst)
    f = dst / name
    if how == "garbage":
        f.write_bytes(np.random.default_rng(0).bytes(200))
    elif how == "truncated":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    else:
        f.write_bytes(b"")
    return f


@pytest.mark.parametrize("how", ["garbage", "truncated", "empty"])
def test_generate_with_corrupt_weights(ckpts, tmp_path, capsys, how):
    base = [
        "generate",
        "--image",
        ckpts["image"],
        "--instruction",
        "wave",
        "--seconds",
        "1",
        "--out",
        tmp_path / "o",
    ]
    f = _corrupt(ckpts["vla"], tmp_path / "vla", "model.safetensors", how)
    line = _error(capsys, base + ["--ckpt", tmp_path / "vla"])
    assert str(f) in line and "safetensors" in line
    g = _corrupt(ckpts["vla"], tmp_path / "vla2", "motion_tokenizer/model.safetensors", how)
    line = _error(capsys, base + ["--ckpt", tmp_path / "vla2"])
    assert str(g) in line
    assert not list(tmp_path.glob("o.*"))


def test_loaders_raise_checkpoint_error_naming_the_file(ckpts, tmp_path):
    from handvla.tokenizer.loading import load_tokenizer
    from handvla.vla import load_vla

    f = _corrupt(ckpts["vla"], tmp_path / "vla", "model.safetensors", "truncated")
    with pytest.raises(CheckpointError, match=str(f)):
        load_vla(tmp_path / "vla")
    g = _corrupt(ckpts["mt"], tmp_path / "mt", "model.safetensors", "garbage")
    with pytest.raises(CheckpointError, match=str(g)):
        load_tokenizer(tmp_path / "mt")


@pytest.mark.parametrize("name", ["model.safetensors", "policy_head.safetensors"])
def test_serve_with_corrupt_weights(ckpts, tmp_path, capsys, name):
    f = _corrupt(ckpts["policy"], tmp_path / "policy", name, "garbage")
    line = _error(capsys, ["serve", "--ckpt", tmp_path / "policy", "--port", "0", "--device", "cpu"])
    assert str(f) in line and "safetensors" in line


# ---- serve ports -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_serve_port_out_of_range(ckpts, capsys, port):
    line = _error(capsys, ["serve", "--ckpt", ckpts["policy"], "--port", port])
    assert "--port" in line and "65535" in line and port in line


def test_serve_port_in_use(ckpts, capsys):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        line = _error(capsys, ["serve", "--ckpt", ckpts["policy"], "--port", port, "--device", "cpu"])
    assert "port" in line and f"127.0.0.1:{port}" in line and "in use" in line.lower()
