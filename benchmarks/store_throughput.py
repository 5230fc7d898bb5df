"""Throughput of the episode store: write (parquet + H.264 encode + fsync'd commit) and read (full, no video,
1 s windows).

    python benchmarks/store_throughput.py [N_EPISODES=40] [T_FRAMES=150] [H=192] [W=256] [DURABLE=1]

e.g. ``python benchmarks/store_throughput.py 40 150 192 256 1``. ``H`` 0: motion only, no video feature;
``DURABLE`` 0: no fsync'd commits. Episodes are two-hand random motion with a moving-gradient video at 15 fps.

Prints one JSON document: the settings, bytes per frame, and episodes/frames per second for writing, reading
full episodes with video, reading parameters only, and reading 1 s windows with video.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from handvla.camera import Camera
from handvla.data.schema import Episode
from handvla.data.store import EpisodeStore, EpisodeWriter
from handvla.hand.motion import HandMotion

N = int(sys.argv[1]) if len(sys.argv) > 1 else 40
T = int(sys.argv[2]) if len(sys.argv) > 2 else 150
H = int(sys.argv[3]) if len(sys.argv) > 3 else 192
W = int(sys.argv[4]) if len(sys.argv) > 4 else 256
FPS = 15
DURABLE = (sys.argv[5] != "0") if len(sys.argv) > 5 else True
rng = np.random.default_rng(0)
yy, xx = np.mgrid[:H, :W]

def episode(i):
    hands, joints = {}, {}
    for side in ("left", "right"):
        hands[side] = HandMotion(rng.normal(size=(T, 3)), rng.normal(size=(T, 15, 3)) * 0.3, rng.normal(size=(T, 3)) * 0.1,
                                 rng.normal(size=10), side=side, fps=FPS)
        joints[side] = rng.normal(size=(T, 21, 3)).astype(np.float32)
    if not H:  # motion only: no video feature
        return Episode(hands=hands, camera=Camera(200.0, 200.0, 128, 96, 256, 192), fps=FPS, key=f"e{i}",
                       joints=joints, tasks=[f"task {i % 7}"], source="bench", rig="r0")
    t = np.arange(T)[:, None, None]
    # moving gradient: a video with motion, not a constant image the encoder can skip
    frame = ((xx[None] + 3 * t) % 256).astype(np.uint8)
    video = np.stack([frame, ((yy[None] + 2 * t) % 256).astype(np.uint8), np.full((T, H, W), 90, np.uint8)], -1)
    return Episode(hands=hands, camera=Camera(200.0, 200.0, W / 2, H / 2, W, H), fps=FPS, key=f"e{i}", video=video,
                   joints=joints, tasks=[f"task {i % 7}"], source="bench", rig="r0")

eps = [episode(i) for i in range(N)]
root = tempfile.mkdtemp(prefix="bench_store")
try:
    t0 = time.perf_counter()
    with EpisodeWriter(root, fps=FPS, joints=True, camera="main" if H else None, durable=DURABLE) as w:
        for ep in eps:
            w.add_episode(ep)
    t_write = time.perf_counter() - t0
    s = EpisodeStore(root)
    t0 = time.perf_counter()
    n_full = sum(e.num_frames for e in s.iter_episodes())
    t_full = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_nov = sum(e.num_frames for e in s.iter_episodes(with_video=False))
    t_nov = time.perf_counter() - t0
    starts = rng.uniform(0, T / FPS - 1.0, size=N)
    t0 = time.perf_counter()
    n_win = sum(s.load_episode(k, st, st + 1.0).num_frames for k, st in enumerate(starts))
    t_win = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())
    print(json.dumps({
        "episodes": N, "durable": DURABLE, "frames_per_episode": T, "video": f"{W}x{H}" if H else None, "fps": FPS, "bytes_per_frame": round(size / (N * T), 1),
        "write": {"episodes_per_s": round(N / t_write, 2), "frames_per_s": round(N * T / t_write, 1)},
        "read_full_with_video": {"episodes_per_s": round(N / t_full, 2), "frames_per_s": round(n_full / t_full, 1)},
        "read_params_only": {"episodes_per_s": round(N / t_nov, 2), "frames_per_s": round(n_nov / t_nov, 1)},
        "read_1s_window_with_video": {"windows_per_s": round(N / t_win, 2), "frames_per_s": round(n_win / t_win, 1)},
    }, indent=1))
finally:
    shutil.rmtree(root)
