"""The scripted Adroit Relocate expert: success over N seeded episodes (no rendering) with its 95 % Wilson
interval, simulation speed with and without the expert, and the cost of demonstrations with video.
Prints JSON.

Usage: python benchmarks/sim_expert.py [N_EPISODES=50] [FIRST_SEED=0] [DEMO_EPISODES=2] [IMAGE_SIZE=128]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

import numpy as np

from handvla.robot.sim import AdroitSim, RelocateExpert, collect_demos, rollout
from handvla.stats import wilson_interval

N = int(sys.argv[1]) if len(sys.argv) > 1 else 50
SEED = int(sys.argv[2]) if len(sys.argv) > 2 else 0
DEMOS = int(sys.argv[3]) if len(sys.argv) > 3 else 2
SIZE = int(sys.argv[4]) if len(sys.argv) > 4 else 128


class ZeroController:
    """Holds the mean actuator command: the bare simulation speed."""

    def reset(self, sim):
        self.n = sim.action_dim

    def act(self, obs):
        return np.zeros(self.n, np.float32)


def main() -> None:
    sim = AdroitSim("relocate")
    t0 = time.perf_counter()
    rollout(sim, ZeroController(), 0)
    rollout(sim, ZeroController(), 1)
    bare_sps = 2 * sim.max_steps / (time.perf_counter() - t0)

    expert = RelocateExpert()
    rows = []
    t0 = time.perf_counter()
    for s in range(SEED, SEED + N):
        rows.append(rollout(sim, expert, s).summary())
    secs = time.perf_counter() - t0
    sim.close()
    ok = sum(r["success"] for r in rows)
    first = [r["first_success_step"] for r in rows if r["first_success_step"] is not None]
    out = {
        "task": "relocate",
        "episodes": N,
        "seeds": [SEED, SEED + N - 1],
        "success_rate": ok / N,
        "success_ci95": list(wilson_interval(ok, N)),
        "success_at_end_rate": float(np.mean([r["success_at_end"] for r in rows])),
        "mean_success_steps": float(np.mean([r["success_steps"] for r in rows])),
        "first_success_step": {"mean": float(np.mean(first)), "max": int(np.max(first))} if first else None,
        "failed_seeds": [r["seed"] for r in rows if not r["success"]],
        "expert_steps_per_s": N * 200 / secs,
        "bare_sim_steps_per_s": bare_sps,
    }
    if DEMOS > 0:
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            summary = collect_demos("relocate", DEMOS, d, seed=SEED, image_size=SIZE, progress=False)
            out["demos_with_video"] = {
                "episodes": DEMOS,
                "image_size": SIZE,
                "seconds_per_episode": (time.perf_counter() - t0) / DEMOS,
                "note": "includes the EGL start (several seconds on a CPU-only machine) once",
                "bytes": sum(
                    p.stat().st_size for p in __import__("pathlib").Path(d).rglob("*") if p.is_file()
                ),
                "expert_success_rate": summary["expert_success_rate"],
            }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
