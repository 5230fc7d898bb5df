"""The one ``handvla`` command: every job is registered, errors are one line with exit 2."""

import subprocess
import sys

import numpy as np

from handvla.cli import main
from handvla.hand.io import save_motion
from handvla.synth.builtin_motion import sample_sequence
from handvla.video import read_video

JOBS = ("data", "demo", "eval", "generate", "hand", "posttrain", "pretrain", "serve", "tokenizer", "vla-eval")


def test_every_job_is_registered(capsys):
    assert main([]) == 1
    out = capsys.readouterr().out
    for job in JOBS:
        assert f"    {job}" in out


def test_python_dash_m_runs_the_command():
    res = subprocess.run([sys.executable, "-m", "handvla", "--version"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.startswith("handvla ")


def test_hand_render_writes_a_video_of_both_hands(tmp_path, capsys):
    motions = sample_sequence(np.random.default_rng(0), 2.0, hands=("left", "right"))
    paths = [save_motion(tmp_path / f"{s}.npz", m) for s, m in motions.items()]
    out = tmp_path / "both.mp4"
    assert main(["hand", "render", "--motion", str(paths[0]), "--motion", str(paths[1]), "--out", str(out)]) == 0
    frames = read_video(out)
    assert frames.shape[0] == 30 and frames.std() > 1.0  # 2 s at 15 fps, not a blank video


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    rc = main(["hand", "render", "--motion", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "bad.npz" in err[0]
    assert not (tmp_path / "x.mp4").exists()
