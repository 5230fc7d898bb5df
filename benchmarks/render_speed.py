"""CPU rendering speed of hand motion: frames per second (process time) of skeleton, side-by-side,
camera-overlay and mesh rendering at a few sizes, and of rendering + MP4 encoding (wall time).

    python benchmarks/render_speed.py

Motion: 20 s of built-in two-hand motion (300 frames). Mesh: an ellipsoid of 1600 faces per hand (MANO has
1538) following each wrist, 100 frames. The MP4 is written to /tmp/viz/bench.mp4.

Prints one JSON document: frames per second per case.
"""

from __future__ import annotations

import json
import time

import numpy as np

from handvla.camera import Camera
from handvla.hand.render import (
    HandTrack,
    render_frames,
    render_side_by_side,
    render_video,
    track_from_motion,
)
from handvla.synth.builtin_motion import sample_sequence


def fps(fn, T):
    fn()
    t = time.process_time()
    fn()
    return round(T / (time.process_time() - t))


ms = sample_sequence(np.random.default_rng(0), 20.0, hands=("left", "right"))  # 300 frames
tr = {s: track_from_motion(m) for s, m in ms.items()}
out = {}
for W in (256, 480):
    out[f"skeleton_1hand_{W}"] = fps(lambda W=W: render_frames([tr["right"]], width=W, height=W), 300)
    out[f"skeleton_2hands_{W}"] = fps(lambda W=W: render_frames(list(tr.values()), width=W, height=W), 300)
    out[f"side_by_side_2hands_{W}x2"] = fps(
        lambda W=W: render_side_by_side(list(tr.values()), list(tr.values()), width=W, height=W), 300
    )
cam = Camera(300, 300, 240, 180, 480, 360)
bg = np.full((300, 360, 480, 3), 90, np.uint8)
out["overlay_video_2hands_480x360"] = fps(lambda: render_frames(list(tr.values()), camera=cam, background=bg), 300)
# mesh: an ellipsoid of 1600 faces per hand (MANO has 1538) following each wrist
th, ph = np.linspace(0, np.pi, 21), np.linspace(0, 2 * np.pi, 40, endpoint=False)
v = np.array([[np.sin(a) * np.cos(b), np.sin(a) * np.sin(b), np.cos(a)] for a in th for b in ph]) * [0.09, 0.04, 0.02]
f = np.array(
    [
        q
        for i in range(20)
        for j in range(40)
        for q in (
            [i * 40 + j, (i + 1) * 40 + j, i * 40 + (j + 1) % 40],
            [i * 40 + (j + 1) % 40, (i + 1) * 40 + j, (i + 1) * 40 + (j + 1) % 40],
        )
    ]
)
mesh = [HandTrack(t.joints[:100], t.side, t.joints[:100, :1] + v[None], f) for t in tr.values()]
for W in (256, 480):
    out[f"mesh_2hands_{W}"] = fps(lambda W=W: render_frames(mesh, width=W, height=W), 100)
    out[f"mesh_1hand_{W}"] = fps(lambda W=W: render_frames(mesh[:1], width=W, height=W), 100)
t = time.perf_counter()
render_video("/tmp/viz/bench.mp4", list(tr.values()), width=480, height=480)
out["render+encode_mp4_2hands_480"] = round(300 / (time.perf_counter() - t))
print(json.dumps(out, indent=1))
